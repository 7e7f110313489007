"""Command-line entry points; ``scripts/*.py`` are thin wrappers around these."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from transformer_graph.checkpoint import CheckpointError
from transformer_graph.config import ConfigError, load_config


def _fail(err: Exception) -> "None":
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)


def train_main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Train a graph Transformer from a YAML config.")
    ap.add_argument("--config", help="YAML config file (configs/*.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set model.layers=2 (repeatable)")
    ap.add_argument("--run-dir", help="where to write the run (default runs/<config>-<time>)")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    ap.add_argument("--no-test", action="store_true", help="skip the test-split evaluation at the end")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    from transformer_graph.train.distributed import Collectives, init_from_env, shutdown, worker_guard
    from transformer_graph.train.trainer import Trainer, TrainingError, format_summary

    dist_ctx = trainer = None
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").exists():
                raise ConfigError(f"{run_dir}: no config.yaml; is this a run directory made by scripts/train.py?")
            cfg = load_config(run_dir / "config.yaml", args.overrides)
        else:
            if not args.config:
                ap.error("--config is required unless --resume is given")
            cfg = load_config(args.config, args.overrides)
            run_dir = Path(args.run_dir or f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
            if (run_dir / "last.pt").exists():
                raise ConfigError(f"{run_dir} already holds a run (last.pt); use --resume {run_dir} "
                                  f"to continue it or choose another --run-dir")
        # Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set, 2+ processes): join the process group.
        dist_ctx = init_from_env(cfg.train.device)
        rank, world_size = (dist_ctx.rank, dist_ctx.world_size) if dist_ctx else (0, 1)
        if dist_ctx is not None and not args.resume and not args.run_dir:
            run_dir = Collectives(rank, world_size).broadcast(run_dir)  # the timestamped name of rank 0
        # A failing worker prints one message and exits at once, so torchrun stops the others.
        with worker_guard(dist_ctx, run_dir, expected=(ConfigError, CheckpointError, TrainingError, ValueError)):
            trainer = Trainer(cfg, run_dir, resume=bool(args.resume), rank=rank, world_size=world_size,
                              quiet=args.quiet)
            summary = trainer.fit()
        shutdown(dist_ctx)  # the test evaluation below is rank 0's alone: no peer should wait for it
        # A run stopped by a signal is meant to be resumed, not judged: no test pass.
        if not args.no_test and trainer.is_main and not summary["stopped_by"].startswith("signal"):
            from transformer_graph.inference.evaluation import evaluate_checkpoint
            # The run's final model: the averaged checkpoint when train.average_last > 1.
            final = next((p for p in (run_dir / "averaged.pt", run_dir / "best.pt") if p.exists()), None)
            if final is not None:
                summary["test"] = {"checkpoint": final.name,
                                   **evaluate_checkpoint(final, split="test")["metrics"]}
    except (ConfigError, CheckpointError, TrainingError, ValueError) as err:
        _fail(err)
    finally:
        shutdown(dist_ctx)
    if trainer.is_main:
        print(format_summary(summary))
    return summary


def evaluate_main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Evaluate a checkpoint on a split or on parallel text files.")
    ap.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt (or last.pt, averaged.pt)")
    ap.add_argument("--split", default="test", choices=("train", "valid", "test"))
    ap.add_argument("--beam", type=int, help="beam size (default: the run's eval.beam)")
    ap.add_argument("--alpha", type=float, help="length-penalty exponent (default: eval.alpha)")
    ap.add_argument("--src-file", help="raw source sentences, one per line (.gz ok)")
    ap.add_argument("--ref-file", help="raw reference translations, one per line (.gz ok)")
    ap.add_argument("--hyp-file", help="where to write the hypotheses (default beside the checkpoint)")
    ap.add_argument("--full-recompute", action="store_true",
                    help="decode by rerunning the whole prefix each step (the reference's way)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N sentences")
    ap.add_argument("--json", help="also write the metrics to this JSON file")
    args = ap.parse_args(argv)
    from transformer_graph.inference.evaluation import evaluate_checkpoint

    if bool(args.src_file) != bool(args.ref_file):
        ap.error("--src-file and --ref-file go together")
    try:
        result = evaluate_checkpoint(args.checkpoint, split=args.split, beam=args.beam, alpha=args.alpha,
                                     src_file=args.src_file, ref_file=args.ref_file, hyp_file=args.hyp_file,
                                     incremental=not args.full_recompute, limit=args.limit)
    except (ConfigError, CheckpointError, ValueError) as err:
        _fail(err)
    for k, v in result["metrics"].items():
        print(f"{k:<16} {v:.4f}" if isinstance(v, float) else f"{k:<16} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result
