"""Generic plotting helpers: heatmap grids, bipartite and half-edge graph drawings, GIF animations.

Nothing here knows about models or attention graphs; callers pass plain
matrices and labels, so other pictures (e.g. the Universal Transformer's
per-token step counts) can reuse them.

Every figure of the project (attention maps, ACT pictures, the benchmark and
ablation reports) starts at :func:`new_figure` and is written by
:func:`save_figure`. They are built with :class:`matplotlib.figure.Figure` on
an Agg canvas and never through ``pyplot``: no global figure registry, no GUI
backend, nothing to close, and nothing here changes matplotlib's process-wide
backend (``matplotlib.use``) for the rest of the program.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.animation import PillowWriter
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from transformer_graph.files import atomic_write_bytes

CMAP = "viridis"          # perceptually uniform; 0 is dark, 1 is bright yellow
MISSING_COLOR = "#d9d9d9"  # cells with no edge at all (sparse structures, future positions)
FONT_SIZE = 8
CELL_INCH = 0.22          # side of one heatmap cell, so labels of long sentences still fit
BIPARTITE_GAP_INCH = 1.8  # distance between the two node columns of a bipartite drawing


def new_figure(width: float, height: float, layout: str = "constrained") -> Figure:
    """A ``width`` x ``height`` inch figure on its own Agg canvas.

    ``layout`` is matplotlib's layout engine: "constrained" (the default) keeps labels,
    colorbars and titles inside the image; "tight" is ``tight_layout`` at every draw.
    """
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Render ``fig`` and write it atomically (format from the suffix, e.g. ``.png``)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def _title_width(title: str | None) -> float:
    """Inches a suptitle needs, so a narrow figure never clips it."""
    return 0.3 + 0.085 * len(title) if title else 0.0


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, cols) of a near-square grid of ``n`` panels, at most ``max_cols`` wide."""
    if n < 1:
        raise ValueError(f"number of panels: expected at least 1, got {n}")
    rows = max(1, math.isqrt(n), math.ceil(n / max_cols))  # 4 panels: 2x2, 8: 2x4, 3: 1x3
    return rows, math.ceil(n / rows)


def _check_matrix(name: str, m, row_labels: Sequence[str], col_labels: Sequence[str]) -> np.ndarray:
    m = np.asarray(m, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d matrix, got shape {m.shape}")
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"{name}: matrix of shape {m.shape} does not match {len(row_labels)} row labels "
                         f"and {len(col_labels)} column labels")
    return m


def draw_heatmap(ax, matrix, row_labels: Sequence[str], col_labels: Sequence[str], *,
                 mask=None, vmin: float = 0.0, vmax: float = 1.0, cmap: str = CMAP, title: str | None = None,
                 xlabel: str | None = None, ylabel: str | None = None, show_labels: tuple[bool, bool] = (True, True)):
    """One labelled heatmap on ``ax``; cells where ``mask`` is False are drawn grey.

    Returns the image (for a colorbar).
    """
    m = _check_matrix(title or "heatmap", matrix, row_labels, col_labels)
    data = np.ma.masked_array(m, mask=None if mask is None else ~np.asarray(mask, dtype=bool))
    colormap = _colormap(cmap)
    im = ax.imshow(data, cmap=colormap, vmin=vmin, vmax=vmax, aspect="equal", interpolation="nearest")
    ax.set_xticks(range(len(col_labels)))
    ax.set_yticks(range(len(row_labels)))
    ax.set_xticklabels(list(col_labels) if show_labels[0] else [], rotation=90, fontsize=FONT_SIZE)
    ax.set_yticklabels(list(row_labels) if show_labels[1] else [], fontsize=FONT_SIZE)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=FONT_SIZE + 1)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT_SIZE)
    return im


def _colormap(name: str):
    return colormaps[name].with_extremes(bad=MISSING_COLOR)


