"""The message-passing block: one pipeline, φ and □ overridable (PyG's ``MessagePassing``).

For every edge j -> i of an attention graph (key node j, query node i) a block computes

    x_i' = out_proj( □_{j -> i}  φ(q_i, k_j) · v_j )

:meth:`MessagePassingBlock.attend` is that pipeline, written once: check and convert the
graph, φ (:meth:`~MessagePassingBlock.message`: one score per edge and head), □
(:meth:`~MessagePassingBlock.aggregate`: normalise the scores over each query's in-edges,
attention dropout, the weighted sum of values), then ``out_proj``. Dot-product attention,
the GCN mean and GAT differ only in their projections and in φ/□
(:mod:`~transformer_graph.message_passing.attention`, :mod:`~.mean`, :mod:`~.gat`).

φ and □ are written with an engine's four primitives (``self.ops``: ``u_dot_v``,
``u_add_v``, ``edge_softmax``, ``u_mul_e_sum``); which engine a block uses is its own
``engine`` attribute (:mod:`~transformer_graph.message_passing.engines`), set for a whole
model with :func:`set_engine` or, for a while, :func:`using_engine`. A class may declare
with ``fused`` that its φ + □ is a computation an engine can run as one fused kernel; the
engine then does so where it can. A subclass that redefines ``message`` or ``aggregate``
loses the inherited declaration (the kernel would compute its parent's φ/□), unless it
declares ``fused`` itself.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar
from collections.abc import Iterator

import torch
from torch import nn

from transformer_graph.graphs.convert import as_attention_graph
from transformer_graph.graphs.graph import restore_edge_order
from transformer_graph.message_passing.engines import ENGINES, get_engine, resolve_engine


def check_heads(d_model: int, heads: int) -> int:
    """d_k = d_model / heads; a clear ValueError when heads does not divide d_model."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or d_model % heads != 0:
        raise ValueError(f"d_model={d_model} must be divisible by heads={heads} (heads: a positive "
                         "integer that divides d_model)")
    return d_model // heads


