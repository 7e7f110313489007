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

The SpMM on its own (:func:`weighted_sum`) is also the □ sum of the GCN mean and GAT
blocks (one weight per edge, or per edge and head).

They are the torch engine's CPU path (:mod:`transformer_graph.message_passing.torch_engine`):
every :class:`~transformer_graph.graphs.graph.AttentionGraph` numbers its edges in query
order, so its in-edge CSR arrays are ``indptr`` and ``src`` as they are. Which engine a
block uses is the block's own setting, never a switch in this module.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass
class CsrPattern:
    """An attention graph as one sparse matrix over (node, head) rows, and its reverse.

    Features (n, H, d) are used as the (n*H, d) matrix they already are in memory
    (row ``i*H + h`` is head h of node i), so no transposes or copies per head are
    needed: entry (i*H + h, j*H + h) holds head h's value of edge j -> i, and one
    kernel call serves all heads. Rows are contiguous segments of the flat (E*H,)
    edge values (the softmax's segments). The reverse matrix (rows j*H + h: keys),
    which only the backward pass reads, is built when first needed
    (:meth:`reverse`): decoding and evaluation never pay for it.
    """

    heads: int
    n_q: int
    n_k: int
    crow: torch.Tensor       # (n_q*H + 1,) row pointers (int32 when it fits)
    col: torch.Tensor        # (E*H,) column j*H + h of each entry
    offsets: torch.Tensor    # (n_q*H + 1,) int64 row pointers, for segment reductions
    lens: torch.Tensor       # (n_q*H,) entries per row
    dst: torch.Tensor        # (E,) query node of each edge (edge ids are CSR positions)
    single_crow: torch.Tensor  # (n_q + 1,) the one-head row pointers
    src: torch.Tensor        # (E,) key node of each edge
    index_dtype: torch.dtype  # int32 when the index space fits, else int64
    edge_major: torch.Tensor | None = None  # (E*H,) e*H + h of each entry, built when first needed
    # The reverse matrix, built by reverse(): (n_k*H + 1,) row pointers, (E*H,) columns i*H + h,
    # and (E*H,) the position in this matrix of each reverse entry.
    crow_t: torch.Tensor | None = None
    col_t: torch.Tensor | None = None
    perm_t: torch.Tensor | None = None

    def reverse(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(crow_t, col_t, perm_t) of the reverse matrix, built once."""
        if self.perm_t is None:
            self.crow_t, self.col_t, self.perm_t = _reverse(self.single_crow, self.src, self.dst, self.n_k,
                                                            self.heads, self.index_dtype)
        return self.crow_t, self.col_t, self.perm_t

    @property
    def nnz(self) -> int:
        return self.col.numel()

    def from_edge_head(self, values: torch.Tensor) -> torch.Tensor:
        """(E, H) edge values (indexed by edge id, head) as the flat (E*H,) entries of this
        matrix; the inverse of :meth:`edge_head` (differentiable: a gather)."""
        flat = values.reshape(-1)
        if self.heads == 1:
            return flat  # one head: entries are the edges, in edge order
        if self.edge_major is None:
            pos = self.positions().reshape(-1)
            self.edge_major = torch.empty_like(pos).scatter_(0, pos, torch.arange(pos.numel(), device=pos.device))
        return flat.index_select(0, self.edge_major)

    def positions(self) -> torch.Tensor:
        """(E, H): the position among this matrix's entries of (edge e, head h)."""
        return _entry_positions(self.single_crow, self.dst, torch.arange(self.dst.numel(), device=self.dst.device),
                                self.heads)

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
        crow_t, col_t, perm_t = self.reverse()
        m = self._csr(crow_t, col_t, values.index_select(0, perm_t), self.n_k * h, self.n_q * h)
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
        pos = self.positions()
        return values.index_select(0, pos.reshape(-1)).view(pos.shape)


def _mm(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sparse ``m`` @ dense ``x`` written straight into a new tensor: ``torch.sparse.mm``
    would zero-fill a result and copy MKL's output into it (25% slower measured)."""
    out = x.new_empty(m.shape[0], x.shape[1])
    return torch.addmm(out, m, x, beta=0.0, out=out)


def _row_pointers(crow: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row pointers and row lengths of the interleaved (node*H + head) matrix of a one-head CSR
    with row pointers ``crow``: row i*H + h starts at H*crow[i] + h*deg(i) and has deg(i) entries."""
    deg = crow.diff()
    heads_ = torch.arange(heads, device=crow.device)
    starts = (heads * crow[:-1, None] + deg[:, None] * heads_).reshape(-1)
    offsets = torch.cat([starts, (heads * crow[-1:])])
    return offsets, deg[:, None].expand(-1, heads).reshape(-1)


def _entry_positions(crow: torch.Tensor, row: torch.Tensor, rank: torch.Tensor, heads: int) -> torch.Tensor:
    """(E, H) positions in the interleaved matrix of the one-head entries whose row is ``row``
    and whose position in the one-head CSR (row pointers ``crow``) is ``rank``: entry (e, h)
    sits in row row[e]*H + h at offset rank[e] - crow[row[e]] from the row's start,
    i.e. at H*crow[r] + h*deg(r) + rank[e] - crow[r] (r = row[e])."""
    first = crow.index_select(0, row)
    deg = crow[1:].index_select(0, row) - first
    return ((heads - 1) * first + rank)[:, None] + deg[:, None] * torch.arange(heads, device=row.device)


def _scatter(positions: torch.Tensor, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (numel,) tensor with ``values`` at ``positions`` (a permutation), as ``dtype``."""
    out = torch.empty(positions.numel(), dtype=dtype, device=positions.device)
    return out.scatter_(0, positions.reshape(-1), values.reshape(-1).to(dtype))


def pattern_of(graph, heads: int) -> CsrPattern:
    """The :class:`CsrPattern` of ``graph`` (an AttentionGraph) for ``heads`` heads, built once
    and cached on the graph.

    Built edge by edge rather than entry by entry: every (edge, head) entry's position follows
    from its row's start and its rank in the row (:func:`_entry_positions`), so the indices are
    written with one scatter per array and no search over the E*H entries."""
    key = ("csr", heads)
    pattern = graph.derived.get(key)
    if pattern is not None:
        return pattern
    crow, col, dst = graph.indptr, graph.src, graph.dst     # in-edges: rows are query (dst) nodes
    n_q, n_k, e = graph.num_dst_nodes(), graph.num_src_nodes(), graph.num_edges()
    # int32 indices: MKL's sparse kernels take them as they are (int64 would be
    # converted on every call); int64 only when the index space needs it.
    idx = torch.int32 if heads * max(e, n_q + 1, n_k + 1) < 2 ** 31 else torch.int64
    offsets, lens = _row_pointers(crow, heads)
    if heads == 1:   # entries are the edges: the forward positions are the edge ids
        col_h = col.to(idx)
    else:
        head = torch.arange(heads, device=col.device)
        pos = _entry_positions(crow, dst, torch.arange(e, device=col.device), heads)
        col_h = _scatter(pos, col[:, None] * heads + head, idx)       # entry (e, h): key column j*H + h
    pattern = CsrPattern(heads=heads, n_q=n_q, n_k=n_k, crow=offsets.to(idx), col=col_h, offsets=offsets,
                         lens=lens, dst=dst, single_crow=crow, src=col, index_dtype=idx)
    graph.derived[key] = pattern
    return pattern


def _reverse(crow: torch.Tensor, col: torch.Tensor, dst: torch.Tensor, n_k: int, heads: int, idx: torch.dtype):
    """The reverse of the interleaved matrix with one-head row pointers ``crow``, key ``col`` and
    query ``dst`` per edge: its row pointers, columns and each entry's position in the forward matrix."""
    e = col.numel()
    # Rows are keys: edges sorted by key, stably; eids_t are their edge ids.
    eids_t = torch.sort(col, stable=True).indices
    crow_t = torch.cat([col.new_zeros(1), torch.bincount(col, minlength=n_k).cumsum(0)])
    offsets_t, _ = _row_pointers(crow_t, heads)
    if heads == 1:
        return offsets_t.to(idx), dst.index_select(0, eids_t).to(idx), eids_t.to(idx)
    head = torch.arange(heads, device=col.device)
    pos = _entry_positions(crow, dst, torch.arange(e, device=col.device), heads)
    rank_t = torch.empty_like(eids_t).scatter_(0, eids_t, torch.arange(e, device=col.device))
    pos_t = _entry_positions(crow_t, col, rank_t, heads)
    col_th = _scatter(pos_t, dst[:, None] * heads + head, idx)    # reverse entry: query column i*H + h
    perm_t = _scatter(pos_t, pos, idx)                            # reverse entry -> its position here
    return offsets_t.to(idx), col_th, perm_t


def supports(graph, q: torch.Tensor) -> bool:
    """Whether these kernels handle this graph and these (n, H, d) features: CPU tensors of a
    floating dtype, and at least one edge (MKL has no empty sparse matrices)."""
    return q.device.type == "cpu" and q.dtype in _DTYPES and graph.num_edges() > 0


def _compute(x: torch.Tensor) -> torch.Tensor:
    """Kernels run in float32 (float64 stays): low-precision features (bf16 autocast)
    are kept as they are for the backward pass and widened only while used, so the
    saved activations stay half-size."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _kept(x: torch.Tensor) -> torch.Tensor:
    """What a kernel saves of a feature tensor for its backward pass: float32/64 features
    contiguous, so that the forward and both backward products read the same copy (q, k and
    v are strided views of one fused projection; MKL needs dense rows, and each use made its
    own copy); low-precision ones as they are (widening makes a contiguous copy anyway)."""
    return x.contiguous() if x.dtype in (torch.float32, torch.float64) else x


class _ScoresSoftmax(torch.autograd.Function):
    """phi then the softmax of □: (E*H,) attention weights from q (n_q, H, d), k (n_k, H, d)."""

    @staticmethod
    def forward(ctx, pattern: CsrPattern, q, k, scale: float):
        q, k = _kept(q), _kept(k)
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
        v = _kept(v)
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


def weighted_sum(graph, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out[i, h] = sum_j w[j -> i, h] * v[j, h]``: (n_q, H, d) from edge values w (E, H) in
    edge order and v (n_k, H, d) (the □ sum of every block; see :func:`supports`)."""
    pattern = pattern_of(graph, v.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Sparse CSR tensor support is in beta state"
        return _WeightedSum.apply(pattern, pattern.from_edge_head(w), v)


def _patterns(graph):
    return [(key, p) for key, p in graph.derived.items() if isinstance(key, tuple) and key[0] == "csr"]


def pattern_bytes(graph) -> int:
    """Bytes of the CSR patterns cached on ``graph`` (they live as long as the graph); the
    graph's own arrays that a pattern shares (``dst``, ``indptr``) are not counted."""
    own = {id(graph.src), id(graph.dst), id(graph.indptr)}
    tensors = {id(t): t for _, p in _patterns(graph) for t in vars(p).values()
               if isinstance(t, torch.Tensor) and id(t) not in own}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def forget_patterns(graph) -> None:
    """Drop the CSR patterns cached on ``graph`` (benchmarks time building them, as a
    training step on a fresh batch does)."""
    for key, _ in _patterns(graph):
        del graph.derived[key]
