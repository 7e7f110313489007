"""The φ/□ blocks by name: how a node combines its incoming messages.

Self-attention is message passing with learned, query-dependent edge weights.
Swapping only the per-edge score φ and the aggregation □ (and keeping the
update γ: residual + MLP, in :mod:`transformer_graph.nn.layers`) turns the same
model into its graph-network relatives:

==============  =====================================================  =====================
name            edge weight of j -> i                                  message
==============  =====================================================  =====================
``attention``   softmax_j(q_i . k_j / sqrt(d_k))   (the Transformer)   W_v h_j
``mean``        1 / in-degree(i)   (fully connected GCN)               W_v h_j
``gat``         softmax_j(LeakyReLU(a^T [W h_i || W h_j]))  (GAT)      W h_j
``sage``        1 / in-degree(i), then W [h_i || mean]  (GraphSAGE)    h_j
==============  =====================================================  =====================

Every block has the interface of :class:`~transformer_graph.message_passing.base.MessagePassingBlock`
(``project_qkv``, ``project_q``, ``project_kv``, ``message``, ``aggregate``, ``attend``,
``forward``), so layers, the incremental decoder and the attention pictures use them
unchanged. What the "keys" are differs: the incremental decoder caches whatever
``project_qkv`` returns as k and v per position, so each block returns exactly the
per-node tensors the key side of an edge needs (nothing for mean, the key half of the
GAT score for gat).

The config key is ``model.aggregator`` (a name kept from before the blocks were named
after PyG's convention, where "aggregation" means □ alone); ``MeanAggregation`` and
``GATAggregation`` remain importable as aliases of :class:`MeanBlock` and :class:`GATBlock`.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from transformer_graph.message_passing.attention import GraphAttention
from transformer_graph.message_passing.gat import GATBlock
from transformer_graph.message_passing.mean import MeanBlock
from transformer_graph.message_passing.sage import SAGEBlock

AGGREGATORS = ("attention", "mean", "gat", "sage")

MeanAggregation = MeanBlock   # the names before the blocks were renamed (kept for imports)
GATAggregation = GATBlock

_CLASSES: dict[str, Callable[..., nn.Module]] = {
    "attention": GraphAttention, "mean": MeanBlock, "gat": GATBlock, "sage": SAGEBlock,
}


def get_aggregator(name: str) -> Callable[..., nn.Module]:
    """The block class (called as ``cls(d_model, heads, dropout)``) of aggregator ``name``."""
    try:
        return _CLASSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"aggregator: unknown aggregator {name!r}; expected one of "
                         f"{', '.join(AGGREGATORS)}") from None


__all__ = ["AGGREGATORS", "GATAggregation", "GATBlock", "GraphAttention", "MeanAggregation", "MeanBlock",
           "get_aggregator"]
