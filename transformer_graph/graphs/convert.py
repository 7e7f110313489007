"""What a message-passing block accepts as its graph, turned into an :class:`AttentionGraph`.

* an :class:`~transformer_graph.graphs.graph.AttentionGraph` (what the project builds);
* a user's own DGL graph, homogeneous (one node set: self-attention) or bipartite (one
  relation from a key node type to a query node type), so DGL users can drop the layers
  into their models;
* a PyG-style edge index: a ``(2, E)`` integer tensor, row 0 the key (source) node and
  row 1 the query (destination) node of each edge.

This is where foreign graphs enter, so they are checked here, once per call, with errors
that name the argument and the fix. The project's own graphs were checked when they were
built (:mod:`transformer_graph.graphs.build`); for them only sizes and the device are
compared, which costs no device synchronisation.
"""
from __future__ import annotations

import sys

import torch

from transformer_graph.graphs.graph import AttentionGraph

_INDEX_DTYPES = (torch.int64, torch.int32)


def _is_dgl_graph(obj) -> bool:
    # A DGL graph can exist only if DGL was imported; never import it to find out.
    dgl = sys.modules.get("dgl")
    return dgl is not None and isinstance(obj, getattr(dgl, "DGLGraph", ()))


def _check_device(name: str, device: torch.device, features: torch.device) -> None:
    if device != features:
        raise ValueError(f"{name}: the graph is on {device} but the node features are on {features}; "
                         f"move one to the other (e.g. {name}.to({str(features)!r}))")


def _check_sizes(name: str, n_src: int, n_dst: int, num_src: int, num_dst: int, what: str) -> None:
    if n_src != num_src or n_dst != num_dst:
        raise ValueError(f"{name}: {what} has {n_src} key (source) and {n_dst} query (destination) nodes, "
                         f"but the features have {num_src} key rows and {num_dst} query rows; build the graph "
                         "over exactly the nodes whose features are passed")


def _check_receivers(name: str, dst: torch.Tensor, num_dst: int, fix: str) -> None:
    deg = torch.bincount(dst, minlength=num_dst)
    starved = (deg == 0).nonzero().flatten()
    if starved.numel():
        raise ValueError(f"{name}: {starved.numel()} query node(s) have no incoming edge (first: node "
                         f"{int(starved[0])}); attention over no messages is undefined (softmax of nothing) "
                         f"and the node would silently get zeros; {fix}")


def from_edge_index(edge_index: torch.Tensor, num_src: int, num_dst: int, device: torch.device,
                    name: str = "graph") -> tuple[AttentionGraph, torch.Tensor | None]:
    """An edge index ``(2, E)`` (row 0 keys, row 1 queries), checked; and the edge order."""
    if edge_index.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name}: an edge index must be an integer tensor (torch.int64, as in PyG), got "
                         f"dtype {edge_index.dtype}; convert it with {name}.long()")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{name}: an edge index must have shape (2, num_edges) (row 0: key/source nodes, "
                         f"row 1: query/destination nodes), got {tuple(edge_index.shape)}"
                         + ("; transpose it with .t()" if edge_index.dim() == 2 and edge_index.shape[1] == 2
                            else ""))
    _check_device(name, edge_index.device, device)
    src, dst = edge_index[0].long(), edge_index[1].long()
    for row, idx, n, side in ((0, src, num_src, "key"), (1, dst, num_dst, "query")):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise ValueError(f"{name}: edge index row {row} ({side} nodes) holds {bad}, outside [0, {n}) "
                             f"(the {side} features have {n} rows); every index must name a node that has "
                             "features")
    _check_receivers(name, dst, num_dst, f"add self-loops (e.g. torch.cat([{name}, "
                                         f"torch.arange({num_dst}).repeat(2, 1)], 1)) or leave those nodes out")
    return AttentionGraph.from_edges(src, dst, num_src, num_dst, return_order=True)


def from_dgl(g, num_src: int, num_dst: int, device: torch.device,
             name: str = "graph") -> tuple[AttentionGraph, torch.Tensor | None]:
    """A user's DGL graph (homogeneous, or one bipartite relation), checked; and the edge order."""
    if len(g.canonical_etypes) != 1:
        raise ValueError(f"{name}: a DGL graph with {len(g.canonical_etypes)} relations "
                         f"{g.canonical_etypes}; pass one relation, e.g. {name}[etype] or "
                         "dgl.edge_type_subgraph(g, [etype])")
    stype, _, dtype = g.canonical_etypes[0]
    # num_src_nodes/num_dst_nodes cover all three kinds: homogeneous graphs, heterographs with
    # one relation, and DGL blocks (whose two sides share a type name).
    n_src, n_dst = g.num_src_nodes(stype), g.num_dst_nodes(dtype)
    homogeneous = stype == dtype and not g.is_block
    what = "the homogeneous DGL graph" if homogeneous else f"the bipartite DGL graph ({stype!r} -> {dtype!r})"
    _check_device(name, g.device, device)
    _check_sizes(name, n_src, n_dst, num_src, num_dst, what)
    src, dst = (t.long() for t in g.edges())
    _check_receivers(name, dst, num_dst, f"add self-loops ({name} = dgl.add_self_loop({name}) for a "
                                         "homogeneous graph) or leave those nodes out")
    return AttentionGraph.from_edges(src, dst, num_src, num_dst, return_order=True)


def as_attention_graph(graph, num_src: int, num_dst: int, device: torch.device,
                       name: str = "graph") -> tuple[AttentionGraph, torch.Tensor | None]:
    """``(AttentionGraph, order)`` for whatever graph a block was given; ``order`` (None for
    the project's own graphs) maps its edges back to the caller's edge order."""
    if isinstance(graph, AttentionGraph):
        _check_device(name, graph.device, device)
        _check_sizes(name, graph.num_src_nodes(), graph.num_dst_nodes(), num_src, num_dst, "the graph")
        return graph, None
    if isinstance(graph, torch.Tensor):
        return from_edge_index(graph, num_src, num_dst, device, name)
    if _is_dgl_graph(graph):
        return from_dgl(graph, num_src, num_dst, device, name)
    raise ValueError(f"{name}: expected an AttentionGraph (transformer_graph.graphs.build), a DGL graph or "
                     f"a (2, num_edges) edge index tensor, got {type(graph).__name__}")


__all__ = ["as_attention_graph", "from_dgl", "from_edge_index"]
