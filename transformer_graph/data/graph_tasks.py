"""Node classification on graph data: the sample type, its checks, and the benchmark graphs.

The translation tasks build their graphs from sentence lengths; node classification reads
them from data. This module is that data's one shape, :class:`GraphSample` (PyG's
``edge_index`` convention: plain tensors, no framework object, so the data side needs
neither DGL nor the graph layer), grouped into a :class:`GraphDataset`, plus:

* :func:`check_graph` / :func:`check_no_isolated_nodes`: every sample is checked where it
  enters, with an error that names the graph, says what is wrong and how to fix it,
  because a bad index otherwise surfaces as a CUDA assert or a NaN loss far away.
* :func:`make_pattern` / :func:`make_cluster`: the SBM benchmarks of Dwivedi et al.,
  "Benchmarking Graph Neural Networks" (2020), following the published generators
  (``graphdeeplearning/benchmarking-gnns``, ``data/SBMs/generate_SBM_{PATTERN,CLUSTER}.ipynb``)
  and cached on disk, since every training run reuses the same graphs.
* :func:`karate`: Zachary's karate club, the smallest real graph there is to debug on.

The Planetoid citation graphs are in :mod:`transformer_graph.data.planetoid`, Laplacian
positional encodings in :mod:`transformer_graph.data.laplacian`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from transformer_graph.data.datasets import DataError
from transformer_graph.files import atomic_torch_save

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
FEATURE_KINDS = ("categorical", "dense")


# --------------------------------------------------------------------------
# The sample and the dataset
# --------------------------------------------------------------------------
@dataclass
class GraphSample:
    """One graph with node features and node labels.

    ``edge_index`` is int64 ``(2, E)``: row 0 the source, row 1 the destination of each
    directed edge (messages flow src -> dst). An undirected graph holds both directions of
    every edge; no self loops and no duplicate edges (self loops, global nodes and the
    like belong to the attention graph built from this, not to the data). The graphs made
    here list edges sorted by destination, then source.

    ``x`` is either int64 ``(N,)`` categorical ids (an embedding table's input) or float32
    ``(N, F)`` dense features. ``y`` is int64 ``(N,)``. The masks (bool ``(N,)``) are for
    single-graph, transductive datasets, where one graph serves every split and the masks
    say which nodes' labels each split may use.
    """

    num_nodes: int
    edge_index: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    train_mask: torch.Tensor | None = None
    val_mask: torch.Tensor | None = None
    test_mask: torch.Tensor | None = None

    @property
    def num_edges(self) -> int:
        """The number of directed edges (twice the undirected edges)."""
        return int(self.edge_index.shape[1])

    def mask(self, split: str) -> torch.Tensor | None:
        """The node mask of ``split`` ("train", "valid" or "test"); None for inductive data."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        return {"train": self.train_mask, "valid": self.val_mask, "test": self.test_mask}[split]


@dataclass
class GraphDataset:
    """Graphs per split plus what a model must know to be built for them.

    ``num_features`` is the feature width ``F`` for ``feature_kind="dense"`` and the
    vocabulary size (ids lie in ``[0, num_features)``) for ``"categorical"``. A
    transductive dataset (karate, Planetoid) lists its one graph, the same object, under
    every split; the graph's masks select the nodes of each split.
    """

    name: str
    splits: dict[str, list[GraphSample]]
    num_classes: int
    num_features: int
    feature_kind: str
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.feature_kind not in FEATURE_KINDS:
            raise DataError(f"{self.name}: feature_kind must be one of {FEATURE_KINDS}, got {self.feature_kind!r}")
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise DataError(f"{self.name}: unknown splits {unknown}; expected a subset of {SPLITS}")

    def check(self, *, isolated: bool = True) -> None:
        """:func:`check_graph` on every graph (and :func:`check_no_isolated_nodes` when ``isolated``);
        a graph listed under several splits (transductive data) is checked once."""
        seen: set[int] = set()
        for split, graphs in self.splits.items():
            for i, g in enumerate(graphs):
                if id(g) in seen:
                    continue
                seen.add(id(g))
                where = f"{self.name} {split} graph {i}"
                check_graph(g, where, self.num_classes, self.num_features, self.feature_kind)
                if isolated:
                    check_no_isolated_nodes(g, where)


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------
def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_graph(sample: GraphSample, where: str, num_classes: int, num_features: int,
                feature_kind: str | None = None) -> None:
    """Raise :class:`DataError` naming ``where`` (e.g. ``"PATTERN train graph 7"``) if
    ``sample`` breaks the :class:`GraphSample` contract.

    Checked: the node count; ``edge_index`` dtype, shape and range, no self loops, no
    duplicate edges; ``x`` (categorical ids in ``[0, num_features)``, or dense float32 of
    width ``num_features``, finite); labels in ``[0, num_classes)``; the masks' dtype and
    shape. ``feature_kind`` is inferred from ``x`` when not given. Nodes without in-edges
    are :func:`check_no_isolated_nodes`'s business (they are valid data, but not for
    attention).
    """
    n = sample.num_nodes
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"{where}: num_nodes must be a non-negative int, got {n!r}")
    n = int(n)
    ei = sample.edge_index
    if not isinstance(ei, torch.Tensor) or ei.dtype != torch.int64 or ei.dim() != 2 or ei.shape[0] != 2:
        got = f"{ei.dtype} tensor of shape {tuple(ei.shape)}" if isinstance(ei, torch.Tensor) else type(ei).__name__
        raise DataError(f"{where}: edge_index must be an int64 tensor of shape (2, E) (row 0 the sources, "
                        f"row 1 the destinations), got a {got}; fix: "
                        f"torch.as_tensor(edges, dtype=torch.long).reshape(2, -1) (or .t() for an (E, 2) list)")
    if ei.numel():
        bad = ((ei < 0) | (ei >= n)).any(dim=0)
        if bool(bad.any()):
            e = int(bad.nonzero()[0, 0])
            raise DataError(f"{where}: edge {e} ({int(ei[0, e])} -> {int(ei[1, e])}) has a node index outside "
                            f"[0, num_nodes={n}); {int(bad.sum())} edges do; fix: renumber the nodes 0..{n - 1} "
                            f"or raise num_nodes")
        loops = ei[0] == ei[1]
        if bool(loops.any()):
            e = int(loops.nonzero()[0, 0])
            raise DataError(f"{where}: edge {e} is a self loop ({int(ei[0, e])} -> {int(ei[0, e])}); a GraphSample "
                            f"holds none (the attention graph adds them where a model wants them); fix: "
                            f"edge_index = edge_index[:, edge_index[0] != edge_index[1]]")
        key = ei[1] * max(n, 1) + ei[0]
        if int(torch.unique(key).numel()) != int(key.numel()):
            raise DataError(f"{where}: edge_index lists {int(key.numel()) - int(torch.unique(key).numel())} "
                            f"duplicate edges; fix: edge_index = torch.unique(edge_index, dim=1)")
    x = sample.x
    kind = feature_kind or ("categorical" if isinstance(x, torch.Tensor) and not x.is_floating_point() else "dense")
    if kind == "categorical":
        if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or tuple(x.shape) != (n,):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"{where}: categorical features x must be int64 of shape (num_nodes,) = ({n},), "
                            f"got {got}; fix: x.long().reshape(-1), one id per node")
        if n and (int(x.min()) < 0 or int(x.max()) >= num_features):
            v = int(x.min()) if int(x.min()) < 0 else int(x.max())
            raise DataError(f"{where}: feature id {v} lies outside the vocabulary [0, num_features={num_features}); "
                            f"fix: map the ids to 0..{num_features - 1} or raise num_features")
    elif kind == "dense":
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 2:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"{where}: dense features x must be float32 of shape (num_nodes, F), got {got}; "
                            f"fix: x.float().reshape({n}, -1)")
        if tuple(x.shape) != (n, num_features):
            raise DataError(f"{where}: x has shape {tuple(x.shape)} but the graph has {n} nodes and the dataset "
                            f"declares num_features={num_features}; fix: one row per node, {num_features} "
                            f"features each (or declare num_features={x.shape[1]})")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{where}: x holds NaN or infinite values; fix: clean or impute the features")
    else:
        raise DataError(f"{where}: feature_kind must be one of {FEATURE_KINDS}, got {kind!r}")
    y = sample.y
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (n,):
        raise DataError(f"{where}: labels y must be int64 of shape ({n},), got "
                        f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__} {_shape(y)}; fix: y.long()")
    if n:
        bad = (y < 0) | (y >= num_classes)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise DataError(f"{where}: node {i} has label {int(y[i])}, outside [0, num_classes={num_classes}) "
                            f"({int(bad.sum())} nodes do); fix: map the labels to 0..{num_classes - 1} "
                            f"or raise num_classes")
    for name in ("train_mask", "val_mask", "test_mask"):
        m = getattr(sample, name)
        if m is not None and (not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (n,)):
            raise DataError(f"{where}: {name} must be a bool tensor of shape ({n},), got "
                            f"{m.dtype if isinstance(m, torch.Tensor) else type(m).__name__} {_shape(m)}; "
                            f"fix: a mask with one entry per node (index_tensor -> mask via mask[index] = True)")


