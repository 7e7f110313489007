"""Fault injection: a tiny training run SIGKILLed at random moments -- mid-epoch, during a
checkpoint save, at an arbitrary instant (imports, data loading, validation) -- and resumed
each time ends exactly where one uninterrupted run ends: the same parameters, optimizer and
scheduler state, progress, and the same logged metrics.

Each session is a real process (``DRIVER`` below) that trains with ``train.save_every_steps``,
so most kills land between step checkpoints inside an epoch. The driver reports every optimizer
step and every save on a line of its events file, and can make one save slow -- half the
checkpoint's bytes written, then a pause -- so the test kills it in the middle of that save.
The kill moments come from a seeded generator; the seed is in every assertion message.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from transformer_graph.checkpoint import load_checkpoint

SEED = 20240611
STEPS_PER_EPOCH, STEPS = 6, 18
CONFIG = {
    "model": dict(layers=1, d_model=32, d_ff=64, heads=2, dropout=0.1, share_embeddings=True, max_len=48),
    "data": dict(task="copy", train_size=96, valid_size=16, test_size=16, batch_size=16,
                 length_mean=6.0, length_std=2.0, alphabet="abcdefgh"),
    "optim": dict(factor=1.0, warmup=20),
    # 6 steps an epoch, 18 in all; a step checkpoint every 2 steps, epoch files for the fallback too.
    "train": dict(max_epochs=3, seed=7, threads=1, log_every=1, save_every_steps=2, keep_last=2),
    "eval": dict(max_len_a=1.0, max_len_b=2),
}

# One training session: a new run, or --resume when the run directory has its config.yaml, as a
# user would. FAULT_SLOW_SAVE=N makes this session's N-th checkpoint save stop half-way for a while,
# FAULT_SLOW_SAVE=epoch its first save of an epoch<N>.pt (an epoch's end); FAULT_STEP_SLEEP=S pauses S
# seconds after each optimizer step.
DRIVER = r'''
import io, os, sys, time
from pathlib import Path
import torch
from transformer_graph.config import load_config
from transformer_graph.train.trainer import Trainer

config, run_dir, events = Path(sys.argv[1]), Path(sys.argv[2]), open(sys.argv[3], "a", buffering=1)
slow = os.environ.get("FAULT_SLOW_SAVE", "")
pace = float(os.environ.get("FAULT_STEP_SLEEP", "0"))
saves = 0
real_save = torch.save

def save(obj, f, *args, **kwargs):
    global saves, slow
    saves += 1
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    try:  # the temporary file's name (an fd here: /proc tells it), .last.pt.x1y2.tmp -> last.pt
        name = Path(os.readlink(f"/proc/self/fd/{f.fileno()}")).name[1:].rsplit(".", 2)[0]
    except (AttributeError, OSError, ValueError):
        name = "?"
    events.write(f"save {saves} {name}\n")
    if slow and (slow == str(saves) or name.startswith(slow)):
        slow = None
        time.sleep(30)  # the test kills the process during this pause
    f.write(data[len(data) // 2:])

torch.save = save
resume = (run_dir / "config.yaml").exists()
cfg = load_config(run_dir / "config.yaml" if resume else config)
trainer = Trainer(cfg, run_dir, resume=resume, quiet=True)
real_step = trainer.train_step

def step(*args, **kwargs):
    out = real_step(*args, **kwargs)
    events.write(f"step {trainer.progress.step + 1}\n")
    time.sleep(pace)  # (sessions long enough for a kill at a random instant to land in training)
    return out

trainer.train_step = step
trainer.fit()
events.write("done\n")
'''


def start(tmp_path: Path, run: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    events = tmp_path / f"{run}.events"
    events.write_text("")
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "config.yaml"),
                             str(tmp_path / run), str(events)],
                            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, events


def kill_when(proc: subprocess.Popen, events: Path, pattern: str | None, delay: float = 0.0,
              timeout: float = 60) -> str:
    """SIGKILL ``proc`` once a line of ``events`` matches ``pattern`` (or after ``delay`` seconds when
    ``pattern`` is None); returns what happened, for the assertion messages."""
    start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < timeout:
        seen = events.read_text().splitlines()
        if (pattern is None and time.monotonic() - start >= delay) or (
                pattern is not None and any(re.search(pattern, e) for e in seen)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return f"killed at {pattern or f'{delay:.2f}s'} (last event: {seen[-1] if seen else 'none'})"
        time.sleep(0.005)
    proc.wait(timeout=5)
    return f"ended by itself ({proc.returncode}) before {pattern or f'{delay:.2f}s'}"


def finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]


def records(run_dir: Path) -> list[dict]:
    """The logged metrics that must match: every step and epoch record without wall-clock fields."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["event"] in ("train_step", "epoch"):
            out.append({k: v for k, v in r.items() if k != "time" and not k.endswith("tokens_per_s")})
    return out


