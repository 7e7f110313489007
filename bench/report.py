"""The benchmark's report: markdown tables, a JSON file and PNG plots.

:func:`write_results` turns the dict of :func:`bench.benchmark.run_benchmark`
into ``benchmark.md``, ``benchmark.json`` and ``figures/benchmark_*.png`` under
one directory. Figures come from :mod:`transformer_graph.viz.figures` (an Agg
canvas, no ``pyplot``: no GUI backend, nothing global).
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.sections import (ATTENTION_METHODS, DECODERS, ENGINE_MODELS, FIG_DIR, JSON_NAME, MD_NAME, PLOTTED,
                            SECTIONS)
from transformer_graph.files import atomic_write_text
from transformer_graph.viz.figures import new_figure, save_figure

COLORS = {"graph": "#1f77b4", "graph_dgl": "#31a354", "dense": "#ff7f0e", "graph_incremental": "#1f77b4",
          "graph_recompute": "#9ecae1",
          "dense_recompute": "#ff7f0e", "dense_kv": "#d62728", "dense_sdpa": "#ff7f0e", "dense_masked": "#d62728",
          "graph_complete": "#9ecae1", "graph_window": "#1f77b4", "graph_complete_dgl": "#c7e9c0",
          "graph_window_dgl": "#31a354"}


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------
def _machine_md(r: dict) -> list[str]:
    m = r["machine"]
    flags = ", ".join(f for f, present in m["cpu_flags"].items() if present) or "none of interest"
    lines = ["## Machine", "",
             f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs; flags: {flags}; "
             f"torch CPU capability {m['torch_cpu_capability']}",
             f"- threads: {m['threads']} (torch.set_num_threads), OMP_NUM_THREADS={m['omp_num_threads_env']}",
             f"- torch {m['torch']}, dgl {m['dgl']}, numpy {m['numpy']}, Python {m['python']}, {m['platform']}",
             f"- malloc: {'tuned' if m['malloc']['tuned'] else 'glibc default'} ({m['malloc']['libc']})",
             f"- load average (1, 5, 15 min) at start {m['load_average_at_start']}, "
             f"at end {m.get('load_average_at_end')}; run took {m.get('total_seconds', 0):.0f} s"]
    load = m["load_average_at_start"]
    if load and load[0] > 0.5:
        lines.append(f"- **warning**: the machine was not idle at the start (1-minute load {load[0]}); "
                     f"other processes competed for the CPU, so absolute timings are contaminated")
    if "data" in r:
        lines.append(f"- data: {r['data']['source']}")
    return lines + [""]


def _targets_md(r: dict) -> list[str]:
    if not r.get("targets"):
        return []
    rows = [[t["target"], t["goal"], t["value"], t["met"], t["note"]] for t in r["targets"]]
    return ["## Targets", ""] + _table(["target", "goal", "measured", "met", "note"], rows)


def _training_md(t: dict) -> list[str]:
    lines = ["## 1. Training step: graph vs dense", "",
             f"{t['batches']} batches of at most {t['max_tokens']} tokens ({t['tokens']} source + target "
             f"tokens, {t['sentences']} sentences; {t['data']}). The dense model pads each batch to its "
             f"longest source and target: {t['dense_padded_tokens']} padded positions, "
             f"{100 * t['padding_fraction']:.1f}% padding. Building a GraphBatch (ids, positions and the "
             f"three graphs) takes {t['collate_ms_per_batch']:.1f} ms per batch (not in the step times).", ""]
    # One column group per graph row (graph: the torch engine; graph_dgl: the dgl engine), each
    # against the dense model measured beside it; with the torch engine alone, graph vs dense.
    graphs = _graph_models(t)
    header = ["size", "precision", *(f"{g} tok/s" for g in graphs), "dense tok/s", *(f"{g} / dense" for g in graphs),
              *(f"{g} peak MB" for g in graphs), "dense peak MB", *(f"{g} / dense mem" for g in graphs),
              *(f"{g} step ms" for g in graphs), "dense step ms"]
    rows, agree = [], []
    others = [g for g in graphs if g != "graph"]
    for size, e in t["sizes"].items():
        for key, ratio in e["results"].items():
            if not key.startswith("ratio_"):
                continue
            prec = key.split("_", 1)[1]
            gs, d = [e["results"][f"{g}_{prec}"] for g in graphs], e["results"][f"dense_{prec}"]
            rows.append([size, prec, *(g["tokens_per_s"] for g in gs), d["tokens_per_s"],
                         *(ratio[f"speed_{g}_over_dense"] for g in graphs), *(g["peak_mb"] for g in gs),
                         d["peak_mb"], *(ratio[f"memory_{g}_over_dense"] for g in graphs),
                         *(g["step_ms"] for g in gs), d["step_ms"]])
        a = e["agreement"]
        agree.append([size, e["parameters"], a["graph_vs_dense_fp32_rel"], a["graph_bf16_vs_fp32_rel"],
                      a["dense_bf16_vs_fp32_rel"], *(a.get(f"{g}_vs_graph_fp32_rel") for g in others)])
    lines += _table(header, rows)
    lines += ["Same weights, same first batch, eval mode: relative difference of the per-token loss.", ""]
    lines += _table(["size", "parameters", "graph vs dense (fp32)", "graph bf16 vs fp32", "dense bf16 vs fp32",
                     *(f"{g} vs graph (fp32)" for g in others)], agree)
    lines += ["![training](figures/benchmark_training.png)", ""]
    return lines


def _graph_models(t: dict) -> list[str]:
    """The graph rows section 1 measured (``graph``, ``graph_dgl``), in the order of ENGINE_MODELS."""
    present = {r["model"] for e in t["sizes"].values() for k, r in e["results"].items() if not k.startswith("ratio_")}
    return [m for m in ENGINE_MODELS.values() if m in present]


def _decoding_md(d: dict) -> list[str]:
    s = d["settings"]
    lines = ["## 2. Decoding", "",
             f"{d['sentences']} sentences ({d['source_tokens']} source tokens); model: {d['model']}; "
             f"alpha {s['alpha']}, max length {s['max_len_a']} x source + {s['max_len_b']}. "
             f"Dense baseline: {d['dense_method']}.", ""]
    rows = []
    for label, r in d["results"].items():
        for name in (n for n in DECODERS if n in r):
            x = r[name]
            rows.append([label, name, x["sentences_per_s"], x["seconds"], x["generated_tokens"],
                         x["same_output_as_incremental"]])
        kv = r.get("speedup_incremental_over_dense_kv")   # absent from runs before the dense_kv row
        rows.append([label, "incremental speed-up", f"{r['speedup_incremental_over_recompute']:.2f}x vs graph "
                     f"recompute, {r['speedup_incremental_over_dense']:.2f}x vs dense recompute"
                     + ("" if kv is None else f", {kv:.2f}x vs dense with key/value cache"), None, None, None])
    lines += _table(["search", "decoder", "sentences/s", "seconds", "tokens generated", "same output as incremental"],
                    rows)
    return lines + ["![decoding](figures/benchmark_decoding.png)", ""]


def _attention_md(a: dict) -> list[str]:
    lines = ["## 3. Attention alone (forward + backward)", "",
             f"{a['tokens_per_batch']} tokens per batch (batch = tokens / length sequences), "
             f"d_model {a['d_model']}, {a['heads']} heads, no projections. dense_sdpa: "
             f"`scaled_dot_product_attention` without a mask (kernel `{a['dense_sdpa_kernel']}`); "
             f"dense_masked: with a boolean key padding mask as nn.Transformer passes it; graph_complete: "
             f"the complete graph; graph_window: |i - j| <= {a['window']}; both on the torch engine "
             f"(its sparse CSR kernels, transformer_graph/message_passing/csr.py), *_dgl: the same on the "
             f"dgl engine (DGL's kernels) "
             f"(measured up to length {a.get('dgl_max_len')}). Graph memory includes the graph structure "
             f"(DGL formats and CSR indices).", ""]
    by_len = {}
    for m in ATTENTION_METHODS:
        for row in a["results"][m]:
            by_len.setdefault(row["length"], {"batch": row["batch"]})[m] = row
    for key, title in (("median_ms", "Forward + backward time, ms"), ("peak_mb", "Peak memory, MB")):
        rows = [[n, by_len[n]["batch"]] + [by_len[n].get(m, {}).get(key, "skipped") for m in ATTENTION_METHODS]
                for n in sorted(by_len)]
        lines += [f"{title}:", ""] + _table(["length", "batch", *ATTENTION_METHODS], rows)
    srows = []
    for m in ("graph_window", "graph_complete", "graph_window_dgl", "graph_complete_dgl", "dense_masked"):
        s = a["summary"][m]
        srows.append([m, s["crossover_length_vs_dense_sdpa"], s["longest_common_length"],
                      s["speedup_vs_dense_sdpa_at_longest"], s["memory_ratio_vs_dense_sdpa_at_longest"],
                      s["memory_loglog_slope"]])
    srows.append(["dense_sdpa", None, None, None, None, a["summary"]["dense_sdpa"]["memory_loglog_slope"]])
    lines += ["Crossover: the shortest length from which the method is faster than dense_sdpa at every "
              "longer measured length. Memory slope: d log(memory) / d log(length) at fixed tokens "
              "(0: memory linear in sequence length, 1: quadratic).", ""]
    lines += _table(["method", "crossover length", "longest length", "speed-up vs dense_sdpa there",
                     "memory vs dense_sdpa there", "memory log-log slope"], srows)
    return lines + ["![attention](figures/benchmark_attention.png)", ""]


def _ceiling_md(c: dict) -> list[str]:
    lines = ["## 4. Machine ceiling and model FLOP/s", ""]
    kernels = [[f"{v['dtype']} n x n @ n x n, torch.mm", v["n"], v["gflops_per_s"]] for v in c["matmul"].values()]
    kernels += [[f"{v['dtype']} n x n @ n x n, {v['kernel']}", v["n"], v["gflops_per_s"]]
                for v in (c.get("onednn") or {}).values() if v]
    lines += _table(["matrix product", "n", "GFLOP/s"], kernels)
    if c["model_flops"]:
        lines += ["Model FLOP/s count the useful matrix-product FLOPs of a training step (no padding, "
                  "see bench/flops.py) per second; executed counts what the dense model "
                  "computes including padding. Fraction: model FLOP/s over the same-precision torch.mm "
                  "ceiling, and over the fastest kernel measured (the machine's ceiling).", ""]
        lines += _table(["size", "model", "precision", "model GFLOP/s", "executed GFLOP/s", "fraction of ceiling",
                         "fraction of fastest"],
                        [[r["size"], r["model"], r["precision"], r["model_gflops_per_s"], r["executed_gflops_per_s"],
                          r["fraction_of_ceiling"], r.get("fraction_of_fastest")] for r in c["model_flops"]])
    return lines


def _profile_md(p: dict) -> list[str]:
    lines = ["## 5. Profile of one training step", "",
             f"Size {p['size']}, {p['threads']} thread(s); self CPU time per op (torch.profiler).", ""]
    for name, run in p["runs"].items():
        lines += [f"### {name}: {run['total_self_ms']:.0f} ms for {run['tokens']} tokens", ""]
        lines += _table(["category", "share"], [[k, f"{100 * v:.1f}%"] for k, v in run["categories"].items()])
        lines += _table(["op", "self ms", "share", "calls"],
                        [[f"`{o['name']}`", o["self_ms"], f"{100 * o['share']:.1f}%", o["calls"]]
                         for o in run["top_ops"]])
    return lines


def _peer_md(p: dict) -> list[str]:
    lines = ["## 6. Peer: DGL's Transformer example on the copy task", ""]
    if "skipped" in p:
        return lines + [f"Skipped: {p['skipped']}.", ""]
    st = p["setting"]
    lines += [f"The tutorial's setting: {p['batches']} batches of {p['batch_sentences']} copy-task sentences, "
              f"{st['layers']} layer, d_model {st['d_model']}, d_ff {st['d_ff']}, {st['heads']} head, dropout "
              f"{st['dropout']}, label smoothing {st['label_smoothing']}; {p['threads']} thread, same batches, "
              f"rows taking turns, medians of {p['repeats']} passes; tokens = source + target nodes "
              f"({p['tokens']} per pass), batch building included (step-only rates beside). Example: "
              f"`{p['peer_dir']}`.", ""]
    names = {"peer": "DGL example", "graph_tutorial": "graph, tutorial setting",
             "graph_copy_yaml": "graph, configs/copy.yaml"}
    base = p["rows"]["peer"]
    rows = [[names.get(k, k), r["tokens_per_s"], r["tokens_per_s"] / base["tokens_per_s"], r["tokens_per_cpu_s"],
             r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"], r["step_tokens_per_s"], r["build_ms_per_batch"]]
            for k, r in p["rows"].items()]
    return lines + _table(["model", "tok/s", "vs example", "tok/CPU-s", "vs example (CPU)", "tok/s in steps",
                           "build ms/batch"], rows)


def markdown(results: dict) -> str:
    lines = ["# Benchmark results: graph vs dense Transformer", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    lines += ["Generated by `python -m bench.benchmark`; docs/BENCHMARKS.md explains the methods and every number.", ""]
    lines += _machine_md(results) + _targets_md(results)
    builders = {"training": _training_md, "decoding": _decoding_md, "attention": _attention_md,
                "ceiling": _ceiling_md, "profile": _profile_md, "peer": _peer_md}
    for name in SECTIONS.values():
        if name in results:
            lines += builders[name](results[name])
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------
def plot_training(t: dict, path: Path) -> None:
    fig = new_figure(10, 4, layout="tight")
    ax_speed, ax_mem = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    labels, groups, models = [], [], [*_graph_models(t), "dense"]
    for size, e in t["sizes"].items():
        for key in e["results"]:
            if key.startswith("ratio_"):
                prec = key.split("_", 1)[1]
                labels.append(f"{size}\n{prec}")
                groups.append({m: e["results"][f"{m}_{prec}"] for m in models})
    width = 0.76 / len(models)
    for i, m in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(groups))]
        ax_speed.bar(xs, [g[m]["tokens_per_s"] for g in groups], width, label=m, color=COLORS[m])
        ax_mem.bar(xs, [g[m]["peak_mb"] for g in groups], width, label=m, color=COLORS[m])
    for ax, title in ((ax_speed, "training tokens/s (higher is better)"), (ax_mem, "peak step memory, MB")):
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def plot_decoding(d: dict, path: Path) -> None:
    fig = new_figure(6, 4, layout="tight")
    ax = fig.add_subplot(1, 1, 1)
    searches = list(d["results"])
    width = 0.8 / len(DECODERS)
    for i, name in enumerate(DECODERS):
        xs = [j + (i - (len(DECODERS) - 1) / 2) * width for j in range(len(searches))]
        ax.bar(xs, [d["results"][s][name]["sentences_per_s"] for s in searches], width, label=name,
               color=COLORS[name])
    ax.set_xticks(range(len(searches)), searches)
    ax.set_ylabel("sentences/s")
    ax.set_title(f"decoding {d['sentences']} sentences", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def plot_attention(a: dict, path: Path) -> None:
    fig = new_figure(10, 4, layout="tight")
    ax_t, ax_m = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for m in ATTENTION_METHODS:
        rows = [r for r in a["results"][m] if "median_ms" in r]
        if not rows:
            continue
        xs = [r["length"] for r in rows]
        ax_t.plot(xs, [r["median_ms"] for r in rows], "o-", label=m, color=COLORS[m])
        ax_m.plot(xs, [max(r["peak_mb"], 1e-3) for r in rows], "o-", label=m, color=COLORS[m])
    for ax, title in ((ax_t, "forward + backward, ms"), (ax_m, "peak memory, MB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"sequence length ({a['tokens_per_batch']} tokens per batch)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def write_results(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write benchmark.json, benchmark.md and the figures; returns their paths by kind."""
    out = Path(out_dir)
    paths = {"json": out / JSON_NAME, "markdown": out / MD_NAME}
    atomic_write_text(paths["json"], json.dumps(results, indent=1, default=str) + "\n")
    atomic_write_text(paths["markdown"], markdown(results))
    plots = {"training": plot_training, "decoding": plot_decoding, "attention": plot_attention}
    for name in PLOTTED:
        if name in results:
            paths[f"plot_{name}"] = out / FIG_DIR / f"benchmark_{name}.png"
            plots[name](results[name], paths[f"plot_{name}"])
    return paths
