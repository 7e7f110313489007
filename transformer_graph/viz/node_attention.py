"""Attention pictures of node classifiers: the graph drawn with its own layout, attention on its edges.

A :class:`~transformer_graph.nn.graph_encoder.GraphEncoder` run with ``return_attention=True`` gives,
per layer, one (num_edges, heads) weight tensor in the edge order of its batch's attention graph
(:func:`~transformer_graph.graphs.node_graphs.batch_graphs`): the softmax weights of ``attention`` and
``gat``, the fixed 1 / in-degree of ``mean`` and ``sage`` (the same in every head). :func:`node_attention`
keeps them for one graph of a split, with the labels, the predictions and the nodes the split scores.

How a graph is drawn (these PNGs and the explorer's graph view, :mod:`transformer_graph.viz.html`):

* **layout**: networkx's spring layout of the *data* graph's edges (never the attention structure's:
  ``complete`` would make a featureless ball), seeded (:data:`LAYOUT_SEED`), so a graph is drawn the
  same way every time, its longer axis horizontal; the global nodes of structure ``global`` are grey
  squares in a row above it.
* **edges**: edge j -> i is the half of the segment i–j that touches the receiver i, width and opacity
  = its weight over the panel's largest weight: the halves at a node are what it takes from each
  neighbour (an undirected edge's two directions never overlap). The ring around a node is the
  weight of its self loop.
* **nodes**: filled with the true class, outlined red where the prediction is wrong; in a transductive
  task (karate, Planetoid: one graph serves every split) the nodes outside the split are faded.
* **legibility**: a graph with more than :data:`EDGE_BUDGET` edges (a PATTERN graph has thousands)
  draws only each node's :data:`TOP_K` strongest in-edges (``top_k`` chooses; 0 draws all of them).

One figure per layer, ``graph_layer{L}.png``: the mean over heads, then one panel per head; a model
whose heads all carry the same weights (``mean``, ``sage``, or one head) gets one panel.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import torch
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D

from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.config import Config
from transformer_graph.experiment import (NodeExperiment, build_node_experiment, checkpoint_config,
                                          trained_nodes_from_checkpoint)
from transformer_graph.viz import figures as plots
from transformer_graph.viz.attention import eval_mode

LAYOUT_SEED = 0        # spring_layout's seed: the same picture of a graph on every run
EDGE_BUDGET = 400      # edges (self loops aside) drawn in full; above it each node's top-k in-edges
TOP_K = 3              # in-edges per node drawn for a graph above the budget ...
HUGE_GRAPH = 500       # ... and 1 for a graph of more nodes than this (Planetoid: thousands)
LABEL_NODES = 60       # node ids are written on the nodes of graphs up to this size
LAYOUT_FULL = 3000     # graphs up to this size get networkx's full 50 spring-layout iterations
GLOBAL_GAP = 0.15      # the row of global nodes sits this far above the graph (its width is 1)
# matplotlib's tab10, the class colours of the PNGs and the explorer page alike (the page gets them in its data).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
EDGE_COLOR = "#2457c5"
WRONG_COLOR = "#d62728"
GLOBAL_COLOR = "#7f7f7f"
SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------
@dataclass
class NodeAttention:
    """Every layer's and head's attention of a node classifier on one graph.

    Nodes are numbered as in its batch: the graph's nodes, then its global nodes. ``src``/``dst`` are
    the attention graph's edges (key -> query: messages flow src -> dst) in its edge order, which the
    weights (layers, heads, num_edges) follow. ``scored``: the nodes ``split`` scores (the split's mask of
    a transductive task, every node of an inductive one).
    """

    src: torch.Tensor
    dst: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor
    preds: torch.Tensor
    scored: torch.Tensor
    data_edges: torch.Tensor      # (2, E) the data graph's own edges: what the layout is computed from
    num_real: int
    num_global: int
    num_classes: int
    split: str
    example: int
    transductive: bool

    @property
    def num_nodes(self) -> int:
        return self.num_real + self.num_global

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[1])

    def node_names(self) -> list[str]:
        """``0 .. n-1`` for the graph's nodes, ``g0, g1, ...`` for its global nodes."""
        return [str(i) for i in range(self.num_real)] + [f"g{j}" for j in range(self.num_global)]

    def check_layer(self, layer: int) -> int:
        n = self.num_layers
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
            raise ValueError(f"layer: {layer!r} does not exist; the model has {n} layer(s), expected 0..{n - 1}")
        return layer

    def head_weights(self, layer: int, head: int | str) -> torch.Tensor:
        """(num_edges,) weights of one head of ``layer``, or their mean over heads (``head="mean"``)."""
        w = self.weights[self.check_layer(layer)]
        if head == "mean":
            return w.mean(0)
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < self.num_heads:
            raise ValueError(f"head: {head!r} does not exist; the model has {self.num_heads} head(s), "
                             f"expected 0..{self.num_heads - 1} or 'mean'")
        return w[head]

    def same_heads(self, layer: int) -> bool:
        """Whether every head of ``layer`` carries the same weights (mean/sage blocks, one head)."""
        w = self.weights[self.check_layer(layer)]
        return bool((w == w[:1]).all())

    def correct(self) -> tuple[int, int]:
        """(right, scored): the predictions of the split's nodes."""
        right = (self.preds == self.labels) & self.scored
        return int(right.sum()), int(self.scored.sum())


