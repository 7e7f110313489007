"""``tg-visualize``: attention pictures of a trained model, or a GIF of a run's attention snapshots."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from transformer_graph.cli.checks import at_least
from transformer_graph.cli.errors import command
from transformer_graph.cli.help import make_parser
from transformer_graph.cli.threads import add_threads_option, apply_threads_option
from transformer_graph.experiment import build_experiment, graph_spec, load_trained, trained_text
from transformer_graph.graphs.build import KINDS
from transformer_graph.outputs import check_output_dir, check_output_file
from transformer_graph.viz.attention import (example_attention, load_snapshots, text_attention, write_animation,
                                             write_figures)
from transformer_graph.viz.html import html_for_checkpoint, html_for_run


def parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "tg-visualize",
        "Attention pictures of a trained model: for one example of a split (teacher-forced on its "
        "reference) or one raw sentence (on the model's greedy output), a heatmap grid of every head "
        "per layer and attention kind, and a bipartite drawing of encoder-decoder attention. With "
        "--animate, a GIF of the snapshots a run saved after each epoch (config viz.example, "
        "viz.every_epoch). With --html, one self-contained offline HTML page (the attention explorer: "
        "heatmaps, small multiples, the attention graph's real edges, ACT steps, PNG/SVG export) instead.",
        ["tg-visualize --checkpoint runs/copy/best.pt --example 0 --out figs/",
         "tg-visualize --checkpoint runs/m30k/best.pt --text 'A man rides a bike.' --out figs/ --layer 2",
         "tg-visualize --animate runs/copy --out copy.gif --kind cross --layer 0 --head 0",
         "tg-visualize --checkpoint runs/copy/best.pt --example 3 --html copy.html",
         "tg-visualize --animate runs/copy --html copy_epochs.html"])
    ap.add_argument("--checkpoint", metavar="PATH",
                    help="a checkpoint written by tg-train (RUN_DIR/best.pt, ...); needs --example or --text")
    ap.add_argument("--example", type=int, metavar="N",
                    help="index of the example in --split, teacher-forced on its reference")
    ap.add_argument("--split", default="valid", choices=("train", "valid", "test"),
                    help="split that --example indexes")
    ap.add_argument("--text", help="a raw source sentence; the target is the model's greedy output")
    ap.add_argument("--animate", metavar="RUN_DIR",
                    help="instead of --checkpoint: make a GIF of RUN_DIR/attention/epoch*.pt")
    ap.add_argument("--out", metavar="PATH",
                    help="output directory for the figures, or the .gif file with --animate (this or --html)")
    ap.add_argument("--html", metavar="OUT.html",
                    help="write the interactive attention explorer (one self-contained, offline HTML file) "
                         "instead of PNGs; with --animate RUN_DIR one page with a slider over the epochs")
    ap.add_argument("--layer", type=int, help="draw only this layer (default: every layer; 0 with --animate)")
    ap.add_argument("--kind", nargs="+", choices=KINDS,
                    help="attention kinds to draw (default: all three; with --animate one, cross)")
    ap.add_argument("--head", type=int, default=0, help="head shown by --animate")
    ap.add_argument("--fps", type=float, default=2.0, help="frames per second of the --animate GIF")
    add_threads_option(ap)
    return ap


@command
def run(argv: list[str] | None = None) -> list[Path]:
    """Draw as the command line says; returns the files written."""
    ap = parser()
    args = ap.parse_args(argv)
    if bool(args.animate) == bool(args.checkpoint):
        ap.error("give either --checkpoint (with --example or --text) or --animate RUN_DIR")
    if args.checkpoint and (args.example is None) == (args.text is None):
        ap.error("--checkpoint needs exactly one of --example N or --text '...'")
    at_least(0, example=args.example, layer=args.layer, head=args.head)
    if not args.fps > 0:
        raise ValueError(f"--fps: expected a positive number, got {args.fps}")
    if (args.out is None) == (args.html is None):
        ap.error("give exactly one of --out PATH (PNG figures / GIF) or --html OUT.html (the explorer)")
    apply_threads_option(args)
    if args.html:  # the page builder checks its output location before any model is loaded
        path = (html_for_run(args.animate, args.html) if args.animate else
                html_for_checkpoint(args.checkpoint, args.html, example=args.example, split=args.split,
                                    text=args.text, layers=None if args.layer is None else [args.layer]))
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
        return [path]
    # The output location before any model is loaded: a file for the GIF, a directory for the figures.
    check_output_file(args.out, "--out") if args.animate else check_output_dir(args.out, "--out")
    if args.animate:
        kinds = args.kind or ["cross"]
        if len(kinds) != 1:
            ap.error("--animate draws one --kind at a time")
        path = write_animation(args.animate, args.out, kind=kinds[0], layer=args.layer or 0,
                               head=args.head, fps=args.fps)
        n = len(load_snapshots(args.animate))
        print(f"wrote {path} ({n} frame{'s' if n != 1 else ''})")
        if n == 1:
            print("note: only one snapshot; set viz.every_epoch: true to keep one per epoch", file=sys.stderr)
        return [path]

    model, cfg, vocabs, ckpt = load_trained(args.checkpoint)
    pipeline = trained_text(cfg, ckpt, args.checkpoint)
    with torch.no_grad():  # a scoped switch: callers (and tests) keep their grad mode
        if args.text is not None:
            maps = text_attention(model, cfg, vocabs, args.text, graph_spec(cfg.model), pipeline)
            caption = "greedy output"
            src_vocab = vocabs[0]
            unk = sum(i == src_vocab.unk for i in src_vocab.encode(maps.src_tokens))
            if unk:
                print(f"note: {unk} source token(s) are not in the vocabulary (<unk>)", file=sys.stderr)
        else:
            maps = example_attention(model, build_experiment(cfg, vocabs, pipeline.subwords), args.example, args.split)
            caption = f"{args.split} example {args.example}"
    print("source:", " ".join(maps.src_tokens))
    print("target:", " ".join(maps.tgt_out_tokens))
    written = write_figures(maps, args.out, layers=None if args.layer is None else [args.layer],
                            kinds=args.kind or KINDS, caption=caption)
    for p in written:
        print(f"wrote {p}")
    return written


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
