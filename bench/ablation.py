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
after each row so a long run keeps what it has) and ``ablation.png``, in ``--out``
(default ``runs/ablation/``, beside the rows' run directories; ``docs/`` only when named).

Run from the checkout (config files and outputs are relative to the current directory)::

    python -m bench.ablation --tasks copy,sort --steps 284 --threads 1

Everything that can be checked is checked before the first row trains: the options, every
row's config with all overrides, and the output locations. Report files or run directories of
an earlier ablation are replaced only with ``--force`` (``--resume`` keeps its finished rows
and retrains the others in place).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from bench.outputs import check_output_dir
from transformer_graph.cli.errors import fail, user_errors
from transformer_graph.config import Config, ConfigError, load_config
from transformer_graph.files import atomic_write_text
from transformer_graph.graphs.structures import edges_per_token
from transformer_graph.train.trainer import Trainer, TrainingError
from transformer_graph.viz.figures import new_figure, save_figure

CONFIG_DIR = Path("configs")     # the task configs, relative to the checkout (the current directory)
REPORT_NAMES = {"json": "ablation.json", "md": "ABLATION.md", "png": "ablation.png"}
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


def row_config(row: Row, budget: float, threads: int | None, extra: list[str], config_dir: Path = CONFIG_DIR,
               steps: int | None = None) -> Config:
    """The row's effective config: the task's file, the row, the common budget, ``extra``.

    With ``steps`` every row trains exactly that many optimizer steps and ``budget`` is only a
    safety cap: on a shared machine equal steps are the fair compute budget."""
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


def evaluate_final(trainer: Trainer, valid_limit: int | None) -> dict:
    """Validation metrics of the model as training left it: the trainer's own validation
    (teacher-forced accuracy, greedy exact match or tokenised BLEU), with decoding switched on.

    The rows train with the decoding metrics off (epoch-end validation stays cheap and inside
    the budget); the final model is decoded once, here, on the first ``valid_limit`` sentences
    (all when None)."""
    ev = trainer.cfg.eval
    trainer.cfg = replace(trainer.cfg, eval=replace(ev, bleu=True, exact_match=True,
                                                    max_valid_sentences=valid_limit))
    start = time.perf_counter()
    metrics = trainer.validate()
    valid = trainer.exp.splits["valid"]
    out = {"valid_acc": metrics["acc"], "valid_nll": metrics["nll"], "valid_ppl": metrics["ppl"],
           "decoded_sentences": min(valid_limit or len(valid), len(valid)),
           "final_eval_s": time.perf_counter() - start}
    if trainer.exp.translation:
        out["valid_bleu"] = metrics["bleu"]
    else:
        out["valid_exact_match"] = metrics["exact_match"]
    return out


def run_row(row: Row, budget: float, threads: int | None, runs_dir: Path, *, extra: list[str] = (),
            valid_limit: int | None = None, config_dir: Path = CONFIG_DIR,
            steps: int | None = None) -> dict:
    """Train and evaluate one row in ``runs_dir/<row slug>`` (which must not exist yet); returns its numbers."""
    wall_start = time.perf_counter()
    cfg = row_config(row, budget, threads, list(extra), config_dir, steps)
    run_dir = runs_dir / row.slug
    check_output_dir(run_dir.parent, [run_dir.name], option="--runs-dir",
                     hint="remove it (the command line does so only with --force or --resume)")
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
        "`global_window`; see `transformer_graph/graphs/structures.py`).",
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
    atomic_write_text(path, "\n".join(lines))


def plot(results: list[dict], path: Path) -> None:
    """One row of panels per task: quality and training throughput of each configuration."""
    tasks = list(dict.fromkeys(r["task"] for r in results))
    fig = new_figure(13, 3.6 * len(tasks), layout="tight")
    axes = fig.subplots(len(tasks), 2, squeeze=False)
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
    save_figure(fig, path, dpi=110)


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def write_reports(results: list[dict], meta: dict, out: Path) -> dict[str, Path]:
    """Write ablation.json (always), ablation.png and ABLATION.md (when there are results) into ``out``."""
    paths = {kind: Path(out) / name for kind, name in REPORT_NAMES.items()}
    atomic_write_text(paths["json"], json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ablation",
        description="Aggregator x structure ablation: trains every row of the grid through the normal Trainer "
                    "under one budget per task and writes ABLATION.md, ablation.json and ablation.png to --out. "
                    "Run it from the checkout (configs/ and the outputs are relative to the current directory).")
    ap.add_argument("--tasks", default="copy,sort,multi30k", help="comma-separated: copy, sort, multi30k "
                    "(default all three)")
    ap.add_argument("--budget", default="300",
                    help="training seconds per row (train.max_time): N for every task, or per task "
                         "as copy=N,sort=N,multi30k=N (default 300)")
    ap.add_argument("--steps", default=None,
                    help="train every row exactly this many optimizer steps (--budget is then a cap): "
                         "N, or per task as copy=N,multi30k=N (default: no step limit)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (train.threads; default: each task config's)")
    ap.add_argument("--out", default="runs/ablation",
                    help="where ABLATION.md, ablation.json, ablation.png go (default runs/ablation; docs/ only "
                         "when named, e.g. --out docs --force to regenerate the tracked report)")
    ap.add_argument("--runs-dir", default="runs/ablation",
                    help="parent of the rows' run directories, one per row named by its slug "
                         "(default runs/ablation)")
    ap.add_argument("--config-dir", default=str(CONFIG_DIR),
                    help=f"directory of the task configs {', '.join(sorted({f for f, _ in TASKS.values()}))} "
                         f"(default {CONFIG_DIR})")
    ap.add_argument("--valid-limit", type=int, default=None,
                    help="decode only the first N validation sentences for exact match / BLEU (default all)")
    ap.add_argument("--restrict-cross", action="store_true",
                    help="apply window structures to encoder-decoder attention too (aligned window)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every row, e.g. --set data.path=data/multi30k, or for one "
                         "task's rows: --set multi30k:optim.warmup=400 (repeatable)")
    ap.add_argument("--rows", default=None,
                    help="run only these rows: comma-separated row names as printed (e.g. "
                         "multi30k-attention-complete,multi30k-attention-window-w-3)")
    ap.add_argument("--resume", action="store_true",
                    help="keep rows already in OUT/ablation.json with the same budget and overrides; retrain "
                         "the rest (replacing their run directories)")
    ap.add_argument("--force", action="store_true",
                    help="replace the report files in --out and the rows' run directories of an earlier "
                         "ablation (otherwise an error before any work)")
    return ap


def _kept_rows(out: Path, tasks: list[str], budgets: dict, steps: dict, extras: dict) -> dict[str, dict]:
    """--resume: the finished rows of OUT/ablation.json trained under the same budget and overrides."""
    path = out / REPORT_NAMES["json"]
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume: {path} is not a readable ablation.json ({err}); remove it or drop "
                         f"--resume") from None
    return {Row(r["task"], r["aggregator"], r["structure"], tuple(r["overrides"])).slug: r
            for r in old.get("results", [])
            if r["task"] in tasks and r.get("budget_s") == budgets[r["task"]]
            and r.get("budget_steps") == steps[r["task"]] and r.get("extra") == extras[r["task"]]}


