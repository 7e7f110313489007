"""The aggregator x structure ablation: is self-attention a fully connected GCN?

For each task (copy, sort, Multi30k) the grid trains, under the same wall-clock
budget (``train.max_time``) and seed:

* aggregator x {attention, mean, gat} on the complete graphs (the question itself:
  learned query-dependent weights vs fixed uniform weights vs additive GAT scores);
* attention x {window w=3, window w=8, global+window (w=3, 1 global token)} on the
  self-attention graphs (encoder and decoder; encoder-decoder attention stays
  complete unless ``--restrict-cross``), i.e. how much of the complete graph the
  Transformer needs.

Every row goes through the normal :class:`~transformer_graph.train.trainer.Trainer`
(the task's config file plus overrides), then the final model is evaluated once
on the validation split: teacher-forced token accuracy, greedy exact match
(copy/sort) or greedy tokenised BLEU (Multi30k). Training throughput is timed
around the training steps only (not validation), in token nodes per second.

Outputs: ``ABLATION.md`` (tables), ``ablation.json`` (every number, rewritten
after each row so a long run keeps what it has) and ``ablation.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from transformer_graph.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TASKS = {
    # task -> (config file, overrides that turn it into the task)
    "copy": ("copy.yaml", []),
    "sort": ("copy.yaml", ["data.task=sort"]),
    "multi30k": ("multi30k_cpu.yaml", []),
}
INTERPRETATION_START = "<!-- interpretation:start -->"
INTERPRETATION_END = "<!-- interpretation:end -->"
PLACEHOLDER = ("**TO BE WRITTEN after the full run** (the lead fills this in): what the numbers say "
               "about \"is self-attention a fully connected GCN?\".")


@dataclass(frozen=True)
class Row:
    """One configuration of the grid."""

    task: str
    aggregator: str
    structure: str                  # label shown in the table
    overrides: tuple[str, ...]      # config overrides that make this row

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.task}-{self.aggregator}-{self.structure}".lower()).strip("-")


def _structure_overrides(name: str, restrict_cross: bool, **params) -> tuple[str, ...]:
    kinds = ("enc", "dec", "cross") if restrict_cross else ("enc", "dec")
    return tuple(f"model.structure.{k}={name}" for k in kinds) + tuple(
        f"model.structure.{k}={v}" for k, v in params.items())


def grid(tasks: list[str], restrict_cross: bool = False) -> list[Row]:
    """The rows of the issue's experiment grid, task by task."""
    rows = []
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"--tasks: unknown task {task!r}; expected some of {', '.join(TASKS)}")
        for agg in ("attention", "mean", "gat"):
            rows.append(Row(task, agg, "complete", (f"model.aggregator={agg}",)))
        for w in (3, 8):
            rows.append(Row(task, "attention", f"window w={w}",
                            _structure_overrides("window", restrict_cross, window=w)))
        rows.append(Row(task, "attention", "global+window w=3 g=1",
                        _structure_overrides("global_window", restrict_cross, window=3, global_tokens=1)))
    return rows


class TimedTrainer(Trainer):
    """A Trainer that times and counts its training steps, so tokens/s leaves out
    epoch-end validation and checkpoint saving. The first ``WARMUP_STEPS`` steps are
    trained but not timed: they pay one-off costs (lazy imports, first kernel calls,
    optimizer state allocation) that would otherwise penalise whichever row runs first."""

    WARMUP_STEPS = 2
    steps_seen = 0
    train_nodes = 0          # every trained token node
    timed_nodes = 0          # token nodes of the timed steps
    timed_seconds = 0.0

    def train_step(self, train, group, pad, sums):
        nodes, start = sums["nodes"], time.perf_counter()
        loss = super().train_step(train, group, pad, sums)
        elapsed, new = time.perf_counter() - start, sums["nodes"] - nodes
        self.steps_seen += 1
        self.train_nodes += new
        if self.steps_seen > self.WARMUP_STEPS:
            self.timed_nodes += new
            self.timed_seconds += elapsed
        return loss

    @property
    def tokens_per_s(self) -> float | None:
        return self.timed_nodes / self.timed_seconds if self.timed_seconds > 0 else None


