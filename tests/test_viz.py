"""Attention pictures: extraction, figures, training snapshots, the GIF, bad input.

1. Extracted matrices: every row (query node) sums to 1 over the edges that
   exist, node pairs without an edge are 0, for the standard and a sparse
   structure; decoder self-attention is 0 above the diagonal; token labels.
2. Files: heatmap grids and bipartite drawings are valid PNGs; training
   snapshots are written per epoch and become a valid multi-frame GIF.
3. Bad input (example index, layer, head, empty text, run dir without
   snapshots) raises ValueErrors that name the value and the valid range.
4. (slow) The copy model trained with configs/copy.yaml attends from target
   position i to source position i.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from transformer_graph.cli.visualize import run as visualize
from transformer_graph.viz import attention as viz
from transformer_graph.data.batch import make_batch
from transformer_graph.config import config_from_dict, load_config
from transformer_graph.data.datasets import Vocab
from transformer_graph.experiment import build_experiment, load_trained
from transformer_graph.graphs.build import KINDS, GraphSpec
from transformer_graph.nn.model import make_model
from transformer_graph.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOCAB = Vocab(["<pad>", "<unk>", "<sos>", "<eos>", *"abcdefgh"])


def tiny_model(**kw):
    torch.manual_seed(0)
    args = dict(layers=2, d_model=16, d_ff=32, heads=2, dropout=0.1, max_len=64)
    args.update(kw)
    return make_model(len(VOCAB), len(VOCAB), **args)


def window1(n_keys: int, n_queries: int):
    """A sparse structure: query i hears keys i-1, i, i+1 only (clipped to the key range)."""
    keys, queries = [], []
    for i in range(n_queries):
        for j in (i - 1, i, i + 1):
            if 0 <= j < n_keys:
                keys.append(j)
                queries.append(i)
    if n_queries > n_keys:  # queries past the last key still need an edge
        for i in range(n_keys + 1, n_queries):
            keys.append(n_keys - 1)
            queries.append(i)
    return torch.tensor(keys), torch.tensor(queries)


def causal_window(n_keys: int, n_queries: int):
    """Decoder structure: the previous position and itself."""
    off = n_keys - n_queries
    keys, queries = [], []
    for i in range(n_queries):
        for j in (i + off - 1, i + off):
            if j >= 0:
                keys.append(j)
                queries.append(i)
    return torch.tensor(keys), torch.tensor(queries)


SRC, TGT = VOCAB.encode(list("abcdefg")), VOCAB.encode(list("hgfe"))


# --------------------------------------------------------------------------
# 1. extraction
# --------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [GraphSpec(), GraphSpec(enc=window1, dec=causal_window, cross=window1)],
                         ids=["complete", "sparse"])
def test_rows_sum_to_one_over_existing_edges(spec):
    model = tiny_model().train()  # extraction must switch dropout off itself
    maps = viz.extract_attention(model, SRC, TGT, spec, src_vocab=VOCAB, tgt_vocab=VOCAB)
    assert model.training, "extraction must restore the model's mode"
    n, m = len(SRC), len(TGT) + 1
    assert {k: tuple(maps.weights[k].shape) for k in KINDS} == {
        "enc": (2, 2, n, n), "dec": (2, 2, m, m), "cross": (2, 2, m, n)}
    batch = make_batch([SRC], [TGT], sos=VOCAB.sos, eos=VOCAB.eos, spec=spec)
    for kind in KINDS:
        w, present = maps.weights[kind], maps.edges[kind]
        keys, queries = getattr(batch.graphs, kind).edges()
        expected = torch.zeros_like(present)
        expected[queries.long(), keys.long()] = True
        assert torch.equal(present, expected), kind  # rows are queries, columns keys
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5, rtol=0)
        assert not bool(w[..., ~present].any()), kind
        assert float(w[..., present].min()) > 0.0, kind  # softmax weights are positive
    if spec.enc is window1:
        assert int(maps.edges["enc"].sum()) == 3 * n - 2  # really sparse


def test_weights_are_the_models_edge_weights():
    """The dense matrix holds exactly the weights the model returns per edge."""
    model = tiny_model(dropout=0.0).eval()
    maps = viz.extract_attention(model, SRC, TGT, src_vocab=VOCAB, tgt_vocab=VOCAB)
    batch = make_batch([SRC], [TGT], sos=VOCAB.sos, eos=VOCAB.eos)
    with torch.no_grad():
        _, att = model(batch, return_attention=True)
    keys, queries = batch.graphs.cross.edges()
    for layer, w in enumerate(att["cross"]):
        dense = maps.weights["cross"][layer]
        torch.testing.assert_close(dense[:, queries.long(), keys.long()], w.t())


def test_decoder_self_attention_is_zero_above_the_diagonal():
    maps = viz.extract_attention(tiny_model(), SRC, TGT, src_vocab=VOCAB, tgt_vocab=VOCAB)
    dec = maps.weights["dec"]
    m = dec.shape[-1]
    above = torch.triu(torch.ones(m, m, dtype=torch.bool), diagonal=1)
    assert float(dec[..., above].abs().max()) == 0.0
    assert float(dec[..., ~above].min()) > 0.0
    assert torch.equal(maps.edges["dec"], ~above)
    torch.testing.assert_close(dec[..., 0, 0], torch.ones(dec.shape[:2]))  # <sos> sees only itself


def test_token_labels():
    maps = viz.extract_attention(tiny_model(), SRC, TGT, src_vocab=VOCAB, tgt_vocab=VOCAB)
    assert maps.src_tokens == list("abcdefg")
    assert maps.tgt_tokens == ["<sos>", *"hgfe"]       # what each target node is fed
    assert maps.tgt_out_tokens == [*"hgfe", "<eos>"]   # what it predicts
    assert maps.labels("cross") == (maps.tgt_tokens, maps.src_tokens)
    assert maps.labels("enc") == (maps.src_tokens, maps.src_tokens)
    ids = viz.extract_attention(tiny_model(), SRC, TGT)  # no vocabularies: ids as labels
    assert ids.src_tokens == [str(i) for i in SRC] and ids.tgt_tokens[0] == str(VOCAB.sos)


def test_snapshot_dict_round_trip(tmp_path):
    maps = viz.extract_attention(tiny_model(), SRC, TGT, src_vocab=VOCAB, tgt_vocab=VOCAB)
    torch.save(maps.to_dict(), tmp_path / "m.pt")
    back = viz.AttentionMaps.from_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert back.tgt_tokens == maps.tgt_tokens
    for kind in KINDS:
        assert torch.equal(back.weights[kind], maps.weights[kind])
        assert torch.equal(back.edges[kind], maps.edges[kind])


# --------------------------------------------------------------------------
# 2. files
# --------------------------------------------------------------------------
def assert_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_write_figures_writes_valid_pngs(tmp_path):
    maps = viz.extract_attention(tiny_model(), SRC, TGT, src_vocab=VOCAB, tgt_vocab=VOCAB)
    written = viz.write_figures(maps, tmp_path / "figs", caption="test")
    names = sorted(p.name for p in written)
    assert names == sorted(["enc_layer0.png", "enc_layer1.png", "dec_layer0.png", "dec_layer1.png",
                            "cross_layer0.png", "cross_layer1.png", "cross_layer0_bipartite.png",
                            "cross_layer1_bipartite.png"])
    for p in written:
        w, h = assert_png(p)
        assert 200 < w < 4000 and 200 < h < 4000, (p.name, w, h)
    only = viz.write_figures(maps, tmp_path / "one", layers=[1], kinds=["dec"])
    assert [p.name for p in only] == ["dec_layer1.png"]


def tiny_cfg(**over):
    raw = {
        "model": dict(layers=1, d_model=16, d_ff=32, heads=2, dropout=0.0, share_embeddings=True),
        "data": dict(task="copy", train_size=48, valid_size=6, test_size=4, batch_size=16,
                     length_mean=5.0, length_std=1.0, alphabet="abcdefgh"),
        "optim": dict(warmup=10), "train": dict(max_epochs=3, seed=3, threads=1),
        "eval": dict(max_len_a=1.0, max_len_b=2),
        "viz": dict(example=2, every_epoch=True),
    }
    for key, value in over.items():
        section, name = key.split(".")
        raw[section][name] = value
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-epoch copy run that snapshots valid example 2 every epoch."""
    run = tmp_path_factory.mktemp("viz") / "run"
    Trainer(tiny_cfg(), run, quiet=True).fit()
    return run


