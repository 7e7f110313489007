"""Tests of the training loop, checkpoints, loss, schedule and the train/evaluate scripts.

Everything runs tiny copy-task models (d_model 32, one layer, a few hundred
sentences at most) so the whole file takes seconds on one CPU thread.
"""
from __future__ import annotations

import json
import pickle
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from transformer_graph.checkpoint import (CheckpointError, atomic_save, load_checkpoint,
                                          save_checkpoint)
from transformer_graph.config import config_from_dict, load_config
from transformer_graph.experiment import load_trained
from transformer_graph.nn import loss as loss_module
from transformer_graph.nn.loss import label_smoothed_loss, label_smoothed_loss_from_logits, token_correct
from transformer_graph.train.trainer import Trainer, TrainingError, noam_lambda

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


def tiny(**overrides) -> dict:
    """A raw config dict for a tiny copy run; ``overrides`` maps 'section.key' to values."""
    raw = {
        "model": dict(layers=1, d_model=32, d_ff=64, heads=2, dropout=0.1, share_embeddings=True, max_len=48),
        "data": dict(task="copy", train_size=96, valid_size=16, test_size=16, batch_size=16,
                     length_mean=6.0, length_std=2.0, alphabet="abcdefgh"),
        "optim": dict(factor=1.0, warmup=20),
        "train": dict(max_epochs=2, seed=7, threads=1, log_every=2),
        "eval": dict(max_len_a=1.0, max_len_b=2),
    }
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
    return raw


def cfg_of(**overrides):
    return config_from_dict(tiny(**overrides), source="test")


def params(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


# --------------------------------------------------------------------------- learning

def test_tiny_model_overfits_tiny_copy_set(tmp_path):
    """Loss on a 64-sentence copy set falls at least 3x within a few seconds of training, and
    far below the unigram entropy: the model really learns to copy, not just letter counts."""
    cfg = cfg_of(**{"data.train_size": 64, "data.length_std": 1.0, "model.dropout": 0.0, "model.heads": 1,
                    "model.share_embeddings": False, "optim.warmup": 50, "train.max_epochs": 30,
                    "data.valid_size": 8, "eval.exact_match": False})
    tr = Trainer(cfg, tmp_path / "run", quiet=True)
    summary = tr.fit()
    epochs = records(tmp_path / "run", "epoch")
    assert len(epochs) == 30 and summary["epochs"] == 30
    first, last = epochs[0]["train_loss"], epochs[-1]["train_loss"]
    assert last < first / 3, (first, last)
    assert last < 0.3 * math.log(len(cfg.data.alphabet) + 1), (first, last)
    # The checkpoint evaluates to the same low loss: what was trained is what was saved.
    model, *_ = load_trained(tmp_path / "run" / "last.pt")
    train = tr.exp.splits["train"]
    from transformer_graph.inference.evaluation import evaluate_loss
    m = evaluate_loss(model, train, tr.exp.spec)
    assert m["loss"] < first / 3


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("stop_at", [4, 6, 8], ids=["mid-epoch", "epoch-boundary", "mid-epoch-2"])
def test_resume_equals_uninterrupted_run(tmp_path, stop_at):
    """Stop after ``stop_at`` steps (6 batches per epoch), resume: same parameters, same
    optimizer state and the same logged epoch metrics as one uninterrupted run (dropout on)."""
    cfg = cfg_of(**{"train.max_epochs": 2})
    assert cfg.model.dropout > 0
    full = Trainer(cfg, tmp_path / "full", quiet=True)
    assert len(full.batcher.batches(0)) == 6
    full.fit()

    first = Trainer(cfg_of(**{"train.max_steps": stop_at}), tmp_path / "cut", quiet=True)
    s1 = first.fit()
    assert s1["stopped_by"] == f"max_steps={stop_at}" and s1["steps"] == stop_at
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert ckpt["progress"]["step"] == stop_at
    assert (ckpt["progress"]["epoch"], ckpt["progress"]["batch_in_epoch"]) == divmod(stop_at, 6)
    del first

    resumed = Trainer(cfg_of(**{"train.max_steps": 100}), tmp_path / "cut", resume=True, quiet=True)
    s2 = resumed.fit()
    assert s2["steps"] == full.progress.step == 12
    a, b = params(full), params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a, opt_b = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in opt_a:
        assert torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"])
    assert full.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()
    # The epoch records (train loss over the whole epoch, validation) match too.
    keys = ("train_loss", "train_acc", "valid_loss", "valid_acc", "valid_exact_match")
    ep_full, ep_cut = records(tmp_path / "full", "epoch"), records(tmp_path / "cut", "epoch")
    assert [r["epoch"] for r in ep_cut] == [0, 1]
    for ra, rb in zip(ep_full, ep_cut):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-12, abs=1e-12), k


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="last.pt"):
        Trainer(cfg_of(), tmp_path / "nothing", resume=True, quiet=True)


