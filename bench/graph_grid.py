"""The graph-data grid of issue 19: aggregator x structure x positional encoding on PATTERN / CLUSTER.

When is attention better than GCN's fixed weights? On a node-classification task whose graph is
given, every cell trains the task's config (``configs/pattern.yaml`` by default: ~100k parameters,
the benchmark's weighted loss and plateau schedule) with one change of the φ/□ block or of the
graph, for each seed:

* aggregator: ``attention`` (softmax of q·k on the edges), ``mean`` (fixed uniform weights: a GCN
  with mean normalisation), ``gat`` (additive scores), ``sage`` (GraphSAGE's mean beside the node's
  own state);
* structure: ``sparse`` (the graph's own edges), ``complete`` (every pair within a graph: full
  attention), ``global`` (the edges plus global nodes);
* positional encoding: Laplacian eigenvectors on (``pe``) or off (``nope``).

Each seed trains in its own ``tg-train`` process (``train_seeds``, as ``tg-reproduce``; an existing
run directory is resumed, so an interrupted grid continues where it stopped), the final model
(averaged.pt, else best.pt) is evaluated on the test split with the benchmark's metric, and each
cell reports mean ± sample std over the seeds beside the leaderboard's published numbers.

Run from the checkout::

    python -m bench.graph_grid --task pattern --seeds 1 2 3 --parallel 2 \\
        --set data.graphs_train=2000 --set train.max_time=1800 --set train.threads=1

Outputs in ``--out`` (default: the runs root, ``runs/graph_grid/<task>``): ``GRID.md`` (the table)
and ``grid.json`` (every number, rewritten after each cell). Every cell's config is checked before
the first one trains; report files outside the runs root are replaced only with ``--force``.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.outputs import check_output_dir
from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.cli.errors import user_errors
from transformer_graph.cli.threads import add_threads_option, apply_threads_option
from transformer_graph.config import SBM_TASKS, Config, load_config
from transformer_graph.data.graph_tasks import make_cluster, make_pattern
from transformer_graph.experiment import build_graph_model, graph_data_info
from transformer_graph.files import atomic_write_text
from transformer_graph.inference.evaluation import evaluate_checkpoint
from transformer_graph.train.reproduce import final_checkpoint, run_facts, summarize, train_seeds

AGGREGATORS = ("attention", "mean", "gat", "sage")
STRUCTURES = ("sparse", "complete", "global")
ENCODINGS = ("pe", "nope")

# Test accuracy (class-weighted, %) ± s.d. of the 100k-parameter models, benchmarking-gnns
# docs/08_leaderboards.md (4 seeds each there).
PUBLISHED = {
    "pattern": {"GatedGCN": (84.480, 0.122), "GAT": (75.824, 1.823), "GCN": (63.880, 0.074),
                "GraphSage": (50.516, 0.001)},
    "cluster": {"GatedGCN": (60.404, 0.419), "GAT": (57.732, 0.323), "GCN": (53.445, 2.029),
                "GraphSage": (50.454, 0.145)},
}


@dataclass(frozen=True)
class Cell:
    aggregator: str
    structure: str
    encoding: str          # "pe" or "nope"

    @property
    def name(self) -> str:
        return f"{self.aggregator}-{self.structure}-{self.encoding}"

    def overrides(self, pe_dim: int) -> list[str]:
        """The config changes of this cell (full attention includes each node itself: self loops)."""
        sets = [f"model.aggregator={self.aggregator}", f"model.graph_structure={self.structure}",
                f"model.pe_dim={pe_dim if self.encoding == 'pe' else 0}"]
        if self.structure == "complete":
            sets.append("model.self_loops=true")
        return sets


def _task_info(cfg: Config) -> dict:
    """The task's features and classes, from one generated graph (uncached: no dataset needed)."""
    make = make_pattern if cfg.data.task == "pattern" else make_cluster
    return graph_data_info(make(cfg.data.seed, 1, 1, 1, cache=False))


def parameter_count(cfg: Config, info: dict | None = None) -> int:
    """Parameters of the graph encoder ``cfg`` trains."""
    return sum(p.numel() for p in build_graph_model(cfg.model, info or _task_info(cfg)).parameters())