def check_graph_example(exp: NodeExperiment, index: int, split: str = "valid") -> None:
    """A clear error for a split that does not exist or a graph index outside it."""
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    n = len(exp.graphs(split))
    name = exp.dataset.name
    if n == 0:
        raise ValueError(f"split: the {split} split of {name} has no graphs to visualise; choose another --split")
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < n:
        return
    if exp.transductive:
        raise ValueError(f"example: index {index!r} is out of range for the {split} split: {name} is one graph "
                         f"that serves every split (the {split} split is a mask of its nodes), so the only "
                         f"example is 0")
    raise ValueError(f"example: index {index!r} is out of range for the {split} split of {name} ({n} graph(s), "
                     f"expected 0..{n - 1})")


@torch.no_grad()
def node_attention(model, exp: NodeExperiment, index: int, split: str = "valid") -> NodeAttention:
    """Run ``model`` (in eval mode: no dropout, no PE sign flips) on graph ``index`` of ``split`` and
    keep its attention, labels and predictions."""
    check_graph_example(exp, index, split)
    sample = exp.graphs(split)[index]
    batch = exp.batch([sample], next(model.parameters()).device)
    with eval_mode(model):
        logits, att = model(batch, return_attention=True)
    per_layer = att.get("enc") or []
    if not per_layer or any(w is None for w in per_layer):
        raise ValueError("model: its blocks report no attention weights (need_weights gave None); nothing to draw")
    src, dst = (t.long().cpu() for t in batch.graph.edges())
    weights = torch.stack([w.detach().float().cpu().reshape(len(src), -1).t() for w in per_layer])
    scored = (batch.masks[split].cpu() if exp.transductive and batch.masks is not None
              else torch.ones(batch.num_real, dtype=torch.bool))
    return NodeAttention(src, dst, weights, batch.y.cpu(), logits.argmax(1).cpu(), scored,
                         sample.edge_index.cpu(), batch.num_real, batch.num_global, exp.dataset.num_classes,
                         split, index, exp.transductive)


def checkpoint_node_attention(ckpt: dict, path, index: int, split: str = "valid",
                              layers: Sequence[int] | None = None) -> tuple[NodeAttention, Config]:
    """:func:`node_attention` of a node task's checkpoint dict (already loaded from ``path``) on graph
    ``index`` of ``split``; ``layers`` (indices, or None for all) are checked before the model runs."""
    depth = checkpoint_config(ckpt, path).model.layers
    for layer in layers or []:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < depth:
            raise ValueError(f"layer: {layer!r} does not exist; the model has {depth} layer(s), "
                             f"expected 0..{depth - 1}")
    model, cfg, _, _ = trained_nodes_from_checkpoint(ckpt, path)
    exp = build_node_experiment(cfg)
    check_graph_example(exp, index, split)
    return node_attention(model, exp, index, split), cfg


