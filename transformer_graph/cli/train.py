"""``tg-train``: train a graph Transformer from a YAML config, or resume a run.

:func:`run` is the command in-process (returns the run summary); :func:`main` is the
console script (returns the exit code).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from transformer_graph.cli.errors import USER_ERRORS, command, readable_warnings, user_errors
from transformer_graph.cli.help import make_parser
from transformer_graph.config import ConfigError, load_config
from transformer_graph.inference.evaluation import evaluate_checkpoint
from transformer_graph.train.distributed import Collectives, finish_worker, init_from_env, shutdown, worker_guard
from transformer_graph.train.trainer import Trainer, format_summary

def parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "tg-train",
        "Train a graph Transformer from a YAML config (configs/*.yaml), or continue a run with "
        "--resume. Writes RUN_DIR/config.yaml (the config with every override applied), "
        "metrics.jsonl, TensorBoard events, last.pt and best.pt, then evaluates the final model "
        "on the test split. Ctrl-C or SIGTERM finishes the current step and saves last.pt (a second one "
        "stops at once, but never inside a save); last.pt is also written every train.save_every_minutes "
        "(default 10) or train.save_every_steps. A new run needs a new or empty --run-dir; --resume checks "
        "that the run's model, data and vocabulary are unchanged (docs/RELIABILITY.md). "
        "Under torchrun it trains data-parallel, one process per device (sequence tasks only).",
        ["tg-train --config configs/copy.yaml",
         "tg-train --config configs/sort.yaml --set model.layers=2 --run-dir runs/sort2",
         "tg-train --resume runs/sort2 --set train.max_epochs=30",
         "tg-train --config configs/karate.yaml    # node classification, in seconds",
         "torchrun --standalone --nproc-per-node 2 scripts/train.py --config configs/copy.yaml",
         "python -m transformer_graph.config    # every config key with its default and meaning"])
    ap.add_argument("--config", metavar="YAML",
                    help="YAML config file, e.g. configs/copy.yaml (required unless --resume is given)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config value, e.g. --set model.layers=2; repeatable, applied in "
                         "order and validated like the file (default: none)")
    ap.add_argument("--run-dir", metavar="DIR",
                    help="where to write the run: a new or empty directory "
                         "(default: runs/<config name>-<YYYYmmdd-HHMMSS>)")
    ap.add_argument("--resume", metavar="RUN_DIR",
                    help="continue the run in RUN_DIR exactly where its last.pt stopped (or, if that is "
                         "damaged, its newest intact checkpoint), with its own config.yaml plus any --set of "
                         "a key that may change on resume, e.g. train.max_epochs (default: start a new run)")
    ap.add_argument("--no-test", action="store_true",
                    help="skip the test-split evaluation of the final model at the end")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--threads", type=int, metavar="N",
                    help="torch CPU threads per process: the same as --set train.threads=N (default: the "
                         "config's train.threads; null there: the CPUs this process may use, per affinity and "
                         "cgroup quota, that are idle at start-up, shared among torchrun's local processes)")
    return ap


@command
def run(argv: list[str] | None = None) -> dict:
    """Train as the command line says; returns the run summary (``summary["test"]``: test metrics)."""
    ap = parser()
    args = ap.parse_args(argv)
    if args.resume and args.config:
        ap.error("--resume continues a run with its own config.yaml; drop --config (change values with --set)")
    if not args.resume and not args.config:
        ap.error("--config is required unless --resume is given")
    if args.threads is not None:  # validated and recorded (config.yaml) like any override
        args.overrides = [*args.overrides, f"train.threads={args.threads}"]

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; is this a run directory made by "
                              f"tg-train (scripts/train.py)?")
        cfg = load_config(run_dir / "config.yaml", args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
        # A new run needs a new or empty directory: the Trainer checks that before any work.
        run_dir = Path(args.run_dir or f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    # Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set, 2+ processes): join the process group.
    dist_ctx = init_from_env(cfg.train.device)
    try:
        rank, world_size = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx else (0, 1)
        if dist_ctx is not None and not args.resume and not args.run_dir:
            run_dir = Collectives(rank, world_size).broadcast(run_dir)  # the timestamped name of rank 0
        # A failing worker prints one message and exits at once, so torchrun stops the others:
        # user errors get their line from the one handler inside, and the guard turns its
        # SystemExit(2) into an immediate exit; the guard itself explains a lost peer.
        with worker_guard(dist_ctx, run_dir, expected=USER_ERRORS), user_errors(), readable_warnings():
            trainer = Trainer(cfg, run_dir, resume=bool(args.resume), rank=rank, world_size=world_size,
                              quiet=args.quiet)
            summary = trainer.fit()
            # The DDP wrapper holds the process group: free it while the group still stands.
            trainer.model = trainer.raw_model
        shutdown(dist_ctx, sync=True)  # the test evaluation below is rank 0's alone: no peer should wait for it
        # A run stopped by a signal is meant to be resumed, not judged: no test pass.
        # Ctrl-C here is no longer the trainer's: it interrupts the evaluation (exit code 130).
        if not args.no_test and trainer.is_main and not summary["stopped_by"].startswith("signal"):
            final = trainer.final_checkpoint()
            if final is not None:
                summary["test"] = {"checkpoint": final.name,
                                   **evaluate_checkpoint(final, split="test")["metrics"]}
    finally:
        shutdown(dist_ctx)
    if trainer.is_main:
        print(format_summary(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    run(argv)
    finish_worker(0)  # a torchrun worker leaves here, past the backend's shutdown races
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
