"""Data-parallel training with torch.distributed (gloo, CPU, 2 processes on loopback).

Processes are started by torchrun's own launcher: the tests that need to look
inside the workers (parameters, failures) run it in this process
(``elastic_launch`` with a function entrypoint, exactly what ``torchrun``
calls, workers started by forkserver so they skip re-importing torch and DGL),
and the resume test runs the real ``torchrun ... scripts/train.py`` command in
a subprocess. Ports are picked free at run time on 127.0.0.1.

1. Two ranks hold identical parameters after k steps (with dropout, whose
   RNG differs per rank), read disjoint equal-sized shards, and with dropout 0
   take exactly the steps of one process that sees both ranks' examples per
   step (variable-length sentences: the loss normalisation must be global),
   with and without gradient accumulation.
2. A killed worker and a hung worker make the launcher fail within a bounded
   time, with a message that names what happened; a SIGTERM on one rank stops
   every rank after the same step.
3. Resume 1 -> 2 -> 1 processes continues at the right place; sharded
   validation equals a single-process evaluation of the same weights.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transformer_graph.train import distributed as D
from transformer_graph.train import trainer as training
from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.config import config_from_dict, config_to_dict, load_config
from transformer_graph.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "model": {"layers": 1, "d_model": 16, "d_ff": 32, "heads": 2, "dropout": 0.1, "share_embeddings": True},
    # 128 examples / 16 per batch = 8 batches per epoch: 4 per rank with 2 ranks.
    "data": {"task": "copy", "train_size": 128, "valid_size": 24, "test_size": 8, "batch_size": 16,
             "length_mean": 6.0, "length_std": 2.0, "alphabet": "abcdefgh"},
    "optim": {"factor": 1.0, "warmup": 10},
    "train": {"max_epochs": 3, "seed": 7, "log_every": 1, "threads": 1},
    "eval": {"max_len_b": 2},
}


def tiny_cfg(**sections):
    raw = json.loads(json.dumps(TINY))
    for section, values in sections.items():
        raw[section].update(values)
    return config_from_dict(raw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float(a.norm())


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


WORKER_ENV = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", D.ENV_TIMEOUT: "60"}


def launch(fn, *args, log_dir: Path, nproc: int = 2):
    """torchrun's launcher, in this process: ``{rank: fn's return value}`` or ChildFailedError.

    Workers start by forkserver: forked from a clean, single-threaded process that
    has already imported the package (fast, and unlike plain fork it cannot inherit
    a lock held by one of this process's threads). Their stderr goes to
    ``log_dir/**/attempt_0/<rank>/stderr.log``.
    """
    import multiprocessing

    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["transformer_graph.cli.train", "transformer_graph.train.trainer", __name__])
    argv = ["--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "--start-method", "forkserver", "--monitor-interval", "0.2", "--log-dir", str(log_dir),
            "--redirects", "2", "unused.py"]
    config, _, _ = config_from_args(get_args_parser().parse_args(argv))
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}  # the agent installs its own
    try:
        return elastic_launch(config, fn)(*args)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv(D.ENV_TIMEOUT, "60")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------
# Workers (module level: the launcher calls them in its worker processes)
# --------------------------------------------------------------------------
def _train_worker(cfg_dicts: list, run_dir: str) -> list:
    """Train each config in turn on this rank; return what the test compares."""
    os.environ.update(WORKER_ENV)
    ctx = D.init_from_env("cpu")
    try:
        out = []
        for k, raw in enumerate(cfg_dicts):
            tr = Trainer(config_from_dict(raw), f"{run_dir}/{k}", rank=ctx.rank, world_size=ctx.world_size,
                         quiet=True)
            shards = [list(b) for b in tr.train_batches.batches(0)]
            tr.fit()
            model = tr.model.module
            out.append({"params": {n: p.detach().clone() for n, p in model.named_parameters()},
                        "rng": torch.get_rng_state(), "shards": shards, "step": tr.progress.step})
        return out
    finally:
        D.shutdown(ctx)


def _cli_worker(argv: list, env: dict, fail: str) -> None:
    """``scripts/train.py argv`` on this rank, whose rank 1 is killed, hangs or gets SIGTERM at step 3."""
    from transformer_graph.cli.train import run as train_main

    os.environ.update(env)
    original = training.Trainer.train_step

    def train_step(self, *args, **kwargs):
        if self.rank == 1 and self.progress.step == 2 and fail == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. preemption; the step still runs
        elif self.rank == 1 and self.progress.step == 2:
            if fail == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            # Hang: never reach the next collective. Stopped by the launcher's SIGTERM (the
            # trainer's graceful-stop handler would wait for a step that never ends; torchrun
            # itself follows SIGTERM with SIGKILL after 30 s, the in-process launcher does not).
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(120)
        return original(self, *args, **kwargs)

    training.Trainer.train_step = train_step
    train_main(argv)


class _Fixed:
    """A batch list standing in for the trainer's batcher (the single-process reference)."""

    def __init__(self, batches):
        self._batches = batches

    def batches(self, epoch):
        return [list(b) for b in self._batches]


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------
@pytest.mark.parametrize("k, old, new, expected", [
    (3, 1, 2, 2),   # 3 global batches done; the new ranks start at global 4 (skip 1)
    (3, 2, 1, 6),   # 6 global batches done
    (3, 2, 4, 2),   # 6 done -> global 8 (skip 2)
    (5, 3, 3, 5),   # same world size: unchanged
    (0, 2, 3, 0),
])
def test_resume_position(k, old, new, expected):
    assert D.resume_position(k, old, new) == expected


def test_resume_position_never_repeats_and_skips_less_than_new_world():
    for k in range(12):
        for old in range(1, 6):
            for new in range(1, 6):
                start = D.resume_position(k, old, new) * new   # first global batch of the new run
                assert k * old <= start < k * old + new


def test_resume_position_rejects_bad_world():
    with pytest.raises(ValueError, match="new_world: expected a positive integer, got 0"):
        D.resume_position(1, 2, 0)


def test_env_world_and_timeout():
    assert D.env_world({}) is None
    assert D.env_world({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    with pytest.raises(ValueError, match="not WORLD_SIZE, LOCAL_RANK; launch with torchrun"):
        D.env_world({"RANK": "0"})
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        D.env_world({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two': expected an integer"):
        D.env_world({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"})
    assert D.dist_timeout({}) == D.DEFAULT_TIMEOUT_S == 300
    assert D.dist_timeout({D.ENV_TIMEOUT: "12.5"}) == 12.5
    for bad in ("0", "-3", "soon", "inf"):
        with pytest.raises(ValueError, match=f"{D.ENV_TIMEOUT}='{bad}': expected a positive number"):
            D.dist_timeout({D.ENV_TIMEOUT: bad})


def test_single_process_needs_no_group():
    assert D.init_from_env("cpu", {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    assert D.init_from_env("cpu", {}) is None
    comm = D.Collectives()
    assert comm.sum([1, 2.5]) == [1.0, 2.5] and comm.broadcast({"a": 1}) == {"a": 1} and comm.gather(3) == [3]
    assert D.step_denominators(comm, [7, 9]) == [7.0, 9.0]  # one process: the plain per-batch token count


@pytest.mark.parametrize("world, code", [(None, 0), ("1", 0), ("2", 3)])
def test_a_finished_worker_leaves_without_finalisation_only_under_torchrun(world, code):
    # Under torchrun the worker ends in os._exit (gloo's threads can abort the interpreter's
    # finalisation after a complete run), with its output flushed; otherwise it returns.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if world is not None:
        env.update(RANK="0", WORLD_SIZE=world, LOCAL_RANK="0")
    script = ("import atexit, sys\n"
              "from transformer_graph.train.distributed import finish_worker\n"
              "atexit.register(lambda: print('finalised'))\n"
              "print('done', end='', flush=False); sys.stderr.write('err')\n"
              "finish_worker(3)\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code
    assert proc.stdout == ("done" if code else "donefinalised\n") and proc.stderr == "err"


def test_world_size_without_process_group_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="world_size=2 needs an initialised torch.distributed process group"):
        Trainer(tiny_cfg(), tmp_path / "run", rank=0, world_size=2, quiet=True)


def test_rank_seeds_differ_and_repeat():
    assert D.derive_seed(7, 0) == D.derive_seed(7, 0) != D.derive_seed(7, 1)
    assert D.derive_seed(7, 1) != D.derive_seed(7, 1, 5)


def test_restore_rank_rng_same_world_restores_each_rank_else_reseeds():
    from transformer_graph.checkpoint import rng_state

    states = []
    for r in range(2):
        D.seed_rank(7, r)
        states.append(rng_state())
    ckpt = {"world_size": 2, "rng_ranks": states, "rng": states[0]}
    assert D.restore_rank_rng(ckpt, 1, 2, seed=7, step=5) == "restored"
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])
    assert D.restore_rank_rng(ckpt, 1, 3, seed=7, step=5) == "reseeded"
    reseeded = torch.get_rng_state()
    D.seed_rank(7, 1, 5)
    assert torch.equal(reseeded, torch.get_rng_state()) and not torch.equal(reseeded, states[1]["torch"])
    # One process to one process: the saved state, as before distributed training existed.
    assert D.restore_rank_rng({"rng": states[0]}, 0, 1, seed=7, step=5) == "restored"
    assert torch.equal(torch.get_rng_state(), states[0]["torch"])


def test_validation_shards_cover_every_example_once_and_balance_lengths():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 6]
    shards = [D.shard_indices(lengths, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(len(lengths)))
    assert [len(s) for s in shards] == [3, 3, 3]
    # Round robin over the length order: the shards' total lengths differ by at most one sentence's.
    totals = [sum(lengths[i] for i in s) for s in shards]
    assert max(totals) - min(totals) <= max(lengths) - min(lengths)


# --------------------------------------------------------------------------
# Two processes
# --------------------------------------------------------------------------
def _single_process_twin(raw: dict, run_dir: Path) -> Trainer:
    """One process that trains, at each (micro-)step, on the union of what the two ranks read."""
    ref = Trainer(config_from_dict(raw), run_dir, quiet=True)
    every = ref.batcher.batches(0)  # rank r's k-th batch is every[2k + r]
    ref.train_batches = _Fixed([every[2 * k] + every[2 * k + 1] for k in range(len(every) // 2)])
    return ref


def _assert_same_training(ddp_params: dict, ref: Trainer, tmp_path: Path) -> None:
    d = ref.cfg.model.d_model
    for name, p in ref.model.named_parameters():
        ddp = ddp_params[name]
        if name.endswith("in_proj.bias"):
            # [q; k; v] biases. The key bias has zero gradient in exact arithmetic (softmax over a
            # query's keys ignores the shift q.b_k), so Adam turns rounding noise into steps there
            # in both runs alike; it cannot change the model's output (checked below).
            ddp, p = torch.cat([ddp[:d], ddp[2 * d:]]), torch.cat([p[:d], p[2 * d:]])
        err = rel_err(ddp, p)
        assert err <= 1e-5, f"{name}: relative difference {err:.2e}"
    # The functions computed agree as well (key bias included).
    from transformer_graph.data.datasets import collate
    valid = ref.exp.splits["valid"]
    batch = collate(valid, list(range(len(valid))), ref.exp.spec)
    twin = Trainer(ref.cfg, tmp_path / "twin", quiet=True).model
    init = {n: p.detach().clone() for n, p in twin.named_parameters()}
    twin.load_state_dict({**twin.state_dict(), **ddp_params})
    with torch.no_grad():
        assert rel_err(twin.eval()(batch), ref.model.eval()(batch)) <= 1e-5
    # and training moved the weights at all (the comparison is not between two untouched models)
    assert all(rel_err(ddp_params[n], init[n]) > 1e-3 for n in init if n.endswith("weight") and init[n].dim() > 1)


def test_two_ranks_stay_identical_and_match_one_process_with_both_batches(tmp_path):
    with_dropout = config_to_dict(tiny_cfg(train={"max_steps": 3}))
    no_dropout = config_to_dict(tiny_cfg(model={"dropout": 0.0}, train={"max_steps": 3}))
    # 2 micro-batches per step (DDP's no_sync on the first); 2 steps finish the epoch (validation too).
    accumulated = config_to_dict(tiny_cfg(model={"dropout": 0.0}, optim={"accum_steps": 2},
                                          train={"max_steps": 2}))
    runs = [with_dropout, no_dropout, accumulated]
    results = launch(_train_worker, runs, str(tmp_path / "ddp"), log_dir=tmp_path / "logs")
    r0, r1 = results[0], results[1]

    for k, raw in enumerate(runs):
        a, b = r0[k], r1[k]
        assert a["step"] == b["step"] == raw["train"]["max_steps"]
        # Every rank holds exactly the same parameters (DDP averages the gradients) ...
        for name in a["params"]:
            assert torch.equal(a["params"][name], b["params"][name]), name
        # ... from disjoint, equally long shards of the epoch's batches.
        assert len(a["shards"]) == len(b["shards"]) == 4
        seen0 = {i for batch in a["shards"] for i in batch}
        seen1 = {i for batch in b["shards"] for i in batch}
        assert not seen0 & seen1 and len(seen0 | seen1) == 128
    # Dropout draws differ between ranks (rank-specific seeds), while the run repeats from the config.
    assert not torch.equal(r0[0]["rng"], r1[0]["rng"])

    # With dropout 0: one process, same initial weights, each step on the union of both ranks'
    # batches, takes the same steps (sentences of many lengths: the ranks' token counts differ).
    for k in (1, 2):
        ref = _single_process_twin(runs[k], tmp_path / f"single{k}")
        steps, accum = runs[k]["train"]["max_steps"], runs[k]["optim"]["accum_steps"]
        assert [i for b in ref.train_batches.batches(0)[:steps * accum] for i in b] == \
            [i for j in range(steps * accum) for i in r0[k]["shards"][j] + r1[k]["shards"][j]]
        assert len({len(ref.exp.splits["train"].pairs[i][1]) for i in range(128)}) > 3
        ref.fit()
        assert ref.progress.step == steps
        _assert_same_training(r0[k]["params"], ref, tmp_path / f"check{k}")


@pytest.mark.parametrize("mode", ["kill", "hang"])
def test_failed_worker_makes_the_launcher_fail_quickly(tmp_path, mode):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY))
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    start = time.time()
    with pytest.raises(ChildFailedError) as info:
        launch(_cli_worker, ["--config", str(cfg), "--run-dir", str(run_dir), "--quiet", "--no-test"],
               {**WORKER_ENV, D.ENV_TIMEOUT: "3"}, mode, log_dir=logs)
    elapsed = time.time() - start
    assert elapsed < 40, f"the launcher took {elapsed:.0f} s to give up"
    failures = info.value.failures
    (err_log,) = logs.glob("**/attempt_0/0/stderr.log")
    err = err_log.read_text()
    if mode == "kill":
        # Whoever the launcher saw fail first is reported: the killed rank with its signal, or
        # rank 0, which noticed the closed connection at once and explains it (or was stopped).
        assert failures and set(failures) <= {0, 1}
        if 1 in failures:
            assert failures[1].exitcode == -signal.SIGKILL
            assert "Signal 9 (SIGKILL)" in str(info.value)
        if 0 in failures:
            assert failures[0].exitcode in (2, -signal.SIGTERM)
        explained = 0 in failures and failures[0].exitcode == 2
    else:
        # The hung rank's peer gives up after TG_DIST_TIMEOUT seconds and explains why.
        assert failures[0].exitcode == 2
        assert "Timed out" in err and "3 s (TG_DIST_TIMEOUT)" in err
        explained = True
    if explained:
        assert "error: rank 0 of 2: lost contact with another training process" in err, err[-3000:]
        assert "No checkpoint was written yet" in err  # it fails at step 3, before any checkpoint


def test_sigterm_on_one_rank_stops_all_after_the_same_step(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY))
    run_dir = tmp_path / "run"
    launch(_cli_worker, ["--config", str(cfg), "--run-dir", str(run_dir), "--quiet", "--no-test"],
           WORKER_ENV, "sigterm", log_dir=tmp_path / "logs")
    last = load_checkpoint(run_dir / "last.pt")
    assert (last["progress"]["epoch"], last["progress"]["batch_in_epoch"], last["progress"]["step"]) == (0, 3, 3)
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "summary" and events[-1]["stopped_by"] == "signal on another rank"


def test_resume_with_another_world_size_and_sharded_validation(tmp_path):
    run_dir = tmp_path / "run"
    # 1 process: 3 steps of epoch 1 (3 of its 8 batches), then stop mid-epoch.
    Trainer(tiny_cfg(train={"max_steps": 3}), run_dir, quiet=True).fit()
    assert load_checkpoint(run_dir / "last.pt")["progress"]["batch_in_epoch"] == 3

    # 2 processes with the real command line: 3 global batches done -> each rank starts at its
    # batch 2 of 4 (global 4), finishes epoch 1 at step 5, validates, then 3 steps of epoch 2.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", D.ENV_TIMEOUT: "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--monitor-interval", "0.2", str(REPO / "scripts" / "train.py"),
           "--resume", str(run_dir), "--set", "train.max_steps=8", "--quiet", "--no-test"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("run finished (max_steps=8)") == 1  # only rank 0 prints

    last = load_checkpoint(run_dir / "last.pt")
    assert last["world_size"] == 2
    assert (last["progress"]["epoch"], last["progress"]["batch_in_epoch"], last["progress"]["step"]) == (1, 3, 8)
    assert len(last["rng_ranks"]) == 2 and not torch.equal(last["rng_ranks"][0]["torch"], last["rng_ranks"][1]["torch"])
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_end = [e for e in events if e["event"] == "epoch"]
    assert len(epoch_end) == 1 and epoch_end[0]["step"] == 5

    # Sharded validation (2 ranks) == single-process validation of the same weights (best.pt).
    check = tmp_path / "check"
    check.mkdir()
    shutil.copy(run_dir / "config.yaml", check / "config.yaml")
    shutil.copy(run_dir / "best.pt", check / "last.pt")
    single = Trainer(load_config(check / "config.yaml"), check, resume=True, quiet=True).validate()
    logged = {k[len("valid_"):]: v for k, v in epoch_end[0].items() if k.startswith("valid_")}
    assert set(logged) == set(single) and {"loss", "acc", "exact_match", "tokens"} <= set(single)
    for k, v in single.items():
        assert logged[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert logged["tokens"] == single["tokens"]

    # Back to 1 process: 3 per-rank batches of 2 ranks = 6 of this epoch's 8 batches are done.
    back = Trainer(load_config(run_dir / "config.yaml", ["train.max_steps=10"]), run_dir, resume=True, quiet=True)
    assert (back.progress.epoch, back.progress.batch_in_epoch, back.progress.step) == (1, 6, 8)
    summary = back.fit()
    assert (summary["epochs"], summary["steps"]) == (2, 10)
    assert "world_size" not in load_checkpoint(run_dir / "last.pt")