def main(argv=None) -> list[dict]:
    """The command: user errors are one ``error: ...`` line and exit code 2, before any row trains."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    with user_errors():
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    rows = select_rows(grid(tasks, args.restrict_cross), args.rows)
    budgets = per_task("--budget", args.budget, tasks)
    steps = per_task("--steps", args.steps, tasks, int)
    extras = {t: task_overrides(args.extra, t) for t in tasks}
    for task in tasks:
        if budgets[task] is None or budgets[task] <= 0:
            fail(f"--budget: expected a positive number of seconds for {task}, got {budgets[task]}")
        if steps[task] is not None and steps[task] < 1:
            fail(f"--steps: expected a positive number of steps for {task}, got {steps[task]}")
    for option, value in (("--threads", args.threads), ("--valid-limit", args.valid_limit)):
        if value is not None and value < 1:
            fail(f"{option}: expected a positive integer, got {value}")
    config_dir, out, runs_dir = Path(args.config_dir), Path(args.out), Path(args.runs_dir)
    # Every row's config with all its overrides, now: a bad override for the last task is an error
    # before the first row trains, not after.
    for row in rows:
        try:
            row_config(row, budgets[row.task], args.threads, extras[row.task], config_dir, steps[row.task])
        except ValueError as err:
            fail(f"{row.slug}: {err}")
    done = _kept_rows(out, tasks, budgets, steps, extras) if args.resume else {}
    todo = [row for row in rows if row.slug not in done]
    reuse = args.force or args.resume
    check_output_dir(out, list(REPORT_NAMES.values()), replace=reuse,
                     hint="pass --force to replace them, --resume to keep its finished rows")
    old_runs = set(check_output_dir(runs_dir, [row.slug for row in todo], option="--runs-dir", replace=reuse,
                                    hint="pass --force (or --resume) to retrain those rows in them"))
    meta = {"budget_s": budgets, "steps": steps, "extra": extras, "threads": args.threads,
            "restrict_cross": args.restrict_cross, "machine": _machine(), "torch": torch.__version__,
            "command": "python -m bench.ablation " + shlex.join(argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results = []
    for i, row in enumerate(rows, 1):
        if row.slug in done:
            results.append(done[row.slug])
            print(f"[{i}/{len(rows)}] {row.slug}: kept from {out / REPORT_NAMES['json']}", flush=True)
            continue
        n_steps, budget = steps[row.task], budgets[row.task]
        print(f"[{i}/{len(rows)}] {row.slug} ({f'{n_steps} steps' if n_steps else f'{budget:g} s'}) ...",
              flush=True)
        if runs_dir / row.slug in old_runs:
            print(f"    replacing {runs_dir / row.slug} (--{'force' if args.force else 'resume'})", flush=True)
            shutil.rmtree(runs_dir / row.slug)
        try:
            r = run_row(row, budget, args.threads, runs_dir, extra=extras[row.task],
                        valid_limit=args.valid_limit, steps=n_steps, config_dir=config_dir)
        except (ConfigError, TrainingError, ValueError) as err:
            fail(f"{row.slug}: {err}")
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


if __name__ == "__main__":
    main()