def load_node_attention(path, index: int, split: str = "valid") -> tuple[NodeAttention, Config]:
    """:func:`checkpoint_node_attention` of the checkpoint file at ``path``."""
    return checkpoint_node_attention(load_checkpoint(path), path, index, split)


# --------------------------------------------------------------------------
# Layout and what is drawn
# --------------------------------------------------------------------------
def spring_positions(att: NodeAttention, seed: int = LAYOUT_SEED) -> np.ndarray:
    """(num_nodes, 2) positions, y up: the graph's nodes by a seeded spring layout of its own edges,
    turned so its longer axis is horizontal (a picture fills a landscape panel) and scaled to x in
    [0, 1], y in [0, h] with h <= 1; global nodes in a row GLOBAL_GAP above them."""
    g = nx.Graph()
    g.add_nodes_from(range(att.num_real))
    g.add_edges_from(att.data_edges.t().tolist())
    layout = nx.spring_layout(g, seed=seed, iterations=layout_iterations(att.num_real))
    xy = np.array([layout[i] for i in range(att.num_real)], dtype=float).reshape(att.num_real, 2)
    xy -= xy.mean(0)
    if att.num_real > 2:   # principal axes: the spread along x is at least that along y
        _, _, vt = np.linalg.svd(xy, full_matrices=False)
        xy = xy @ vt.T
    lo, extent = xy.min(0), np.ptp(xy, axis=0)
    span = max(float(extent.max()), 1e-12)
    xy = (xy - lo) / span + np.where(extent > 0, 0.0, 0.5)   # a single node (or a line) sits in the middle
    top = float(xy[:, 1].max()) if att.num_real else 0.0
    glob = np.stack([np.arange(1, att.num_global + 1) / (att.num_global + 1),
                     np.full(att.num_global, top + GLOBAL_GAP)], 1)
    return np.concatenate([xy, glob]).astype(float)


def layout_iterations(num_nodes: int) -> int:
    """networkx's 50 spring iterations up to LAYOUT_FULL nodes; fewer above, because each costs
    O(n^2) (Cora, 2708 nodes: ~15 s for 50 here; PubMed, 19717: 5 iterations, under a minute)."""
    if num_nodes <= LAYOUT_FULL:
        return 50
    return max(5, int(50 * (LAYOUT_FULL / num_nodes) ** 2))


def check_top_k(top_k: int | None) -> int | None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k: expected None (automatic), 0 (every edge) or a positive number of in-edges "
                         f"per node, got {top_k!r}")
    return top_k


def resolve_top_k(att: NodeAttention, top_k: int | None = None) -> int | None:
    """In-edges drawn per node: None for all of them. ``top_k`` None chooses (all up to EDGE_BUDGET
    edges, else TOP_K, 1 above HUGE_GRAPH nodes); 0 means all."""
    check_top_k(top_k)
    if top_k is not None:
        return top_k or None
    if int((att.src != att.dst).sum()) <= EDGE_BUDGET:
        return None
    return TOP_K if att.num_nodes <= HUGE_GRAPH else 1


def drawn_edges(att: NodeAttention, weights, top_k: int | None) -> np.ndarray:
    """Indices of the edges to draw: every edge but the self loops (rings instead), or only each
    receiver's ``top_k`` strongest (ties: the earlier edge)."""
    src, dst, w = att.src.numpy(), att.dst.numpy(), np.asarray(weights, dtype=float)
    keep = np.flatnonzero(src != dst)
    if top_k is None or len(keep) == 0:
        return keep
    order = keep[np.lexsort((keep, -w[keep], dst[keep]))]   # by receiver, strongest first
    d = dst[order]
    starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[rank < top_k])


