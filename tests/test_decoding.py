"""Tests of greedy/beam-search decoding, evaluation metrics and translation of raw text.

Decoding is checked against independent references: a naive greedy decoder that
reruns the full model on each prefix, and teacher-forced rescoring of every
returned hypothesis with ``model(batch)``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from transformer_graph.inference import decoding
from transformer_graph.data.batch import make_batch
from transformer_graph.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from transformer_graph.config import config_from_dict, config_to_dict
from transformer_graph.data.datasets import Vocab
from transformer_graph.inference.decoding import beam_search, greedy, length_penalty
from transformer_graph.inference.evaluation import bleu_detok, bleu_tokenized, evaluate_checkpoint, exact_match
from transformer_graph.experiment import build_model, load_trained
from transformer_graph.message_passing import set_engine
from transformer_graph.nn.model import make_model
from transformer_graph.train.trainer import Trainer
from transformer_graph.inference.translate import Translator, TruncationWarning
from transformer_graph.cli import translate as translate_cli

ROOT = Path(__file__).resolve().parents[1]


def translate_main(argv) -> int:
    """``tg-translate argv`` in-process: its exit code, returned or raised (errors, argparse) alike."""
    try:
        return translate_cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


V, SOS, EOS = 14, 2, 3

torch.set_num_threads(1)


def random_model(seed: int, eos_bias: float = 0.0, max_len: int = 64, layers: int = 2):
    """An untrained model in eval mode; ``eos_bias`` shifts how readily it ends a hypothesis."""
    torch.manual_seed(seed)
    model = make_model(V, V, layers=layers, d_model=32, d_ff=64, heads=4, dropout=0.1, max_len=max_len)
    with torch.no_grad():
        model.generator.bias[EOS] += eos_bias
    return model.eval()


def random_sources(seed: int, n: int = 6, max_len: int = 9) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(4, V, (k,), generator=g).tolist() for k in lens]


@torch.no_grad()
def teacher_forced_logprob(model, src: list[int], tokens: list[int], with_eos: bool) -> float:
    """log p(tokens [+ eos] | src) from one full forward pass over the whole target."""
    batch = make_batch([src], [tokens], sos=SOS, eos=EOS)
    logp = model(batch)
    picked = logp[torch.arange(len(tokens) + 1), batch.labels]
    return float(picked.double().sum() if with_eos else picked[:-1].double().sum())


@torch.no_grad()
def naive_greedy(model, src: list[int], max_len: int) -> list[int]:
    """Reference greedy decoder: the whole model on the whole prefix, every step."""
    out: list[int] = []
    while len(out) < max_len:
        batch = make_batch([src], [out], sos=SOS, eos=EOS)
        nxt = int(model(batch)[-1].argmax())
        if nxt == EOS:
            break
        out.append(nxt)
    return out


# --------------------------------------------------------------------------- greedy / beam

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_one_equals_greedy_and_naive_reference(seed, engine):
    model = set_engine(random_model(seed, eos_bias=2.5), engine)
    srcs = random_sources(seed)
    ref = [naive_greedy(model, s, int(1.0 * len(s) + 3)) for s in srcs]
    assert any(len(r) < len(s) + 3 for r, s in zip(ref, srcs))  # some end by <eos>, not the limit
    for incremental in (True, False):
        assert greedy(model, srcs, sos=SOS, eos=EOS, max_len_b=3, incremental=incremental) == ref
        for alpha in (0.0, 0.6):
            hyps = beam_search(model, srcs, sos=SOS, eos=EOS, beam=1, alpha=alpha, max_len_b=3,
                               incremental=incremental)
            assert [h[0].tokens for h in hyps] == ref


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("beam", [1, 4])
def test_incremental_equals_full_recomputation(seed, beam, engine):
    model = set_engine(random_model(seed, eos_bias=1.5 if seed % 2 else 0.0, layers=1 + seed % 2), engine)
    srcs = random_sources(10 + seed)
    kw = dict(sos=SOS, eos=EOS, beam=beam, n_best=beam, max_len_b=4)
    inc = beam_search(model, srcs, incremental=True, **kw)
    full = beam_search(model, srcs, incremental=False, **kw)
    for a, b in zip(inc, full):
        assert len(a) == len(b) == beam
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.finished for h in a] == [h.finished for h in b]
        for ha, hb in zip(a, b):
            assert ha.score == pytest.approx(hb.score, abs=1e-5)
            assert ha.logprob == pytest.approx(hb.logprob, abs=1e-5)


@pytest.mark.parametrize("incremental", [True, False])
def test_finished_hypothesis_is_never_extended(monkeypatch, incremental):
    """Watch every token fed to the decoder: <eos> never is, although many hypotheses end
    with it while other beams of their sentence go on."""
    state_cls = decoding._IncrementalState if incremental else decoding._RecomputeState
    fed: list[list[int]] = []
    real_step = state_cls.step

    def step(self, tokens, t, sent):
        fed.append(tokens.tolist())
        return real_step(self, tokens, t, sent)

    monkeypatch.setattr(state_cls, "step", step)
    model = random_model(5, eos_bias=3.0)
    srcs = random_sources(5, n=5)
    hyps = beam_search(model, srcs, sos=SOS, eos=EOS, beam=4, n_best=4, max_len_b=6, incremental=incremental)
    assert fed and all(EOS not in step_tokens for step_tokens in fed)
    assert fed[0] == [SOS] * len(srcs)
    lengths = {len(h.tokens) for hs in hyps for h in hs if h.finished}
    assert len(lengths) > 1  # hypotheses finished at different steps
    for hs in hyps:
        for h in hs:
            assert EOS not in h.tokens
    # A sentence stops once it has `beam` finished hypotheses: fewer hypotheses are fed later on.
    assert len(fed[-1]) < 4 * len(srcs)


@pytest.mark.parametrize("beam", [1, 3])
def test_sentence_alone_decodes_as_inside_a_batch(beam):
    model = random_model(7, eos_bias=1.0)
    srcs = random_sources(7, n=7)
    together = beam_search(model, srcs, sos=SOS, eos=EOS, beam=beam, n_best=beam)
    for i, src in enumerate(srcs):
        (alone,) = beam_search(model, [src], sos=SOS, eos=EOS, beam=beam, n_best=beam)
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[i]], abs=1e-5)
    # And the order of the batch does not matter either.
    reversed_ = beam_search(model, srcs[::-1], sos=SOS, eos=EOS, beam=beam, n_best=beam)[::-1]
    assert [[h.tokens for h in hs] for hs in reversed_] == [[h.tokens for h in hs] for hs in together]


def test_length_penalty_formula_and_ranking():
    assert length_penalty(1, 0.0) == 1.0
    assert length_penalty(7, 0.6) == pytest.approx(2.0 ** 0.6)
    assert length_penalty(torch.tensor(13.0), 1.0) == pytest.approx(3.0)
    model = random_model(3, eos_bias=2.0)
    srcs = random_sources(3, n=4)
    by_alpha = {}
    for alpha in (0.0, 0.6, 2.0):
        hyps = beam_search(model, srcs, sos=SOS, eos=EOS, beam=4, n_best=4, alpha=alpha, max_len_b=5)
        for hs in hyps:
            for h in hs:  # length counts the generated tokens plus <eos>
                assert h.score == pytest.approx(h.logprob / ((5 + len(h.tokens) + 1) / 6) ** alpha, rel=1e-12)
            assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
        by_alpha[alpha] = hyps
    # alpha only re-ranks: which hypotheses finish does not depend on it.
    for a, b in zip(by_alpha[0.0], by_alpha[2.0]):
        assert sorted((tuple(h.tokens), round(h.logprob, 9)) for h in a) == \
            sorted((tuple(h.tokens), round(h.logprob, 9)) for h in b)
    longest = lambda hyps: sum(len(hs[0].tokens) for hs in hyps)  # noqa: E731
    assert longest(by_alpha[2.0]) >= longest(by_alpha[0.0])


@pytest.mark.parametrize("a,b,table,expected", [
    (1.0, 10, 64, lambda n: n + 10), (1.5, 0, 64, lambda n: int(1.5 * n)), (0.0, 0, 64, lambda n: 1),
    (1.0, 10, 12, lambda n: min(n + 10, 11)),  # the positional table (<sos> + tokens) is the cap
])
@pytest.mark.parametrize("beam", [1, 3])
def test_max_length_is_respected(a, b, table, expected, beam):
    model = random_model(4, eos_bias=-1e4, max_len=table)  # never ends by itself
    srcs = [[5], [6, 7, 8], [5, 6, 7, 8, 9, 10, 11, 12]]
    for incremental in (True, False):
        hyps = beam_search(model, srcs, sos=SOS, eos=EOS, beam=beam, n_best=beam, max_len_a=a, max_len_b=b,
                           incremental=incremental)
        for src, hs in zip(srcs, hyps):
            assert len(hs) == beam
            for h in hs:
                assert len(h.tokens) == max(1, expected(len(src))) and not h.finished


@pytest.mark.parametrize("which", ["random", "trained"])
@pytest.mark.parametrize("beam", [1, 4])
def test_scores_equal_teacher_forced_logprob(beam, which, copy_run):
    """Every returned hypothesis's log-prob is what one teacher-forced forward pass gives its
    tokens (+ <eos> when it finished), for an eos-prone random model and a trained copy model."""
    if which == "random":
        model, srcs = random_model(5, eos_bias=3.0), random_sources(5, n=5)
    else:
        model, cfg, (src_vocab, _), _ = load_trained(copy_run / "best.pt")
        srcs = [src_vocab.encode(list(w)) for w in ("abcab", "hgfedcba", "a", "cafe", "bead" * 3)]
    hyps = beam_search(model, srcs, sos=SOS, eos=EOS, beam=beam, n_best=beam, max_len_b=3, alpha=0.6)
    kinds = set()
    for src, hs in zip(srcs, hyps):
        for h in hs:
            lp = teacher_forced_logprob(model, src, h.tokens, with_eos=h.finished)
            assert h.logprob == pytest.approx(lp, abs=2e-5)
            kinds.add((h.finished, len(h.tokens) > 0))
    assert (True, True) in kinds  # non-empty finished hypotheses were checked


def test_decoding_bad_input():
    model = random_model(0)
    with pytest.raises(ValueError, match="beam"):
        beam_search(model, [[5]], sos=SOS, eos=EOS, beam=0)
    with pytest.raises(ValueError, match=r"src_seqs\[1\]"):
        beam_search(model, [[5], []], sos=SOS, eos=EOS)
    assert beam_search(model, [], sos=SOS, eos=EOS) == []


# --------------------------------------------------------------------------- metrics

def test_bleu_and_exact_match():
    hyps = [["a", "man", "rides", "a", "horse", "."], ["two", "dogs", "play", "in", "the", "snow", "."]]
    assert bleu_tokenized(hyps, hyps).score == pytest.approx(100.0)
    assert bleu_tokenized([hyps[0], ["nothing", "alike", "here", "at", "all"]], hyps).score < 60
    score, signature = bleu_detok(["A man rides a horse."], ["A man rides a horse."])
    assert score.score == pytest.approx(100.0) and "nrefs:1" in signature and "tok:13a" in signature
    with pytest.raises(ValueError, match="got 1 hypotheses but 2 references"):
        bleu_tokenized(hyps[:1], hyps)
    with pytest.raises(ValueError, match="got 2 hypotheses but 1 references"):
        bleu_detok(["a", "b"], ["a"])
    assert exact_match([[1, 2], [3], []], [[1, 2], [3, 4], []]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="hypotheses"):
        exact_match([[1]], [])


# --------------------------------------------------------------------------- checkpoints

def copy_config(**data) -> dict:
    return {
        "model": dict(layers=1, d_model=32, d_ff=64, heads=1, dropout=0.0, max_len=24),
        "data": dict(task="copy", train_size=256, valid_size=12, test_size=12, batch_size=16, length_mean=5.0,
                     length_std=1.0, alphabet="abcdefgh", max_src_len=12, max_tgt_len=12, **data),
        "optim": dict(warmup=50),
        "train": dict(max_epochs=25, seed=3, threads=1),
        "eval": dict(max_len_a=1.0, max_len_b=2, beam=2),
    }


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory) -> Path:
    """A tiny copy run trained until it copies most short strings (about 5 s; 15 epochs were borderline
    on torch 2.13, whose kernels take another float path); tests read its best.pt."""
    run = tmp_path_factory.mktemp("copy") / "run"
    Trainer(config_from_dict(copy_config(), source="test"), run, quiet=True).fit()
    return run


def test_evaluate_checkpoint_writes_hypotheses_and_metrics(copy_run, tmp_path):
    ckpt = copy_run / "best.pt"
    result = evaluate_checkpoint(ckpt, split="test", beam=1, hyp_file=tmp_path / "hyp.txt")
    m = result["metrics"]
    assert result["hypotheses"] == str(tmp_path / "hyp.txt")
    lines = (tmp_path / "hyp.txt").read_text().splitlines()
    assert len(lines) == 12
    model, cfg, (src_vocab, tgt_vocab), _ = load_trained(ckpt)
    from transformer_graph.experiment import build_experiment
    test = build_experiment(cfg, (src_vocab, tgt_vocab)).tokens["test"]
    refs = [" ".join(t) for _, t in test]
    assert m["exact_match"] == pytest.approx(sum(h == r for h, r in zip(lines, refs)) / 12)
    assert 0.8 < m["acc"] <= 1 and m["loss"] > 0 and m["beam"] == 1 and m["split"] == "test"
    assert m["exact_match"] >= 0.25  # it learned to copy
    # The written lines are the greedy decodes of the test sources.
    ids = greedy(model, [src_vocab.encode(s) for s, _ in test], sos=SOS, eos=EOS, max_len_a=1.0, max_len_b=2)
    assert lines == [" ".join(tgt_vocab.decode(h)) for h in ids]
    # Default file name beside the checkpoint; beam from the run's eval config; --limit.
    default = evaluate_checkpoint(ckpt, split="valid", limit=5, incremental=False)
    assert default["metrics"]["beam"] == 2
    assert Path(default["hypotheses"]) == copy_run / "best.valid.beam2.hyp.txt"
    assert len(Path(default["hypotheses"]).read_text().splitlines()) == 5


def test_checkpoint_of_another_vocabulary_is_a_clear_error(copy_run, tmp_path):
    ckpt = load_checkpoint(copy_run / "best.pt")
    for side in ("src_vocab", "tgt_vocab"):
        ckpt[side] = {"specials": ckpt[side]["specials"], "itos": ckpt[side]["itos"] + ["x", "y", "z"]}
    other = tmp_path / "other.pt"
    save_checkpoint(other, **{k: v for k, v in ckpt.items() if k != "format"})
    for call in (lambda: load_trained(other), lambda: evaluate_checkpoint(other),
                 lambda: Translator.from_checkpoint(other)):
        with pytest.raises(CheckpointError, match="weights do not fit the saved config/vocabulary") as err:
            call()
        assert str(other) in str(err.value)
    # The weights of a different model shape (another task's config) do not fit either.
    ckpt = load_checkpoint(copy_run / "best.pt")
    ckpt["config"]["model"]["d_model"] = 64
    save_checkpoint(other, **{k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_trained(other)


# --------------------------------------------------------------------------- translation

def test_translator_on_copy_checkpoint(copy_run):
    tr = Translator.from_checkpoint(copy_run / "best.pt", beam=3)
    assert tr.beam == 3 and tr.alpha == 0.6 and tr.max_src_len == 12
    lines = ["a b c d", "", "   ", "h g zz f", "a b c d e f g h a b c d e f g", "b"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = tr.translate(lines)
    assert len(out) == len(lines) and out[1] == "" and out[2] == ""
    assert [str(w.message) for w in caught if w.category is TruncationWarning] == [
        "line 5: 15 tokens, truncated to the model's limit of 12"]
    # Each line is the beam-search output of its (encoded, truncated) tokens; zz is <unk>.
    v = tr.src_vocab
    assert tr.encode(["h", "zz", "<eos>"]) == [v.stoi["h"], v.unk, v.unk]
    srcs = [tr.encode(lines[0].split()), tr.encode(lines[3].split()), tr.encode(lines[4].split()[:12]),
            tr.encode(["b"])]
    hyps = beam_search(tr.model, srcs, sos=SOS, eos=EOS, beam=3, alpha=0.6, max_len_a=1.0, max_len_b=2)
    assert [out[0], out[3], out[4], out[5]] == [" ".join(tr.tgt_vocab.decode(h[0].tokens)) for h in hyps]
    # Batching does not change anything, nor does the order of the input.
    tr.batch_size = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tr.translate(lines) == out
        assert tr.translate(lines[::-1]) == out[::-1]
    assert tr.translate([]) == [] and tr.translate(["", ""]) == ["", ""]
    # The model learned to copy: most short strings come back unchanged.
    short = ["a b c", "h a", "d e f g", "b b a", "c", "g f e d"]
    assert sum(o == i for o, i in zip(tr.translate(short), short)) >= 3


def test_translate_script_reads_stdin(copy_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    text = "a b c\n\nd e f g h a b c d e f g h\nzz\n"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "translate.py"), "--checkpoint",
                        str(copy_run / "best.pt"), "--beam", "2", "--batch-size", "2"],
                       input=text, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("\n")
    assert len(out) == 5 and out[1] == "" and out[4] == ""  # four lines, the empty one kept
    assert r.stderr == ("warning: line 3: 13 tokens, truncated to the model's limit of 12\n"
                        "warning: line 4: none of its 1 tokens is in the model's source vocabulary, so it reads "
                        "as <unk> only; is it in the language (or alphabet) the model was trained on?\n")
    tr = Translator.from_checkpoint(copy_run / "best.pt", beam=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert out[:4] == tr.translate(text.splitlines())


def test_translate_main_arguments_and_errors(copy_run, capsys, tmp_path):
    assert translate_main(["--checkpoint", str(copy_run / "best.pt"), "a b", "c"]) == 0
    out = capsys.readouterr().out.splitlines()
    tr = Translator.from_checkpoint(copy_run / "best.pt")
    assert out == tr.translate(["a b", "c"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    assert translate_main(["--checkpoint", str(bad), "a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "Traceback" not in err
    assert translate_main(["--checkpoint", str(copy_run / "best.pt"), "--beam", "0", "a"]) == 2
    assert "beam: expected a positive integer, got 0" in capsys.readouterr().err


def test_translator_uses_moses_for_multi30k_checkpoints(tmp_path):
    """A multi30k checkpoint tokenises with Moses (aggressive dashes, no escaping) and detokenises
    the output; words outside the joint vocabulary become <unk>."""
    cfg = config_from_dict({"model": dict(layers=1, d_model=16, d_ff=32, heads=2, share_embeddings=True,
                                          max_len=32),
                            "data": dict(task="multi30k", joint_vocab=True, max_src_len=20),
                            "eval": dict(beam=2, max_len_b=3)}, source="test")
    vocab = Vocab.build([["A", "man", "in", "a", "blue", "@-@", "green", "shirt", ".", "Ein", "Mann", "&"]])
    torch.manual_seed(0)
    model = build_model(cfg.model, len(vocab), len(vocab))
    path = tmp_path / "m30k.pt"
    save_checkpoint(path, model=model.state_dict(), config=config_to_dict(cfg), src_vocab=vocab.to_dict(),
                    tgt_vocab=vocab.to_dict())
    tr = Translator.from_checkpoint(path)
    assert tr.beam == 2 and tr.max_src_len == 20
    tokens = tr.tokenize(["A man in a blue-green shirt & a hat."])[0]
    assert tokens == ["A", "man", "in", "a", "blue", "@-@", "green", "shirt", "&", "a", "hat", "."]
    ids = tr.encode(tokens)
    assert ids[-2] == vocab.unk and ids[4:7] == [vocab.stoi["blue"], vocab.stoi["@-@"], vocab.stoi["green"]]
    assert tr.detokenize(["Ein", "Mann", "in", "blau", "@-@", "grün", "."]) == "Ein Mann in blau-grün."
    out = tr.translate(["A man.", "", "A man in a blue-green shirt."])
    assert out[1] == "" and all(isinstance(o, str) for o in out)
    hyp = beam_search(tr.model, [tr.encode(tr.tokenize(["A man."])[0])], sos=SOS, eos=EOS, beam=2,
                      alpha=0.6, max_len_a=1.0, max_len_b=3)[0][0]
    assert out[0] == tr.detokenize(vocab.decode(hyp.tokens))


# --------------------------------------------------------------------------- a translation task

def _write_parallel(directory: Path, seed: int = 0) -> dict:
    """A toy word-for-word 'translation' task in the parallel-files layout."""
    lexicon = dict(zip("the a man woman dog runs sits on grass red".split(),
                       "der ein mann frau hund läuft sitzt auf gras rot".split()))
    words = list(lexicon)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, n in (("train", 160), ("val", 12), ("test_2016_flickr", 10)):
        src = [" ".join(words[i] for i in torch.randint(0, 10, (int(k),), generator=g).tolist())
               for k in torch.randint(2, 6, (n,), generator=g)]
        tgt = [" ".join(lexicon[w] for w in line.split()) for line in src]
        (directory / f"{prefix}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (directory / f"{prefix}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
        out[prefix] = (src, tgt)
    return out


def test_translation_task_bleu_best_checkpoint_averaging_and_raw_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    texts = _write_parallel(data)
    cfg = config_from_dict({
        "model": dict(layers=1, d_model=32, d_ff=64, heads=2, dropout=0.0, share_embeddings=True, max_len=32),
        "data": dict(task="parallel", path=str(data), joint_vocab=True, batch_size=16),
        "optim": dict(warmup=40),
        "train": dict(max_epochs=4, seed=1, threads=1, average_last=2),
        "eval": dict(bleu=True, beam=2, max_len_b=3),
    }, source="test")
    run = tmp_path / "run"
    trainer = Trainer(cfg, run, quiet=True)
    trainer.fit()
    # Validation BLEU every epoch, and best.pt is the epoch with the best BLEU.
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == "epoch"]
    bleus = [r["valid_bleu"] for r in epochs]
    assert len(bleus) == 4 and all(0.0 <= b <= 100.0 for b in bleus) and max(bleus) > 0
    assert load_checkpoint(run / "best.pt")["progress"]["best_epoch"] == 1 + bleus.index(max(bleus))
    # averaged.pt holds the mean weights of the last two epoch checkpoints.
    avg = load_checkpoint(run / "averaged.pt")
    assert avg["averaged_from"] == ["epoch3.pt", "epoch4.pt"]
    e3, e4 = load_checkpoint(run / "epoch3.pt")["model"], load_checkpoint(run / "epoch4.pt")["model"]
    for k, v in avg["model"].items():
        torch.testing.assert_close(v, (e3[k] + e4[k]) / 2)
    load_trained(run / "averaged.pt")

    # Evaluation on the test split and on any raw parallel files: tokenised BLEU and sacreBLEU.
    res = evaluate_checkpoint(run / "best.pt", split="test")
    m = res["metrics"]
    assert {"bleu_tok", "sacrebleu", "sacrebleu_signature"} <= m.keys() and m["beam"] == 2
    hyps = Path(res["hypotheses"]).read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 10
    assert m["bleu_tok"] == pytest.approx(bleu_tokenized([h.split() for h in hyps],
                                                         [t.split() for t in texts["test_2016_flickr"][1]]).score)
    src_file, ref_file = tmp_path / "x.en", tmp_path / "x.de"
    src_file.write_text("\n".join(texts["val"][0][:5]) + "\n", encoding="utf-8")
    ref_file.write_text("\n".join(texts["val"][1][:5]) + "\n", encoding="utf-8")
    res = evaluate_checkpoint(run / "best.pt", src_file=src_file, ref_file=ref_file,
                              hyp_file=tmp_path / "x.hyp")
    assert res["metrics"]["split"] == str(src_file) and len((tmp_path / "x.hyp").read_text().splitlines()) == 5
    # The raw-file hypotheses are what the translator makes of the same sentences.
    tr = Translator.from_checkpoint(run / "best.pt")
    assert tr.translate(texts["val"][0][:5]) == (tmp_path / "x.hyp").read_text(encoding="utf-8").splitlines()
    ref_file.write_text("\n".join(texts["val"][1][:4]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="got 5 hypotheses but 4 references"):
        evaluate_checkpoint(run / "best.pt", src_file=src_file, ref_file=ref_file)


def test_every_decoder_state_satisfies_the_declared_contract():
    from transformer_graph.graphs import GraphSpec
    from transformer_graph.inference.decoding import (DecoderState, _IncrementalState, _RecomputeState, _Source,
                                                      beam_search)
    from transformer_graph.inference.dense_decoding import DenseKVState, DenseRecomputeState
    from transformer_graph.nn.dense import DenseTransformer

    model = make_model(12, 12, layers=1, d_model=16, d_ff=32, heads=2, dropout=0.0).eval()
    src = [[4, 5, 6], [7, 8]]
    source = _Source(model, src, GraphSpec(), torch.device("cpu"))
    for state in (_IncrementalState(model, source, GraphSpec()), _RecomputeState(model, source, GraphSpec()),
                  DenseRecomputeState(DenseTransformer(model).eval(), src, torch.device("cpu")),
                  DenseKVState(DenseTransformer(model).eval(), src, torch.device("cpu"))):
        assert isinstance(state, DecoderState)
    with pytest.raises(TypeError, match="state_factory.*step"):
        beam_search(model, src, sos=2, eos=3, state_factory=lambda *a: object())


# --------------------------------------------------------------------------- three incremental decoders agree

@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("beam", [1, 3, 5])
def test_incremental_recompute_and_dense_kv_decode_the_same(beam, norm_first):
    """The graph's incremental decoder (preallocated caches, never reordered), the graph's full
    recomputation, and nn.TransformerDecoder's layers with their own key/value caches
    (DenseKVState) and without (DenseRecomputeState): the same tokens, finished flags and
    scores for every returned hypothesis, through the same search."""
    from transformer_graph.inference.dense_decoding import dense_beam_search
    from transformer_graph.nn.dense import DenseTransformer

    torch.manual_seed(beam + 10 * norm_first)
    model = make_model(V, V, layers=2, d_model=32, d_ff=64, heads=4, dropout=0.1, norm_first=norm_first).eval()
    with torch.no_grad():
        model.generator.bias[EOS] += 1.5   # hypotheses end at different steps
    dense = DenseTransformer(model).eval()
    srcs = random_sources(20 + beam, n=7)
    kw = dict(sos=SOS, eos=EOS, beam=beam, n_best=beam, max_len_b=5)
    runs = {"incremental": beam_search(model, srcs, **kw),
            "recompute": beam_search(model, srcs, incremental=False, **kw),
            "dense_kv": dense_beam_search(dense, srcs, kv_cache=True, **kw),
            "dense_recompute": dense_beam_search(dense, srcs, **kw)}
    ref = runs["incremental"]
    assert len({len(h.tokens) for hs in ref for h in hs}) > 1
    for name, hyps in runs.items():
        for a, b in zip(hyps, ref):
            assert [h.tokens for h in a] == [h.tokens for h in b], name
            assert [h.finished for h in a] == [h.finished for h in b], name
            for ha, hb in zip(a, b):
                assert ha.score == pytest.approx(hb.score, abs=1e-5), name
                assert ha.logprob == pytest.approx(hb.logprob, abs=1e-5), name


def test_incremental_states_grow_past_their_capacity_and_match_recompute():
    """States built with room for one hypothesis and one position (or none given) grow as the
    search needs; each step's log-probabilities equal full recomputation's, and the graph
    state's per-hypothesis cache view is each hypothesis's own prefix."""
    from transformer_graph.graphs import GraphSpec
    from transformer_graph.inference.decoding import _IncrementalState, _RecomputeState, _Source
    from transformer_graph.inference.dense_decoding import DenseKVState
    from transformer_graph.nn.dense import DenseTransformer

    model = random_model(11)
    dense = DenseTransformer(model).eval()
    srcs = random_sources(11, n=3)
    spec, cpu = GraphSpec(), torch.device("cpu")
    with torch.no_grad():
        source = _Source(model, srcs, spec, cpu)
        states = [_IncrementalState(model, source, spec, max_hyps=1, max_positions=1),
                  _IncrementalState(model, source, spec), DenseKVState(dense, srcs, cpu, max_hyps=1, max_positions=1)]
        rec = _RecomputeState(model, source, spec)
        g = torch.Generator().manual_seed(0)
        sent, tokens = torch.arange(3), torch.full((3,), SOS)
        for t in range(6):
            ref = rec.step(tokens, t, sent)
            for state in states:
                torch.testing.assert_close(state.step(tokens, t, sent), ref, atol=1e-5, rtol=1e-5)
            keys = states[0].cache[0][0]
            assert keys.shape[:2] == (sent.numel(), t + 1)
            # Reorder as a beam search would: duplicate, drop and permute hypotheses.
            parents = torch.randint(0, sent.numel(), (int(torch.randint(1, 6, (1,), generator=g)),), generator=g)
            parents = parents.sort().values
            for state in (*states, rec):
                state.reorder(parents)
            torch.testing.assert_close(states[0].cache[0][0], keys[parents])
            sent, tokens = sent[parents], torch.randint(4, V, (parents.numel(),), generator=g)
    assert states[0].slots >= 5 and states[0].positions >= 6


def test_row_topk_is_topk():
    from transformer_graph.inference.decoding import _row_topk

    g = torch.Generator().manual_seed(0)
    for vocab in (14, 129, 1000, 14550, 14557):
        x = torch.randn(9, vocab, generator=g).log_softmax(-1)
        for k in (1, 2, 10):
            values, idx = _row_topk(x, k)
            ref_values, ref_idx = x.topk(min(k, vocab), dim=1)
            assert torch.equal(values, ref_values) and torch.equal(idx, ref_idx), (vocab, k)


def test_top_candidates_rank_each_sentence_over_all_its_hypotheses():
    """The batched ranking equals a per-sentence top-k over (hypotheses x vocabulary) float64
    sums, for sentences with equal and with unequal numbers of live hypotheses."""
    from transformer_graph.inference.decoding import _top_candidates

    g = torch.Generator().manual_seed(1)
    for counts, vocab, k in (([3, 3, 3], 50, 6), ([1, 3, 2], 50, 6), ([2, 1], 2, 6), ([1, 1], 3, 4)):
        logp = torch.randn(sum(counts), vocab, generator=g).log_softmax(-1)
        scores = -torch.rand(sum(counts), generator=g, dtype=torch.float64) * 5
        sc, parent, tok, valid = _top_candidates(logp, scores, counts, k)
        start = 0
        for i, c in enumerate(counts):
            cand = (scores[start:start + c, None] + logp[start:start + c].double()).reshape(-1)
            ref_sc, ref_idx = cand.topk(min(k, cand.numel()))
            m = ref_sc.numel()
            assert valid[i].tolist() == [True] * m + [False] * (valid.shape[1] - m)
            assert torch.equal(sc[i, :m], ref_sc)
            assert parent[i, :m].tolist() == (start + ref_idx // vocab).tolist()
            assert tok[i, :m].tolist() == (ref_idx % vocab).tolist()
            start += c
