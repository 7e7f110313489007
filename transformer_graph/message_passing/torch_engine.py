"""The ``torch`` engine: the same φ and □ in plain PyTorch, on any device, without DGL.

Every primitive has DGL's semantics exactly (:mod:`~transformer_graph.message_passing.dgl_engine`),
over the graph's query-ordered edges (``graph.src``, ``graph.dst``, ``graph.indptr``):

* ``u_dot_v`` / ``u_add_v``: gather both end nodes' features per edge;
* ``edge_softmax``: segment max and sum over each query's in-edges (contiguous, as the
  edges are in query order), max-shifted like DGL's;
* ``u_mul_e_sum``: on CPU the sparse-CSR SpMM of :mod:`~transformer_graph.message_passing.csr`
  (MKL; an order of magnitude faster than DGL's CPU kernel for multi-head features),
  elsewhere a gather, multiply and ``index_add``.

A fused kernel replaces φ and □ together where a block declares one (``fused`` on the
block class) and this engine implements it for the inputs at hand: ``dot_product`` on CPU,
the CSR SDDMM + segment softmax + SpMM with hand-written backward passes.
"""
from __future__ import annotations

import torch

from transformer_graph.message_passing import csr


def _dot_product(block, graph, q, k, v, need_weights: bool):
    """Scaled dot-product attention in the CSR kernels: (out (n_q, H, d), weights (E, H))."""
    return csr.attend(graph, q, k, v, block.scale, block.dropout, need_weights)


_FUSED = {"dot_product": _dot_product}


def _csr_operands(graph, v: torch.Tensor, w: torch.Tensor):
    """(w as (E, H), v as (N, H, d)) when the CSR SpMM computes exactly ``u_mul_e_sum(v, w)``,
    else None: per-head weights (E, H, 1) on (N, H, d) values, or one weight per edge (E, 1)
    on (N, d) values, with matching dtypes on CPU."""
    if not csr.supports(graph, v) or w.dtype != v.dtype or v.dtype not in (torch.float32, torch.float64):
        return None
    e = graph.num_edges()
    if v.dim() == 3 and tuple(w.shape) == (e, v.shape[1], 1):
        return w.reshape(e, v.shape[1]), v
    if v.dim() == 2 and tuple(w.shape) == (e, 1):
        return w, v.unsqueeze(1)
    return None


class TorchEngine:
    """PyTorch's own kernels; sparse CSR on CPU."""

    name = "torch"

    def u_dot_v(self, graph, k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (k.index_select(0, graph.src) * q.index_select(0, graph.dst)).sum(-1, keepdim=True)

    def u_add_v(self, graph, k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return k.index_select(0, graph.src) + q.index_select(0, graph.dst)

    def edge_softmax(self, graph, scores: torch.Tensor) -> torch.Tensor:
        # The shift only keeps exp() finite; softmax does not depend on it, so it needs no gradient.
        peak = torch.segment_reduce(scores.detach(), "max", offsets=graph.indptr, axis=0)
        e = (scores - peak.index_select(0, graph.dst)).exp()
        return e / torch.segment_reduce(e, "sum", offsets=graph.indptr, axis=0).index_select(0, graph.dst)

    def u_mul_e_sum(self, graph, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        operands = _csr_operands(graph, v, w)
        if operands is not None:
            out = csr.weighted_sum(graph, *operands)
            return out.reshape(out.shape[0], *v.shape[1:])
        msg = v.index_select(0, graph.src) * w
        return msg.new_zeros((graph.num_dst_nodes(), *msg.shape[1:])).index_add_(0, graph.dst, msg)

    def fused(self, kernel: str | None, graph, q: torch.Tensor):
        """The fused φ + □ kernel named ``kernel`` where it applies to ``graph`` and ``q``, else None."""
        if kernel in _FUSED and csr.supports(graph, q):
            return _FUSED[kernel]
        return None