def row_config(row: Row, budget: float, threads: int | None, extra: list[str], config_dir: Path,
               steps: int | None = None):
    """The row's effective config: the task's file, the row, the common budget, ``extra``.

    With ``steps`` every row trains exactly that many optimizer steps and ``budget`` is only a
    safety cap: on a shared machine equal steps are the fair compute budget."""
    from transformer_graph.config import load_config

    name, task_overrides = TASKS[row.task]
    common = [f"train.max_time={budget}", "train.max_epochs=100000",
              f"train.max_steps={steps if steps else 'null'}",
              "train.average_last=1", "train.keep_last=1",
              # Epoch-end validation only computes the teacher-forced loss (cheap, inside the
              # budget); the decoding metrics are computed once, on the final model.
              "eval.bleu=false", "eval.exact_match=false"]
    if threads:
        common.append(f"train.threads={threads}")
    return load_config(config_dir / name, [*task_overrides, *row.overrides, *common, *extra])


def evaluate_final(trainer, valid_limit: int | None) -> dict:
    """Validation metrics of the model as training left it (greedy decoding)."""
    from transformer_graph.inference.evaluation import bleu_tokenized, decode_dataset, evaluate_loss, exact_match

    cfg, exp = trainer.cfg, trainer.exp
    model = trainer.model.eval()
    valid = exp.splits["valid"]
    d = cfg.data
    with torch.no_grad():
        metrics = evaluate_loss(model, valid, exp.spec, batch_size=None if d.max_tokens else d.batch_size,
                                max_tokens=d.max_tokens, device=trainer.device)
        limit = valid_limit or len(valid)
        pairs = valid.pairs[:limit]
        v = exp.tgt_vocab
        start = time.perf_counter()
        hyps = decode_dataset(model, [s for s, _ in pairs], exp.spec, sos=v.sos, eos=v.eos,
                              max_len_a=cfg.eval.max_len_a, max_len_b=cfg.eval.max_len_b)
    out = {"valid_acc": metrics["acc"], "valid_nll": metrics["nll"], "valid_ppl": metrics["ppl"],
           "decoded_sentences": len(pairs), "decode_s": time.perf_counter() - start}
    if exp.translation:
        refs = [t for _, t in exp.tokens["valid"][:limit]]
        out["valid_bleu"] = bleu_tokenized([v.decode(h) for h in hyps], refs).score
    else:
        out["valid_exact_match"] = exact_match(hyps, [t for _, t in pairs])
    return out