def self_weights(att: NodeAttention, weights) -> np.ndarray:
    """(num_nodes,) each node's self-loop weight (0 where it has none)."""
    w = np.asarray(weights, dtype=float)
    loops = (att.src == att.dst).numpy()
    out = np.zeros(att.num_nodes)
    np.add.at(out, att.dst.numpy()[loops], w[loops])
    return out


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------
def panel_inches(num_nodes: int) -> float:
    return 4.2 if num_nodes <= LABEL_NODES else 5.5 if num_nodes <= HUGE_GRAPH else 8.0


def _draw_panel(ax, att: NodeAttention, pos: np.ndarray, weights: torch.Tensor, top_k: int | None,
                title: str) -> None:
    w = weights.numpy().astype(float)
    idx = drawn_edges(att, w, top_k)
    loops = self_weights(att, w)
    drawn = np.concatenate([w[idx], loops])
    scale = float(drawn.max()) if drawn.size and drawn.max() > 0 else 1.0   # the panel's largest weight
    n, r = att.num_real, att.num_nodes
    small = r <= LABEL_NODES   # a large graph's many edges: thinner and lighter, so the nodes stay visible
    plots.draw_half_edges(ax, pos, att.src.numpy()[idx], att.dst.numpy()[idx], w[idx] / scale, color=EDGE_COLOR,
                          max_width=3.0 if small else 1.3, min_alpha=0.06 if small else 0.03,
                          max_alpha=1.0 if small else 0.55)
    size = 80.0 if r <= LABEL_NODES else 22.0 if r <= HUGE_GRAPH else 6.0
    has_loop = np.flatnonzero(np.isin(np.arange(r), att.dst[att.src == att.dst].numpy()))
    ring = (0.3, 2.7) if small else (0.15, 0.9)   # (thinnest, added at the largest weight)
    ax.scatter(pos[has_loop, 0], pos[has_loop, 1], s=size * 2.6, facecolors="none", edgecolors=EDGE_COLOR,
               linewidths=ring[0] + ring[1] * np.clip(loops[has_loop] / scale, 0, 1), zorder=2)
    fill = np.array([to_rgba(PALETTE[int(c) % len(PALETTE)]) for c in att.labels.tolist()]).reshape(n, 4)
    scored = att.scored.numpy()
    fill[~scored, 3] = 0.3
    wrong = (att.preds != att.labels).numpy()
    # A wrong prediction is the node's outline, not a mark over it: its fill (the true class) stays visible.
    ax.scatter(pos[:n, 0], pos[:n, 1], s=size, c=fill, zorder=3,
               edgecolors=np.where(wrong, WRONG_COLOR, np.where(scored, "black", "#9a9a9a")),
               linewidths=np.where(wrong, 1.8 if small else 1.2, 0.6))
    if att.num_global:
        ax.scatter(pos[n:, 0], pos[n:, 1], s=size * 1.3, marker="s", c=GLOBAL_COLOR, edgecolors="black",
                   linewidths=0.6, zorder=3)
    if r <= LABEL_NODES:
        for (x, y), name in zip(pos, att.node_names()):
            ax.text(x, y, name, ha="center", va="center", fontsize=5, zorder=5)
    ax.set_xlim(-0.06, 1.06)
    ax.set_ylim(float(pos[:, 1].min()) - 0.06, float(pos[:, 1].max()) + 0.06)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=plots.FONT_SIZE + 1)


