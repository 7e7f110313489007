"""Fast CPU kernels for graph attention: phi and □ on the graph's CSR arrays.

The computation is exactly :class:`~transformer_graph.attention.GraphAttention`'s
message passing (phi: one score ``q_i . k_j / sqrt(d_k)`` per edge j -> i; □: a
softmax over each query's in-edges, dropout, the weighted sum of values); only
the kernels differ. DGL's CPU kernels have no vectorised path for multi-head
features ((nodes, heads, d_k) values times (edges, heads, 1) weights is a
"broadcast" SpMM, which DGL runs as a scalar loop): about 2 GFLOP/s on this
machine. PyTorch's sparse CSR kernels (MKL's SpMM, a vectorised SDDMM) do the
same per head at 10-50x the speed, so this module runs, per head:

* phi:  ``torch.sparse.sampled_addmm(pattern, q_h, k_h^T)`` (SDDMM): the scores of
  exactly the graph's edges, nothing else;
* □:    a segment softmax over each query's in-edges (contiguous in CSR order),
  dropout on the edge weights, then ``torch.sparse.mm(W_h, v_h)`` (SpMM);

with hand-written backward passes (SDDMM and SpMM on the graph and on its
reverse). Edge tensors are (heads, edges), one scalar per edge and head, as in
DGL; no (edges, d_k) tensor is ever formed.

The graph's in-edge CSR (DGL's ``csc`` format) is computed once per graph and
cached on it, so the attention layers of a batch share it. It applies when the
graph's edges are numbered in query order (DGL's edge ids equal the CSR
positions), which holds for every graph :mod:`transformer_graph.graphs` and the
decoders build from query-sorted structures; other graphs and dtypes fall back
to DGL's kernels (:func:`supports`).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_CACHE_ATTR = "_tg_csr_pattern"
_enabled = True


def set_enabled(flag: bool) -> None:
    """Use these kernels (True, the default) or always DGL's (False), process-wide."""
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
    """An attention graph's in-edge CSR (rows = query nodes) and its reverse, with the
    heads laid out block-diagonally: head h's queries are rows h*n_q .. (h+1)*n_q - 1
    and its keys columns h*n_k ..; so one sparse kernel call serves every head.

    Edge values are (H, E) tensors; flattened, they are in this CSR order.
    """

    heads: int
    crow: torch.Tensor       # (H*n_q + 1,) row pointers
    col: torch.Tensor        # (H*E,) key column of each entry
    row: torch.Tensor        # (E,) query node of each edge (segment ops, shared by all heads)
    crow_t: torch.Tensor     # (H*n_k + 1,) row pointers of the reverse graph (key-major)
    col_t: torch.Tensor      # (H*E,) query column of each reverse entry
    perm_t: torch.Tensor     # (H*E,) position in CSR order of each reverse entry
    n_q: int
    n_k: int
    ones: torch.Tensor       # (H*E,) sampling pattern for SDDMM

    @property
    def nnz(self) -> int:
        return self.row.numel()

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """Values (H, E) as the block-diagonal (H*n_q, H*n_k) sparse matrix."""
        return torch.sparse_csr_tensor(self.crow, self.col, values.reshape(-1),
                                       (self.heads * self.n_q, self.heads * self.n_k))

    def matrix_t(self, values: torch.Tensor) -> torch.Tensor:
        """Its transpose (the reverse graph), (H*n_k, H*n_q)."""
        return torch.sparse_csr_tensor(self.crow_t, self.col_t, values.reshape(-1).index_select(0, self.perm_t),
                                       (self.heads * self.n_k, self.heads * self.n_q))

    def sddmm(self, a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``alpha * a[h, i] . b[h, j]`` for every edge j -> i and head h: (H, E),
        from a (H, n_q, d) and b (H, n_k, d)."""
        h = self.heads
        pattern = torch.sparse_csr_tensor(self.crow, self.col, self.ones.to(a.dtype),
                                          (h * self.n_q, h * self.n_k))
        out = torch.sparse.sampled_addmm(pattern, a.reshape(h * self.n_q, -1), b.reshape(h * self.n_k, -1).t(),
                                         beta=0.0, alpha=alpha)
        return out.values().view(h, -1)

    def spmm(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``sum_j values[h, j -> i] * x[h, j]``: (H, n_q, d) from x (H, n_k, d)."""
        return torch.sparse.mm(self.matrix(values), x.reshape(self.heads * self.n_k, -1)).view(self.heads, self.n_q, -1)

    def spmm_t(self, values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_i values[h, j -> i] * y[h, i]`` (the reverse graph): (H, n_k, d)."""
        return torch.sparse.mm(self.matrix_t(values), y.reshape(self.heads * self.n_q, -1)).view(self.heads, self.n_k, -1)

    def row_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Per-query sums of edge values x (H, E) -> (H, n_q)."""
        return x.new_zeros(x.shape[0], self.n_q).index_add_(1, self.row, x)

    def softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax of (H, E) scores over each query's in-edges (max-shifted, exact)."""
        h = scores.shape[0]
        peak = scores.new_full((h, self.n_q), float("-inf")).scatter_reduce_(
            1, self.row.expand(h, -1), scores, "amax")
        e = (scores - peak.index_select(1, self.row)).exp_()
        return e.div_(self.row_sum(e).index_select(1, self.row))


def _blocks(crow: torch.Tensor, col: torch.Tensor, heads: int, n_cols: int):
    """Block-diagonal copies of one CSR, ``heads`` times."""
    e = col.numel()
    crow_h = torch.cat([crow[:-1] + h * e for h in range(heads)] + [crow[-1:] + (heads - 1) * e])
    col_h = torch.cat([col + h * n_cols for h in range(heads)])
    return crow_h, col_h


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
        crow_t, col_t, perm_t = graph.adj_tensors("csr")  # out-edges: rows are key (src) nodes
        # int32 indices: MKL's sparse kernels take them as they are (int64 would be
        # converted on every call). int64 where the block-diagonal index space needs it.
        idx = torch.int32 if heads * max(e, n_q + 1, n_k + 1) < 2 ** 31 else torch.int64
        crow, col, crow_t, col_t, perm_t = (t.long() for t in (crow, col, crow_t, col_t, perm_t))
        crow_h, col_h = (t.to(idx) for t in _blocks(crow, col, heads, n_k))
        crow_th, col_th = (t.to(idx) for t in _blocks(crow_t, col_t, heads, n_q))
        pattern = CsrPattern(
            heads=heads, crow=crow_h, col=col_h,
            row=torch.repeat_interleave(torch.arange(n_q, device=crow.device), crow.diff()),
            crow_t=crow_th, col_t=col_th, perm_t=torch.cat([perm_t + h * e for h in range(heads)]),
            n_q=n_q, n_k=n_k, ones=torch.ones(heads * e, device=crow.device))
    cache[heads] = pattern
    return pattern


def supports(graph, q: torch.Tensor) -> bool:
    """Whether :func:`attend` handles this graph and these (n_q, H, d) features."""
    return (_enabled and q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
            and pattern_of(graph, q.shape[1]) is not None)


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1).contiguous()   # (N, H, d) -> (H, N, d)


class _ScoresSoftmax(torch.autograd.Function):
    """phi then the softmax of □: (H, E) attention weights from q (n_q, H, d), k (n_k, H, d)."""

    @staticmethod
    def forward(ctx, pattern: CsrPattern, q, k, scale: float):
        with torch.autocast("cpu", enabled=False):
            qh, kh = _heads_first(q), _heads_first(k)
            weights = pattern.softmax(pattern.sddmm(qh, kh, scale))
        ctx.save_for_backward(qh, kh, weights)
        ctx.pattern, ctx.scale = pattern, scale
        return weights

    @staticmethod
    def backward(ctx, grad_w):
        qh, kh, w = ctx.saved_tensors
        p, scale = ctx.pattern, ctx.scale
        with torch.autocast("cpu", enabled=False):
            wg = w * grad_w
            grad_s = wg.sub_(w * p.row_sum(wg).index_select(1, p.row)).mul_(scale)  # softmax backward
            grad_q = p.spmm(grad_s, kh).transpose(0, 1) if ctx.needs_input_grad[1] else None
            grad_k = p.spmm_t(grad_s, qh).transpose(0, 1) if ctx.needs_input_grad[2] else None
        return None, grad_q, grad_k, None


class _WeightedSum(torch.autograd.Function):
    """The sum of □: out[i] = sum_j w[j -> i] * v[j], per head; (n_q, H, d)."""

    @staticmethod
    def forward(ctx, pattern: CsrPattern, w, v):
        with torch.autocast("cpu", enabled=False):
            vh = _heads_first(v)
            out = pattern.spmm(w, vh).transpose(0, 1)
        ctx.save_for_backward(w, vh)
        ctx.pattern = pattern
        return out

    @staticmethod
    def backward(ctx, grad_out):
        w, vh = ctx.saved_tensors
        p = ctx.pattern
        with torch.autocast("cpu", enabled=False):
            gh = _heads_first(grad_out)
            grad_w = p.sddmm(gh, vh) if ctx.needs_input_grad[1] else None
            grad_v = p.spmm_t(w, gh).transpose(0, 1) if ctx.needs_input_grad[2] else None
        return None, grad_w, grad_v


def attend(graph, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout=None):
    """(out (n_q, H, d), weights (E, H)) of attention on ``graph``; see :func:`supports`."""
    pattern = pattern_of(graph, q.shape[1])
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": these kernels are tested here.
        warnings.simplefilter("ignore", UserWarning)
        weights = _ScoresSoftmax.apply(pattern, q, k, scale)
        dropped = weights if dropout is None else dropout(weights)
        out = _WeightedSum.apply(pattern, dropped, v)
    return out, weights.t()