def check_no_isolated_nodes(sample: GraphSample, where: str) -> None:
    """Raise :class:`DataError` if a node has no in-edges.

    Attention normalises over a node's in-edges; with none, the softmax runs over an empty
    set and the node's update is undefined (a NaN, or silently zero, depending on the
    kernel). Such nodes are real (CiteSeer has some), so this is a separate check for the
    models that need it, and the fix is on the graph side.
    """
    n = int(sample.num_nodes)
    indeg = torch.bincount(sample.edge_index[1], minlength=n) if sample.edge_index.numel() else torch.zeros(
        n, dtype=torch.long)
    isolated = (indeg[:n] == 0).nonzero().flatten()
    if isolated.numel():
        first = ", ".join(str(int(i)) for i in isolated[:5]) + (", ..." if isolated.numel() > 5 else "")
        raise DataError(f"{where}: {isolated.numel()} of {n} nodes have no in-edges (nodes {first}); attention on "
                        f"a node with no neighbours is undefined (its softmax runs over an empty set of in-edges). "
                        f"Fix: add self loops to the attention graph (every node attends to itself), or global "
                        f"nodes connected to every node, or drop these nodes")


# --------------------------------------------------------------------------
# The SBM benchmarks (Dwivedi et al.)
# --------------------------------------------------------------------------
# The published generators draw community sizes with np.random.randint(5, 35), whose upper
# bound is exclusive: sizes are 5..34. The bounds below are inclusive.
@dataclass(frozen=True)
class PatternParams:
    """PATTERN, as in the final generator (``generate_SBM_PATTERN.ipynb``, the "v4"/"v2" lines).

    A graph is an SBM of ``num_communities`` communities (sizes uniform in
    ``[community_size_min, community_size_max]``; edge probability ``p`` within a community,
    ``q`` between) with uniform random features in ``{0..num_feature_values-1}``, plus one of
    ``num_patterns`` fixed patterns: a G(m, ``p_pattern``) graph with its own fixed random
    features, m uniform in ``[pattern_size_min, pattern_size_max]``, each pattern node linked
    to each SBM node with probability ``q_pattern``. Label 1 marks the pattern's nodes.
    (The paper's text says patterns of 20 nodes; the released generator draws 5..34, the only
    version consistent with the published 44-188 node range: 20-node patterns give at least 45.)
    """

    num_communities: int = 5
    community_size_min: int = 5
    community_size_max: int = 34
    p: float = 0.5
    q: float = 0.35
    pattern_size_min: int = 5
    pattern_size_max: int = 34
    p_pattern: float = 0.5
    q_pattern: float = 0.5
    num_feature_values: int = 3
    num_patterns: int = 100