def run_row(row: Row, budget: float, threads: int | None, runs_dir: Path, *, extra: list[str] = (),
            valid_limit: int | None = None, config_dir: Path = ROOT / "configs",
            steps: int | None = None) -> dict:
    """Train and evaluate one row; returns its numbers."""
    from transformer_graph.graphs.structures import edges_per_token

    wall_start = time.perf_counter()
    cfg = row_config(row, budget, threads, list(extra), config_dir, steps)
    run_dir = runs_dir / row.slug
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a previous run of this very row: start clean
    trainer = TimedTrainer(cfg, run_dir, quiet=True)
    summary = trainer.fit()
    model = trainer.model
    train_lengths = [(n, m + 1) for n, m in trainer.exp.splits["train"].lengths]  # +1: <sos>
    edges = edges_per_token(trainer.exp.spec, train_lengths)
    result = {
        **asdict(row), "overrides": list(row.overrides), "extra": list(extra),
        "budget_s": budget, "budget_steps": steps,
        "threads": cfg.train.threads or torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "steps": summary["steps"], "epochs_completed": summary["epochs"],
        "stopped_by": summary["stopped_by"], "train_time_s": summary["train_time_s"],
        "train_tokens_per_s": trainer.tokens_per_s,
        "train_tokens": trainer.train_nodes,
        "edges_per_token": edges["total"],
        "edges_per_token_by_kind": {k: edges[k] for k in ("enc", "dec", "cross")},
        **evaluate_final(trainer, valid_limit),
        "run_dir": str(run_dir),
    }
    result["wall_s"] = time.perf_counter() - wall_start
    return result


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------
def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown_table(results: list[dict]) -> str:
    head = ("| task | aggregator | structure | valid acc | exact match / BLEU | train tokens/s "
            "| edges/token | params | steps | wall s |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        quality = (f"BLEU {r['valid_bleu']:.2f}" if "valid_bleu" in r
                   else f"{100 * r['valid_exact_match']:.1f}%")
        lines.append(f"| {r['task']} | {r['aggregator']} | {r['structure']} | {100 * r['valid_acc']:.1f}% "
                     f"| {quality} | {_fmt(r['train_tokens_per_s'], 0)} | {r['edges_per_token']:.2f} "
                     f"| {r['params']:,} | {r['steps']:,} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def _interpretation(path: Path) -> str:
    """Keep what someone already wrote between the markers when the report is regenerated."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if INTERPRETATION_START in text and INTERPRETATION_END in text:
            return text.split(INTERPRETATION_START, 1)[1].split(INTERPRETATION_END, 1)[0].strip()
    return PLACEHOLDER


def _budget(rows: list[dict]) -> str:
    """The budget the rows of one task trained under (a task's rows share one)."""
    return " / ".join(dict.fromkeys(f"{r['budget_steps']} optimizer steps" if r.get("budget_steps")
                                    else f"{r['budget_s']:g} s" for r in rows))


def write_markdown(results: list[dict], meta: dict, path: Path, png_name: str) -> None:
    threads = (f"{meta['threads']} CPU thread(s)" if meta["threads"]
               else "CPU threads as each task config's train.threads")
    by_task = {t: [r for r in results if r["task"] == t] for t in dict.fromkeys(r["task"] for r in results)}
    budgets = "; ".join(f"{task}: **{_budget(rows)}**" for task, rows in by_task.items())
    equal_steps = all(r.get("budget_steps") for r in results)
    extras = {task: sorted({x for r in rows for x in r.get("extra", [])}) for task, rows in by_task.items()}
    lines = [
        "# Ablation: aggregators and attention structures",
        "",
        "Is self-attention a fully connected GCN? Both are message passing on the same complete "
        "graph; they differ only in the edge weights: the Transformer's are learned and depend on "
        "the receiving token (softmax of q·k), a fully connected GCN's are fixed (1/in-degree, "
        "`mean`), and GAT's are learned but additive (LeakyReLU(aᵀ[Wh_i ‖ Wh_j]), `gat`). The "
        "second half of the grid keeps attention and removes edges instead (`window`, "
        "`global_window`; see `transformer_graph/structures.py`).",
        "",
        "## Setup",
        "",
        f"- Same training budget for every row of a task — {budgets} — "
        + ("(`train.max_steps`; the machine was shared with other jobs, so equal steps, not equal "
           "seconds, is the fair compute budget; tokens/s and wall time are reported beside them), "
           if equal_steps else "(`train.max_time` / `train.max_steps`), ")
        + f"same seed, {threads}; machine: {meta['machine']}; torch {meta['torch']}.",
    ]
    lines += [f"- Overrides for every {task} row: " + ", ".join(f"`{x}`" for x in xs) + "."
              for task, xs in extras.items() if xs]
    lines += [
        "- Each row is the task's config (`configs/copy.yaml`, the same with `data.task=sort`, "
        "`configs/multi30k_cpu.yaml`) plus the row's `model.aggregator` / `model.structure` "
        "overrides, trained by the normal `Trainer`. Structures restrict "
        + ("encoder, decoder and encoder-decoder attention (aligned window for the latter)."
           if meta["restrict_cross"] else
           "the encoder and decoder self-attention; encoder-decoder attention stays complete.")
        + " Decoder self-attention always uses the causal variant.",
        "- After the budget the final model is evaluated once on the validation split: "
        "teacher-forced token accuracy, and greedy exact match (copy, sort) or greedy tokenised "
        "BLEU (Multi30k).",
        "- *train tokens/s*: source + target token nodes per second of training steps (validation "
        "excluded). *edges/token*: attention edges (encoder + decoder + encoder-decoder, summed "
        "over one layer) per token node of the training set. *params*: distinct parameters. "
        "*wall s*: the whole row (setup, training, epoch-end validation, final evaluation). "
        f"The first {TimedTrainer.WARMUP_STEPS} steps of each row are trained but not timed.",
        f"- Command: `{meta['command']}`",
        "",
        "## Results",
        "",
    ]
    for task, rows in by_task.items():
        lines += [f"### {task}", "", markdown_table(rows), ""]
    lines += [f"![ablation]({png_name})", "", "## What the numbers say", "",
              INTERPRETATION_START, _interpretation(path), INTERPRETATION_END, ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def plot(results: list[dict], path: Path) -> None:
    """One row of panels per task: quality and training throughput of each configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(13, 3.6 * len(tasks)), squeeze=False)
    colours = {"attention": "#4c72b0", "mean": "#dd8452", "gat": "#55a868"}
    for ax_q, ax_s, task in zip(axes[:, 0], axes[:, 1], tasks):
        rows = [r for r in results if r["task"] == task]
        labels = [f"{r['aggregator']}\n{r['structure']}".replace("window w=", "window\nw=") for r in rows]
        colour = [colours.get(r["aggregator"], "grey") if r["structure"] == "complete" else "#8172b3"
                  for r in rows]
        x = range(len(rows))
        if all("valid_bleu" in r for r in rows):
            values, what = [r["valid_bleu"] for r in rows], "valid BLEU (greedy)"
        else:
            values, what = [100 * r.get("valid_exact_match", 0.0) for r in rows], "valid exact match %"
        ax_q.bar(x, values, color=colour)
        ax_q.plot(x, [100 * r["valid_acc"] for r in rows], "k_", markersize=18, label="token acc %")
        ax_q.set_title(f"{task} ({_budget(rows)} per row): {what} (bars), token accuracy % (lines)",
                       fontsize=10)
        top = max(max(values), 100 * max(r["valid_acc"] for r in rows))
        ax_q.set_ylim(0, 105 if what.endswith("%") else 1.1 * top + 1)
        ax_q.legend(fontsize=8, loc="best")
        speeds = [r["train_tokens_per_s"] or 0.0 for r in rows]
        ax_s.bar(x, speeds, color=colour)
        for i, (r, speed) in enumerate(zip(rows, speeds)):
            ax_s.annotate(f"{r['edges_per_token']:.1f} e/tok", (i, speed), ha="center", va="bottom",
                          fontsize=7)
        for i, value in enumerate(values):
            ax_q.annotate(f"{value:.1f}", (i, value), ha="center", va="bottom", fontsize=7)
        ax_s.set_title(f"{task}: training tokens/s (label: edges per token)", fontsize=10)
        for ax in (ax_q, ax_s):
            ax.set_xticks(list(x))
            ax.set_xticklabels(labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def write_reports(results: list[dict], meta: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "ablation.json", "md": out / "ABLATION.md", "png": out / "ablation.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n",
                             encoding="utf-8")
    if results:
        plot(results, paths["png"])
        write_markdown(results, meta, paths["md"], paths["png"].name)
    return paths


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def per_task(option: str, value: str | None, tasks: list[str], kind=float) -> dict[str, object]:
    """``N`` (every task) or ``task=N,task=N`` (each named task; unnamed ones get none).

    Tasks differ by orders of magnitude in cost (a copy step vs a Multi30k step), so one
    number cannot be a sensible budget for all of them; within a task every row still
    gets the same one."""
    if value is None:
        return {t: None for t in tasks}
    value = value.strip()
    if "=" not in value:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"{option}: expected a number or task=number pairs, got {value!r}") from None
        return {t: number for t in tasks}
    out: dict[str, object] = {t: None for t in tasks}
    for part in value.split(","):
        task, _, number = part.partition("=")
        task = task.strip()
        if task not in TASKS:
            raise ValueError(f"{option}: unknown task {task!r} in {value!r}; expected some of {', '.join(TASKS)}")
        try:
            out[task] = kind(number)
        except ValueError:
            raise ValueError(f"{option}: {task}={number!r} is not a {kind.__name__}") from None
    return out


def task_overrides(extra: list[str], task: str) -> list[str]:
    """The ``--set`` overrides that apply to ``task``: plain ``KEY=VALUE`` ones and
    ``TASK:KEY=VALUE`` ones naming this task."""
    out = []
    for item in extra:
        head, sep, _ = item.partition("=")
        if sep and ":" in head:
            name, _, rest = item.partition(":")
            if name not in TASKS:
                raise ValueError(f"--set {item!r}: unknown task {name!r}; expected some of {', '.join(TASKS)}")
            if name == task:
                out.append(rest)
        else:
            out.append(item)
    return out


def select_rows(rows: list[Row], names: str | None) -> list[Row]:
    """The rows named in ``--rows`` (all when None), in grid order."""
    if names is None:
        return rows
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {r.slug for r in rows}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ValueError(f"--rows: unknown row(s) {', '.join(map(repr, unknown)) or repr(names)}; the grid of "
                         f"these tasks has: {', '.join(sorted(known))}")
    return [r for r in rows if r.slug in wanted]


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description="Aggregator x structure ablation; writes ABLATION.md, "
                                             "ablation.json and ablation.png.")
    ap.add_argument("--tasks", default="copy,sort,multi30k", help="comma-separated: copy, sort, multi30k")
    ap.add_argument("--budget", default="300",
                    help="training seconds per row (train.max_time): N for every task, or per task "
                         "as copy=N,sort=N,multi30k=N")
    ap.add_argument("--steps", default=None,
                    help="train every row exactly this many optimizer steps (--budget is then a cap): "
                         "N, or per task as copy=N,multi30k=N")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (train.threads)")
    ap.add_argument("--out", default="docs/", help="where ABLATION.md, ablation.json, ablation.png go")
    ap.add_argument("--runs-dir", default="runs/ablation", help="run directories of the rows")
    ap.add_argument("--valid-limit", type=int, default=None,
                    help="decode only the first N validation sentences for exact match / BLEU")
    ap.add_argument("--restrict-cross", action="store_true",
                    help="apply window structures to encoder-decoder attention too (aligned window)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every row, e.g. --set data.path=data/multi30k, or for one "
                         "task's rows: --set multi30k:optim.warmup=400 (repeatable)")
    ap.add_argument("--rows", default=None,
                    help="run only these rows: comma-separated row names as printed (e.g. "
                         "multi30k-attention-complete,multi30k-attention-window-w-3)")
    ap.add_argument("--resume", action="store_true",
                    help="keep rows already in OUT/ablation.json with the same budget; run the rest")
    args = ap.parse_args(argv)
    from transformer_graph.config import ConfigError
    from transformer_graph.train.trainer import TrainingError

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        rows = select_rows(grid(tasks, args.restrict_cross), args.rows)
        budgets = per_task("--budget", args.budget, tasks)
        steps = per_task("--steps", args.steps, tasks, int)
        extras = {t: task_overrides(args.extra, t) for t in tasks}
    except ValueError as err:
        ap.error(str(err))
    for task in tasks:
        if budgets[task] is None or budgets[task] <= 0:
            ap.error(f"--budget: expected a positive number of seconds for {task}, got {budgets[task]}")
        if steps[task] is not None and steps[task] < 1:
            ap.error(f"--steps: expected a positive number of steps for {task}, got {steps[task]}")
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    meta = {"budget_s": budgets, "steps": steps, "extra": extras, "threads": args.threads,
            "restrict_cross": args.restrict_cross, "machine": _machine(), "torch": torch.__version__,
            "command": " ".join(["python scripts/ablation.py", *(argv if argv is not None else sys.argv[1:])]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    done: dict[str, dict] = {}
    if args.resume and (out / "ablation.json").exists():
        old = json.loads((out / "ablation.json").read_text())
        done = {Row(r["task"], r["aggregator"], r["structure"], tuple(r["overrides"])).slug: r
                for r in old.get("results", [])
                if r["task"] in tasks and r.get("budget_s") == budgets[r["task"]]
                and r.get("budget_steps") == steps[r["task"]] and r.get("extra") == extras[r["task"]]}
    results = []
    for i, row in enumerate(rows, 1):
        if row.slug in done:
            results.append(done[row.slug])
            print(f"[{i}/{len(rows)}] {row.slug}: kept from {out / 'ablation.json'}", flush=True)
            continue
        n_steps, budget = steps[row.task], budgets[row.task]
        print(f"[{i}/{len(rows)}] {row.slug} ({f'{n_steps} steps' if n_steps else f'{budget:g} s'}) ...",
              flush=True)
        try:
            r = run_row(row, budget, args.threads, runs_dir, extra=extras[row.task],
                        valid_limit=args.valid_limit, steps=n_steps)
        except (ConfigError, TrainingError, ValueError) as err:
            print(f"error: {row.slug}: {err}", file=sys.stderr)
            raise SystemExit(2)
        quality = (f"BLEU {r['valid_bleu']:.2f}" if "valid_bleu" in r
                   else f"exact {100 * r['valid_exact_match']:.1f}%")
        print(f"    acc {100 * r['valid_acc']:.1f}%, {quality}, {_fmt(r['train_tokens_per_s'], 0)} tok/s, "
              f"{r['edges_per_token']:.2f} edges/tok, {r['params']:,} params, {r['steps']} steps, "
              f"{r['wall_s']:.0f} s", flush=True)
        results.append(r)
        write_reports(results, meta, out)  # after every row: a long run keeps what it has
    paths = write_reports(results, meta, out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return results
