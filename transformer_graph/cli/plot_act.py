"""``tg-plot-act``: how many ACT steps each position of a Universal Transformer takes, as a PNG."""
from __future__ import annotations

import argparse
import json

from transformer_graph.cli.checks import at_least
from transformer_graph.cli.errors import command
from transformer_graph.cli.help import make_parser
from transformer_graph.cli.threads import add_threads_option, apply_threads_option
from transformer_graph.outputs import check_output_file
from transformer_graph.viz.act import plot_checkpoint


def parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "tg-plot-act",
        "Run a Universal Transformer checkpoint (model.kind: universal) over a split and draw, per "
        "encoder and decoder position, the fraction of nodes that took 1, 2, ... steps and the mean "
        "steps; when the run's metrics.jsonl logged per-epoch ACT events, also how the computation "
        "changed during training. Prints the mean steps per side as JSON.",
        ["tg-plot-act --checkpoint runs/sort_ut/averaged.pt --out act.png",
         "tg-plot-act --checkpoint runs/sort_ut/best.pt --out act_test.png --split test --limit 200"])
    ap.add_argument("--checkpoint", required=True, metavar="PATH",
                    help="RUN_DIR/best.pt, last.pt or averaged.pt of a universal model (required)")
    ap.add_argument("--out", required=True, metavar="PNG", help="the PNG file to write (required)")
    ap.add_argument("--split", default="valid", choices=("train", "valid", "test"),
                    help="split whose sentences are counted")
    ap.add_argument("--limit", type=int, metavar="N", help="use only the first N pairs of the split (default: all)")
    add_threads_option(ap)
    return ap


@command
def run(argv: list[str] | None = None) -> dict:
    """Plot as the command line says; returns ``{"out", "mean_steps", "epochs_in_history"}``."""
    args = parser().parse_args(argv)
    at_least(1, limit=args.limit)
    check_output_file(args.out, "--out")
    apply_threads_option(args)
    result = plot_checkpoint(args.checkpoint, args.out, split=args.split, limit=args.limit)
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