def assert_same_state(a: dict, b: dict, why: str) -> None:
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), (why, k)
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"], why
    for i in oa["state"]:
        for name, t in oa["state"][i].items():
            assert torch.equal(t, ob["state"][i][name]), (why, i, name)
    assert a["scheduler"] == b["scheduler"], why
    timeless = lambda p: {k: v for k, v in p.items() if k != "elapsed" and k != "history"}  # noqa: E731
    assert timeless(a["progress"]) == timeless(b["progress"]), why
    strip = lambda h: [{k: v for k, v in e.items() if k != "time" and not k.endswith("tokens_per_s")} for e in h]  # noqa: E731
    assert strip(a["progress"]["history"]) == strip(b["progress"]["history"]), why


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (tmp_path / "driver.py").write_text(DRIVER)
    rng = random.Random(SEED)
    # The reference runs beside the first interrupted session (two cores: both at once).
    reference, _ = start(tmp_path, "reference")

    def mid_epoch() -> dict | None:
        """A kill after a random step inside the epoch the run resumes in (None: no such step left)."""
        last = tmp_path / "cut" / "last.pt"
        done = load_checkpoint(last)["progress"]["step"] if last.exists() else 0
        epoch_end = min(STEPS, (done // STEPS_PER_EPOCH + 1) * STEPS_PER_EPOCH)
        inside = [k for k in range(done + 1, epoch_end) if k % STEPS_PER_EPOCH]
        return dict(pattern=f"^step {rng.choice(inside)}$") if inside else None

    plan = [  # (what, the session's environment, when to kill it); some are drawn when their turn comes
        ("mid-epoch", {}, mid_epoch),
        ("during a save", {"FAULT_SLOW_SAVE": str(n := rng.randint(1, 3))}, dict(pattern=f"^save {n} ")),
        ("at any moment", {}, dict(pattern=None, delay=rng.uniform(0.5, 4.0))),
        ("during an epoch-end save", {"FAULT_SLOW_SAVE": "epoch"}, dict(pattern=r" epoch\d+\.pt$")),
        ("mid-epoch", {}, mid_epoch),
    ]
    history = []
    for what, env, when in plan:
        how = when() if callable(when) else when
        if how is None:
            history.append(f"{what}: no step left to kill at")
            continue
        proc, events = start(tmp_path, "cut", {"FAULT_STEP_SLEEP": "0.15", **env})
        history.append(f"{what}: {kill_when(proc, events, **how)}")
        # A kill never leaves a damaged checkpoint: whatever is there loads.
        for ckpt in (tmp_path / "cut").glob("*.pt"):
            load_checkpoint(ckpt)
    proc, events = start(tmp_path, "cut")
    finished(proc)
    finished(reference)
    why = f"seed {SEED}: " + "; ".join(history)

    assert "done" in events.read_text().splitlines(), why
    assert not list((tmp_path / "cut").glob(".*.tmp")), why  # temporary files of killed saves are gone
    for name in ("last.pt", "best.pt", "epoch3.pt"):
        assert_same_state(load_checkpoint(tmp_path / "reference" / name), load_checkpoint(tmp_path / "cut" / name),
                          f"{name}: {why}")
    assert records(tmp_path / "cut") == records(tmp_path / "reference"), why
    assert len([r for r in records(tmp_path / "cut") if r["event"] == "train_step"]) == STEPS, why
    # The kills meant to land mid-epoch and during saves did.
    for what, line in zip([p[0] for p in plan], history):
        if what != "at any moment":
            assert "killed at" in line or "no step left" in line, why