@dataclass(frozen=True)
class ClusterParams:
    """CLUSTER (``generate_SBM_CLUSTER.ipynb``): an SBM of ``num_communities`` communities
    (sizes uniform in ``[community_size_min, community_size_max]``, ``p`` within, ``q`` between);
    the label is the community; every feature is 0 except one uniformly chosen node per
    community r, whose feature is r + 1 (semi-supervised clustering: one labelled node each).
    """

    num_communities: int = 6
    community_size_min: int = 5
    community_size_max: int = 34
    p: float = 0.55
    q: float = 0.25


# Bump when the generated graphs change for the same seed and parameters (the cache key).
GENERATOR_VERSION = 1
CACHE_FORMAT = 1
# spawn_key streams of the per-graph generators (see _graph_rng).
_DATASET_CODE = {"PATTERN": 1, "CLUSTER": 2}
_STREAM = {"train": 0, "valid": 1, "test": 2, "pattern": 3}


def _graph_rng(seed: int, dataset: str, stream: str, index: int) -> np.random.Generator:
    """The generator of graph ``index`` of ``stream`` (a split, or "pattern" for PATTERN's patterns).

    ``Generator(PCG64(SeedSequence(seed, spawn_key=(dataset, stream, index))))``: the
    documented way to get independent streams, and a pure function of its four inputs, so
    a graph does not depend on how many graphs are generated before it or in other splits
    (``make_pattern(s, train=200)`` holds the first 200 training graphs of the full set).
    """
    ss = np.random.SeedSequence(seed, spawn_key=(_DATASET_CODE[dataset], _STREAM[stream], index))
    return np.random.Generator(np.random.PCG64(ss))


