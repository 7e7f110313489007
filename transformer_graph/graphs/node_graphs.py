"""Attention graphs for node classification: a batch of given graphs as one disjoint union.

The translation tasks derive their graphs from sentence lengths (:mod:`~transformer_graph.graphs.build`);
here the graphs are data. :func:`batch_graphs` puts a batch of them side by side (node ids
offset by the sizes before them, so no message crosses between graphs) and builds the one
self-attention :class:`~transformer_graph.graphs.graph.AttentionGraph` of a structure:

==============  ==============================================================================
``sparse``      the graph's own edges, plus a self loop per node unless ``self_loops=False``
``complete``    every node attends to every node of its own graph, itself included ("full
                attention": the Transformer encoder on an unordered set of nodes)
``global``      ``sparse`` plus ``global_nodes`` virtual nodes per graph, each connected both ways
                to every node of its graph (a global node also keeps its own state: a self loop)
==============  ==============================================================================

Why self loops by default: without one a node's own state never enters □ (attention mixes only
its neighbours), and a node with no in-edge has nothing to normalise over. Global nodes sit
after all real nodes (graph-major), so a model drops them with one slice before its classifier.

Samples are duck-typed (``num_nodes``, ``edge_index`` (2, E) int64 src -> dst, ``x``, ``y``; the
optional ``train_mask``/``val_mask``/``test_mask``), which
:class:`transformer_graph.data.graph_tasks.GraphSample` is; this layer sits below ``data`` and does
not import it. For the same reason positional encodings come in through ``pe_fn`` (the model side
passes :func:`transformer_graph.data.laplacian.laplacian_pe`; see ``nn.graph_encoder.node_batch``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol

import torch

from transformer_graph.graphs.build import batch_graph, complete
from transformer_graph.graphs.graph import AttentionGraph

NODE_STRUCTURES = ("sparse", "complete", "global")
# (edge_index, num_nodes, k) -> (num_nodes, k) float: one graph's positional encoding.
PEFn = Callable[[torch.Tensor, int, int], torch.Tensor]
_MASKS = {"train": "train_mask", "valid": "val_mask", "test": "test_mask"}


class NodeGraph(Protocol):
    """What :func:`batch_graphs` reads from a sample (``GraphSample`` has it)."""

    num_nodes: int
    edge_index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class NodeBatch:
    """One batch of graphs for a node classifier.

    Nodes are numbered real nodes first (graph 0's, then graph 1's, ...), then the global nodes
    (graph-major: graph g's j-th global node is ``num_real + g * global_nodes + j``).
    ``x``, ``y``, ``pe`` rows and the masks follow the same order; ``x``/``y`` hold real nodes only,
    ``pe`` every node (zeros for global nodes: they have no place in the graph).
    """

    graph: AttentionGraph          # self-attention graph over all num_nodes nodes
    x: torch.Tensor                # (num_real,) int64 ids or (num_real, F) float features
    y: torch.Tensor                # (num_real,) int64 labels
    graph_index: torch.Tensor      # (num_nodes,) int64: the graph each node belongs to
    node_offsets: torch.Tensor     # (num_graphs + 1,) int64: graph g's real nodes are [offsets[g], offsets[g+1])
    num_real: int
    num_global: int
    global_nodes: int              # global nodes per graph (0 unless structure == "global")
    structure: str
    pe: torch.Tensor | None = None                                # (num_nodes, pe_dim) or None
    masks: dict[str, torch.Tensor] | None = None                  # split -> (num_real,) bool, if every sample has it

    @property
    def num_graphs(self) -> int:
        return int(self.node_offsets.numel()) - 1

    @property
    def num_nodes(self) -> int:
        return self.num_real + self.num_global

    def global_slot(self) -> torch.Tensor:
        """(num_global,) which of the ``global_nodes`` learned embeddings each global node takes."""
        return torch.arange(self.global_nodes, device=self.graph_index.device).repeat(self.num_graphs)

    def to(self, device) -> NodeBatch:
        """The same batch on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), (torch.Tensor, AttentionGraph))}
        if self.masks is not None:
            moved["masks"] = {k: m.to(device) for k, m in self.masks.items()}
        return replace(self, **moved)


