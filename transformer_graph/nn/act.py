"""Adaptive Computation Time per node (Graves 2016), on attention graphs.

Each node of a recurrent stack (see :mod:`transformer_graph.nn.universal`) runs the
shared layer step after step. After step t its new state y_t gives a halting
probability p_t = sigmoid(Linear(LayerNorm(y_t))). The node keeps going while
the running sum of its p's stays below the threshold 1 - eps; at the step N
where it would reach it (or at ``max_depth``) it halts with the remainder
R = 1 - (p_1 + ... + p_{N-1}). Its output is the halting-weighted sum of its
states, sum_{t<N} p_t y_t + R y_N (the weights sum to 1), and its ponder cost is
N + R (only R carries a gradient: it pushes the earlier p's up, i.e. towards
halting sooner).

Halting makes the graph sparser step by step: :func:`active_subgraph` keeps only
the edges *into* still-active query nodes, with the key side untouched, so a
halted node still sends its (frozen) keys and values but never receives or
computes anything again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transformer_graph.linear import Linear
from transformer_graph.graphs.graph import AttentionGraph


class HaltingUnit(nn.Module):
    """p = sigmoid(Linear(LayerNorm(state))), one probability per node.

    The bias starts positive (Graves; the DGL tutorial uses 1.0), shifting every
    p towards halting; the weight gets the model's Xavier initialisation as in
    the tutorial, so at first how long a node runs still depends on its state.
    """

    def __init__(self, d_model: int, bias_init: float = 1.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear = Linear(d_model, 1)
        self.bias_init = float(bias_init)
        self.reset_bias()

    def reset_bias(self) -> None:
        nn.init.constant_(self.linear.bias, self.bias_init)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(self.norm(state))).squeeze(-1)


def active_subgraph(graph: AttentionGraph, active: torch.Tensor | None):
    """The edges of ``graph`` into the ``active`` query nodes (sorted ids), and their ids.

    Query nodes are renumbered 0..len(active)-1 in the order of ``active``; key
    nodes keep their numbers, so every key node (halted ones included) still
    sends to the active queries. ``active=None`` (or every node) returns
    ``graph`` itself and ``None`` for the edge ids.
    """
    if active is None or active.numel() == graph.num_dst_nodes():
        return graph, None
    return graph.in_subgraph(active)


def scatter_edges(w: torch.Tensor | None, eids: torch.Tensor | None, n_edges: int):
    """Per-edge values of a subgraph placed at their edge ids of the full graph (0 elsewhere),
    so attention weights of every step line up with the full graph's edges."""
    if w is None or eids is None:
        return w
    full = w.new_zeros((n_edges,) + tuple(w.shape[1:]))
    full[eids] = w
    return full


@dataclass
class ACTStats:
    """What one recurrent stack did in one forward pass."""

    steps: torch.Tensor                       # (N,) steps each node took (ACT's N)
    remainder: torch.Tensor | None            # (N,) R, differentiable; None without halting
    nodes: list[int] = field(default_factory=list)   # nodes entering step t (t = 0, 1, ...)
    edges: dict[str, list[int]] = field(default_factory=dict)  # attention kind -> edges processed per step
    states: list[torch.Tensor] | None = None  # accumulated output after each step (record_states)

    @property
    def ponder(self) -> torch.Tensor | None:
        """Per-node ponder cost N + R (None without halting)."""
        return None if self.remainder is None else self.steps.to(self.remainder.dtype) + self.remainder

    def entering(self, max_depth: int) -> list[int]:
        """Nodes entering each of the ``max_depth`` steps (0 for steps never reached)."""
        return self.nodes + [0] * (max_depth - len(self.nodes))


class ACTAccumulator:
    """Halting bookkeeping of ``n`` nodes: running sum of p, remainder, steps, weighted output."""

    def __init__(self, n: int, like: torch.Tensor, threshold: float, max_depth: int):
        self.threshold, self.max_depth = threshold, max_depth
        # Halting sums in at least float32 (bf16 would decide halting on 3 significant digits).
        self.dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        self.sum_p = like.new_zeros(n, dtype=self.dtype)
        self.remainder = like.new_ones(n, dtype=self.dtype)
        self.steps = torch.zeros(n, dtype=torch.int64, device=like.device)
        self.output = torch.zeros_like(like)

    def update(self, ids: torch.Tensor, state: torch.Tensor, p: torch.Tensor, t: int) -> torch.Tensor:
        """Nodes ``ids`` (sorted) just finished step ``t`` (0-based) in ``state`` with
        halting probabilities ``p``; returns the ids of those that go on to step t + 1."""
        p = p.to(self.dtype)
        sum_p = self.sum_p[ids] + p
        go_on = (sum_p < self.threshold) & (t + 1 < self.max_depth)
        # A continuing node's remainder is what is left for later steps; a halting node
        # keeps the remainder from before this step and spends it on this state.
        remainder = torch.where(go_on, 1.0 - sum_p, self.remainder[ids])
        weight = torch.where(go_on, p, remainder)
        self.output = self.output.index_add(0, ids, (weight[:, None] * state).to(self.output.dtype))
        self.sum_p = self.sum_p.index_copy(0, ids, sum_p)
        self.remainder = self.remainder.index_copy(0, ids, remainder)
        self.steps[ids] += 1
        return ids[go_on]