def test_training_writes_a_snapshot_every_epoch(tiny_run):
    files = sorted(p.name for p in (tiny_run / "attention").iterdir())
    assert files == ["epoch1.pt", "epoch2.pt", "epoch3.pt"]
    snaps = viz.load_snapshots(tiny_run)
    assert [e for e, _ in snaps] == [1, 2, 3]
    d = torch.load(tiny_run / "attention" / "epoch3.pt", weights_only=True)
    assert d["example"] == 2 and d["split"] == "valid" and d["epoch"] == 3
    # The last snapshot is exactly the attention of the final model on that example.
    model, cfg, vocabs, _ = load_trained(tiny_run / "last.pt")
    exp = build_experiment(cfg, vocabs)
    fresh = viz.example_attention(model, exp, 2)
    assert snaps[-1][1].src_tokens == fresh.src_tokens == exp.tokens["valid"][2][0]
    for kind in KINDS:
        torch.testing.assert_close(snaps[-1][1].weights[kind], fresh.weights[kind])
    # Attention changes as the model trains (the animation is not of one frame repeated).
    assert not torch.equal(snaps[0][1].weights["cross"], snaps[-1][1].weights["cross"])


def test_only_the_latest_snapshot_is_kept_without_every_epoch(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(**{"train.max_epochs": 2, "viz.every_epoch": False}), run, quiet=True).fit()
    assert sorted(p.name for p in (run / "attention").iterdir()) == ["epoch2.pt"]


