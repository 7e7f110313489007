"""Fast CPU kernels for graph attention: phi and □ on the graph's CSR arrays.

The computation is exactly :class:`~transformer_graph.message_passing.attention.GraphAttention`'s
message passing (phi: one score ``q_i . k_j / sqrt(d_k)`` per edge j -> i; □: a
softmax over each query's in-edges, dropout, the weighted sum of values); only
the kernels differ. DGL's CPU kernels have no vectorised path for multi-head
features ((nodes, heads, d_k) values times (edges, heads, 1) weights is a
"broadcast" SpMM, which DGL runs as a scalar loop): about 2 GFLOP/s on this
machine. PyTorch's sparse CSR kernels (MKL's SpMM, a vectorised SDDMM) are an
order of magnitude faster per call; attention forward + backward became 5-7x
faster (docs/BENCHMARKS.md). For all heads at once:

* phi:  ``torch.sparse.sampled_addmm`` (SDDMM): the scores of exactly the graph's
  edges, nothing else;
* □:    a segment softmax over each (query, head)'s in-edges (contiguous in CSR
  order), dropout on the edge weights, then a sparse-dense product (SpMM);

with hand-written backward passes (SDDMM and SpMM on the graph and on its
reverse). The graph becomes one sparse matrix over (node, head) rows, which is
how (nodes, heads, d_k) features already lie in memory, so no transpose or
per-head copy is made. Edge tensors hold one scalar per edge and head, as in
DGL; no (edges, d_k) tensor is ever formed. The indices cost 12 bytes per edge
and head (int32 columns of the matrix and its reverse, and the permutation
between them), built once per graph and cached on it, so the attention layers
of a batch share them.

It applies when the graph's edges are numbered in query order (DGL's edge ids
equal the in-edge CSR positions), which holds for every graph
:mod:`transformer_graph.graphs.build` and the decoders build from query-sorted
structures; other graphs, other devices and :func:`set_enabled` ``(False)`` fall
back to DGL's kernels (:func:`supports`).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_CACHE_ATTR = "_tg_csr_pattern"
_enabled = False  # DGL's built-ins are the reference path; these kernels are opt-in


def set_enabled(flag: bool) -> None:
    """Use these kernels (True) or always DGL's (False, the default), process-wide.

    Training turns them on with ``train.kernels: sparse``; ``scripts/benchmark.py``
    times both."""
    global _enabled
    _enabled = bool(flag)


def is_enabled() -> bool:
    return _enabled


@contextmanager
def enabled(flag: bool):
    """Temporarily switch the kernels on or off (benchmarks compare both)."""
    old = _enabled
    set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(old)


@dataclass
class CsrPattern:
    """An attention graph as one sparse matrix over (node, head) rows, and its reverse.

    Features (n, H, d) are used as the (n*H, d) matrix they already are in memory
    (row ``i*H + h`` is head h of node i), so no transposes or copies per head are
    needed: entry (i*H + h, j*H + h) holds head h's value of edge j -> i, and one
    kernel call serves all heads. Rows are contiguous segments of the flat (E*H,)
    edge values (the softmax's segments); ``perm_t`` maps the reverse matrix's
    entries (rows j*H + h: keys) to these positions.
    """

    heads: int
    n_q: int
    n_k: int
    crow: torch.Tensor       # (n_q*H + 1,) row pointers (int32 when it fits)
    col: torch.Tensor        # (E*H,) column j*H + h of each entry
    offsets: torch.Tensor    # (n_q*H + 1,) int64 row pointers, for segment reductions
    lens: torch.Tensor       # (n_q*H,) entries per row
    crow_t: torch.Tensor     # (n_k*H + 1,) row pointers of the reverse matrix
    col_t: torch.Tensor      # (E*H,) its columns i*H + h
    perm_t: torch.Tensor     # (E*H,) position in this matrix of each reverse entry
    dst: torch.Tensor        # (E,) query node of each edge (edge ids are CSR positions)
    single_crow: torch.Tensor  # (n_q + 1,) the one-head row pointers

    @property
    def nnz(self) -> int:
        return self.col.numel()

    def _csr(self, crow, col, values, rows, cols):
        return torch.sparse_csr_tensor(crow, col, values, (rows, cols))

    def sddmm(self, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``alpha * a[i, h] . b[j, h]`` for every edge j -> i and head h: (E*H,) in
        CSR order, from a (n_q, H, d) and b (n_k, H, d)."""
        h = self.heads
        ones = torch.ones(1, dtype=a.dtype, device=a.device).expand(self.nnz)
        pattern = self._csr(self.crow, self.col, ones, self.n_q * h, self.n_k * h)
        out = torch.sparse.sampled_addmm(pattern, a.reshape(self.n_q * h, -1), b.reshape(self.n_k * h, -1).t(),
                                         beta=0.0, alpha=alpha)
        return out.values()

    def spmm(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``sum_j values[j -> i, h] * x[j, h]``: (n_q, H, d) from x (n_k, H, d)."""
        h = self.heads
        m = self._csr(self.crow, self.col, values, self.n_q * h, self.n_k * h)
        return _mm(m, x.reshape(self.n_k * h, -1)).view(self.n_q, h, -1)

    def spmm_t(self, values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_i values[j -> i, h] * y[i, h]`` (the reverse graph): (n_k, H, d)."""
        h = self.heads
        m = self._csr(self.crow_t, self.col_t, values.index_select(0, self.perm_t), self.n_k * h, self.n_q * h)
        return _mm(m, y.reshape(self.n_q * h, -1)).view(self.n_k, h, -1)

    def _per_entry(self, row_values: torch.Tensor) -> torch.Tensor:
        return row_values.repeat_interleave(self.lens, output_size=self.nnz)

    def row_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Per-(query, head) sums of entry values (E*H,), broadcast back to the entries."""
        return self._per_entry(torch.segment_reduce(x, "sum", offsets=self.offsets))

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax of (E*H,) scores over each query's in-edges, per head (max-shifted, exact)."""
        peak = torch.segment_reduce(scores, "max", offsets=self.offsets)
        e = (scores - self._per_entry(peak)).exp_()
        return e.div_(self.row_sum(e))

    def edge_head(self, values: torch.Tensor) -> torch.Tensor:
        """Entry values (E*H,) as an (E, H) tensor indexed by (edge id, head)."""
        h = self.heads
        heads = torch.arange(h, device=values.device)
        e = torch.arange(self.dst.numel(), device=values.device)
        first = self.offsets[self.dst[:, None] * h + heads]             # row start of (dst(e), h)
        pos = first + (e - self.single_crow[self.dst])[:, None]          # + e's rank among dst's in-edges
        return values[pos]


def _mm(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sparse ``m`` @ dense ``x`` written straight into a new tensor: ``torch.sparse.mm``
    would zero-fill a result and copy MKL's output into it (25% slower measured)."""
    out = x.new_empty(m.shape[0], x.shape[1])
    return torch.addmm(out, m, x, beta=0.0, out=out)


def _rows(crow: torch.Tensor, heads: int):
    """For the interleaved matrix of a one-head CSR: its row pointers, row lengths,
    and for every entry its row r = i*H + h and its position e in the one-head CSR."""
    deg = crow.diff()
    lens = deg.repeat_interleave(heads)
    offsets = torch.cat([lens.new_zeros(1), lens.cumsum(0)])
    nnz = int(offsets[-1])
    row = torch.arange(lens.numel(), device=crow.device).repeat_interleave(lens, output_size=nnz)
    single = crow[torch.div(row, heads, rounding_mode="floor")] + (torch.arange(nnz, device=crow.device) - offsets[row])
    return offsets, lens, row, single


def pattern_of(graph, heads: int) -> CsrPattern | None:
    """The graph's cached :class:`CsrPattern` for ``heads`` heads, or None when its
    edges are not numbered in query order."""
    cache = getattr(graph, _CACHE_ATTR, None)
    if cache is None:
        cache = {}
        setattr(graph, _CACHE_ATTR, cache)
    if heads in cache:
        return cache[heads]
    crow, col, eids = graph.adj_tensors("csc")       # in-edges: rows are query (dst) nodes
    n_q, n_k, e = graph.num_dst_nodes(), graph.num_src_nodes(), graph.num_edges()
    pattern = None
    if e and bool((eids == torch.arange(e, dtype=eids.dtype, device=eids.device)).all()):
        crow_t, col_t, eids_t = (t.long() for t in graph.adj_tensors("csr"))  # rows are keys (src)
        crow, col = crow.long(), col.long()
        # int32 indices: MKL's sparse kernels take them as they are (int64 would be
        # converted on every call); int64 only when the index space needs it.
        idx = torch.int32 if heads * max(e, n_q + 1, n_k + 1) < 2 ** 31 else torch.int64
        offsets, lens, row, single = _rows(crow, heads)
        col_h = col[single] * heads + row % heads
        offsets_t, _, row_t, single_t = _rows(crow_t, heads)
        col_th = col_t[single_t] * heads + row_t % heads
        # Reverse entry (key j, head h, edge eid) sits in this matrix at row dst*H + h,
        # at the edge's rank among dst's in-edges.
        edge_t = eids_t[single_t]
        dst = torch.repeat_interleave(torch.arange(n_q, device=crow.device), crow.diff(), output_size=e)
        perm_t = offsets[dst[edge_t] * heads + row_t % heads] + (edge_t - crow[dst[edge_t]])
        pattern = CsrPattern(heads=heads, n_q=n_q, n_k=n_k, crow=offsets.to(idx), col=col_h.to(idx),
                             offsets=offsets, lens=lens, crow_t=offsets_t.to(idx), col_t=col_th.to(idx),
                             perm_t=perm_t.to(idx), dst=dst, single_crow=crow)
    cache[heads] = pattern
    return pattern


_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def supports(graph, q: torch.Tensor) -> bool:
    """Whether :func:`attend` handles this graph and these (n_q, H, d) features."""
    return (_enabled and q.device.type == "cpu" and q.dtype in _DTYPES
            and pattern_of(graph, q.shape[1]) is not None)


def _compute(x: torch.Tensor) -> torch.Tensor:
    """Kernels run in float32 (float64 stays): low-precision features (bf16 autocast)
    are kept as they are for the backward pass and widened only while used, so the
    saved activations stay half-size."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class _ScoresSoftmax(torch.autograd.Function):
    """phi then the softmax of □: (E*H,) attention weights from q (n_q, H, d), k (n_k, H, d)."""

    @staticmethod
    def forward(ctx, pattern: CsrPattern, q, k, scale: float):
        with torch.autocast("cpu", enabled=False):
            weights = pattern.softmax(pattern.sddmm(_compute(q), _compute(k), scale))
        ctx.save_for_backward(q, k, weights)
        ctx.pattern, ctx.scale = pattern, scale
        return weights

    @staticmethod
    def backward(ctx, grad_w):
        q, k, w = ctx.saved_tensors
        p, scale = ctx.pattern, ctx.scale
        with torch.autocast("cpu", enabled=False):
            wg = w * grad_w
            grad_s = wg.sub_(w * p.row_sum(wg)).mul_(scale)  # softmax backward, times phi's scale
            grad_q = p.spmm(grad_s, _compute(k)).to(q.dtype) if ctx.needs_input_grad[1] else None
            grad_k = p.spmm_t(grad_s, _compute(q)).to(k.dtype) if ctx.needs_input_grad[2] else None
        return None, grad_q, grad_k, None


class _WeightedSum(torch.autograd.Function):
    """The sum of □: out[i, h] = sum_j w[j -> i, h] * v[j, h]; (n_q, H, d)."""

    @staticmethod
    def forward(ctx, pattern: CsrPattern, w, v):
        with torch.autocast("cpu", enabled=False):
            out = pattern.spmm(w, _compute(v))
        ctx.save_for_backward(w, v)
        ctx.pattern = pattern
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w, v = ctx.saved_tensors
        p = ctx.pattern
        with torch.autocast("cpu", enabled=False):
            grad_out = grad_out.to(w.dtype)
            grad_w = p.sddmm(grad_out, _compute(v)) if ctx.needs_input_grad[1] else None
            grad_v = p.spmm_t(w, grad_out).to(v.dtype) if ctx.needs_input_grad[2] else None
        return None, grad_w, grad_v


def attend(graph, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout=None,
           need_weights: bool = False):
    """(out (n_q, H, d), weights (E, H) or None) of attention on ``graph``; see :func:`supports`."""
    pattern = pattern_of(graph, q.shape[1])
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": these kernels are tested here.
        warnings.simplefilter("ignore", UserWarning)
        weights = _ScoresSoftmax.apply(pattern, q, k, scale)
        dropped = weights if dropout is None else dropout(weights)
        out = _WeightedSum.apply(pattern, dropped, v)
    return out, (pattern.edge_head(weights) if need_weights else None)


def pattern_bytes(graph) -> int:
    """Bytes of the CSR patterns cached on ``graph`` (they live as long as the graph)."""
    total = 0
    for pattern in (getattr(graph, _CACHE_ATTR, None) or {}).values():
        if pattern is not None:
            total += sum(t.numel() * t.element_size() for t in vars(pattern).values()
                         if isinstance(t, torch.Tensor))
    return total


def forget_patterns(graph) -> None:
    """Drop the CSR patterns cached on ``graph`` (benchmarks time building them, as a
    training step on a fresh batch does)."""
    if hasattr(graph, _CACHE_ATTR):
        delattr(graph, _CACHE_ATTR)