# --------------------------------------------------------------------------- run directory

def test_run_directory_contents(tmp_path):
    run = tmp_path / "run"
    cfg = cfg_of()
    summary = Trainer(cfg, run, quiet=True).fit()
    assert summary["stopped_by"] == "max_epochs=2" and summary["epochs"] == 2
    for name in ("config.yaml", "vocab.src.json", "vocab.tgt.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*"))
    # The effective config reloads to the very same config.
    assert load_config(run / "config.yaml") == cfg
    # metrics.jsonl: one record per epoch with train and validation metrics, a summary at the end.
    epochs = records(run, "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1]
    for r in epochs:
        for k in ("train_loss", "train_acc", "train_tokens_per_s", "valid_loss", "valid_acc",
                  "valid_exact_match", "valid_ppl"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), k
    assert records(run, "summary")[-1]["steps"] == summary["steps"] == 12
    assert len(records(run, "train_step")) == 6  # log_every 2, 12 steps
    # TensorBoard holds the same scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"epoch/train_loss", "epoch/valid_acc", "train_step/loss", "train_step/lr"} <= set(tags)
    logged = [e.value for e in acc.Scalars("epoch/valid_acc")]
    assert logged == pytest.approx([r["valid_acc"] for r in epochs], rel=1e-6)
    # best.pt is the epoch with the best validation score.
    best = load_checkpoint(run / "best.pt")
    scores = [r["valid_score"] for r in epochs]
    assert best["progress"]["best_epoch"] == 1 + scores.index(max(scores))


def test_max_time_stops_and_saves(tmp_path):
    run = tmp_path / "run"
    summary = Trainer(cfg_of(**{"train.max_time": 1e-6, "train.max_epochs": 50}), run, quiet=True).fit()
    assert summary["stopped_by"].startswith("max_time=")
    assert summary["steps"] == 1 and summary["epochs"] == 0
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["progress"]["step"] == 1 and ckpt["progress"]["batch_in_epoch"] == 1


def test_lr_follows_noam_schedule_during_training(tmp_path):
    tr = Trainer(cfg_of(**{"train.max_steps": 5}), tmp_path / "run", quiet=True)
    tr.fit()
    expected = noam_lambda(32, 1.0, 20)(5)
    assert tr.scheduler.get_last_lr()[0] == pytest.approx(expected, rel=1e-12)
    assert tr.optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    assert tr.optimizer.param_groups[0]["eps"] == 1e-9


# --------------------------------------------------------------------------- gradient accumulation

def _grads(model) -> dict:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_equals_double_batch_for_equal_lengths(tmp_path):
    """All sentences of one length: accum_steps=2 over batches b1, b2 takes the same step as
    accum_steps=1 over b1+b2 (the loss is a per-batch token mean, averaged over the group)."""
    over = {"model.dropout": 0.0, "data.length_std": 0.0}
    a = Trainer(cfg_of(**over, **{"optim.accum_steps": 2}), tmp_path / "a", quiet=True)
    b = Trainer(cfg_of(**over), tmp_path / "b", quiet=True)
    for k, v in params(a).items():
        assert torch.equal(v, params(b)[k])
    train, pad = a.exp.splits["train"], a.exp.tgt_vocab.pad
    assert len(set(train.lengths)) == 1
    b1, b2 = list(range(0, 8)), list(range(8, 16))
    sums_a = {"loss": 0.0, "nll": 0.0, "correct": 0, "tokens": 0, "nodes": 0}
    sums_b = dict(sums_a)
    loss_a = a.train_step(train, [b1, b2], pad, sums_a)
    loss_b = b.train_step(train, [b1 + b2], pad, sums_b)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    ga, gb = _grads(a.model), _grads(b.model)
    for k in ga:  # (parameters are not compared: Adam's first step is ~sign(grad), which float
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)  # noise flips near 0)
    assert a.progress.step == b.progress.step == 0  # train_step alone does not advance the run
    assert sums_a["tokens"] == sums_b["tokens"] and sums_a["correct"] == sums_b["correct"]