def _sample_symmetric(rng: np.random.Generator, prob: np.ndarray) -> np.ndarray:
    """A symmetric bool adjacency without self loops: pair i < j is an edge with probability prob[i, j]."""
    upper = np.triu(rng.random(prob.shape) < prob, 1)
    return upper | upper.T


def _block_probabilities(blocks: np.ndarray, p: float, q: float) -> np.ndarray:
    return np.where(blocks[:, None] == blocks[None, :], p, q)


@dataclass
class _Compact:
    """One graph as generated: node count, its undirected edges as (i < j) pairs, ids, labels."""

    num_nodes: int
    pairs: np.ndarray  # (2, P) int64, i < j
    x: np.ndarray  # (N,) int64
    y: np.ndarray  # (N,) int64


def _compact(adj: np.ndarray, x: np.ndarray, y: np.ndarray) -> _Compact:
    i, j = np.nonzero(np.triu(adj, 1))
    return _Compact(int(adj.shape[0]), np.stack([i, j]).astype(np.int64), x.astype(np.int64), y.astype(np.int64))


def _pattern_instance(seed: int, k: int, prm: PatternParams) -> tuple[np.ndarray, np.ndarray]:
    """Pattern ``k``: its adjacency (m, m) and features (m,). Draws: m, the edges, the features."""
    rng = _graph_rng(seed, "PATTERN", "pattern", k)
    m = int(rng.integers(prm.pattern_size_min, prm.pattern_size_max + 1))
    adj = _sample_symmetric(rng, np.full((m, m), prm.p_pattern))
    feats = rng.integers(0, prm.num_feature_values, size=m)
    return adj, feats


def _pattern_graph(rng: np.random.Generator, pattern: tuple[np.ndarray, np.ndarray], prm: PatternParams) -> _Compact:
    """One PATTERN graph. Draws, in order: the community sizes, the SBM nodes' features, all
    pair coins (one (N, N) uniform array, upper triangle used), the node permutation."""
    w0, u0 = pattern
    sizes = rng.integers(prm.community_size_min, prm.community_size_max + 1, size=prm.num_communities)
    blocks = np.repeat(np.arange(prm.num_communities), sizes)
    n, m = len(blocks), len(u0)
    u = rng.integers(0, prm.num_feature_values, size=n)
    prob = np.empty((n + m, n + m))
    prob[:n, :n] = _block_probabilities(blocks, prm.p, prm.q)
    prob[:n, n:] = prm.q_pattern
    prob[n:, :n] = prm.q_pattern
    prob[n:, n:] = w0  # 0/1: a uniform draw in [0, 1) is < 1 always and < 0 never, so the pattern is kept exactly
    adj = _sample_symmetric(rng, prob)
    labels = np.concatenate([np.zeros(n, np.int64), np.ones(m, np.int64)])
    feats = np.concatenate([u, u0])
    perm = rng.permutation(n + m)  # relabel the nodes at random, as the original's schuffle()
    return _compact(adj[np.ix_(perm, perm)], feats[perm], labels[perm])


