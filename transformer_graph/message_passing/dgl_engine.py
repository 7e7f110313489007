"""The ``dgl`` engine: φ and □ on DGL's built-in kernels, the project's reference.

Each primitive is one DGL call on the graph's DGL view
(:meth:`~transformer_graph.graphs.graph.AttentionGraph.dgl`, built on first use):
``u_dot_v`` and ``u_add_v`` (SDDMM: one value per edge from its two end nodes),
``edge_softmax`` (a max-shifted softmax over each query's in-edges) and
``u_mul_e_sum`` (SpMM: the edge-weighted sum of the key nodes' features). The
functional ``dgl.ops`` take features as arguments and store nothing on the graph.
DGL is imported by :func:`transformer_graph.graphs._dgl.load`, only when this engine runs.
"""
from __future__ import annotations

import torch

from transformer_graph.graphs import _dgl


def _ops():
    return _dgl.load("engine")[1]


class DGLEngine:
    """DGL's ``dgl.ops``; no fused kernels (the reference computes φ and □ step by step)."""

    name = "dgl"

    def u_dot_v(self, graph, k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return _ops().u_dot_v(graph.dgl(), k, q)

    def u_add_v(self, graph, k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return _ops().u_add_v(graph.dgl(), k, q)

    def edge_softmax(self, graph, scores: torch.Tensor) -> torch.Tensor:
        return _ops().edge_softmax(graph.dgl(), scores)

    def u_mul_e_sum(self, graph, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _ops().u_mul_e_sum(graph.dgl(), v, w)

    def fused(self, kernel: str | None, graph, q: torch.Tensor):
        return None
