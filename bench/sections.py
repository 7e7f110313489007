"""The names the benchmark measures under and its report reads back: one list of each.

Kept apart from :mod:`bench.benchmark` (which measures) and :mod:`bench.report` (which writes
tables and plots) so that both import the names and neither imports the other.
"""
from __future__ import annotations

SECTIONS = {1: "training", 2: "decoding", 3: "attention", 4: "ceiling", 5: "profile", 6: "peer"}
PRECISIONS = ("fp32", "bf16")
MODELS = ("graph", "dense")
# Section 1's graph rows by engine: "graph" (the torch engine, the historical name) and "graph_dgl".
ENGINE_MODELS = {"torch": "graph", "dgl": "graph_dgl"}
DECODERS = ("graph_incremental", "graph_recompute", "dense_recompute", "dense_kv")
ATTENTION_METHODS = ("dense_sdpa", "dense_masked", "graph_complete", "graph_window", "graph_complete_dgl",
                     "graph_window_dgl")
# Model sizes: "copy" and "multi30k_cpu" are the shipped configs' models, "reference" the paper's base
# model, "tiny" a 2-layer d_model 32 one for tests (bench.benchmark.size_config).
SIZE_NAMES = ("copy", "multi30k_cpu", "reference", "tiny")

# What one run writes under its output directory (bench.report.write_results).
JSON_NAME, MD_NAME, FIG_DIR = "benchmark.json", "benchmark.md", "figures"
PLOTTED = ("training", "decoding", "attention")   # sections with a figure: FIG_DIR/benchmark_<name>.png


def output_names() -> list[str]:
    """Every file a run may write, relative to its output directory."""
    return [JSON_NAME, MD_NAME, *(f"{FIG_DIR}/benchmark_{name}.png" for name in PLOTTED)]