def _cluster_graph(rng: np.random.Generator, prm: ClusterParams) -> _Compact:
    """One CLUSTER graph. Draws, in order: the community sizes, all pair coins, the node
    permutation, then one labelled node per community (uniform within the community)."""
    sizes = rng.integers(prm.community_size_min, prm.community_size_max + 1, size=prm.num_communities)
    blocks = np.repeat(np.arange(prm.num_communities), sizes)
    n = len(blocks)
    adj = _sample_symmetric(rng, _block_probabilities(blocks, prm.p, prm.q))
    perm = rng.permutation(n)
    labels = blocks[perm]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    chosen = starts + rng.integers(0, sizes)  # positions before the shuffle, one per community
    feats = np.zeros(n, np.int64)
    feats[np.argsort(perm)[chosen]] = np.arange(1, prm.num_communities + 1)
    return _compact(adj[np.ix_(perm, perm)], feats, labels)


def _to_sample(c: _Compact) -> GraphSample:
    """Both directions of every pair, sorted by destination then source."""
    n = c.num_nodes
    adj = np.zeros((n, n), dtype=bool)
    adj[c.pairs[0], c.pairs[1]] = True
    adj[c.pairs[1], c.pairs[0]] = True
    dst, src = np.nonzero(adj)
    edge_index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    return GraphSample(n, edge_index, torch.from_numpy(c.x), torch.from_numpy(c.y))


def _check_sizes(sizes: dict[str, int]) -> None:
    for split, count in sizes.items():
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise DataError(f"the number of {split} graphs must be a non-negative int, got {count!r}")


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"the seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _generate_sbm(name: str, seed: int, sizes: dict[str, int],
                        params: PatternParams | ClusterParams) -> dict[str, list[_Compact]]:
    """The graphs of ``name`` ("PATTERN" or "CLUSTER") per split, in the compact generated form
    (uncached; :func:`make_pattern`/:func:`make_cluster` wrap this with the disk cache).

    PATTERN graph i of a split uses pattern ``i % num_patterns``: with the published sizes
    every pattern has 100 training, 20 validation and 20 test graphs, as in the original
    (which generated them pattern by pattern), and the first ``k`` graphs of any split use
    the first ``min(k, num_patterns)`` patterns, so small splits share their patterns too.
    """
    seed = _check_seed(seed)
    _check_sizes(sizes)
    out: dict[str, list[_Compact]] = {}
    if name == "PATTERN":
        patterns: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for split, count in sizes.items():
            graphs = []
            for i in range(count):
                k = i % params.num_patterns
                if k not in patterns:
                    patterns[k] = _pattern_instance(seed, k, params)
                graphs.append(_pattern_graph(_graph_rng(seed, name, split, i), patterns[k], params))
            out[split] = graphs
    elif name == "CLUSTER":
        for split, count in sizes.items():
            out[split] = [_cluster_graph(_graph_rng(seed, name, split, i), params) for i in range(count)]
    else:
        raise DataError(f"unknown SBM dataset {name!r}; expected 'PATTERN' or 'CLUSTER'")
    return out


# --------------------------------------------------------------------------
# The disk cache
# --------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/transformer_graph/graphs`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer_graph" / "graphs"


