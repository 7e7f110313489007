"""Multi-head scaled dot-product attention as message passing on a DGL graph.

For every edge j -> i of an attention graph (key node j, query node i):

* **phi (message)**: the score ``q_i . k_j / sqrt(d_k)`` per head
  (``dgl.ops.u_dot_v``, one SDDMM kernel), carrying ``v_j`` along.
* **□ (aggregate)**: DGL's exact ``edge_softmax`` over each query's in-edges
  (a real, max-shifted softmax, not a clamped ``exp``), attention dropout on
  the edge weights, then the weighted sum of values ``u_mul_e_sum`` (SpMM).

The update gamma (residual, norm, MLP) lives in :mod:`transformer_graph.nn.layers`.
Node features are shaped ``(num_nodes, heads, d_k)``. Nothing is stored on the
graph: the functional ``dgl.ops`` take features as arguments, which is the
``local_scope`` guarantee without the bookkeeping.

The projection weights use PyTorch's ``nn.MultiheadAttention`` layout (one
fused ``in_proj`` of shape (3d, d) for q, k, v, then ``out_proj``) so that
self-attention needs one matrix product for q, k and v, and so that weights
move to and from ``torch.nn.Transformer`` unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transformer_graph.message_passing import csr as sparse_attention
from transformer_graph.graphs._dgl import ops


class MessagePassingBlock(nn.Module):
    """What every phi/□ block shares (dot-product attention, the GCN mean, GAT): project the
    query and key nodes, then :meth:`attend` on the graph. Subclasses provide
    ``project_qkv``, ``project_q``, ``project_kv`` and ``attend``; layers, the incremental
    decoder and the attention pictures use only these.
    """

    def forward(self, graph, x_query: torch.Tensor, x_key: torch.Tensor | None = None,
                need_weights: bool = False):
        """Self-attention when ``x_key`` is None (key and query nodes are the same
        tokens), otherwise cross-attention from ``x_key`` nodes to ``x_query`` nodes.

        Returns ``(out, weights)`` with ``out`` of shape (num_query_nodes, d_model) and
        ``weights`` of shape (num_edges, heads) when ``need_weights`` else None.
        """
        if x_key is None:
            q, k, v = self.project_qkv(x_query)
        else:
            q = self.project_q(x_query)
            k, v = self.project_kv(x_key)
        return self.attend(graph, q, k, v, need_weights)


class GraphAttention(MessagePassingBlock):
    """Multi-head attention where query node i attends to its in-neighbours j.

    Args:
        d_model: node feature size.
        heads: number of heads; ``d_model`` must be divisible by it.
        dropout: dropout on the attention weights (edge values).
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if heads < 1 or d_model % heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.d_model, self.heads, self.d_k = d_model, heads, d_model // heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    # -- projections -------------------------------------------------------
    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.heads, self.d_k)

    def project_qkv(self, x: torch.Tensor):
        """q, k, v for self-attention in one fused matrix product."""
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def project_q(self, x: torch.Tensor) -> torch.Tensor:
        d = self.d_model
        return self._split(F.linear(x, self.in_proj.weight[:d], self.in_proj.bias[:d]))

    def project_kv(self, x: torch.Tensor):
        """k, v of key nodes (computed once per source for cross-attention, and
        cached per position by the incremental decoder)."""
        d = self.d_model
        k, v = F.linear(x, self.in_proj.weight[d:], self.in_proj.bias[d:]).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    # -- phi and □ ---------------------------------------------------------
    def message(self, graph, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """phi: one score per edge and head, ``q_i . k_j / sqrt(d_k)`` -> (E, heads, 1)."""
        return ops.u_dot_v(graph, k, q * (1.0 / math.sqrt(self.d_k)))

    def aggregate(self, graph, scores: torch.Tensor, v: torch.Tensor):
        """□: softmax over each query's in-edges, dropout, weighted sum of values."""
        weights = ops.edge_softmax(graph, scores)
        out = ops.u_mul_e_sum(graph, v, self.dropout(weights))
        return out, weights

    def attend(self, graph, q, k, v, need_weights: bool = False):
        """Attention from projected (q, k, v) on ``graph``; returns (out, weights or None)."""
        # A subclass redefining phi or □ gets exactly its own message/aggregate.
        standard = type(self).message is GraphAttention.message and type(self).aggregate is GraphAttention.aggregate
        if standard and sparse_attention.supports(graph, q):
            # The same phi and □ on PyTorch's sparse CSR kernels: DGL's CPU kernels run
            # multi-head features as a scalar loop (see transformer_graph.message_passing.csr).
            # They compute in float32 and keep bf16 inputs as bf16 for the backward pass.
            out, weights = sparse_attention.attend(graph, q, k, v, 1.0 / math.sqrt(self.d_k), self.dropout,
                                                   need_weights)
        else:
            if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
                # Under bf16 autocast the projections run in bf16 (3x faster matrix products
                # here), but DGL's CPU sparse kernels have no fast low-precision path (7x
                # slower measured): message passing runs in float32 and costs little.
                q, k, v = q.float(), k.float(), v.float()
            out, weights = self.aggregate(graph, self.message(graph, q, k), v)
            weights = weights.squeeze(-1)
        out = self.out_proj(out.reshape(out.shape[0], self.d_model))
        return out, (weights.detach() if need_weights else None)