def matched_width(cfg: Config, target: int) -> tuple[int, int, int]:
    """``(d_model, d_ff, parameters)`` whose count is nearest ``target``: widths are multiples of
    ``model.heads`` and ``d_ff`` keeps the config's ratio to ``d_model``, so each aggregator gets
    the same budget (the leaderboard compares models at ~100k parameters; a ``mean`` block has no
    query/key projections and is ~25% smaller at the same width)."""
    m = cfg.model
    ratio = m.d_ff / m.d_model
    info = _task_info(cfg)
    best = None
    for d in range(m.heads, 8 * m.d_model + 1, m.heads):
        model = dataclasses.replace(m, d_model=d, d_ff=max(1, round(ratio * d)))
        n = parameter_count(dataclasses.replace(cfg, model=model), info)
        if best is None or abs(n - target) < abs(best[2] - target):
            best = (d, model.d_ff, n)
        if n > target:  # counts grow with the width: the nearest is this one or the one before
            break
    return best


def _choices(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ValueError(f"{option} {text!r}: expected a comma-separated list of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.graph_grid", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--task", choices=SBM_TASKS, default="pattern", help="the benchmark task")
    ap.add_argument("--config", help="config every cell starts from (default: configs/<task>.yaml)")
    ap.add_argument("--aggregators", default=",".join(AGGREGATORS), help="comma-separated aggregators")
    ap.add_argument("--structures", default=",".join(STRUCTURES), help="comma-separated structures")
    ap.add_argument("--encodings", default=",".join(ENCODINGS), help="pe (Laplacian encodings), nope, or both")
    ap.add_argument("--pe-dim", type=int, help="encoding width of the pe cells (default: the config's "
                                               "model.pe_dim, 2 where that is 0)")
    ap.add_argument("--params", type=int, metavar="N",
                    help="give every cell the width (model.d_model, d_ff in the config's ratio, multiples of "
                         "model.heads) whose parameter count is nearest N, e.g. 100000 (default: the config's "
                         "width for every cell)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="train.seed of each run")
    ap.add_argument("--parallel", type=int, default=1, help="runs trained at the same time")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (the budget: data.graphs_train, train.max_time, ...)")
    ap.add_argument("--runs", type=Path, help="root of the cells' run directories (default: runs/graph_grid/<task>)")
    ap.add_argument("--out", type=Path, help="directory of GRID.md and grid.json (default: the runs root)")
    ap.add_argument("--force", action="store_true", help="replace GRID.md / grid.json in --out")
    add_threads_option(ap, "torch CPU threads of each run's training (its train.threads) and of this process's "
                           "evaluations (default: the config's train.threads; for the evaluations the CPUs this "
                           "process may use that are idle when it starts)")
    return ap


def cell_result(cell: Cell, runs: dict[int, Path]) -> dict:
    """Test metrics per seed of one cell's final models, with their parameter counts and wall times."""
    per_seed = {}
    for seed, run_dir in runs.items():
        ckpt_path = final_checkpoint(run_dir)
        metrics = evaluate_checkpoint(ckpt_path, "test")["metrics"]
        ckpt = load_checkpoint(ckpt_path)
        params = sum(t.numel() for t in ckpt["model"].values())  # the encoder keeps no buffers
        per_seed[seed] = {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                          **run_facts(run_dir), "parameters": params, "d_model": ckpt["config"]["model"]["d_model"]}
    return {"cell": cell.name, "aggregator": cell.aggregator, "structure": cell.structure,
            "encoding": cell.encoding, "per_seed": {str(s): m for s, m in per_seed.items()},
            "summary": summarize(per_seed)}


def format_grid(task: str, results: list[dict], seeds, overrides) -> str:
    """GRID.md: one row per cell, the published rows below."""
    metric = "class_weighted_acc"
    lines = [f"# {task.upper()}: aggregator x structure x positional encoding", "",
             f"Seeds {', '.join(map(str, seeds))}; overrides: {' '.join(overrides) or 'none'}. Test "
             f"class-weighted accuracy (%) of each seed's final model, mean ± sample std.", "",
             "| aggregator | structure | PE | width | parameters | test acc | train s / seed | epochs |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["summary"]
        acc = s.get(metric)
        acc_text = f"{acc['mean']:.3f} ± {acc['std']:.3f}" if acc else "n/a"
        params = int(s["parameters"]["mean"]) if "parameters" in s else "n/a"
        width = int(s["d_model"]["mean"]) if "d_model" in s else "n/a"
        secs = f"{s['train_time_s']['mean']:.0f}" if "train_time_s" in s else "n/a"
        epochs = f"{s['epochs']['mean']:.0f}" if "epochs" in s else "n/a"
        lines.append(f"| {r['aggregator']} | {r['structure']} | {r['encoding']} | {width} | {params} | {acc_text} | "
                     f"{secs} | {epochs} |")
    lines += ["", "Published (benchmarking-gnns leaderboard, 100k parameters, test accuracy):", "",
              "| model | test acc |", "|---|---:|"]
    lines += [f"| {name} | {m:.3f} ± {sd:.3f} |" for name, (m, sd) in PUBLISHED[task].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors():
        return run(args)


def run(args: argparse.Namespace) -> list[dict]:
    config = args.config or f"configs/{args.task}.yaml"
    if args.parallel < 1:
        raise ValueError(f"--parallel: expected a positive integer, got {args.parallel}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds: {args.seeds} repeats a seed; expected distinct seeds")
    base = load_config(config, args.overrides)
    if base.data.task != args.task:
        raise ValueError(f"--config {config}: trains data.task {base.data.task!r}, not --task {args.task!r}")
    pe_dim = args.pe_dim if args.pe_dim is not None else (base.model.pe_dim or 2)
    if pe_dim < 1:
        raise ValueError(f"--pe-dim: expected a positive integer, got {pe_dim}")
    cells = [Cell(a, s, e) for a, s, e in itertools.product(
        _choices(args.aggregators, AGGREGATORS, "--aggregators"), _choices(args.structures, STRUCTURES, "--structures"),
        _choices(args.encodings, ENCODINGS, "--encodings"))]
    if args.params is not None and args.params < 1:
        raise ValueError(f"--params: expected a positive number of parameters, got {args.params}")
    sets = {}
    for cell in cells:  # every cell's config before the first one trains
        sets[cell] = [*args.overrides, *cell.overrides(pe_dim)]
        cfg = load_config(config, sets[cell])
        if args.params is not None:
            d, ff, n = matched_width(cfg, args.params)
            sets[cell] += [f"model.d_model={d}", f"model.d_ff={ff}"]
            print(f"{cell.name}: d_model {d}, d_ff {ff}: {n:,} parameters (--params {args.params:,})")
            load_config(config, sets[cell])
    root = args.runs or Path("runs") / "graph_grid" / args.task
    out = args.out or root
    check_output_dir(out, ["GRID.md", "grid.json"], replace=args.force or out == root)
    # Before the first run starts: torch's own default (every CPU of the machine) collapses when the
    # grid's trainings or anything else keep a core busy (issue 17's 9x; an evaluation of 2000 PATTERN
    # graphs crawled for minutes beside three 1-thread trainings).
    apply_threads_option(args)
    results: list[dict] = []
    for cell in cells:
        print(f"== {cell.name} ==", flush=True)
        runs = train_seeds(config, root / cell.name, args.seeds, sets[cell], parallel=args.parallel,
                           threads=args.threads)
        results.append(cell_result(cell, runs))
        acc = results[-1]["summary"].get("class_weighted_acc")
        if acc:
            print(f"{cell.name}: test class-weighted accuracy {acc['mean']:.3f} ± {acc['std']:.3f}", flush=True)
        out.mkdir(parents=True, exist_ok=True)  # after each cell: a long grid keeps what it has
        atomic_write_text(out / "grid.json", json.dumps({"task": args.task, "config": config,
                                                         "overrides": args.overrides, "seeds": args.seeds,
                                                         "pe_dim": pe_dim, "params": args.params,
                                                         "cells": results}, indent=2) + "\n")
        atomic_write_text(out / "GRID.md", format_grid(args.task, results, args.seeds, args.overrides))
    print(format_grid(args.task, results, args.seeds, args.overrides))
    print(f"wrote {out / 'GRID.md'} and {out / 'grid.json'}")
    return results


if __name__ == "__main__":
    main()
