"""GAT's φ: additive scores LeakyReLU(a^T [W h_i || W h_j]); □ is the softmax-weighted sum.

One shared map W (d_model -> heads x d_k) for every node, as in GAT; per head,
a = [a_q ; a_k] splits the score into a query half ``a_q . W h_i`` and a key half
``a_k . W h_j`` (so the score is one ``u_add_v`` per edge), the message is ``W h_j``
and the heads are concatenated and mixed by ``out_proj``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transformer_graph.linear import Linear, linear
from transformer_graph.message_passing.base import MessagePassingBlock


class GATBlock(MessagePassingBlock):
    """Multi-head GAT: score LeakyReLU(a^T [W h_i || W h_j]), softmax over in-edges.

    What the decoder caches as "k" is the key half of the score (num_nodes, heads, 1)
    and as "v" the messages W h_j. ``project_q`` folds a_q into W so a query node
    costs a (heads x d_model) product, not the full W h_i.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, negative_slope: float = 0.2):
        super().__init__(d_model, heads, dropout)
        self.proj = Linear(d_model, d_model)
        self.attn_query = nn.Parameter(torch.empty(heads, self.d_k))
        self.attn_key = nn.Parameter(torch.empty(heads, self.d_k))
        self.out_proj = Linear(d_model, d_model)
        self.negative_slope = negative_slope
        # GAT's initialisation (Glorot); the model's own reset also treats them as matrices.
        nn.init.xavier_uniform_(self.attn_query)
        nn.init.xavier_uniform_(self.attn_key)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.heads, self.d_k)

    def project_qkv(self, x: torch.Tensor):
        h = self._split(self.proj(x))
        q = (h * self.attn_query.to(h.dtype)).sum(-1, keepdim=True)
        k = (h * self.attn_key.to(h.dtype)).sum(-1, keepdim=True)
        return q, k, h

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        """Query half of the score, a_q . (W x + b) per head, without forming W x."""
        w = self.proj.weight.view(self.heads, self.d_k, self.d_model)
        w_q = torch.einsum("hk,hkd->hd", self.attn_query, w)          # (heads, d_model)
        b_q = (self.attn_query * self.proj.bias.view(self.heads, self.d_k)).sum(-1)
        return linear(x, w_q.to(x.dtype), b_q.to(x.dtype)).unsqueeze(-1)

    def project_kv(self, x: torch.Tensor):
        h = self._split(self.proj(x))
        return (h * self.attn_key.to(h.dtype)).sum(-1, keepdim=True), h

    def message(self, graph, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """φ: LeakyReLU(a_q . W h_i + a_k . W h_j) per edge and head -> (E, heads, 1)."""
        return F.leaky_relu(self.ops.u_add_v(graph, k, q), self.negative_slope)
