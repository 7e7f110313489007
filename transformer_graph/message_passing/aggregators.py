"""Other ways for a node to combine its incoming messages: GCN mean and GAT.

Self-attention is message passing with learned, query-dependent edge weights.
Swapping only the per-edge score phi and the aggregation □ (and keeping the
update gamma: residual + MLP, in :mod:`transformer_graph.nn.layers`) turns the same
model into its graph-network relatives:

==============  =====================================================  =====================
aggregator      edge weight of j -> i                                  message
==============  =====================================================  =====================
``attention``   softmax_j(q_i . k_j / sqrt(d_k))   (the Transformer)   W_v h_j
``mean``        1 / in-degree(i)   (fully connected GCN)               W_v h_j
``gat``         softmax_j(LeakyReLU(a^T [W h_i || W h_j]))  (GAT)      W h_j
==============  =====================================================  =====================

Both classes here have :class:`~transformer_graph.message_passing.attention.GraphAttention`'s
interface (``project_qkv``, ``project_q``, ``project_kv``, ``message``,
``aggregate``, ``attend``, ``forward``), so layers, the incremental decoder and
the attention pictures use them unchanged. What the "keys" are differs: the
incremental decoder caches whatever ``project_qkv`` returns as k and v per
position, so each class returns exactly the per-node tensors the key side of an
edge needs (nothing for mean, the key half of the GAT score for gat).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from transformer_graph.graphs._dgl import ops
from transformer_graph.message_passing.attention import GraphAttention, MessagePassingBlock

AGGREGATORS = ("attention", "mean", "gat")


def _float32_on_cpu(*tensors: torch.Tensor):
    # As GraphAttention.attend: DGL's CPU sparse kernels have no fast bf16/fp16 path, so
    # message passing runs in float32 under CPU autocast.
    if tensors[0].device.type == "cpu" and tensors[0].dtype in (torch.bfloat16, torch.float16):
        return tuple(t.float() for t in tensors)
    return tensors


class MeanAggregation(MessagePassingBlock):
    """Fully connected GCN layer: every in-edge weighs 1 / in-degree, no query or key.

    out_i = W_o (1/|N(i)| sum_{j in N(i)} W_v h_j). The value and output projections
    match attention's, so the model differs from the Transformer only in the edge
    weights. Attention dropout, when set, drops edge weights in training as it does
    for attention (same regularisation for every aggregator); in eval each in-edge
    weighs exactly 1 / in-degree.

    ``heads`` only sets the width of the returned weights ((num_edges, heads), every
    column the same) so pictures lay out every aggregator alike.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if heads < 1 or d_model % heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.d_model, self.heads = d_model, heads
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

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
        """phi: the fixed weight 1 / in-degree of the receiving node, per edge -> (E, 1)."""
        _, dst = graph.edges()
        deg = graph.in_degrees().clamp(min=1).to(torch.float32)
        return (1.0 / deg)[dst.long()].unsqueeze(-1)

    def aggregate(self, graph, weights: torch.Tensor, v: torch.Tensor):
        """□: the weighted (= mean) sum of the in-neighbours' values."""
        return ops.u_mul_e_sum(graph, v, self.dropout(weights.to(v.dtype))), weights

    def attend(self, graph, q, k, v, need_weights: bool = False):
        (v,) = _float32_on_cpu(v)
        out, weights = self.aggregate(graph, self.message(graph, q, k), v)
        out = self.out_proj(out)
        return out, (weights.expand(-1, self.heads).detach() if need_weights else None)


class GATAggregation(MessagePassingBlock):
    """Multi-head GAT: score LeakyReLU(a^T [W h_i || W h_j]), softmax over in-edges.

    One shared map W (d_model -> heads x d_k) for every node, as in GAT; per head,
    a = [a_q ; a_k] splits the score into a query half ``a_q . W h_i`` and a key half
    ``a_k . W h_j`` (so the score is one ``u_add_v`` per edge), the message is
    ``W h_j`` and the heads are concatenated and mixed by ``out_proj``.

    What the decoder caches as "k" is the key half of the score (num_nodes, heads, 1)
    and as "v" the messages W h_j. ``project_q`` folds a_q into W so a query node
    costs a (heads x d_model) product, not the full W h_i.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, negative_slope: float = 0.2):
        super().__init__()
        if heads < 1 or d_model % heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.d_model, self.heads, self.d_k = d_model, heads, d_model // heads
        self.proj = nn.Linear(d_model, d_model)
        self.attn_query = nn.Parameter(torch.empty(heads, self.d_k))
        self.attn_key = nn.Parameter(torch.empty(heads, self.d_k))
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
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
        return F.linear(x, w_q.to(x.dtype), b_q.to(x.dtype)).unsqueeze(-1)

    def project_kv(self, x: torch.Tensor):
        h = self._split(self.proj(x))
        return (h * self.attn_key.to(h.dtype)).sum(-1, keepdim=True), h

    def message(self, graph, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """phi: LeakyReLU(a_q . W h_i + a_k . W h_j) per edge and head -> (E, heads, 1)."""
        return F.leaky_relu(ops.u_add_v(graph, k, q), self.negative_slope)

    def aggregate(self, graph, scores: torch.Tensor, v: torch.Tensor):
        """□: softmax over each node's in-edges, attention dropout, weighted sum of W h_j."""
        weights = ops.edge_softmax(graph, scores)
        return ops.u_mul_e_sum(graph, v, self.dropout(weights)), weights

    def attend(self, graph, q, k, v, need_weights: bool = False):
        q, k, v = _float32_on_cpu(q, k, v)
        out, weights = self.aggregate(graph, self.message(graph, q, k), v)
        out = self.out_proj(out.reshape(out.shape[0], self.d_model))
        return out, (weights.squeeze(-1).detach() if need_weights else None)


_CLASSES: dict[str, Callable[..., nn.Module]] = {
    "attention": GraphAttention, "mean": MeanAggregation, "gat": GATAggregation,
}


def get_aggregator(name: str) -> Callable[..., nn.Module]:
    """The module class (called as ``cls(d_model, heads, dropout)``) of aggregator ``name``."""
    try:
        return _CLASSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"aggregator: unknown aggregator {name!r}; expected one of "
                         f"{', '.join(AGGREGATORS)}") from None