def _legend(att: NodeAttention) -> list[Line2D]:
    dot = dict(marker="o", linestyle="", markersize=6, markeredgecolor="black")
    handles = [Line2D([], [], markerfacecolor=PALETTE[c % len(PALETTE)], label=f"class {c}", **dot)
               for c in range(att.num_classes)]
    handles.append(Line2D([], [], label="red outline: prediction wrong", **{**dot, "markerfacecolor": "white",
                                                                           "markeredgecolor": WRONG_COLOR,
                                                                           "markeredgewidth": 1.8}))
    if att.transductive and not bool(att.scored.all()):
        handles.append(Line2D([], [], markerfacecolor=(0.5, 0.5, 0.5, 0.3), label=f"not in the {att.split} split",
                              **{**dot, "markeredgecolor": "#9a9a9a"}))
    if att.num_global:
        handles.append(Line2D([], [], marker="s", linestyle="", markerfacecolor=GLOBAL_COLOR,
                              markeredgecolor="black", label="global node"))
    handles.append(Line2D([], [], color=EDGE_COLOR, linewidth=2, label="half-edge at i: weight of j -> i"))
    handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor=EDGE_COLOR,
                          markersize=9, label="ring: self-loop weight"))
    return handles


def graph_figure(att: NodeAttention, pos: np.ndarray, layer: int, *, top_k: int | None = None,
                 title: str | None = None):
    """One layer: the mean over heads and one panel per head (one panel when the heads agree)."""
    att.check_layer(layer)
    k = resolve_top_k(att, top_k)
    heads: list[int | str] = [0] if att.num_heads == 1 or att.same_heads(layer) else ["mean", *range(att.num_heads)]
    rows, cols = plots.grid_shape(len(heads), max_cols=3)
    side = panel_inches(att.num_nodes)
    height = side * max(0.45, float(np.ptp(pos[:, 1])) + 0.12) / 1.12 + 0.35   # the layout's aspect, a title
    legend_cols = 2 if cols == 1 else min(4, att.num_classes + 3)
    fig = plots.new_figure(max(cols * side, 2.6 * legend_cols), rows * height + (1.6 if cols == 1 else 1.0))
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = "" if k is None else f", top {k} in-edge{'s' if k > 1 else ''} per node"
    for ax, head in zip(axes.flat, heads):
        name = ("every head (identical)" if att.num_heads > 1 else "head 0") if len(heads) == 1 else \
            "mean over heads" if head == "mean" else f"head {head}"
        _draw_panel(ax, att, pos, att.head_weights(layer, head), k, name + shown)
    for ax in list(axes.flat)[len(heads):]:
        ax.set_visible(False)
    fig.legend(handles=_legend(att), loc="outside lower center", ncols=legend_cols,
               fontsize=plots.FONT_SIZE, frameon=False)
    right, total = att.correct()
    fig.suptitle(title or f"layer {layer}: {right} / {total} {att.split} node(s) right", fontsize=plots.FONT_SIZE + 2)
    return fig


def write_graph_figures(att: NodeAttention, out_dir, *, layers: Sequence[int] | None = None,
                        top_k: int | None = None, caption: str = "", pos: np.ndarray | None = None) -> list[Path]:
    """``graph_layer{L}.png`` in ``out_dir`` for every layer (or ``layers``)."""
    chosen = list(range(att.num_layers)) if layers is None else [att.check_layer(layer) for layer in layers]
    check_top_k(top_k)
    pos = spring_positions(att) if pos is None else pos
    right, total = att.correct()
    out_dir = Path(out_dir)
    written = []
    for layer in chosen:
        title = (f"{caption + ': ' if caption else ''}layer {layer}; {right} / {total} {att.split} "
                 f"node{'s' if total != 1 else ''} right")
        fig = graph_figure(att, pos, layer, top_k=top_k, title=title)
        written.append(plots.save_figure(fig, out_dir / f"graph_layer{layer}.png"))
    return written


__all__ = ["EDGE_BUDGET", "LAYOUT_SEED", "NodeAttention", "PALETTE", "TOP_K", "check_graph_example", "check_top_k",
           "checkpoint_node_attention", "drawn_edges", "graph_figure", "load_node_attention", "node_attention",
           "resolve_top_k", "self_weights", "spring_positions", "write_graph_figures"]