def test_gradient_accumulation_averages_per_batch_means(tmp_path):
    """Unequal lengths: the accumulated gradient is the mean over the group of each batch's
    per-token mean loss gradient (each batch weighs the same, whatever its token count)."""
    tr = Trainer(cfg_of(**{"model.dropout": 0.0, "optim.accum_steps": 3}), tmp_path / "a", quiet=True)
    train, pad = tr.exp.splits["train"], tr.exp.tgt_vocab.pad
    group = [[0, 1, 2], [3], [4, 5, 6, 7, 8]]
    ref = {k: torch.zeros_like(p) for k, p in tr.model.named_parameters()}
    from transformer_graph.data.datasets import collate
    for idx in group:
        tr.model.zero_grad(set_to_none=True)
        batch = collate(train, idx, tr.exp.spec)
        loss_sum, _ = label_smoothed_loss(tr.model(batch), batch.labels, 0.0, pad)
        (loss_sum / batch.labels.numel()).backward()
        for k, p in tr.model.named_parameters():
            if p.grad is not None:
                ref[k] += p.grad / len(group)
    sums = {"loss": 0.0, "nll": 0.0, "correct": 0, "tokens": 0, "nodes": 0}
    tr.train_step(train, group, pad, sums)
    got = _grads(tr.model)
    assert got.keys() <= ref.keys() and got
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7)
    assert sums["tokens"] == sum(len(train.pairs[i][1]) + 1 for idx in group for i in idx)


def test_gradient_clipping_bounds_the_step_gradient(tmp_path):
    tr = Trainer(cfg_of(**{"model.dropout": 0.0, "optim.clip_grad": 1e-3}), tmp_path / "a", quiet=True)
    sums = {"loss": 0.0, "nll": 0.0, "correct": 0, "tokens": 0, "nodes": 0}
    tr.train_step(tr.exp.splits["train"], [[0, 1, 2, 3]], tr.exp.tgt_vocab.pad, sums)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in _grads(tr.model).values()]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)


# --------------------------------------------------------------------------- NaN guard

def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    Trainer(cfg_of(**{"train.max_epochs": 1}), run, quiet=True).fit()
    before = (run / "last.pt").read_bytes()
    best_before = (run / "best.pt").read_bytes()

    tr = Trainer(cfg_of(**{"train.max_epochs": 3}), run, resume=True, quiet=True)
    real_forward = tr.model.forward
    calls = []

    def forward(batch, *args, **kwargs):
        calls.append(1)
        out = real_forward(batch, *args, **kwargs)
        return out * float("nan") if len(calls) == 3 else out  # the third batch blows up

    tr.model.forward = forward
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 2, step 9") as err:
        tr.fit()
    assert f"The last good checkpoint {run / 'last.pt'} is intact" in str(err.value)
    assert (run / "last.pt").read_bytes() == before
    assert (run / "best.pt").read_bytes() == best_before
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 6
    load_trained(run / "last.pt")
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*"))


def test_huge_learning_rate_diverges_into_training_error(tmp_path):
    """A real divergence (no monkeypatching): an absurd learning rate gives inf/NaN losses."""
    cfg = cfg_of(**{"optim.factor": 1e30, "optim.warmup": 1, "train.max_epochs": 3})
    with pytest.raises(TrainingError, match="non-finite loss") as err:
        Trainer(cfg, tmp_path / "run", quiet=True).fit()
    assert "epoch 1" in str(err.value) and "No checkpoint was written yet" in str(err.value)
    assert not (tmp_path / "run" / "last.pt").exists()


# --------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    content = {"model": {"w": torch.randn(3, 4), "n": torch.tensor(5)}, "progress": {"step": 3, "best": None},
               "names": ["a", "b"], "lr": 0.5}
    save_checkpoint(path, **content)
    back = load_checkpoint(path)
    assert back["format"] == "transformer_graph/1"
    assert torch.equal(back["model"]["w"], content["model"]["w"])
    assert back["progress"] == content["progress"] and back["names"] == ["a", "b"] and back["lr"] == 0.5
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temp file left behind
    # It really loads with weights_only=True (no pickled code runs).
    assert torch.load(path, weights_only=True)["names"] == ["a", "b"]