def test_animation_is_a_valid_multiframe_gif(tiny_run, tmp_path):
    out = viz.write_animation(tiny_run, tmp_path / "anim" / "copy.gif", kind="cross", layer=0, head=1)
    assert out.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == 3 and im.is_animated
        sizes = set()
        for k in range(im.n_frames):
            im.seek(k)
            sizes.add(im.size)
        assert len(sizes) == 1
    enc = viz.write_animation(tiny_run, tmp_path / "enc.gif", kind="enc")
    with Image.open(enc) as im:
        assert im.n_frames == 3


def test_cli_figures_text_and_animation(tiny_run, tmp_path, capsys):
    ckpt = str(tiny_run / "best.pt")
    written = visualize(["--checkpoint", ckpt, "--example", "1", "--out", str(tmp_path / "ex"), "--layer", "0"])
    assert sorted(p.name for p in written) == ["cross_layer0.png", "cross_layer0_bipartite.png",
                                               "dec_layer0.png", "enc_layer0.png"]
    for p in written:
        assert_png(p)
    written = visualize(["--checkpoint", ckpt, "--text", "a b c d", "--out", str(tmp_path / "tx"),
                         "--kind", "cross"])
    assert [p.name for p in written] == ["cross_layer0.png", "cross_layer0_bipartite.png"]
    assert "source: a b c d" in capsys.readouterr().out
    gif = visualize(["--animate", str(tiny_run), "--out", str(tmp_path / "a.gif")])[0]
    with Image.open(gif) as im:
        assert im.n_frames == 3


def test_text_attention_uses_the_greedy_output(tiny_run):
    model, cfg, vocabs, _ = load_trained(tiny_run / "best.pt")
    maps = viz.text_attention(model, cfg, vocabs, "  b a d  ")
    assert maps.src_tokens == ["b", "a", "d"]
    assert maps.tgt_tokens[0] == "<sos>" and maps.tgt_out_tokens[-1] == "<eos>"
    n, m = 3, len(maps.tgt_tokens)
    assert maps.weights["cross"].shape[-2:] == (m, n)


# --------------------------------------------------------------------------
# 3. bad input
# --------------------------------------------------------------------------
def test_bad_example_index(tiny_run):
    model, cfg, vocabs, _ = load_trained(tiny_run / "best.pt")
    exp = build_experiment(cfg, vocabs)
    for bad in (6, -1, 100):
        with pytest.raises(ValueError, match=rf"example: index {bad} is out of range for the valid split "
                                             r"\(6 examples, expected 0\.\.5\)"):
            viz.example_attention(model, exp, bad)
    with pytest.raises(ValueError, match=r"split: unknown split 'dev'; expected one of train, valid, test"):
        viz.example_attention(model, exp, 0, "dev")


