"""GraphSAGE's φ/□ with its update: ``h_i' = W [h_i || mean_{j -> i} h_j]``.

Hamilton et al., "Inductive Representation Learning on Large Graphs" (2017), mean aggregator;
the layer of ``graphdeeplearning/benchmarking-gnns`` (``layers/graphsage_layer.py``:
``NodeApply`` concatenates the node's state with the mean of its in-neighbours and applies one
``nn.Linear(2 d, d)``; it then L2-normalises, applies ReLU, batch norm and the residual). Here φ
and □ are the GCN mean's (:class:`~transformer_graph.message_passing.mean.MeanBlock`: weight
1 / in-degree, weighted sum, no value projection) and the concatenation with the node's own state
replaces ``out_proj``; the normalisation, non-linearity and residual are the layer's γ
(:mod:`transformer_graph.nn.layers`), as for every block.

It fits the block interface because what the "query" carries is the node's own state: queries
are ``h_i`` and values ``h_j`` unprojected, keys carry nothing. With self loops in the graph
(node graphs default to them) the mean includes ``h_i`` itself; GraphSAGE's mean excludes it,
so build the graph without self loops for the original (every node then needs an in-edge).
"""
from __future__ import annotations

import torch

from transformer_graph.linear import Linear
from transformer_graph.message_passing.base import MessagePassingBlock
from transformer_graph.message_passing.mean import MeanBlock


class SAGEBlock(MessagePassingBlock):
    """GraphSAGE (mean): ``out_proj([h_i || mean_j h_j])``, ``out_proj`` a Linear(2 d_model, d_model).

    ``heads`` only sets the width of the returned weights (as for :class:`MeanBlock`);
    ``dropout`` drops the mean's edge weights in training.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__(d_model, heads, dropout)
        self.out_proj = Linear(2 * d_model, d_model)

    def _none(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_empty(x.shape[0], 0)

    def project_qkv(self, x: torch.Tensor):
        return x, self._none(x), x

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def project_kv(self, x: torch.Tensor):
        return self._none(x), x

    # φ: 1 / in-degree per edge; □: the weighted (mean) sum. MeanBlock's own functions, so the
    # two blocks cannot drift apart; redefining them here also drops any fused kernel.
    message = MeanBlock.message
    aggregate = MeanBlock.aggregate

    def attend(self, graph, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_weights: bool = False):
        """The mean of the in-neighbours' states next to the node's own (``q``), mixed by ``out_proj``."""
        out, weights = self.propagate(graph, q, k, v, need_weights)
        mean = out.reshape(out.shape[0], self.d_model).to(q.dtype)
        return self.out_proj(torch.cat([q, mean], dim=-1)), weights


__all__ = ["SAGEBlock"]