class Evil:
    """A pickled object that would run code on load; weights_only refuses it."""


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "plain-tensor", "foreign-dict", "pickled-object"])
def test_bad_checkpoint_files_give_checkpoint_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "random-bytes":
        path.write_bytes(os.urandom(2000))
    elif kind == "truncated":
        save_checkpoint(path, model={"w": torch.randn(100, 100)})
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "plain-tensor":
        torch.save(torch.randn(3), path)
    elif kind == "foreign-dict":
        torch.save({"state_dict": {"w": torch.randn(2)}}, path)
    else:
        torch.save({"format": "transformer_graph/1", "x": Evil()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert "Traceback" not in str(err.value) and len(str(err.value)) < 400


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "none.pt")


def test_atomic_save_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, step=1)
    old = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on the torch release
        atomic_save({"bad": lambda: 0}, path)  # a lambda cannot be pickled: fails mid-write
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_load_trained_rejects_weights_of_another_vocabulary(tmp_path):
    run = tmp_path / "run"
    Trainer(cfg_of(**{"train.max_steps": 1}), run, quiet=True).fit()
    ckpt = load_checkpoint(run / "last.pt")
    ckpt["src_vocab"]["itos"] += ["extra1", "extra2"]
    ckpt["tgt_vocab"]["itos"] += ["extra1", "extra2"]
    save_checkpoint(tmp_path / "other.pt", **{k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(CheckpointError, match="do not fit") as err:
        load_trained(tmp_path / "other.pt")
    assert str(tmp_path / "other.pt") in str(err.value)
    del ckpt["config"]
    save_checkpoint(tmp_path / "noconfig.pt", **{k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(CheckpointError, match="lacks 'config'"):
        load_trained(tmp_path / "noconfig.pt")


# --------------------------------------------------------------------------- loss

def _explicit_smoothed_kl(logp, labels, eps, pad):
    """KL(q || p) with q materialised: 1-eps on the label, eps spread over the rest but pad."""
    n, vocab = logp.shape
    others = vocab - 1 - (pad is not None)
    q = torch.full((n, vocab), eps / others, dtype=logp.dtype)
    if pad is not None:
        q[:, pad] = 0.0
    q[torch.arange(n), labels] = 1.0 - eps
    plogq = torch.where(q > 0, q * torch.log(q.clamp_min(1e-300)), torch.zeros_like(q))
    return (plogq - q * logp).sum()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("pad", [0, None])
def test_label_smoothed_loss_equals_explicit_kl(eps, pad):
    g = torch.Generator().manual_seed(3)
    logp = torch.log_softmax(torch.randn(7, 11, generator=g, dtype=torch.float64) * 3, -1)
    labels = torch.randint(1 if pad == 0 else 0, 11, (7,), generator=g)
    loss, nll = label_smoothed_loss(logp, labels, eps, pad)
    assert float(loss) == pytest.approx(float(_explicit_smoothed_kl(logp, labels, eps, pad)), rel=1e-12)
    assert float(nll) == pytest.approx(float(-logp[torch.arange(7), labels].sum()), rel=1e-12)
    # A perfect prediction of the smoothed target costs nothing (it is a true KL).
    if eps > 0:
        q = torch.exp(logp) * 0 + eps / (11 - 1 - (pad is not None))
        if pad is not None:
            q[:, pad] = 1e-300
        q[torch.arange(7), labels] = 1 - eps
        zero, _ = label_smoothed_loss(torch.log(q / q.sum(-1, keepdim=True)), labels, eps, pad)
        assert abs(float(zero)) < 1e-9


def test_label_smoothed_loss_eps0_is_nll_and_gradients_match_autograd():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(1, 9, (6,), generator=g)
    loss, nll = label_smoothed_loss(torch.log_softmax(logits, -1), labels, 0.0, 0)
    ref = torch.nn.functional.nll_loss(torch.log_softmax(logits, -1), labels, reduction="sum")
    assert float(loss) == pytest.approx(float(ref), rel=1e-12) and float(nll) == pytest.approx(float(ref))
    (grad,) = torch.autograd.grad(loss, logits)
    (grad_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(grad, grad_ref)
    # Smoothed: the custom backward equals autograd through the explicit formula.
    loss, _ = label_smoothed_loss(torch.log_softmax(logits, -1), labels, 0.2, 0)
    (grad,) = torch.autograd.grad(2.5 * loss, logits)
    (grad_ref,) = torch.autograd.grad(2.5 * _explicit_smoothed_kl(torch.log_softmax(logits, -1), labels, 0.2, 0),
                                      logits)
    torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize("eps,pad", [(0.0, 0), (0.1, 0), (0.25, None)])
def test_label_smoothed_loss_gradcheck(eps, pad):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(1, 7, (4,), generator=g)
    assert torch.autograd.gradcheck(
        lambda x: label_smoothed_loss(torch.log_softmax(x, -1), labels, eps, pad)[0], (logits,))
    raw = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)  # any input, not only log-probs
    assert torch.autograd.gradcheck(lambda x: label_smoothed_loss(x, labels, eps, pad)[0], (raw,))


def test_label_smoothing_out_of_range():
    with pytest.raises(ValueError, match="eps"):
        label_smoothed_loss(torch.zeros(2, 5), torch.tensor([1, 2]), 1.0, 0)


def _loss_and_grad(fn, logits, labels, eps, pad, scale=2.5):
    """(loss, nll, d(scale * loss)/d logits) of ``fn`` on a fresh leaf copy of ``logits``."""
    x = logits.detach().clone().requires_grad_()
    loss, nll = fn(x, labels, eps, pad)
    (scale * loss).backward()
    return loss.detach(), nll, x.grad


def _unfused(x, labels, eps, pad):
    return label_smoothed_loss(torch.log_softmax(x.double(), -1), labels, eps, pad)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("pad", [0, None])
@pytest.mark.parametrize("block_values", [None, 40])   # one block, or blocks of 3 rows and a ragged last one
def test_fused_loss_equals_loss_of_log_softmax(eps, pad, block_values, monkeypatch):
    """Value, nll and gradient of the loss from logits equal label_smoothed_loss(log_softmax(logits))
    (float64: to rounding); the pad column gets no target mass (its gradient is its probability)."""
    if block_values is not None:
        monkeypatch.setattr(loss_module, "_BLOCK_VALUES", block_values)
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(10, 13, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(1 if pad == 0 else 0, 13, (10,), generator=g)
    ref = _loss_and_grad(_unfused, logits, labels, eps, pad)
    got = _loss_and_grad(label_smoothed_loss_from_logits, logits, labels, eps, pad)
    assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-12)
    assert float(got[1]) == pytest.approx(float(ref[1]), rel=1e-12)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-12, atol=1e-14)
    if pad is not None:
        torch.testing.assert_close(got[2][:, pad], 2.5 * torch.softmax(logits, -1)[:, pad], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_fused_loss_in_low_precision_keeps_the_logits_dtype(dtype, tol):
    """float32 / bf16 logits: float32 arithmetic, so the loss is that of the rounded logits to
    float32 accuracy; the gradient comes back in the logits' dtype (no casts under autocast)."""
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(9, 300, generator=g) * 4).to(dtype)
    labels = torch.randint(1, 300, (9,), generator=g)
    ref = _loss_and_grad(_unfused, logits.double(), labels, 0.1, 0)
    loss, nll, grad = _loss_and_grad(label_smoothed_loss_from_logits, logits, labels, 0.1, 0)
    assert loss.dtype == nll.dtype == torch.float32 and grad.dtype == dtype
    assert float(loss) == pytest.approx(float(ref[0]), rel=1e-6)
    assert float(nll) == pytest.approx(float(ref[1]), rel=1e-6)
    assert float((grad.double() - ref[2]).abs().max()) <= tol * float(ref[2].abs().max())


def test_fused_loss_without_gradient_and_its_single_backward():
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(1, 7, (5,), generator=g)
    with torch.no_grad():   # evaluation: no gradient is prepared
        loss, nll = label_smoothed_loss_from_logits(logits, labels, 0.1, 0)
    ref, ref_nll = _unfused(logits.detach(), labels, 0.1, 0)
    assert float(loss) == pytest.approx(float(ref), rel=1e-12) and float(nll) == pytest.approx(float(ref_nll))
    loss, _ = label_smoothed_loss_from_logits(logits, labels, 0.1, 0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
    empty = torch.zeros(0, 7, requires_grad=True)   # no target nodes: zero loss, empty gradient
    loss, nll = label_smoothed_loss_from_logits(empty, torch.zeros(0, dtype=torch.long), 0.1, 0)
    loss.backward()
    assert float(loss.detach()) == float(nll) == 0.0 and empty.grad.shape == (0, 7)


def test_fused_loss_bad_arguments():
    with pytest.raises(ValueError, match="eps"):
        label_smoothed_loss_from_logits(torch.zeros(2, 5), torch.tensor([1, 2]), 1.0, 0)
    with pytest.raises(ValueError, match="logits: expected shape"):
        label_smoothed_loss_from_logits(torch.zeros(2, 3, 5), torch.tensor([1, 2]), 0.1, 0)
    with pytest.raises(ValueError, match="labels of shape"):
        label_smoothed_loss_from_logits(torch.zeros(2, 5), torch.tensor([1, 2, 3]), 0.1, 0)


def test_token_correct():
    logp = torch.log_softmax(torch.tensor([[0.0, 5.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), -1)
    assert token_correct(logp, torch.tensor([1, 2, 2])) == 2


# --------------------------------------------------------------------------- schedule

def test_noam_schedule_values():
    d, factor, warmup = 64, 2.0, 100
    lr = noam_lambda(d, factor, warmup)
    peak = factor * d ** -0.5 * warmup ** -0.5
    assert lr(warmup) == pytest.approx(peak, rel=1e-12)
    assert lr(1) == pytest.approx(factor * d ** -0.5 * warmup ** -1.5, rel=1e-12)
    assert lr(0) == lr(1)  # LambdaLR starts at step 0: treated as step 1
    assert lr(10) == pytest.approx(10 * lr(1), rel=1e-12)  # linear warm-up
    assert lr(4 * warmup) == pytest.approx(peak / 2, rel=1e-12)  # then 1/sqrt(step) decay
    values = [lr(s) for s in range(1, 3 * warmup)]
    assert max(values) == values[warmup - 1]
    assert all(a < b for a, b in zip(values[:warmup - 1], values[1:warmup]))
    assert all(a > b for a, b in zip(values[warmup - 1:], values[warmup:]))


# --------------------------------------------------------------------------- scripts

def _script(name: str, *args: str, cwd: Path, stdin: str | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd, env=env,
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_train_and_evaluate_scripts_end_to_end(tmp_path):
    """The real scripts as subprocesses: train with --set overrides, evaluate with --json."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(**{"train.max_epochs": 1})))
    run = tmp_path / "run"
    r = _script("train.py", "--config", str(config), "--set", "train.max_epochs=2", "--set", "model.d_ff=48",
                "--run-dir", str(run), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "run finished (max_epochs=2)" in r.stdout and str(run) in r.stdout
    assert "test_exact_match" in r.stdout
    cfg = load_config(run / "config.yaml")
    assert cfg.train.max_epochs == 2 and cfg.model.d_ff == 48  # the overrides are in the saved config
    assert len(records(run, "epoch")) == 2

    out = tmp_path / "metrics.json"
    r = _script("evaluate.py", "--checkpoint", str(run / "best.pt"), "--split", "valid", "--json", str(out),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    m = result["metrics"]
    assert m["split"] == "valid" and 0.0 <= m["exact_match"] <= 1.0 and 0.0 <= m["acc"] <= 1.0
    hyps = Path(result["hypotheses"]).read_text().splitlines()
    assert len(hyps) == 16 and result["checkpoint"] == str(run / "best.pt")
    assert f"exact_match      {m['exact_match']:.4f}" in r.stdout

    # --resume of the finished run with a higher epoch limit continues it (in-process: same code path).
    from transformer_graph.cli.train import run as train_main
    summary = train_main(["--resume", str(run), "--set", "train.max_epochs=3", "--quiet", "--no-test"])
    assert summary["epochs"] == 3 and [e["epoch"] for e in records(run, "epoch")] == [0, 1, 2]
    # A new run into a directory that already holds one is refused.
    with pytest.raises(SystemExit) as exit_:
        train_main(["--config", str(config), "--run-dir", str(run)])
    assert exit_.value.code == 2


@pytest.mark.parametrize("args,message", [
    (["--config", "missing.yaml"], "error: missing.yaml: config file not found\n"),
    (["--config", "{cfg}", "--set", "model.layrs=2"],
     "--set model.layrs=2: model.layrs: unknown key; did you mean 'layers'?"),
    (["--config", "{cfg}", "--set", "optim.warmup=-5"], "optim.warmup: expected a positive integer, got -5"),
    (["--config", "{cfg}", "--set", "nonsense"], "expected dotted.key=value"),
    (["--config", "{cfg}", "--set", "model.layers=[1"], "model.layers: expected a YAML value"),
    (["--resume", "{tmp}/nowhere"], "no config.yaml"),
])
def test_train_cli_bad_input_exits_with_message(tmp_path, capsys, args, message):
    from transformer_graph.cli.train import run as train_main
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny()))
    with pytest.raises(SystemExit) as exit_:  # SystemExit: the interpreter prints no traceback
        train_main([a.format(cfg=config, tmp=tmp_path) for a in args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_evaluate_cli_bad_checkpoint(tmp_path, capsys):
    from transformer_graph.cli.evaluate import run as evaluate_main
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--checkpoint", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a readable transformer_graph checkpoint" in err
