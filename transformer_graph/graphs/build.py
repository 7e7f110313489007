"""Attention graphs: the single place that decides which token attends to which.

A batch of (source length n, target length m) pairs becomes three graphs whose
nodes are exactly the tokens of the batch (no padding anywhere):

============  ======================  ===============================  ==========
kind          key nodes -> query      edge j -> i when                 edges/pair
============  ======================  ===============================  ==========
``enc``       source -> source        always (complete, self-loops)    n^2
``dec``       target -> target        j <= i (causal)                  m(m+1)/2
``cross``     source -> target        always (complete bipartite)      n*m
============  ======================  ===============================  ==========

Why three separate *bipartite* graphs rather than one homogeneous graph with
edge-id sets per kind (as the DGL tutorial does): every attention is "key
nodes send, query nodes receive", so one representation serves all three kinds
and also the incremental decoder (cached prefix keys -> new query nodes, where
the two node sets have different sizes). Each graph holds only its own edges,
so ``edge_softmax`` and the sparse kernels run over exactly one kind with no
edge-subset extraction (``g.edge_subgraph`` copies) at every layer. Self
attention is still a graph on one node set: key node j and query node j are
the same token.

Every graph built here is an :class:`~transformer_graph.graphs.graph.AttentionGraph`
(edges in query order, int64 COO and CSR index tensors); :func:`bipartite` is the one
builder, :func:`join` puts pair graphs side by side (batches, and the beam search's
hypotheses sharing their sentence's source nodes).

The edges of one pair depend only on (n, m) and the structure, so they are
cached per (structure, n, m) in a bounded LRU cache (the tutorial's "graph
pool"); a batch graph is then one concatenation plus an offset add, never a
Python loop over edges.

Structures are plain functions ``(n_keys, n_queries) -> (key_idx, query_idx)``
returning int64 index tensors local to one pair. Register new ones with
:func:`register_structure`; everything downstream (training, decoding,
pictures) picks them up through :class:`GraphSpec`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from transformer_graph.graphs.graph import AttentionGraph

EdgeFn = Callable[[int, int], "tuple[torch.Tensor, torch.Tensor]"]

KINDS = ("enc", "dec", "cross")


# --------------------------------------------------------------------------
# Structures: edges of one pair, local indices.
# --------------------------------------------------------------------------
def complete(n_keys: int, n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every key node sends to every query node (n_keys * n_queries edges)."""
    keys = torch.arange(n_keys).repeat(n_queries)
    queries = torch.arange(n_queries).repeat_interleave(n_keys)
    return keys, queries