def heatmap_grid(matrices: Sequence, row_labels: Sequence[str], col_labels: Sequence[str], *,
                 titles: Sequence[str] | None = None, masks: Sequence | None = None, suptitle: str | None = None,
                 xlabel: str | None = None, ylabel: str | None = None, vmin: float = 0.0, vmax: float = 1.0,
                 cmap: str = CMAP, colorbar_label: str = "weight", max_cols: int = 4) -> Figure:
    """A grid of heatmaps sharing labels and one colour scale (``vmin``..``vmax``) with one colorbar.

    Every panel gets its column labels; row labels are drawn on the first column only.
    """
    n = len(matrices)
    rows, cols = grid_shape(n, max_cols)
    n_r, n_c = len(row_labels), len(col_labels)
    label_in = 0.09 * max([len(str(s)) for s in (*row_labels, *col_labels)] + [3])  # room for tick labels
    panel_w = max(1.6, n_c * CELL_INCH) + label_in
    panel_h = max(1.6, n_r * CELL_INCH) + label_in + 0.3
    fig = new_figure(max(cols * panel_w + 0.9, _title_width(suptitle)), rows * panel_h + (0.4 if suptitle else 0.0))
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        r, c = divmod(k, cols)
        im = draw_heatmap(ax, matrices[k], row_labels, col_labels, mask=None if masks is None else masks[k],
                          vmin=vmin, vmax=vmax, cmap=cmap, title=None if titles is None else titles[k],
                          xlabel=xlabel if r == rows - 1 else None, ylabel=ylabel if c == 0 else None,
                          show_labels=(True, c == 0))
    # Full height beside a short grid, about three quarters of a tall one.
    cbar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=min(1.0, 0.5 + 3.0 / (rows * panel_h)))
    cbar.set_label(colorbar_label, fontsize=FONT_SIZE)
    cbar.ax.tick_params(labelsize=FONT_SIZE)
    if suptitle:
        fig.suptitle(suptitle, fontsize=FONT_SIZE + 2)
    return fig


def draw_bipartite(ax, weights, left_labels: Sequence[str], right_labels: Sequence[str], *,
                   title: str | None = None, color: str = "tab:blue", max_width: float = 4.0,
                   min_weight: float = 0.01, left_title: str | None = None, right_title: str | None = None):
    """Left nodes (columns of ``weights``) joined to right nodes (rows) by edges whose
    width and opacity are the weight; edges under ``min_weight`` are left out.

    ``weights`` is (len(right_labels), len(left_labels)), the layout of an
    attention matrix whose rows are queries and columns are keys.
    """
    w = _check_matrix(title or "bipartite", weights, right_labels, left_labels)
    n_l, n_r = len(left_labels), len(right_labels)
    # One unit of y per token; the shorter column is centred against the longer one.
    top = max(n_l, n_r)
    y_l = -np.arange(n_l, dtype=float) - (top - n_l) / 2
    y_r = -np.arange(n_r, dtype=float) - (top - n_r) / 2
    qi, kj = np.nonzero(w >= min_weight)
    ww = np.clip(w[qi, kj], 0.0, 1.0)
    segments = np.stack([np.stack([np.zeros_like(ww), y_l[kj]], 1), np.stack([np.ones_like(ww), y_r[qi]], 1)], 1)
    rgba = np.tile(np.array(to_rgba(color)), (len(ww), 1))
    rgba[:, 3] = ww
    order = np.argsort(ww)  # strongest edges drawn last, on top
    ax.add_collection(LineCollection(segments[order], colors=rgba[order], linewidths=max_width * ww[order]))
    ax.scatter(np.zeros(n_l), y_l, s=12, color="black", zorder=3)
    ax.scatter(np.ones(n_r), y_r, s=12, color="black", zorder=3)
    for y, s in zip(y_l, left_labels):
        ax.text(-0.06, y, str(s), ha="right", va="center", fontsize=FONT_SIZE)
    for y, s in zip(y_r, right_labels):
        ax.text(1.06, y, str(s), ha="left", va="center", fontsize=FONT_SIZE)
    if left_title:
        ax.text(0.0, 1.0, left_title, ha="center", va="bottom", fontsize=FONT_SIZE, style="italic")
    if right_title:
        ax.text(1.0, 1.0, right_title, ha="center", va="bottom", fontsize=FONT_SIZE, style="italic")
    margin = _label_inches(left_labels, right_labels) / BIPARTITE_GAP_INCH  # label room in x units
    ax.set_xlim(-margin, 1 + margin)
    ax.set_ylim(-top + 0.4, 1.8)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=FONT_SIZE + 1)


