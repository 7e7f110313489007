"""The fully connected GCN's φ and □: every in-edge weighs 1 / in-degree.

out_i = W_o (1/|N(i)| sum_{j in N(i)} W_v h_j). The value and output projections match
attention's, so the model differs from the Transformer only in the edge weights.
"""
from __future__ import annotations

import torch

from transformer_graph.linear import Linear
from transformer_graph.message_passing.base import MessagePassingBlock


class MeanBlock(MessagePassingBlock):
    """Fully connected GCN layer: every in-edge weighs 1 / in-degree, no query or key.

    Attention dropout, when set, drops edge weights in training as it does for
    attention (same regularisation for every block); in eval each in-edge weighs
    exactly 1 / in-degree. ``heads`` only sets the width of the returned weights
    ((num_edges, heads), every column the same) so pictures lay out every block alike.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__(d_model, heads, dropout)
        self.v_proj = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, d_model)

    def _none(self, x: torch.Tensor) -> torch.Tensor:
        # Queries and keys carry nothing; an empty per-node tensor keeps the shapes the
        # layers and the decoder's per-position cache expect, at no cost.
        return x.new_empty(x.shape[0], 0)

    def project_qkv(self, x: torch.Tensor):
        return self._none(x), self._none(x), self.v_proj(x)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        return self._none(x)

    def project_kv(self, x: torch.Tensor):
        return self._none(x), self.v_proj(x)

    def message(self, graph, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """φ: the fixed weight 1 / in-degree of the receiving node, per edge -> (E, 1)."""
        deg = graph.in_degrees().clamp(min=1).to(torch.float32)
        return (1.0 / deg).index_select(0, graph.dst).unsqueeze(-1)

    def aggregate(self, graph, weights: torch.Tensor, v: torch.Tensor):
        """□: the weighted (= mean) sum of the in-neighbours' values (no softmax)."""
        return self.ops.u_mul_e_sum(graph, v, self.dropout(weights.to(v.dtype))), weights
