"""``tg-visualize``: attention pictures of a trained model, or a GIF of a run's attention snapshots.

A node classifier's checkpoint (karate, PATTERN, CLUSTER, Planetoid) gets pictures of graph
``--example`` of ``--split`` instead: the graph at its spring layout with attention on its edges,
per layer (:mod:`transformer_graph.viz.node_attention`), or the same in the HTML explorer."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.cli.checks import at_least
from transformer_graph.cli.errors import command
from transformer_graph.cli.help import make_parser
from transformer_graph.cli.threads import add_threads_option, apply_threads_option
from transformer_graph.config import Config, is_node_task
from transformer_graph.experiment import (build_experiment, checkpoint_config, graph_spec, trained_from_checkpoint,
                                          trained_text)
from transformer_graph.graphs.build import KINDS
from transformer_graph.outputs import check_output_dir, check_output_file
from transformer_graph.viz.attention import (example_attention, load_snapshots, text_attention, write_animation,
                                             write_figures)
from transformer_graph.viz.html import html_for_checkpoint, html_for_run
from transformer_graph.viz.node_attention import checkpoint_node_attention, resolve_top_k, write_graph_figures


def parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "tg-visualize",
        "Attention pictures of a trained model: for one example of a split (teacher-forced on its "
        "reference) or one raw sentence (on the model's greedy output), a heatmap grid of every head "
        "per layer and attention kind, and a bipartite drawing of encoder-decoder attention. With "
        "--animate, a GIF of the snapshots a run saved after each epoch (config viz.example, "
        "viz.every_epoch). With --html, one self-contained offline HTML page (the attention explorer: "
        "heatmaps, small multiples, the attention graph's real edges, ACT steps, PNG/SVG export) instead. "
        "A node-classification checkpoint (karate, pattern, cluster, planetoid) draws graph --example of "
        "--split at its spring layout with attention on its edges, one graph_layer<L>.png per layer (karate "
        "and Planetoid are one graph: --example 0, and --split picks the nodes that are scored).",
        ["tg-visualize --checkpoint runs/copy/best.pt --example 0 --out figs/",
         "tg-visualize --checkpoint runs/m30k/best.pt --text 'A man rides a bike.' --out figs/ --layer 2",
         "tg-visualize --animate runs/copy --out copy.gif --kind cross --layer 0 --head 0",
         "tg-visualize --checkpoint runs/copy/best.pt --example 3 --html copy.html",
         "tg-visualize --checkpoint runs/karate/best.pt --example 0 --split test --out figs/karate/",
         "tg-visualize --checkpoint runs/pattern/best.pt --example 5 --top-k 5 --html pattern.html",
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
    ap.add_argument("--top-k", type=int, metavar="K",
                    help="node-classification checkpoints: draw each node's K strongest in-edges (0: all; "
                         "default: all up to 400 edges, else 3, or 1 above 500 nodes)")
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
    at_least(0, example=args.example, layer=args.layer, head=args.head, top_k=args.top_k)
    if not args.fps > 0:
        raise ValueError(f"--fps: expected a positive number, got {args.fps}")
    if (args.out is None) == (args.html is None):
        ap.error("give exactly one of --out PATH (PNG figures / GIF) or --html OUT.html (the explorer)")
    if args.animate and args.top_k is not None:
        ap.error("--top-k applies to --checkpoint of a node-classification model, not to --animate")
    apply_threads_option(args)
    if args.html:  # the page builder checks its output location before any model is loaded
        path = (html_for_run(args.animate, args.html) if args.animate else
                html_for_checkpoint(args.checkpoint, args.html, example=args.example, split=args.split,
                                    text=args.text, layers=None if args.layer is None else [args.layer],
                                    top_k=args.top_k))
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

    ckpt = load_checkpoint(args.checkpoint)   # read once: its config says which kind of model it holds
    if is_node_task(checkpoint_config(ckpt, args.checkpoint)):
        return node_figures(args, ckpt)
    if args.top_k is not None:
        raise ValueError(f"--top-k: applies to node-classification checkpoints (edges drawn per node); "
                         f"{args.checkpoint} is a sequence model: drop --top-k")
    model, cfg, vocabs, ckpt = trained_from_checkpoint(ckpt, args.checkpoint)
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


def node_figures(args: argparse.Namespace, ckpt: dict) -> list[Path]:
    """``graph_layer<L>.png`` of a node classifier on graph ``--example`` of ``--split``."""
    cfg: Config = checkpoint_config(ckpt, args.checkpoint)
    where = f"{args.checkpoint} is a node-classification checkpoint (data.task {cfg.data.task!r})"
    if args.text is not None:
        raise ValueError(f"--text: {where}; its input is a graph, not a sentence: give --example N (graph N of "
                         f"--split; 0 for karate and Planetoid, one graph serving every split) instead")
    if args.kind:
        raise ValueError(f"--kind: {where} with one attention kind, self-attention on the graph; drop --kind")
    att, cfg = checkpoint_node_attention(ckpt, args.checkpoint, args.example, args.split,
                                         layers=None if args.layer is None else [args.layer])
    right, total = att.correct()
    what = "the graph" if att.transductive else f"{args.split} graph {args.example}"
    print(f"{cfg.data.task}: {what}, {att.num_real} nodes"
          + (f" + {att.num_global} global" if att.num_global else "")
          + f", {int(att.data_edges.shape[1])} directed edges; {args.split} nodes right: {right} / {total}")
    k = resolve_top_k(att, args.top_k)
    if k is not None:
        print(f"note: {len(att.src)} attention edges: drawing each node's {k} strongest in-edge(s) "
              f"(--top-k 0 draws all)", file=sys.stderr)
    written = write_graph_figures(att, args.out, layers=None if args.layer is None else [args.layer],
                                  top_k=args.top_k, caption=f"{cfg.data.task}, {what} ({cfg.model.aggregator})")
    for p in written:
        print(f"wrote {p}")
    return written


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
