"""Who sends to whom: attention structures and the batch graphs built from them.

Importing this package registers every built-in structure (complete, causal and the
window / dilated / global_window families) in the one registry of
:mod:`transformer_graph.graphs.build`.
"""
from transformer_graph.graphs.build import (KINDS, AttentionGraphs, EdgeFn, GraphSpec, batch_graph, bipartite,
                                            build_graphs, causal, complete, get_structure, pair_edges,
                                            register_structure)
from transformer_graph.graphs import structures  # noqa: F401  (registers the window families)

__all__ = ["KINDS", "AttentionGraphs", "EdgeFn", "GraphSpec", "batch_graph", "bipartite", "build_graphs",
           "causal", "complete", "get_structure", "pair_edges", "register_structure", "structures"]
