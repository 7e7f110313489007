"""Multi-head scaled dot-product attention: the Transformer's φ and □ as message passing.

For every edge j -> i of an attention graph (key node j, query node i):

* **φ (message)**: the score ``q_i . k_j / sqrt(d_k)`` per head (``u_dot_v``, one SDDMM);
* **□ (aggregate)**: an exact, max-shifted softmax over each query's in-edges
  (``edge_softmax``), attention dropout on the edge weights, then the weighted sum of
  values (``u_mul_e_sum``, SpMM): the base class's □, unchanged.

The update γ (residual, norm, MLP) lives in :mod:`transformer_graph.nn.layers`. Node
features are shaped ``(num_nodes, heads, d_k)``. The class declares ``fused =
"dot_product"``: the torch engine runs φ + □ as one CSR kernel on CPU
(:mod:`transformer_graph.message_passing.csr`).

The projection weights use PyTorch's ``nn.MultiheadAttention`` layout (one fused
``in_proj`` of shape (3d, d) for q, k, v, then ``out_proj``) so that self-attention
needs one matrix product for q, k and v, and so that weights move to and from
``torch.nn.Transformer`` unchanged.
"""
from __future__ import annotations

import math

import torch

from transformer_graph.linear import Linear, linear
from transformer_graph.message_passing.base import MessagePassingBlock


class GraphAttention(MessagePassingBlock):
    """Multi-head attention where query node i attends to its in-neighbours j.

    Args:
        d_model: node feature size.
        heads: number of heads; ``d_model`` must be divisible by it.
        dropout: dropout on the attention weights (edge values).
    """

    fused = "dot_product"

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__(d_model, heads, dropout)
        self.in_proj = Linear(d_model, 3 * d_model)
        self.out_proj = Linear(d_model, d_model)

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.d_k)

    # -- projections -------------------------------------------------------
    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.heads, self.d_k)

    def project_qkv(self, x: torch.Tensor):
        """q, k, v for self-attention in one fused matrix product."""
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        d = self.d_model
        return self._split(linear(x, self.in_proj.weight[:d], self.in_proj.bias[:d]))

    def project_kv(self, x: torch.Tensor):
        """k, v of key nodes (computed once per source for cross-attention, and
        cached per position by the incremental decoder)."""
        d = self.d_model
        k, v = linear(x, self.in_proj.weight[d:], self.in_proj.bias[d:]).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    # -- φ (□ is the base class's softmax and weighted sum) ------------------
    def message(self, graph, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """φ: one score per edge and head, ``q_i . k_j / sqrt(d_k)`` -> (E, heads, 1)."""
        return self.ops.u_dot_v(graph, k, q * self.scale)