def float32_on_cpu(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Under CPU autocast the projections run in bf16 (3x faster matrix products), but the
    sparse CPU kernels have no fast low-precision path (DGL's: 7x slower measured): φ and □
    run in float32 and cost little. Elsewhere the tensors pass unchanged."""
    if tensors[0].device.type == "cpu" and tensors[0].dtype in (torch.bfloat16, torch.float16):
        return tuple(t.float() for t in tensors)
    return tensors


class MessagePassingBlock(nn.Module):
    """What every φ/□ block shares. Subclasses create their projections (``project_qkv``,
    ``project_q``, ``project_kv`` and ``out_proj``) and φ (:meth:`message`); □ defaults to
    a softmax over each query's in-edges followed by the weighted sum of values.

    Layers, the incremental decoder and the attention pictures use only ``forward``, the
    projections and :meth:`attend`.
    """

    #: The fused φ + □ kernel this class's computation is (an engine may run it as one), or None.
    fused: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "fused" not in cls.__dict__ and ("message" in cls.__dict__ or "aggregate" in cls.__dict__):
            cls.fused = None

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.d_k = check_heads(d_model, heads)
        self.d_model, self.heads = d_model, heads
        self.dropout = nn.Dropout(dropout)
        self._engine = "auto"

    # -- the engine ---------------------------------------------------------
    @property
    def engine(self) -> str:
        """``auto``, ``dgl`` or ``torch``: who computes this block's φ and □."""
        return self._engine

    @engine.setter
    def engine(self, name: str) -> None:
        resolve_engine(name)  # unknown or unavailable: fail now, not at the next forward
        self._engine = name

    @property
    def ops(self):
        """The engine's primitives (``u_dot_v``, ``u_add_v``, ``edge_softmax``, ``u_mul_e_sum``)."""
        return get_engine(self._engine)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, heads={self.heads}, engine={self._engine!r}"

    # -- the pipeline ---------------------------------------------------------
    def forward(self, graph, x_query: torch.Tensor, x_key: torch.Tensor | None = None,
                need_weights: bool = False):
        """Self-attention when ``x_key`` is None (key and query nodes are the same
        tokens), otherwise cross-attention from ``x_key`` nodes to ``x_query`` nodes.

        ``graph``: an AttentionGraph, a DGL graph (homogeneous or bipartite) or a ``(2, E)``
        edge index (row 0 key nodes, row 1 query nodes). Returns ``(out, weights)`` with
        ``out`` of shape (num_query_nodes, d_model) and ``weights`` of shape (num_edges, heads),
        in the graph's edge order, when ``need_weights`` else None.
        """
        if x_key is None:
            q, k, v = self.project_qkv(x_query)
        else:
            q = self.project_q(x_query)
            k, v = self.project_kv(x_key)
        return self.attend(graph, q, k, v, need_weights)

    def attend(self, graph, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_weights: bool = False):
        """Attention from projected (q, k, v) on ``graph``; returns (out, weights or None)."""
        out, weights = self.propagate(graph, q, k, v, need_weights)
        return self.out_proj(out.reshape(out.shape[0], self.d_model)), weights

    def propagate(self, graph, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_weights: bool = False):
        """φ then □ on ``graph`` (no output projection): (aggregated (num_query_nodes, ...),
        weights (num_edges, heads) or None)."""
        graph, order = as_attention_graph(graph, k.shape[0], q.shape[0], q.device)
        ops = self.ops
        kernel = ops.fused(self.fused, graph, q) if self.fused else None
        if kernel is not None:
            out, weights = kernel(self, graph, q, k, v, need_weights)
        else:
            q, k, v = float32_on_cpu(q, k, v)
            out, weights = self.aggregate(graph, self.message(graph, q, k), v)
        if not need_weights:
            return out, None
        return out, restore_edge_order(self.edge_weights(weights).detach(), order)

    # -- φ and □ --------------------------------------------------------------
    def message(self, graph, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """φ: one score per edge (and head) from its query and key node, (E, heads, 1)."""
        raise NotImplementedError(f"{type(self).__name__} must define message(graph, q, k) (its φ)")

    def aggregate(self, graph, scores: torch.Tensor, v: torch.Tensor):
        """□: softmax over each query's in-edges, attention dropout, weighted sum of values;
        returns (aggregated values, the weights before dropout)."""
        weights = self.ops.edge_softmax(graph, scores)
        return self.ops.u_mul_e_sum(graph, v, self.dropout(weights)), weights

    def edge_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """□'s weights as (num_edges, heads): per-head weights keep their heads; one weight per
        edge is repeated for every head, so pictures lay out every block alike."""
        return weights.reshape(weights.shape[0], -1).expand(-1, self.heads)


def blocks(module: nn.Module) -> Iterator[MessagePassingBlock]:
    """Every message-passing block inside ``module`` (itself included)."""
    return (m for m in module.modules() if isinstance(m, MessagePassingBlock))


def set_engine(module: nn.Module, name: str, what: str = "engine") -> nn.Module:
    """Make every block of ``module`` use engine ``name`` (``auto``, ``dgl`` or ``torch``);
    returns ``module``. Other models are not affected. ``what`` names the setting in errors
    (e.g. ``train.engine``)."""
    resolve_engine(name, what)
    for block in blocks(module):
        block.engine = name
    return module


@contextmanager
def using_engine(module: nn.Module, name: str):
    """Run ``module``'s blocks on engine ``name`` inside the ``with`` block, then restore each
    block's own engine (benchmarks and tests compare engines on one model this way)."""
    saved = [(block, block.engine) for block in blocks(module)]
    set_engine(module, name)
    try:
        yield module
    finally:
        for block, engine in saved:
            block.engine = engine


def engines_of(module: nn.Module) -> set[str]:
    """The engine names ``module``'s blocks are set to."""
    return {block.engine for block in blocks(module)}


__all__ = ["ENGINES", "MessagePassingBlock", "blocks", "check_heads", "engines_of", "float32_on_cpu",
           "set_engine", "using_engine"]