def cache_key(name: str, seed: int, sizes: dict[str, int], params) -> str:
    """Hash of everything the generated graphs depend on."""
    blob = {"format": CACHE_FORMAT, "generator": GENERATOR_VERSION, "name": name, "seed": int(seed),
            "sizes": {s: int(c) for s, c in sizes.items()}, "params": asdict(params)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _small_dtype(max_value: int) -> torch.dtype:
    """The smallest stored integer type for ``max_value``: PATTERN/CLUSTER ids fit uint8, so the
    cache is an eighth of int64's size (about 90 MB for the full PATTERN)."""
    for dtype, limit in ((torch.uint8, 255), (torch.int16, 32767), (torch.int32, 2**31 - 1)):
        if max_value <= limit:
            return dtype
    return torch.int64


def _pack(graphs: list[_Compact]) -> dict[str, torch.Tensor]:
    num_nodes = np.array([g.num_nodes for g in graphs], np.int64)
    num_pairs = np.array([g.pairs.shape[1] for g in graphs], np.int64)
    pairs = np.concatenate([g.pairs for g in graphs], axis=1) if graphs else np.zeros((2, 0), np.int64)
    x = np.concatenate([g.x for g in graphs]) if graphs else np.zeros(0, np.int64)
    y = np.concatenate([g.y for g in graphs]) if graphs else np.zeros(0, np.int64)

    def small(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(_small_dtype(int(a.max()) if a.size else 0))

    return {"num_nodes": torch.from_numpy(num_nodes), "num_pairs": torch.from_numpy(num_pairs),
            "pairs": small(pairs), "x": small(x), "y": small(y)}


def _unpack(blob: dict[str, torch.Tensor], count: int) -> list[_Compact]:
    num_nodes = blob["num_nodes"].numpy().astype(np.int64)
    num_pairs = blob["num_pairs"].numpy().astype(np.int64)
    pairs = blob["pairs"].numpy().astype(np.int64)
    x, y = blob["x"].numpy().astype(np.int64), blob["y"].numpy().astype(np.int64)
    if (len(num_nodes) != count or len(num_pairs) != count or pairs.ndim != 2 or pairs.shape[0] != 2
            or pairs.shape[1] != num_pairs.sum() or len(x) != num_nodes.sum() or len(y) != num_nodes.sum()):
        raise ValueError("inconsistent sizes")
    node_at = np.concatenate([[0], np.cumsum(num_nodes)])
    pair_at = np.concatenate([[0], np.cumsum(num_pairs)])
    out = []
    for g in range(count):
        n = int(num_nodes[g])
        p = pairs[:, pair_at[g]:pair_at[g + 1]]
        if p.size and (p.min() < 0 or p.max() >= n):
            raise ValueError("edge index out of range")
        out.append(_Compact(n, p, x[node_at[g]:node_at[g + 1]], y[node_at[g]:node_at[g + 1]]))
    return out


def _read_cache(path: Path, key: str, sizes: dict[str, int]) -> dict[str, list[_Compact]] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key:
            raise ValueError("the file's key does not match its name")
        return {split: _unpack(blob["splits"][split], count) for split, count in sizes.items()}
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            pickle.UnpicklingError) as err:
        warnings.warn(f"ignoring unreadable graph cache {str(path)!r} ({type(err).__name__}: {err}); "
                      f"regenerating the graphs", stacklevel=3)
        return None


def _cached_sbm(name: str, seed: int, sizes: dict[str, int], params, cache: bool,
                cache_dir: str | os.PathLike | None) -> dict[str, list[_Compact]]:
    seed = _check_seed(seed)
    _check_sizes(sizes)
    if not cache:
        return _generate_sbm(name, seed, sizes, params)
    key = cache_key(name, seed, sizes, params)
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{name.lower()}-{key[:16]}.pt"
    graphs = _read_cache(path, key, sizes)
    if graphs is not None:
        log.info("read %s graphs from the cache %s", name, path)
        return graphs
    graphs = _generate_sbm(name, seed, sizes, params)
    blob = {"format": CACHE_FORMAT, "key": key, "name": name, "seed": seed, "params": json.dumps(asdict(params)),
            "splits": {split: _pack(gs) for split, gs in graphs.items()}}
    try:
        atomic_torch_save(blob, path)
        log.info("cached %s graphs in %s", name, path)
    except OSError as err:  # a read-only home must not stop training
        warnings.warn(f"could not write the graph cache {str(path)!r} ({err}); the graphs will be generated "
                      f"again next time", stacklevel=3)
    return graphs


def _dataset(name: str, graphs: dict[str, list[_Compact]], num_classes: int, num_features: int,
             info: dict) -> GraphDataset:
    return GraphDataset(name, {split: [_to_sample(c) for c in gs] for split, gs in graphs.items()},
                        num_classes, num_features, "categorical", info)


def make_pattern(seed: int = 0, train: int = 10000, valid: int = 2000, test: int = 2000, *,
                 params: PatternParams | None = None, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> GraphDataset:
    """PATTERN: find the planted pattern's nodes (2 classes; categorical features, 3 values).

    The published split is 10000/2000/2000 graphs (100 patterns x 100/20/20). Graphs are
    deterministic in ``seed`` (per-graph generators, see :func:`_generate_sbm`) and,
    with ``cache``, read from / written to ``cache_dir`` (default :func:`default_cache_dir`),
    keyed by a hash of the generator version, parameters, sizes and seed. The random streams
    are not the original's (``np.random`` global state), so the graphs are the same
    distribution, not the same graphs.
    """
    params = params or PatternParams()
    sizes = {"train": train, "valid": valid, "test": test}
    graphs = _cached_sbm("PATTERN", seed, sizes, params, cache, cache_dir)
    return _dataset("PATTERN", graphs, 2, params.num_feature_values, {"seed": seed, "params": asdict(params)})


def make_cluster(seed: int = 0, train: int = 10000, valid: int = 1000, test: int = 1000, *,
                 params: ClusterParams | None = None, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> GraphDataset:
    """CLUSTER: recover each node's community from one labelled node per community
    (6 classes; categorical features, 7 values: 0 = unlabelled, r + 1 = labelled in community r).

    The published split is 10000/1000/1000 graphs. Seeding and caching as :func:`make_pattern`.
    """
    params = params or ClusterParams()
    sizes = {"train": train, "valid": valid, "test": test}
    graphs = _cached_sbm("CLUSTER", seed, sizes, params, cache, cache_dir)
    return _dataset("CLUSTER", graphs, params.num_communities, params.num_communities + 1,
                    {"seed": seed, "params": asdict(params)})


# --------------------------------------------------------------------------
# Zachary's karate club
# --------------------------------------------------------------------------
KARATE_CLUBS = ("Mr. Hi", "Officer")  # label 0, label 1


def karate(features: str = "onehot") -> GraphDataset:
    """Zachary's karate club (``networkx.karate_club_graph()``): 34 members, 78 friendships
    (156 directed edges), labelled by the faction each joined after the split ("club":
    "Mr. Hi" -> 0, "Officer" -> 1).

    ``features="onehot"`` (default): the identity matrix, dense float32 (34, 34), the classic
    featureless setting (Kipf & Welling's karate demo); ``"id"``: the node id as a categorical
    feature (vocabulary 34), the same information for an embedding table.

    The split is the classic semi-supervised one: training labels only for the two leaders,
    node 0 (Mr. Hi, the instructor) and node 33 (the club's officer/administrator); of the
    other 32 nodes in id order every fourth (1, 5, 9, ...: 8 nodes) is validation, the
    remaining 24 test. One graph serves all three splits; the masks tell them apart.
    """
    g = nx.karate_club_graph()
    n = g.number_of_nodes()
    clubs = [g.nodes[i]["club"] for i in range(n)]
    unknown = sorted(set(clubs) - set(KARATE_CLUBS))
    if unknown:
        raise DataError(f"networkx's karate club has unexpected club names {unknown}; expected {KARATE_CLUBS}")
    y = torch.tensor([KARATE_CLUBS.index(c) for c in clubs], dtype=torch.long)
    und = np.array([(u, v) for u, v in g.edges() if u != v], dtype=np.int64).reshape(-1, 2)
    adj = np.zeros((n, n), dtype=bool)
    adj[und[:, 0], und[:, 1]] = True
    adj[und[:, 1], und[:, 0]] = True
    dst, src = np.nonzero(adj)
    edge_index = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    if features == "onehot":
        x, kind = torch.eye(n, dtype=torch.float32), "dense"
    elif features == "id":
        x, kind = torch.arange(n, dtype=torch.long), "categorical"
    else:
        raise DataError(f"karate features must be 'onehot' or 'id', got {features!r}")
    rest = [i for i in range(n) if i not in (0, n - 1)]
    masks = {name: torch.zeros(n, dtype=torch.bool) for name in ("train", "val", "test")}
    masks["train"][[0, n - 1]] = True
    masks["val"][rest[::4]] = True
    masks["test"][[i for i in rest if i not in rest[::4]]] = True
    sample = GraphSample(n, edge_index, x, y, masks["train"], masks["val"], masks["test"])
    return GraphDataset("karate", {s: [sample] for s in SPLITS}, 2, n, kind, {"features": features})