def draw_half_edges(ax, pos, src, dst, strength, *, color: str = "tab:blue", max_width: float = 3.0,
                    min_alpha: float = 0.06, max_alpha: float = 1.0, zorder: float = 1.0) -> None:
    """Directed edges ``src[e] -> dst[e]`` between points ``pos`` (num_nodes, 2), each drawn as the
    half of the segment that touches its receiver ``dst[e]``; width and opacity = ``strength`` in [0, 1].

    Why halves: an undirected graph has both directions of every edge, with different weights;
    two full lines would lie on top of each other, two halves never do. The half at node i then
    reads "how much i takes from that neighbour". Strongest edges are drawn last, on top.
    """
    pos = np.asarray(pos, dtype=float)
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    s = np.clip(np.asarray(strength, dtype=float), 0.0, 1.0)
    if not (len(src) == len(dst) == len(s)):
        raise ValueError(f"draw_half_edges: {len(src)} sources, {len(dst)} destinations and {len(s)} strengths; "
                         f"expected one of each per edge")
    if len(s) == 0:
        return
    segments = np.stack([pos[dst], (pos[src] + pos[dst]) / 2], 1)
    rgba = np.tile(np.array(to_rgba(color)), (len(s), 1))
    rgba[:, 3] = min_alpha + (max_alpha - min_alpha) * s
    order = np.argsort(s, kind="stable")
    ax.add_collection(LineCollection(segments[order], colors=rgba[order], linewidths=0.3 + max_width * s[order],
                                     capstyle="butt", zorder=zorder))


def _label_inches(left_labels: Sequence[str], right_labels: Sequence[str]) -> float:
    return 0.12 + 0.075 * max([len(str(s)) for s in (*left_labels, *right_labels)] + [3])


def bipartite_width(left_labels: Sequence[str], right_labels: Sequence[str]) -> float:
    """Inches a :func:`draw_bipartite` panel needs so that no label is clipped."""
    return BIPARTITE_GAP_INCH + 2 * _label_inches(left_labels, right_labels)


def bipartite_grid(matrices: Sequence, left_labels: Sequence[str], right_labels: Sequence[str], *,
                   titles: Sequence[str] | None = None, suptitle: str | None = None, max_cols: int = 4,
                   left_title: str | None = None, right_title: str | None = None) -> Figure:
    """One :func:`draw_bipartite` panel per matrix."""
    n = len(matrices)
    rows, cols = grid_shape(n, max_cols)
    panel_w = bipartite_width(left_labels, right_labels)
    panel_h = 0.6 + 0.2 * max(len(left_labels), len(right_labels))
    fig = new_figure(max(cols * panel_w, _title_width(suptitle)), rows * panel_h + (0.4 if suptitle else 0.0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        draw_bipartite(ax, matrices[k], left_labels, right_labels, title=None if titles is None else titles[k],
                       left_title=left_title, right_title=right_title)
    if suptitle:
        fig.suptitle(suptitle, fontsize=FONT_SIZE + 2)
    return fig


def animate(frames: Sequence, draw: Callable[[Figure, object], None], path: str | os.PathLike, *,
            size: tuple[float, float], fps: float = 2.0, dpi: int = 100) -> Path:
    """Write an animated GIF with matplotlib's Pillow writer: for every item of
    ``frames`` the figure is cleared and ``draw(fig, item)`` draws it afresh.

    The figure keeps one fixed ``size`` so all frames have the same pixels.
    """
    if len(frames) == 0:
        raise ValueError("animate: expected at least one frame, got none")
    if fps <= 0:
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = new_figure(*size)
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi):
        for item in frames:
            fig.clear()
            draw(fig, item)
            writer.grab_frame()
    return path
