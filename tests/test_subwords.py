"""Subword vocabularies (SentencePiece), the full BLEU protocol and the decoders' forbidden ids."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from transformer_graph.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from transformer_graph.config import config_from_dict
from transformer_graph.data import subwords
from transformer_graph.data.datasets import DataError, Vocab
from transformer_graph.data.subwords import SubwordModel, cached_model, train_model
from transformer_graph.experiment import build_experiment, graph_spec, load_trained
from transformer_graph.inference.decoding import beam_search, greedy
from transformer_graph.inference.evaluation import bleu_tokenized, evaluate_checkpoint
from transformer_graph.inference.translate import Translator
from transformer_graph.nn.model import make_model
from transformer_graph.train.trainer import Trainer
from transformer_graph.viz.attention import text_attention
from transformer_graph.viz.html import html_for_checkpoint

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

LEXICON = dict(zip("the a man woman dog runs sits on grass red big small".split(),
                   "der ein mann frau hund läuft sitzt auf gras rot groß klein".split()))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test trains into its own cache, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def sentences(n: int = 200, seed: int = 0) -> list[list[str]]:
    g = torch.Generator().manual_seed(seed)
    words = [*LEXICON, *LEXICON.values()]
    return [[words[i] for i in torch.randint(0, len(words), (int(k),), generator=g).tolist()]
            for k in torch.randint(2, 8, (n,), generator=g)]


def write_parallel(directory: Path, seed: int = 0) -> dict:
    """A toy word-for-word 'translation' task in the parallel-files layout."""
    directory.mkdir(parents=True, exist_ok=True)
    words = list(LEXICON)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, n in (("train", 200), ("val", 12), ("test_2016_flickr", 10)):
        src = [" ".join(words[i] for i in torch.randint(0, len(words), (int(k),), generator=g).tolist())
               for k in torch.randint(2, 6, (n,), generator=g)]
        tgt = [" ".join(LEXICON[w] for w in line.split()) for line in src]
        (directory / f"{prefix}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (directory / f"{prefix}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
        out[prefix] = (src, tgt)
    return out


def subword_cfg(data: Path, **data_overrides):
    return config_from_dict({
        "model": dict(layers=1, d_model=32, d_ff=64, heads=2, dropout=0.0, share_embeddings=True, max_len=64),
        "data": {**dict(task="parallel", path=str(data), subwords="bpe", subword_vocab_size=300, batch_size=16),
                 **data_overrides},
        "optim": dict(warmup=40, factor=0.3),
        "train": dict(max_epochs=10, seed=1, threads=1, average_last=2),
        "eval": dict(bleu=True, beam=2, max_len_b=8),
    }, source="test")


# --------------------------------------------------------------------------- the model itself

def test_round_trip_reproduces_the_text_and_no_input_is_unknown():
    model = train_model(sentences(), "bpe", 300)
    vocab = model.vocab()
    assert vocab.itos[:4] == ["<pad>", "<unk>", "<sos>", "<eos>"] and len(vocab) == 4 + len(model) - 1
    for toks in [*sentences(20, seed=5), ["der", "Hund", "läuft"], ["Zoë", "naïve", "日本", "€5"], []]:
        pieces = model.encode(toks)
        assert model.decode(pieces) == toks
        assert vocab.unk not in vocab.encode(pieces)  # unseen characters fall back to bytes, not <unk>
    assert any(p.startswith("<0x") for p in model.encode(["日本"]))
    # batch encoding is the sentence-by-sentence one
    batch = sentences(10, seed=3) + [[]]
    assert model.encode_all(batch) == [model.encode(t) for t in batch]


def test_unigram_models_round_trip_too():
    model = train_model(sentences(), "unigram", 300)
    toks = ["der", "kleine", "Hund"]
    assert model.decode(model.encode(toks)) == toks


def test_cache_is_reused_and_rebuilt_when_its_inputs_change(tmp_path, monkeypatch):
    calls = []
    real = subwords.train_model
    monkeypatch.setattr(subwords, "train_model", lambda *a: calls.append(a) or real(*a))
    text = sentences()
    first = cached_model(text, "bpe", 300, tmp_path)
    again = cached_model(text, "bpe", 300, tmp_path)
    assert len(calls) == 1 and again.proto == first.proto
    cached_model(text[:-1], "bpe", 300, tmp_path)          # other text
    cached_model(text, "bpe", 310, tmp_path)               # other size
    cached_model(text, "unigram", 300, tmp_path)           # other kind
    assert len(calls) == 4
    for f in tmp_path.glob("*.model"):                     # a damaged cache is retrained, with a warning
        f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable subword cache"):
        assert cached_model(text, "bpe", 300, tmp_path).proto == first.proto
    assert len(calls) == 5


def test_bad_models_and_sizes_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"data.subword_vocab_size: 5000 is more pieces than the training text"):
        train_model(sentences(50), "bpe", 5000)
    with pytest.raises(DataError, match="does not exist"):
        SubwordModel.from_file(tmp_path / "nope.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        SubwordModel.from_file(tmp_path / "bad.model")
    with pytest.raises(DataError, match="another run"):
        train_model(sentences(), "bpe", 300).check_vocab(train_model(sentences(), "bpe", 320).vocab(), "x")


# --------------------------------------------------------------------------- decoding never emits specials

def biased_model(seed: int):
    """An untrained model that prefers <unk>, <pad> and <sos> above every other id."""
    torch.manual_seed(seed)
    model = make_model(12, 12, layers=1, d_model=32, d_ff=64, heads=4, dropout=0.0, max_len=64)
    with torch.no_grad():
        model.generator.bias[[Vocab.pad, Vocab.unk, Vocab.sos]] += 50.0
    return model.eval()


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("beam", [1, 3])
def test_specials_are_never_decoded(beam, incremental):
    model = biased_model(0)
    srcs = [[4, 5, 6], [7, 8], [9, 10, 11, 4]]
    hyps = beam_search(model, srcs, sos=Vocab.sos, eos=Vocab.eos, beam=beam, max_len_b=6, incremental=incremental,
                       n_best=beam)
    tokens = [t for per in hyps for h in per for t in h.tokens]
    assert tokens and not {Vocab.pad, Vocab.unk, Vocab.sos} & set(tokens)
    # the test can fail: allowed, the biased model emits them at once
    free = beam_search(model, srcs, sos=Vocab.sos, eos=Vocab.eos, beam=beam, max_len_b=6, incremental=incremental,
                       forbid=())
    assert {Vocab.pad, Vocab.unk, Vocab.sos} & {t for per in free for h in per for t in h.tokens}
    assert not {Vocab.pad, Vocab.unk, Vocab.sos} & {t for g in greedy(model, srcs, sos=Vocab.sos, eos=Vocab.eos,
                                                                       incremental=incremental) for t in g}


# --------------------------------------------------------------------------- the BLEU protocol

def test_lowercased_bleu_equals_sacrebleus_own_lowercase_option(tmp_path):
    hyp = ["Ein Mann fährt Fahrrad .", "zwei HUNDE spielen im Schnee .", "Eine Frau liest ein Buch ."]
    ref = ["Ein mann fährt ein Fahrrad .", "Zwei Hunde spielen im Schnee .", "Eine Frau liest ein Buch ."]
    (tmp_path / "hyp.txt").write_text("\n".join(hyp) + "\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("\n".join(ref) + "\n", encoding="utf-8")
    ours = bleu_tokenized([h.split() for h in hyp], [r.split() for r in ref], lowercase=True).score
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
                          "-lc", "-tok", "none", "-b", "-w", "6"], capture_output=True, text=True, check=True)
    assert ours == pytest.approx(float(cli.stdout.strip()), abs=1e-6)
    cased = bleu_tokenized([h.split() for h in hyp], [r.split() for r in ref]).score
    assert ours > cased  # the files differ in case only where lowercasing helps


# --------------------------------------------------------------------------- end to end

def test_tiny_subword_model_trains_evaluates_translates_and_resumes(tmp_path):
    data = tmp_path / "data"
    texts = write_parallel(data)
    run = tmp_path / "run"
    cfg = subword_cfg(data)
    Trainer(cfg, run, quiet=True).fit()
    assert (run / "subwords.model").is_file()
    ckpt = load_checkpoint(run / "best.pt")
    assert SubwordModel.from_tensor(ckpt["subwords"]).proto == (run / "subwords.model").read_bytes()
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == "epoch"]
    assert {"valid_bleu", "valid_bleu_lc", "valid_chrf", "valid_sacrebleu"} <= epochs[-1].keys()

    res = evaluate_checkpoint(run / "averaged.pt", split="test")
    m = res["metrics"]
    assert {"bleu_tok", "bleu_tok_lc", "sacrebleu", "chrf", "chrf_signature"} <= m.keys()
    assert m["unk_in_output"] == 0 and m["bleu_tok"] > 30  # a word-for-word task: learnt
    hyps = Path(res["hypotheses"]).read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 10 and not any("▁" in h or "<unk>" in h for h in hyps)  # joined back into words

    # raw gzip files (the test-2017 sets come so): the same sentences give the same hypotheses
    src_gz, ref_gz = tmp_path / "t.en.gz", tmp_path / "t.de.gz"
    src_gz.write_bytes(gzip.compress(("\n".join(texts["test_2016_flickr"][0]) + "\n").encode()))
    ref_gz.write_bytes(gzip.compress(("\n".join(texts["test_2016_flickr"][1]) + "\n").encode()))
    res_gz = evaluate_checkpoint(run / "averaged.pt", src_file=src_gz, ref_file=ref_gz, hyp_file=tmp_path / "gz.hyp")
    assert (tmp_path / "gz.hyp").read_text(encoding="utf-8").splitlines() == hyps
    assert res_gz["metrics"]["bleu_tok"] == pytest.approx(m["bleu_tok"])

    tr = Translator.from_checkpoint(run / "averaged.pt")
    assert tr.text.subwords is not None
    out = tr.translate(["the big dog", "the Ümlaut dog", ""])
    assert out[2] == "" and all("<unk>" not in o and "▁" not in o for o in out)
    assert "hund" in out[0]
    # the experiment the checkpoint rebuilds encodes with the checkpoint's own model, not the cache's
    model, cfg2, vocabs, ck = load_trained(run / "best.pt")
    exp = build_experiment(cfg2, vocabs, SubwordModel.from_tensor(ck["subwords"]))
    assert exp.text.words(exp.tokens["test"][0][1]) == texts["test_2016_flickr"][1][0].split()

    # the pictures: pieces on the axes, the words they spell beside them
    maps = text_attention(model, cfg2, vocabs, "the big dog", graph_spec(cfg2.model), tr.text)
    assert maps.src_tokens == tr.text.tokenize(["the big dog"], "en")[0] and maps.src_tokens[0].startswith("▁")
    page = html_for_checkpoint(run / "averaged.pt", tmp_path / "p.html", text="the big dog").read_text()
    greedy_text = tr.text.detokenize(maps.tgt_out_tokens[:-1])   # the page shows the greedy output, joined
    assert "model output (text)" in page and "▁" not in greedy_text
    assert json.dumps(greedy_text, ensure_ascii=False)[1:-1] in page

    # resume: continues with the checkpoint's model (one more epoch)
    cfg_more = subword_cfg(data)
    cfg_more.train.max_epochs = 11
    Trainer(cfg_more, run, resume=True, quiet=True).fit()
    assert load_checkpoint(run / "last.pt")["progress"]["epoch"] == 11


def test_subword_bad_input_is_a_clear_error_before_any_work(tmp_path):
    data = tmp_path / "data"
    write_parallel(data)
    with pytest.raises(DataError, match=r"data.subword_model: SentencePiece model .*nope.model.* does not exist"):
        build_experiment(subword_cfg(data, subword_model=str(tmp_path / "nope.model")))
    (tmp_path / "bad.model").write_bytes(b"\x00junk")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        build_experiment(subword_cfg(data, subword_model=str(tmp_path / "bad.model")))
    word_cfg = subword_cfg(data, subwords="none", subword_model=str(tmp_path / "bad.model"))
    with pytest.raises(DataError, match="data.subwords is 'none'"):
        build_experiment(word_cfg)
    with pytest.raises(DataError, match="more pieces than the training text supports"):
        build_experiment(subword_cfg(data, subword_vocab_size=20000))


def test_checkpoints_whose_subwords_do_not_fit_are_clear_errors(tmp_path):
    data = tmp_path / "data"
    write_parallel(data)
    runs = {}
    for size in (300, 320):
        cfg = subword_cfg(data, subword_vocab_size=size)
        cfg.train.max_epochs = 1
        runs[size] = tmp_path / f"run{size}"
        Trainer(cfg, runs[size], quiet=True).fit()
    # a model from another run inside the checkpoint
    ckpt = load_checkpoint(runs[300] / "last.pt")
    ckpt["subwords"] = load_checkpoint(runs[320] / "last.pt")["subwords"]
    save_checkpoint(tmp_path / "swapped.pt", **ckpt)
    with pytest.raises(CheckpointError, match="another run"):
        load_trained(tmp_path / "swapped.pt")
    # a subword checkpoint read as word-level (its config altered), and one without its model
    ckpt = load_checkpoint(runs[300] / "last.pt")
    ckpt["config"]["data"]["subwords"] = "none"
    save_checkpoint(tmp_path / "as_words.pt", **ckpt)
    with pytest.raises(CheckpointError, match="data.subwords: none"):
        load_trained(tmp_path / "as_words.pt")
    ckpt = load_checkpoint(runs[300] / "last.pt")
    del ckpt["subwords"]
    save_checkpoint(tmp_path / "no_model.pt", **ckpt)
    with pytest.raises(CheckpointError, match="has no SentencePiece model"):
        load_trained(tmp_path / "no_model.pt")
    # resuming a subword run with a word-level config: the resume check names the key
    cfg = subword_cfg(data, subwords="none")
    with pytest.raises(Exception, match="data.subwords"):
        Trainer(cfg, runs[300], resume=True, quiet=True)


def test_train_command_reports_a_missing_model_file_as_one_error_line(tmp_path):
    data = tmp_path / "data"
    write_parallel(data)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{task: parallel, path: {data}, subwords: bpe, subword_model: {tmp_path / 'x.model'}}}\n"
                   "train: {max_epochs: 1}\n", encoding="utf-8")
    with warnings.catch_warnings():
        r = subprocess.run([sys.executable, "-m", "transformer_graph.cli.train", "--config", str(cfg),
                            "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
                           env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.subword_model") and "x.model" in lines[0]
    assert not (tmp_path / "run").exists()  # failed before creating anything


def test_evaluate_masks_unk_unless_allowed(tmp_path, monkeypatch):
    from transformer_graph.inference import evaluation
    data = tmp_path / "data"
    write_parallel(data)
    cfg = subword_cfg(data, subwords="none")
    cfg.train.max_epochs = 1
    Trainer(cfg, tmp_path / "run", quiet=True).fit()
    seen = []
    real = evaluation.decode_dataset
    monkeypatch.setattr(evaluation, "decode_dataset", lambda *a, **k: seen.append(k["forbid"]) or real(*a, **k))
    evaluate_checkpoint(tmp_path / "run" / "last.pt", limit=2)
    evaluate_checkpoint(tmp_path / "run" / "last.pt", limit=2, allow_unk=True, hyp_file=tmp_path / "u.txt")
    assert seen == [None, (Vocab.pad, Vocab.sos)]  # None: the decoder's default, <pad> <unk> <sos> masked


def test_multi30k_lowercase_applies_to_its_moses_tokens(monkeypatch):
    from transformer_graph import experiment
    from transformer_graph.config import DataConfig
    from transformer_graph.data.text import task_tokenize
    data = DataConfig(task="multi30k", lowercase=True)
    assert task_tokenize(data, ["A Man in a Blue-Green shirt."], "en")[0] == \
        ["a", "man", "in", "a", "blue", "@-@", "green", "shirt", "."]
    assert task_tokenize(DataConfig(task="multi30k"), ["A Man."], "en")[0] == ["A", "Man", "."]
    fake = {"train": [(["A", "Dog"], ["Ein", "Hund"])], "valid": [], "test": []}
    monkeypatch.setattr(experiment, "load_multi30k", lambda *a, **k: fake)
    assert experiment.load_token_splits(data)["train"] == [(["a", "dog"], ["ein", "hund"])]
    assert experiment.load_token_splits(DataConfig(task="multi30k"))["train"] == fake["train"]
