"""The attention graph: which key nodes send to which query nodes.

One type serves every attention of the project: encoder and decoder self-attention
(key node j and query node j are the same token), encoder-decoder attention (source
keys, target queries), the incremental decoder's growing graphs (cached prefix keys
-> the new queries) and the Universal Transformer's subgraphs of still-active nodes.

Edges are kept **in query order** (grouped by destination, stable within a query), so
the in-edges of query i are the contiguous positions ``indptr[i]:indptr[i+1]``: the
COO arrays ``src``/``dst`` and the CSR row pointers ``indptr`` describe the same edge
numbering, every engine's edge tensors (E, ...) use it, and a softmax over a query's
in-edges is a segment reduction. Index tensors are int64.

Engines derive what they need from it and cache it on the graph (``derived``): the
torch engine its sparse-CSR patterns, the DGL engine a DGL graph (:meth:`dgl`, built
only when the DGL engine runs). A graph is immutable once built, so the caches live
as long as it does.
"""
from __future__ import annotations

from typing import Any

import torch

from transformer_graph.graphs import _dgl

NODE_TYPES = {"key": "src", "src": "src", "query": "dst", "dst": "dst"}


class AttentionGraph:
    """Key nodes ``0..num_src-1`` send to query nodes ``0..num_dst-1`` along edges in query order.

    Build it with :meth:`from_edges` (sorts and checks) or
    :func:`transformer_graph.graphs.build.bipartite`; the constructor trusts its arguments.
    """

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int,
                 indptr: torch.Tensor | None = None):
        self.src, self.dst = src, dst
        self._num_src, self._num_dst = int(num_src), int(num_dst)
        self._indptr = indptr
        self._in_degrees: torch.Tensor | None = None
        self.derived: dict[Any, Any] = {}   # engine-specific caches (CSR patterns, the DGL view)

    # -- construction -------------------------------------------------------
    @classmethod
    def from_edges(cls, src, dst, num_src: int, num_dst: int, device=None, return_order: bool = False):
        """The graph of edges ``src[e] -> dst[e]`` (any order; sorted here, stably, by query).

        With ``return_order`` also returns, for each edge of the graph, its position in
        the given arrays (None when they were already in query order), so per-edge
        results can be put back in the caller's order (:func:`restore_edge_order`).
        """
        src = torch.as_tensor(src).to(device=device, dtype=torch.int64).reshape(-1)
        dst = torch.as_tensor(dst).to(device=device, dtype=torch.int64).reshape(-1)
        order = None
        if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
            order = torch.sort(dst, stable=True).indices
            src, dst = src[order], dst[order]
        graph = cls(src, dst, num_src, num_dst)
        return (graph, order) if return_order else graph

    # -- sizes (DGL's names, so code and tests read alike on both engines) ---
    def num_src_nodes(self) -> int:
        return self._num_src

    def num_dst_nodes(self) -> int:
        return self._num_dst

    def num_nodes(self, ntype: str | None = None) -> int:
        """Nodes of one side (``"key"``/``"src"`` or ``"query"``/``"dst"``), or of both."""
        if ntype is None:
            return self._num_src + self._num_dst
        try:
            side = NODE_TYPES[ntype]
        except KeyError:
            raise ValueError(f"ntype: expected one of {sorted(NODE_TYPES)}, got {ntype!r}") from None
        return self._num_src if side == "src" else self._num_dst

    def num_edges(self) -> int:
        return int(self.src.numel())

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(key node, query node) of every edge, in the graph's (query) order."""
        return self.src, self.dst

    @property
    def device(self) -> torch.device:
        return self.src.device

    @property
    def idtype(self) -> torch.dtype:
        return self.src.dtype

    @property
    def indptr(self) -> torch.Tensor:
        """(num_dst + 1,) CSR row pointers: query i's in-edges are ``indptr[i]:indptr[i+1]``."""
        if self._indptr is None:
            counts = torch.bincount(self.dst, minlength=self._num_dst)
            self._indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return self._indptr

    def in_degrees(self) -> torch.Tensor:
        """(num_dst,) int64: incoming edges of each query node."""
        if self._in_degrees is None:
            self._in_degrees = self.indptr.diff()
        return self._in_degrees

    # -- derived graphs -------------------------------------------------------
    def to(self, device) -> AttentionGraph:
        """The same graph on ``device`` (``self`` when it is already there)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" means the current device
            device = torch.device("cuda", torch.cuda.current_device())
        if self.src.device == device:
            return self
        indptr = None if self._indptr is None else self._indptr.to(device)
        return AttentionGraph(self.src.to(device), self.dst.to(device), self._num_src, self._num_dst, indptr)

    def in_subgraph(self, queries: torch.Tensor) -> tuple[AttentionGraph, torch.Tensor]:
        """The edges into ``queries`` (sorted query ids) and their edge ids in this graph.

        Query nodes are renumbered ``0..len(queries)-1`` in the given order; key nodes keep
        their numbers (every key, also one whose query side is not kept, still sends).
        """
        queries = queries.to(device=self.device, dtype=torch.int64)
        indptr = self.indptr
        starts = indptr[queries]
        lens = indptr[queries + 1] - starts
        total = int(lens.sum())
        new_dst = torch.repeat_interleave(torch.arange(queries.numel(), device=self.device), lens,
                                          output_size=total)
        first = torch.cat([lens.new_zeros(1), lens.cumsum(0)])
        eids = starts[new_dst] + torch.arange(total, device=self.device) - first[new_dst]
        sub = AttentionGraph(self.src[eids], new_dst, self._num_src, queries.numel(), first)
        return sub, eids

    def dgl(self):
        """This graph as a DGL graph (key -> query bipartite, edge ids = this graph's), built
        once and cached; importing DGL happens here (the DGL engine only)."""
        view = self.derived.get("dgl")
        if view is None:
            dgl, _ = _dgl.load("graph.dgl()")
            view = dgl.heterograph({("key", "attends", "query"): (self.src.int(), self.dst.int())},
                                   num_nodes_dict={"key": self._num_src, "query": self._num_dst},
                                   idtype=torch.int32, device=self.device)
            self.derived["dgl"] = view
        return view

    def index_bytes(self) -> int:
        """Bytes of the index tensors this graph holds: COO, CSR row pointers and every
        cached engine pattern (benchmarks report them as the graph's memory)."""
        tensors = {id(t): t for t in (self.src, self.dst, self._indptr, self._in_degrees) if t is not None}
        for value in self.derived.values():
            if value is None or value.__class__.__module__.startswith("dgl"):
                continue  # DGL's own formats are DGL's allocations
            # a pattern may hold this graph's own arrays: count each tensor once
            tensors.update((id(t), t) for t in vars(value).values() if isinstance(t, torch.Tensor))
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def __repr__(self) -> str:
        return (f"AttentionGraph(num_src_nodes={self._num_src}, num_dst_nodes={self._num_dst}, "
                f"num_edges={self.num_edges()}, device={self.device})")


def restore_edge_order(values: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Per-edge ``values`` of a graph built by :meth:`AttentionGraph.from_edges` put back in
    the order of the edges it was given."""
    if order is None:
        return values
    out = torch.empty_like(values)
    out[order] = values
    return out


__all__ = ["AttentionGraph", "restore_edge_order"]