# --------------------------------------------------------------------------
# Checks: the message names the graph, what is wrong and the fix
# --------------------------------------------------------------------------
def check_structure(structure: str, self_loops: bool, global_nodes: int) -> None:
    """ValueError for a structure name or combination no batch can be built with."""
    if structure not in NODE_STRUCTURES:
        raise ValueError(f"structure: unknown node-graph structure {structure!r}; expected one of "
                         f"{', '.join(NODE_STRUCTURES)}")
    if structure == "complete" and not self_loops:
        raise ValueError("self_loops=False with structure 'complete': full attention always includes each "
                         "node itself; use structure 'sparse' (the graph's edges) for attention without self loops")
    if structure == "global" and (isinstance(global_nodes, bool) or not isinstance(global_nodes, int)
                                  or global_nodes < 1):
        raise ValueError(f"global_nodes: structure 'global' needs a positive number of global nodes per graph, "
                         f"got {global_nodes!r}")


def _check_sample(i: int, s) -> int:
    n = s.num_nodes
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"graph {i}: num_nodes must be a positive int, got {n!r}; drop empty graphs from the batch")
    ei = s.edge_index
    if not isinstance(ei, torch.Tensor) or ei.dtype != torch.int64 or ei.dim() != 2 or ei.shape[0] != 2:
        got = f"{ei.dtype} {tuple(ei.shape)}" if isinstance(ei, torch.Tensor) else type(ei).__name__
        raise ValueError(f"graph {i}: edge_index must be an int64 tensor of shape (2, E) (row 0 sources, row 1 "
                         f"destinations), got {got}; fix: torch.as_tensor(edges, dtype=torch.long).reshape(2, -1)")
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        raise ValueError(f"graph {i}: edge_index holds node ids outside [0, num_nodes={n}); renumber the nodes "
                         f"0..{n - 1} (transformer_graph.data.graph_tasks.check_graph names the edge)")
    for name in ("x", "y"):
        t = getattr(s, name)
        if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] != n:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"graph {i}: {name} must have one row per node ({n}), got {got}")
    return n


def _check_receivers(dst: torch.Tensor, num_real: int, offsets: torch.Tensor, graph_index: torch.Tensor) -> None:
    starved = (torch.bincount(dst, minlength=num_real)[:num_real] == 0).nonzero().flatten()
    if starved.numel():
        node = int(starved[0])
        g = int(graph_index[node])
        raise ValueError(f"graph {g}: node {node - int(offsets[g])} (and {starved.numel() - 1} other nodes of the "
                         f"batch) has no in-edge; with self_loops=False attention over no messages is undefined "
                         f"(softmax of nothing); use self_loops=True, or structure 'global' (global nodes reach "
                         f"every node), or drop the isolated nodes")


# --------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------
def _concat(samples: Sequence, name: str) -> torch.Tensor:
    parts = [getattr(s, name) for s in samples]
    if len({(p.dim(), p.shape[1:], p.dtype) for p in parts}) > 1:
        kinds = sorted({f"{p.dtype} {tuple(p.shape[1:])}" for p in parts})
        raise ValueError(f"{name}: the graphs of a batch disagree on its dtype / row shape ({', '.join(kinds)}); "
                         f"every graph of a dataset needs the same feature kind and width")
    return torch.cat(parts)