def causal(n_keys: int, n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key j sends to query i iff j <= i; the last query sees every key.

    With ``n_keys == n_queries`` this is the decoder's self-attention mask.
    With fewer queries than keys the queries are the *last* positions, which is
    what the incremental decoder needs (a cached prefix plus new tokens).
    """
    if n_queries > n_keys:
        raise ValueError(f"causal: n_queries={n_queries} must not exceed n_keys={n_keys}")
    keys, queries = complete(n_keys, n_queries)
    keep = keys <= queries + (n_keys - n_queries)
    return keys[keep], queries[keep]


_STRUCTURES: dict[str, EdgeFn] = {"complete": complete, "causal": causal}


def register_structure(name: str, fn: EdgeFn) -> None:
    """Make ``fn`` available by ``name`` in :class:`GraphSpec` and configs."""
    _STRUCTURES[name] = fn


def get_structure(name_or_fn: str | EdgeFn) -> EdgeFn:
    if callable(name_or_fn):
        return name_or_fn
    try:
        return _STRUCTURES[name_or_fn]
    except KeyError:
        raise ValueError(
            f"unknown attention structure {name_or_fn!r}; expected one of {sorted(_STRUCTURES)}"
        ) from None


@dataclass(frozen=True)
class GraphSpec:
    """Which structure each attention kind uses (names or edge functions)."""

    enc: str | EdgeFn = "complete"
    dec: str | EdgeFn = "causal"
    cross: str | EdgeFn = "complete"

    def fn(self, kind: str) -> EdgeFn:
        if kind not in KINDS:
            raise ValueError(f"unknown attention kind {kind!r}; expected one of {KINDS}")
        return get_structure(getattr(self, kind))


@lru_cache(maxsize=4096)
def pair_edges(fn: EdgeFn, n_keys: int, n_queries: int, causal_check: bool = False):
    """Edges of one pair, validated once and cached (bounded LRU: the graph pool)."""
    out = fn(n_keys, n_queries)
    try:
        keys, queries = (torch.as_tensor(t, dtype=torch.int64).reshape(-1) for t in out)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"attention structure {getattr(fn, '__name__', fn)!r} must return two index "
            f"sequences (key_idx, query_idx); got {type(out).__name__}: {err}"
        ) from None
    name = getattr(fn, "__name__", repr(fn))
    if keys.shape != queries.shape:
        raise ValueError(f"attention structure {name!r} returned {keys.numel()} key indices "
                         f"but {queries.numel()} query indices for (n_keys={n_keys}, n_queries={n_queries})")
    if keys.numel() and (keys.min() < 0 or keys.max() >= n_keys):
        bad = int(keys[(keys < 0) | (keys >= n_keys)][0])
        raise ValueError(f"attention structure {name!r} returned key index out of range [0, {n_keys}) "
                         f"(got key {bad}) for (n_keys={n_keys}, n_queries={n_queries})")
    if queries.numel() and (queries.min() < 0 or queries.max() >= n_queries):
        bad = int(queries[(queries < 0) | (queries >= n_queries)][0])
        raise ValueError(f"attention structure {name!r} returned query index out of range "
                         f"[0, {n_queries}) (got query {bad}) for (n_keys={n_keys}, n_queries={n_queries})")
    future = keys > queries + (n_keys - n_queries)
    if causal_check and bool(future.any()):
        j, i = int(keys[future][0]), int(queries[future][0]) + n_keys - n_queries
        raise ValueError(f"attention structure {name!r} connects a future target position to an "
                         f"earlier one (key j > query i) in the decoder: edge {j} -> {i}, for "
                         f"n={n_queries}; decoder structures must be causal")
    # Every query must receive at least one message, or softmax has nothing to normalise.
    if n_queries and torch.bincount(queries, minlength=n_queries).min() == 0:
        raise ValueError(f"attention structure {name!r} leaves a query node with no incoming edge "
                         f"for (n_keys={n_keys}, n_queries={n_queries})")
    return keys, queries


def bipartite(keys: torch.Tensor, queries: torch.Tensor, n_keys: int, n_queries: int,
              device=None) -> AttentionGraph:
    """The attention graph with ``n_keys`` sending and ``n_queries`` receiving nodes and edges
    ``keys[e] -> queries[e]`` (put in query order; already ordered edges keep theirs)."""
    return AttentionGraph.from_edges(keys, queries, n_keys, n_queries, device)


def join(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], key_offsets: Sequence[int],
         query_offsets: Sequence[int], n_keys: int, n_queries: int, device=None) -> AttentionGraph:
    """Pair graphs side by side in one graph: part p's local edges shifted by its key and
    query offsets. Batches offset both by the lengths before them; the beam search lets
    the hypotheses of one sentence share its source nodes (equal key offsets)."""
    counts = torch.tensor([k.numel() for k, _ in parts])
    keys = torch.cat([k for k, _ in parts]) + torch.as_tensor(key_offsets).repeat_interleave(counts)
    queries = torch.cat([q for _, q in parts]) + torch.as_tensor(query_offsets).repeat_interleave(counts)
    return bipartite(keys, queries, n_keys, n_queries, device)


def _check_lengths(name: str, lengths: Sequence[int]) -> list[int]:
    lengths = [int(n) for n in lengths]
    if not lengths:
        raise ValueError(f"{name}: expected at least one sequence, got an empty batch")
    for i, n in enumerate(lengths):
        if n < 1:
            raise ValueError(f"{name}[{i}]: expected a non-empty sequence, got length {n}")
    return lengths


def batch_graph(fn: EdgeFn, key_lens: Sequence[int], query_lens: Sequence[int], device=None,
                causal_check: bool = False):
    """One graph for a whole batch: pair p's keys only ever reach pair p's queries."""
    key_lens = _check_lengths("key lengths", key_lens)
    query_lens = _check_lengths("query lengths", query_lens)
    if len(key_lens) != len(query_lens):
        raise ValueError(f"batch has {len(key_lens)} key sequences but {len(query_lens)} query sequences")
    parts = [pair_edges(fn, n, m, causal_check) for n, m in zip(key_lens, query_lens)]
    return join(parts, torch.tensor([0] + key_lens[:-1]).cumsum(0), torch.tensor([0] + query_lens[:-1]).cumsum(0),
                sum(key_lens), sum(query_lens), device)


@dataclass
class AttentionGraphs:
    """The three attention graphs of one batch."""

    enc: AttentionGraph
    dec: AttentionGraph
    cross: AttentionGraph

    def to(self, device) -> AttentionGraphs:
        return AttentionGraphs(self.enc.to(device), self.dec.to(device), self.cross.to(device))

    def num_edges(self) -> dict[str, int]:
        return {k: getattr(self, k).num_edges() for k in KINDS}


def build_graphs(src_lens: Sequence[int], tgt_lens: Sequence[int], spec: GraphSpec | None = None,
                 device=None) -> AttentionGraphs:
    """Build encoder, decoder and encoder-decoder graphs for a batch of pairs."""
    spec = spec or GraphSpec()
    src_lens = _check_lengths("src_lens", src_lens)
    tgt_lens = _check_lengths("tgt_lens", tgt_lens)
    if len(src_lens) != len(tgt_lens):
        raise ValueError(f"src_lens has {len(src_lens)} entries but tgt_lens has {len(tgt_lens)}; "
                         "expected one (source, target) length pair per example")
    return AttentionGraphs(
        enc=batch_graph(spec.fn("enc"), src_lens, src_lens, device),
        dec=batch_graph(spec.fn("dec"), tgt_lens, tgt_lens, device, causal_check=True),
        cross=batch_graph(spec.fn("cross"), src_lens, tgt_lens, device),
    )

