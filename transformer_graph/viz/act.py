"""Pictures of adaptive computation: how many steps each position takes.

``step_table`` runs a Universal Transformer over a dataset and counts, per side
(encoder/decoder) and position, the nodes that took 1, 2, ..., max_depth steps.
``step_figure`` draws that as stacked bars per position (the DGL tutorial's
view of ACT on the sort task), with the mean steps per position on top, and,
when the run's ``metrics.jsonl`` holds the per-epoch ``act`` events the trainer
logs, the fraction of nodes entering each step epoch by epoch (how computation
shrinks during training).

    tg-plot-act --checkpoint RUN/best.pt --out act.png [--split valid] [--limit N]

Figures come from :func:`transformer_graph.viz.figures.new_figure` (an Agg canvas:
no pyplot, no GUI backend, no global state).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from transformer_graph.data.datasets import Batcher, Dataset, collate
from transformer_graph.experiment import build_experiment, load_trained, trained_text
from transformer_graph.files import read_records
from transformer_graph.viz.figures import new_figure, save_figure

SIDES = (("enc", "src_pos", "encoder (source positions)"), ("dec", "tgt_pos", "decoder (target positions)"))


@torch.no_grad()
def step_table(model, dataset, spec, *, batch_size: int = 128, device="cpu") -> dict[str, np.ndarray]:
    """side -> integer array (positions, max_depth): nodes at position i that took k+1 steps."""
    if not hasattr(model, "act_stats"):
        raise ValueError(f"step_table: expected a Universal Transformer (model.kind: universal), "
                         f"got {type(model).__name__}")
    model.eval()
    depth = model.max_depth
    counts = {side: np.zeros((0, depth), dtype=np.int64) for side, _, _ in SIDES}
    for idx in Batcher(dataset.lengths, batch_size=batch_size, shuffle=False).batches(0):
        batch = collate(dataset, idx, spec, device)
        model(batch)
        for side, pos_name, _ in SIDES:
            pos = getattr(batch, pos_name).cpu().numpy()
            steps = model.act_stats[side].steps.cpu().numpy()
            table = counts[side]
            if pos.max() >= table.shape[0]:
                table = np.concatenate([table, np.zeros((pos.max() + 1 - table.shape[0], depth), np.int64)])
            np.add.at(table, (pos, steps - 1), 1)
            counts[side] = table
    return counts


def act_history(metrics_path) -> list[dict]:
    """The per-epoch ``act`` events of a run's metrics.jsonl (empty if there are none)."""
    return [r for r in read_records(metrics_path) if r.get("event") == "act"]


def step_figure(tables: dict[str, np.ndarray], history: list[dict] | None = None, title: str | None = None):
    """Stacked bars of the step distribution per position (one panel per side), and the
    fraction of nodes entering each step per epoch when ``history`` is given."""
    panels = len(tables) + (1 if history else 0)
    fig = new_figure(5.2 * panels, 3.8)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    depth = next(iter(tables.values())).shape[1]
    colors = colormaps["viridis"](np.linspace(0.0, 1.0, depth))
    names = {side: name for side, _, name in SIDES}
    for ax, (side, table) in zip(axes, tables.items()):
        totals = table.sum(1)
        keep = totals > 0
        positions = np.arange(table.shape[0])[keep]
        frac = table[keep] / totals[keep, None]
        bottom = np.zeros(len(positions))
        for k in range(depth):
            if frac[:, k].any():
                ax.bar(positions, frac[:, k], bottom=bottom, color=colors[k], width=0.85, label=f"{k + 1}")
            bottom += frac[:, k]
        ax.set_xlabel(names.get(side, side), fontsize=9)
        ax.set_ylabel("fraction of nodes", fontsize=9)
        ax.set_ylim(0, 1)
        mean = (table[keep] * np.arange(1, depth + 1)).sum(1) / totals[keep]
        twin = ax.twinx()
        twin.plot(positions, mean, color="crimson", marker=".", linewidth=1.2)
        twin.set_ylim(0, depth + 0.5)
        twin.set_ylabel("mean steps", color="crimson", fontsize=9)
        overall = float((table * np.arange(1, depth + 1)).sum() / max(table.sum(), 1))
        ax.set_title(f"{side}: steps per position (mean {overall:.2f})", fontsize=10)
        ax.legend(title="steps", fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.1, 1.0))
    if history:
        ax = axes[-1]
        epochs = [h.get("epoch", i) + 1 for i, h in enumerate(history)]  # logged before the epoch count moves on
        labelled = set()  # one legend entry per step (colour), from whichever side reaches it
        for side, style in (("enc", "-"), ("dec", "--")):
            for k in range(1, depth):  # every node enters step 1: start at step 2
                ys = [h.get(f"{side}_enter_{k + 1}") for h in history]
                if all(y is not None for y in ys) and any(ys):
                    ax.plot(epochs, ys, style, color=colors[k], marker=".",
                            label=None if k in labelled else f"step {k + 1}")
                    labelled.add(k)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel("fraction of nodes entering step", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.set_title("computation during training (enc solid, dec dashed)", fontsize=10)
        ax.legend(fontsize=7, ncol=2, title="entering", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_checkpoint(checkpoint, out, *, split: str = "valid", limit: int | None = None,
                    batch_size: int = 128) -> dict:
    """Load a Universal Transformer checkpoint, count steps on ``split`` and write ``out`` (PNG)."""
    model, cfg, vocabs, ckpt = load_trained(checkpoint)
    if cfg.model.kind != "universal":
        raise ValueError(f"{checkpoint}: model.kind is {cfg.model.kind!r}; step pictures need a "
                         f"'universal' model")
    exp = build_experiment(cfg, vocabs, trained_text(cfg, ckpt, checkpoint).subwords)
    dataset = exp.splits[split]
    if limit is not None:
        dataset = Dataset(dataset.pairs[:limit], *vocabs)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {checkpoint} has no sentences")
    tables = step_table(model, dataset, exp.spec, batch_size=batch_size)
    history = act_history(Path(checkpoint).parent / "metrics.jsonl")
    fig = step_figure(tables, history, title=f"ACT steps, {cfg.data.task} {split} ({len(dataset)} pairs)")
    out = save_figure(fig, out, dpi=120)
    mean = {side: float((t * np.arange(1, t.shape[1] + 1)).sum() / max(t.sum(), 1)) for side, t in tables.items()}
    return {"out": str(out), "mean_steps": mean, "epochs_in_history": len(history)}