def _positional(samples: Sequence, pe_dim: int, pe_fn: PEFn | None, num_global: int) -> torch.Tensor | None:
    if isinstance(pe_dim, bool) or not isinstance(pe_dim, int) or pe_dim < 0:
        raise ValueError(f"pe_dim: expected a non-negative int (0 = no positional encoding), got {pe_dim!r}")
    if pe_dim == 0:
        return None
    if pe_fn is None:
        raise ValueError("pe_fn: pe_dim > 0 needs a function (edge_index, num_nodes, k) -> (num_nodes, k), e.g. "
                         "transformer_graph.data.laplacian.laplacian_pe (nn.graph_encoder.node_batch passes it)")
    pes = [torch.as_tensor(pe_fn(s.edge_index, int(s.num_nodes), pe_dim)) for s in samples]
    for i, (s, pe) in enumerate(zip(samples, pes)):
        if tuple(pe.shape) != (int(s.num_nodes), pe_dim):
            raise ValueError(f"pe_fn returned shape {tuple(pe.shape)} for graph {i}; expected "
                             f"(num_nodes, pe_dim) = ({s.num_nodes}, {pe_dim})")
    pe = torch.cat(pes).float()
    return torch.cat([pe, pe.new_zeros(num_global, pe_dim)])


def batch_graphs(samples: Sequence[NodeGraph], structure: str = "sparse", *, self_loops: bool = True,
                 global_nodes: int = 1, pe_dim: int = 0, pe_fn: PEFn | None = None, device=None) -> NodeBatch:
    """The disjoint union of ``samples`` with the attention graph of ``structure``.

    ``global_nodes`` (per graph) applies to structure ``global`` only. With ``pe_dim > 0``,
    ``pe_fn(edge_index, num_nodes, pe_dim)`` gives each graph's positional encoding, computed
    from the data graph's edges whatever the attention structure.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("samples: expected at least one graph, got an empty batch")
    check_structure(structure, self_loops, global_nodes)
    sizes = torch.tensor([_check_sample(i, s) for i, s in enumerate(samples)])
    offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
    num_graphs, num_real = len(samples), int(offsets[-1])
    per_graph = global_nodes if structure == "global" else 0
    num_global = num_graphs * per_graph
    graph_index = torch.cat([torch.arange(num_graphs).repeat_interleave(sizes),
                             torch.arange(num_graphs).repeat_interleave(per_graph)])

    if structure == "complete":
        # build.py's batch builder: complete(n, n) per graph, cached per size, joined with offsets.
        graph = batch_graph(complete, sizes.tolist(), sizes.tolist())
    else:
        counts = torch.tensor([s.edge_index.shape[1] for s in samples])
        edges = torch.cat([s.edge_index for s in samples], 1) + offsets[:-1].repeat_interleave(counts)
        if self_loops:   # a sample's own self loops (GraphSample holds none) would count twice
            edges = edges[:, edges[0] != edges[1]]
        src, dst = [edges[0]], [edges[1]]
        if self_loops:
            src.append(torch.arange(num_real + num_global))
            dst.append(torch.arange(num_real + num_global))
        elif not num_global:   # global nodes reach every real node
            _check_receivers(edges[1], num_real, offsets, graph_index)
        if num_global:
            real = torch.arange(num_real).repeat_interleave(per_graph)
            glob = num_real + graph_index[real] * per_graph + torch.arange(per_graph).repeat(num_real)
            src += [real, glob]
            dst += [glob, real]
            if not self_loops:   # a global node still keeps its own state
                src.append(torch.arange(num_real, num_real + num_global))
                dst.append(torch.arange(num_real, num_real + num_global))
        graph = AttentionGraph.from_edges(torch.cat(src), torch.cat(dst), num_real + num_global,
                                          num_real + num_global)

    masks = {split: torch.cat([getattr(s, attr) for s in samples]) for split, attr in _MASKS.items()
             if all(getattr(s, attr, None) is not None for s in samples)}
    batch = NodeBatch(graph, _concat(samples, "x"), _concat(samples, "y"), graph_index, offsets, num_real,
                      num_global, per_graph, structure, _positional(samples, pe_dim, pe_fn, num_global),
                      masks or None)
    return batch if device is None else batch.to(device)


__all__ = ["NODE_STRUCTURES", "NodeBatch", "NodeGraph", "PEFn", "batch_graphs", "check_structure"]