def test_trainer_rejects_a_bad_viz_example_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"example: index 6 is out of range .* expected 0\.\.5"):
        Trainer(tiny_cfg(**{"viz.example": 6}), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bad_layer_and_head():
    maps = viz.extract_attention(tiny_model(), SRC, TGT, src_vocab=VOCAB, tgt_vocab=VOCAB)
    with pytest.raises(ValueError, match=r"layer: 2 does not exist for encoder self-attention; the model has "
                                         r"2 encoder layer\(s\), expected 0\.\.1"):
        viz.write_figures(maps, "/nonexistent-dir-never-written", layers=[2])
    with pytest.raises(ValueError, match=r"layer: -1 does not exist .* expected 0\.\.1"):
        viz.heatmap_figure(maps, "cross", -1)
    with pytest.raises(ValueError, match=r"head: 2 does not exist; the model has 2 head\(s\), expected 0\.\.1"):
        maps.matrix("dec", 0, 2)
    with pytest.raises(ValueError, match=r"kind: unknown attention kind 'self'; expected one of enc, dec, cross"):
        maps.labels("self")


def test_text_that_tokenises_to_nothing(tiny_run):
    model, cfg, vocabs, _ = load_trained(tiny_run / "best.pt")
    for text in ("", "   \t "):
        with pytest.raises(ValueError, match=r"text: .* tokenises to nothing; expected a sentence with at least "
                                             r"one token"):
            viz.text_attention(model, cfg, vocabs, text)


def test_run_dir_without_snapshots(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"run dir: .*run' has no attention snapshots .*viz\.example"):
        viz.write_animation(tmp_path / "run", tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


def test_animation_rejects_a_bad_layer_or_head(tiny_run, tmp_path):
    with pytest.raises(ValueError, match=r"layer: 1 does not exist .* 1 decoder layer\(s\), expected 0\.\.0"):
        viz.write_animation(tiny_run, tmp_path / "x.gif", layer=1)
    with pytest.raises(ValueError, match=r"head: 5 does not exist; the model has 2 head\(s\), expected 0\.\.1"):
        viz.write_animation(tiny_run, tmp_path / "x.gif", head=5)


def test_cli_reports_errors_without_a_trace(tiny_run, tmp_path, capsys):
    ckpt = str(tiny_run / "best.pt")
    cases = [
        (["--checkpoint", ckpt, "--example", "99", "--out", str(tmp_path)], r"example: index 99 is out of range"),
        (["--checkpoint", ckpt, "--example", "0", "--layer", "3", "--out", str(tmp_path)], r"layer: 3 does not exist"),
        (["--checkpoint", ckpt, "--text", " ", "--out", str(tmp_path)], r"tokenises to nothing"),
        (["--animate", str(tmp_path), "--out", str(tmp_path / "a.gif")], r"has no attention snapshots"),
        (["--checkpoint", str(tmp_path / "none.pt"), "--example", "0", "--out", str(tmp_path)], r"no such checkpoint"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            visualize(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert re.search(r"^error: .*" + message, err, re.M), err
        assert "Traceback" not in err
    with pytest.raises(SystemExit):  # --example and --text together: argparse's usage error
        visualize(["--checkpoint", ckpt, "--example", "0", "--text", "a", "--out", str(tmp_path)])
    assert "exactly one of --example N or --text" in capsys.readouterr().err


# --------------------------------------------------------------------------
# 4. the trained copy model attends along the diagonal (slow: trains it)
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_trained_copy_model_attends_to_the_position_it_copies(tmp_path):
    """Target node i (fed y_{i-1}, predicting y_i = x_i) puts its largest
    encoder-decoder weight on source position i, for >= 90% of positions."""
    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs" / "copy.yaml", ["viz.example=0", "viz.every_epoch=true"])
    trainer = Trainer(cfg, tmp_path / "copy", quiet=True)
    trainer.fit()
    model, cfg, vocabs, _ = load_trained(tmp_path / "copy" / "last.pt")
    exp = build_experiment(cfg, vocabs)
    hits = total = 0
    for index in range(200):
        maps = viz.example_attention(model, exp, index)
        cross = maps.weights["cross"]                       # (layers, heads, m, n)
        n = cross.shape[-1]
        rows = torch.arange(n)                              # nodes predicting a copied symbol
        best = cross[-1].mean(0)[rows].argmax(-1)           # last layer, averaged over heads
        hits += int((best == rows).sum())
        total += n
    alignment = hits / total
    print(f"copy alignment: {alignment:.4f} over {total} positions")
    assert alignment >= 0.9
    gif = viz.write_animation(tmp_path / "copy", tmp_path / "copy.gif")
    with Image.open(gif) as im:
        assert im.n_frames == cfg.train.max_epochs
