"""Who sends to whom: the attention graph type, attention structures and the batch graphs built from them.

:class:`~transformer_graph.graphs.graph.AttentionGraph` is the one graph type (key nodes ->
query nodes, edges in query order); :mod:`~transformer_graph.graphs.build` builds the
batch graphs from the structure registry, and :mod:`~transformer_graph.graphs.convert`
turns a user's DGL graph or edge index into one. Importing this package registers every
built-in structure (complete, causal and the window / dilated / global_window families)
in the one registry of :mod:`transformer_graph.graphs.build`.
"""
from transformer_graph.graphs.graph import AttentionGraph, restore_edge_order
from transformer_graph.graphs.build import (KINDS, AttentionGraphs, EdgeFn, GraphSpec, batch_graph, bipartite,
                                            build_graphs, causal, complete, get_structure, join, pair_edges,
                                            register_structure)
from transformer_graph.graphs.convert import as_attention_graph
from transformer_graph.graphs import structures  # noqa: F401  (registers the window families)

__all__ = ["KINDS", "AttentionGraph", "AttentionGraphs", "EdgeFn", "GraphSpec", "as_attention_graph", "batch_graph",
           "bipartite", "build_graphs", "causal", "complete", "get_structure", "join", "pair_edges",
           "register_structure", "restore_edge_order", "structures"]
