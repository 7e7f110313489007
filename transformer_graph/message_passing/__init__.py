"""φ and □: the message-passing blocks and the engines that compute them.

``base`` holds the block base class with its one ``attend()`` pipeline; ``attention``
(dot product), ``mean`` (GCN) and ``gat`` override φ/□ only; ``engines`` names who
computes them (``dgl``: DGL's built-ins, the reference; ``torch``: PyTorch, no DGL
needed; ``auto``), ``csr`` is the torch engine's CPU kernels.
"""
from transformer_graph.message_passing.aggregators import AGGREGATORS, GATAggregation, MeanAggregation, get_aggregator
from transformer_graph.message_passing.attention import GraphAttention
from transformer_graph.message_passing.base import (MessagePassingBlock, blocks, check_heads, engines_of,
                                                    float32_on_cpu, set_engine, using_engine)
from transformer_graph.message_passing.engines import ENGINES, get_engine, resolve_engine
from transformer_graph.message_passing.gat import GATBlock
from transformer_graph.message_passing.mean import MeanBlock

__all__ = ["AGGREGATORS", "ENGINES", "GATAggregation", "GATBlock", "GraphAttention", "MeanAggregation",
           "MeanBlock", "MessagePassingBlock", "blocks", "check_heads", "engines_of", "float32_on_cpu",
           "get_aggregator", "get_engine", "resolve_engine", "set_engine", "using_engine"]
