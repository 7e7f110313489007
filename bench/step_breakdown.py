"""One training step's time by kind of work, and a before/after plot of two such measurements.

Measure, from a checkout (another revision: export it and copy this file into its ``bench/``,
it uses only what the benchmark has long had):

    python -m bench.step_breakdown --size multi30k_cpu --json after.json
    git archive REV | tar -x -C /tmp/before && cp bench/step_breakdown.py /tmp/before/bench/ && \\
        (cd /tmp/before && python -m bench.step_breakdown --json /tmp/before.json)

Plot: ``python -m bench.step_breakdown --plot /tmp/before.json after.json --out step_breakdown.png``.

A step's CPU time (``time.process_time``, median of ``--repeats`` passes over ``--batches``
batches at ``--threads`` threads; CPU time because the machine is shared, and at 1 thread it
is the step's own work) is split by the shares of the benchmark's profile categories
(``bench.benchmark.categorize``: matrix products, generator log-softmax and loss, graph
attention, memory, dropout, optimizer, other) in one profiled pass. Batches and models are
those of ``python -m bench.benchmark`` section 1 (``bench.benchmark.TrainStep``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from bench.benchmark import TrainStep, _forget_patterns, build_size, categorize, load_bench_data
from bench.options import BenchOptions
from bench.profiling import top_ops
from transformer_graph.data.datasets import collate
from transformer_graph.files import atomic_write_text
from transformer_graph.train.malloc import tune_malloc
from transformer_graph.viz.figures import new_figure, save_figure


def measure(size: str, precisions: list[str], threads: int, batches: int, repeats: int) -> dict:
    tune_malloc()
    torch.set_num_threads(threads)
    opts = BenchOptions(train_batches=batches).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "Multi30k not available": synthetic data, as the benchmark says
        data = load_bench_data(opts)
    bs = [collate(data.train, idx) for idx in data.batches]
    out = {"size": size, "threads": threads, "batches": len(bs), "tokens": sum(b.num_tokens for b in bs),
           "data": data.source, "runs": {}}
    for prec in precisions:
        step = TrainStep(build_size(size, opts, len(data.vocab)), data.vocab.pad, prec)
        step(bs[0])
        times = []
        for _ in range(repeats):
            _forget_patterns(bs)
            start = time.process_time()
            for b in bs:
                step(b)
            times.append((time.process_time() - start) / len(bs))
        _forget_patterns(bs)
        _, _, shares = top_ops(lambda step=step: [step(b) for b in bs], n=1, category=categorize)
        ms = 1e3 * statistics.median(times)
        out["runs"][prec] = {"step_cpu_ms": ms, "passes_cpu_ms": [1e3 * t for t in times],
                             "categories_ms": {k: v * ms for k, v in shares.items()}}
        print(f"{size} {prec}: {ms:.0f} ms CPU per step; "
              + ", ".join(f"{k} {v:.0f}" for k, v in out["runs"][prec]["categories_ms"].items()), file=sys.stderr)
    return out


def plot(paths: list[str], labels: list[str], out: str) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    precisions = [p for p in runs[0]["runs"] if all(p in r["runs"] for r in runs)]
    categories = sorted({c for r in runs for run in r["runs"].values() for c in run["categories_ms"]},
                        key=lambda c: -runs[0]["runs"][precisions[0]]["categories_ms"].get(c, 0.0))
    fig = new_figure(9, 1.2 + 0.9 * len(precisions) * len(runs), layout="tight")
    ax = fig.add_subplot(1, 1, 1)
    colors = dict(zip(categories, ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                                   "#7f7f7f", "#bcbd22", "#17becf"]))
    ticks, names = [], []
    for i, prec in enumerate(precisions):
        for j, (r, label) in enumerate(zip(runs, labels)):
            y = i * (len(runs) + 1) + j
            left = 0.0
            for c in categories:
                w = r["runs"][prec]["categories_ms"].get(c, 0.0)
                ax.barh(y, w, left=left, color=colors[c], label=c if (i, j) == (0, 0) else None)
                left += w
            ax.text(left, y, f" {left:.0f} ms", va="center", fontsize=8)
            ticks.append(y)
            names.append(f"{prec} {label}")
    ax.set_yticks(ticks, names)
    ax.invert_yaxis()
    ax.set_xlabel(f"CPU ms per training step ({runs[0]['size']}, {runs[0]['threads']} thread(s), "
                  f"{runs[0]['tokens'] // runs[0]['batches']} tokens per batch)")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.step_breakdown", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="multi30k_cpu")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", metavar="PATH", help="write the measurement there")
    p.add_argument("--plot", nargs="+", metavar="JSON", help="plot these measurements (e.g. before after)")
    p.add_argument("--labels", default="before,after")
    p.add_argument("--out", default="step_breakdown.png", help="the plot's file (with --plot)")
    args = p.parse_args(argv)
    if args.plot:
        plot(args.plot, args.labels.split(","), args.out)
        return 0
    result = measure(args.size, args.precisions.split(","), args.threads, args.batches, args.repeats)
    text = json.dumps(result, indent=1)
    if args.json:
        atomic_write_text(args.json, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
