"""Laplacian positional encodings (Dwivedi et al., "Benchmarking Graph Neural Networks").

Attention over a graph is blind to where a node sits in it: the sinusoidal positions of
a sentence have no analogue on a general graph. The eigenvectors of the graph Laplacian
are that analogue (they are the sinusoids on a path or a cycle): each node gets the k
entries of the eigenvectors with the smallest non-trivial eigenvalues, the smoothest
non-constant functions on the graph.

Following Dwivedi et al. (``laplacian_positional_encoding`` in benchmarking-gnns), the
Laplacian is the symmetric normalised ``L = I - D^-1/2 A D^-1/2`` and the first (trivial)
eigenvector is skipped. An eigenvector's sign is arbitrary, so :func:`laplacian_pe` fixes
one deterministically and :func:`random_sign_flip` lets training see both signs, so the
model does not learn the convention.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from transformer_graph.data.datasets import DataError

DENSE_LIMIT = 2000  # nodes; above this a sparse Lanczos solver replaces the dense eigh


def _edge_array(edge_index, num_nodes: int) -> np.ndarray:
    ei = edge_index.detach().cpu().numpy() if isinstance(edge_index, torch.Tensor) else np.asarray(edge_index)
    if ei.ndim != 2 or ei.shape[0] != 2 or (ei.size and not np.issubdtype(ei.dtype, np.integer)):
        raise DataError(f"edge_index must be an integer array of shape (2, E), got {ei.dtype} {ei.shape}")
    ei = ei.astype(np.int64)
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        raise DataError(f"edge_index names nodes outside [0, num_nodes={num_nodes})")
    return ei[:, ei[0] != ei[1]]  # self loops are not part of A


def _sparse_adjacency(edge_index, num_nodes: int) -> sp.csr_matrix:
    """The binary, symmetrised adjacency A (an edge in either direction counts, once)."""
    ei = _edge_array(edge_index, num_nodes)
    a = sp.coo_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(num_nodes, num_nodes)).tocsr()
    a = a + a.T
    a.data[:] = 1.0
    return a


def _sparse_laplacian(edge_index, num_nodes: int) -> sp.csr_matrix:
    a = _sparse_adjacency(edge_index, num_nodes)
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg)
    np.divide(1.0, np.sqrt(deg), out=inv_sqrt, where=deg > 0)  # an isolated node's row of L is the identity's
    d = sp.diags(inv_sqrt)
    return (sp.identity(num_nodes, format="csr") - d @ a @ d).tocsr()


def normalized_laplacian(edge_index, num_nodes: int) -> np.ndarray:
    """``I - D^-1/2 A D^-1/2`` as a dense float64 (N, N) array, A the binary symmetrised
    adjacency without self loops (an isolated node has degree 0 and contributes only I)."""
    return _sparse_laplacian(edge_index, num_nodes).toarray()


def _fix_signs(vecs: np.ndarray) -> np.ndarray:
    """Each column's entry of largest magnitude made positive (the first such entry, within
    a relative 1e-6, so that exact ties from symmetric graphs resolve by index)."""
    if vecs.size == 0:
        return vecs
    mag = np.abs(vecs)
    top = mag.max(axis=0, keepdims=True)
    first = np.argmax(mag >= top * (1 - 1e-6), axis=0)
    signs = np.sign(vecs[first, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return vecs * signs


def laplacian_pe(edge_index, num_nodes: int, k: int, *, dense_limit: int = DENSE_LIMIT) -> torch.Tensor:
    """float32 ``(num_nodes, k)``: the eigenvectors of :func:`normalized_laplacian` with the
    smallest eigenvalues after the first (trivial) one, in increasing order of eigenvalue.

    Columns are unit-norm and mutually orthogonal. Graphs with fewer than ``k + 1`` nodes
    have only ``num_nodes - 1`` such eigenvectors; the remaining columns are zero. Signs:
    each column's largest-magnitude entry is positive (see :func:`random_sign_flip` for
    training). Within a repeated eigenvalue the basis is whatever the solver returns
    (deterministic for the same input and library, not canonical); a disconnected graph
    has one zero eigenvalue per component, and only the first is skipped, as in the paper.

    Up to ``dense_limit`` nodes this is one dense ``numpy.linalg.eigh`` (PATTERN/CLUSTER
    graphs have at most 204 nodes: about a millisecond); above it, scipy's Lanczos solver
    (``eigsh``) on the sparse matrix, for Planetoid-sized graphs.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise DataError(f"k must be a non-negative int, got {k!r}")
    n = int(num_nodes)
    out = np.zeros((n, int(k)), np.float64)
    want = min(int(k), max(n - 1, 0))
    if want:
        lap = _sparse_laplacian(edge_index, n)
        if n <= dense_limit or want + 1 >= n - 1:
            vals, vecs = np.linalg.eigh(lap.toarray())
        else:
            # The largest eigenvalues of 2I - L (eigenvalues in [0, 2]) are L's smallest; Lanczos
            # finds extreme-large ones far faster than small ones. A fixed start vector keeps it
            # deterministic (a local generator: no global state).
            shifted = 2.0 * sp.identity(n, format="csr") - lap
            v0 = np.random.default_rng(0).random(n)
            vals, vecs = spla.eigsh(shifted, k=want + 1, which="LA", v0=v0)
            vals = 2.0 - vals
        order = np.argsort(vals, kind="stable")
        out[:, :want] = _fix_signs(vecs[:, order[1:want + 1]])
    return torch.from_numpy(out.astype(np.float32))


def random_sign_flip(pe: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``pe`` with each column's sign flipped with probability 1/2 (a new tensor).

    Use it on the training graphs, a fresh draw per graph and step, as Dwivedi et al. do:
    an eigenvector and its negation are equally valid, so the model must not depend on the
    sign. ``generator`` is a ``torch.Generator`` (CPU) for reproducible flips; None uses
    torch's default generator, like dropout.
    """
    if pe.dim() != 2:
        raise DataError(f"pe must be (num_nodes, k), got shape {tuple(pe.shape)}")
    signs = torch.randint(0, 2, (pe.shape[1],), generator=generator).to(device=pe.device, dtype=pe.dtype) * 2 - 1
    return pe * signs
