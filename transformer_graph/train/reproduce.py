"""One config, several seeds: train each (fresh, or resumed where its run directory exists),
evaluate each final model and report every metric as mean ± standard deviation.

Each seed trains in its own process (``python -m transformer_graph.cli.train``), so it gets the
thread count, allocator settings and signal handling of a plain ``tg-train``; ``parallel`` of
them run side by side (on a 2-core CPU, two or three one-thread runs make more progress per hour
than one two-thread run: docs/BENCHMARKS.md, threads). Logs go to ``ROOT/seed<N>.log``
(appended, never replaced).
"""
from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.files import read_records


class SeedRunError(RuntimeError):
    """A seed's training process failed; the message names the seed and its log."""


def seed_dir(root: Path, seed: int) -> Path:
    return Path(root) / f"seed{seed}"


def train_command(config: str | None, run_dir: Path, seed: int, overrides: Sequence[str]) -> list[str]:
    """The tg-train command line of one seed: a new run, or ``--resume`` where the run exists."""
    cmd = [sys.executable, "-m", "transformer_graph.cli.train", "--quiet", "--no-test"]
    if (run_dir / "config.yaml").is_file():
        cmd += ["--resume", str(run_dir)]
        # only keys that may change on resume are accepted there (the resume check says which)
        cmd += [a for o in overrides for a in ("--set", o)]
    else:
        cmd += ["--config", str(config), "--run-dir", str(run_dir), "--set", f"train.seed={seed}"]
        cmd += [a for o in overrides for a in ("--set", o)]
    return cmd


def stopped_by(run_dir: Path) -> str | None:
    """Why the run's last training session ended (``stopped_by`` of its last summary in
    metrics.jsonl: "max_epochs", "signal", ...), or None where it wrote none."""
    summaries = [r for r in read_records(Path(run_dir) / "metrics.jsonl") if r.get("event") == "summary"]
    return summaries[-1].get("stopped_by") if summaries else None


def train_seeds(config: str, root: Path, seeds: Sequence[int], overrides: Sequence[str] = (),
                parallel: int = 1, echo=print, threads: int | None = None) -> dict[int, Path]:
    """Train every seed (at most ``parallel`` at once); returns seed -> run directory.

    ``threads``: each seed's ``train.threads`` (new and resumed runs alike; None leaves the
    config's). A seed whose training was stopped by a signal (SIGTERM, Ctrl-C: its last.pt is
    kept) is not finished: it is an error like a failed one, and the same call again resumes it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        overrides = [*overrides, f"train.threads={threads}"]
    pending = list(seeds)
    running: dict[int, tuple[subprocess.Popen, object, Path]] = {}
    failed = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                seed = pending.pop(0)
                run_dir = seed_dir(root, seed)
                log_path = root / f"seed{seed}.log"
                log = open(log_path, "a", encoding="utf-8")
                cmd = train_command(config, run_dir, seed, overrides)
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                echo(f"seed {seed}: {'resuming' if '--resume' in cmd else 'training'} {run_dir} (log {log_path})")
                running[seed] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, log_path)
            for seed, (proc, log, log_path) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[seed]
                reason = stopped_by(seed_dir(root, seed)) if proc.returncode == 0 else None
                if proc.returncode != 0:
                    failed.append(f"seed {seed} (exit {proc.returncode}, see {log_path})")
                elif reason is not None and reason.startswith("signal"):
                    failed.append(f"seed {seed} (stopped by a {reason} before it finished; its last.pt is kept)")
                else:
                    echo(f"seed {seed}: done")
            time.sleep(0.5)
    finally:
        for proc, log, _ in running.values():  # interrupted: stop the children, they save last.pt
            proc.terminate()
            proc.wait()
            log.close()
    if failed:
        raise SeedRunError(f"training did not finish for {', '.join(failed)}; fix the cause and run the same "
                           f"command again: finished seeds are kept, interrupted ones resume")
    return {seed: seed_dir(root, seed) for seed in seeds}


def final_checkpoint(run_dir: Path) -> Path:
    """The model a finished run is judged by: averaged.pt when the run wrote one, else best.pt."""
    for name in ("averaged.pt", "best.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise SeedRunError(f"{run_dir}: no averaged.pt or best.pt; did its training finish an epoch?")


def run_facts(run_dir: Path) -> dict:
    """Training time and epochs of a run, from its last checkpoint."""
    progress = load_checkpoint(run_dir / "last.pt")["progress"]
    return {"train_time_s": float(progress.get("elapsed", float("nan"))), "epochs": progress.get("epoch")}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(per_seed: dict[int, dict]) -> dict:
    """``{metric: {"mean", "std", "values"}}`` for every numeric metric all seeds report."""
    if not per_seed:
        return {}
    keys = [k for k, v in next(iter(per_seed.values())).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
            and all(isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool) for m in per_seed.values())]
    out = {}
    for k in keys:
        values = [per_seed[s][k] for s in per_seed]
        if all(math.isfinite(float(v)) for v in values):
            mean, std = mean_std(values)
            out[k] = {"mean": mean, "std": std, "values": values}
    return out


def format_table(summary: dict, seeds: Sequence[int]) -> str:
    """The summary as a plain-text table: metric, mean ± std, each seed's value."""
    head = f"{'metric':<28} {'mean ± std':>20}  " + "  ".join(f"{'seed ' + str(s):>10}" for s in seeds)
    lines = [head, "-" * len(head)]
    for k, row in summary.items():
        lines.append(f"{k:<28} {row['mean']:>11.3f} ± {row['std']:<6.3f}  "
                     + "  ".join(f"{v:>10.3f}" for v in row["values"]))
    return "\n".join(lines)
