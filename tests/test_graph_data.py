"""Node-classification data: the SBM benchmarks, their cache, karate, Planetoid, Laplacian PE, the checks."""
import io
import os
import pickle
import re
import struct
import urllib.error
from collections import defaultdict

import numpy as np
import pytest
import torch

from transformer_graph.data import download
from transformer_graph.data import graph_tasks as gt
from transformer_graph.data import laplacian as lp
from transformer_graph.data import planetoid as pl
from transformer_graph.data.datasets import DataError
from transformer_graph.data.graph_tasks import GraphSample


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Every test caches under tmp_path, never in the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "transformer_graph" / "graphs"


def same_graphs(a, b) -> bool:
    return len(a) == len(b) and all(
        g.num_nodes == h.num_nodes and torch.equal(g.edge_index, h.edge_index) and torch.equal(g.x, h.x)
        and torch.equal(g.y, h.y) for g, h in zip(a, b))


# --------------------------------------------------------------------------
# PATTERN / CLUSTER
# --------------------------------------------------------------------------
@pytest.mark.parametrize("make", [gt.make_pattern, gt.make_cluster])
def test_sbm_deterministic_in_the_seed(make):
    a = make(1, 12, 4, 4, cache=False)
    b = make(1, 12, 4, 4, cache=False)
    c = make(2, 12, 4, 4, cache=False)
    for split in gt.SPLITS:
        assert same_graphs(a.splits[split], b.splits[split])
        assert not same_graphs(a.splits[split], c.splits[split])
    # a graph depends on (seed, split, index) only: fewer graphs are a prefix, other splits don't matter
    d = make(1, 5, 0, 2, cache=False)
    assert same_graphs(d.splits["train"], a.splits["train"][:5])
    assert same_graphs(d.splits["test"], a.splits["test"][:2])
    assert d.splits["valid"] == []
    assert not same_graphs(a.splits["valid"], a.splits["test"])


def test_pattern_matches_the_published_statistics():
    ds = gt.make_pattern(0, 300, 0, 0, cache=False)
    assert (ds.name, ds.num_classes, ds.num_features, ds.feature_kind) == ("PATTERN", 2, 3, "categorical")
    graphs = ds.splits["train"]
    ds.check()  # check_graph + check_no_isolated_nodes on every graph
    nodes = np.array([g.num_nodes for g in graphs])
    edges = np.array([g.num_edges for g in graphs])
    # the generator's bounds are 6 x 5..34 = 30..204; the published set spans 44-188 (DGL's docs, from the
    # paper), this one's 14000 graphs (seed 0) 42-188; 300 graphs stay well inside
    assert 30 <= nodes.min() and nodes.max() <= 204
    assert 44 - 10 <= nodes.min() < 80 and 150 < nodes.max() <= 188 + 10
    assert abs(nodes.mean() - 117.5) < 6  # 5 communities + 1 pattern, each 5..34 nodes
    assert abs(edges.mean() - 6099) < 0.1 * 6099  # PyG's GNNBenchmarkDataset table: 6098.9 directed edges
    labels = torch.cat([g.y for g in graphs])
    assert set(labels.unique().tolist()) == {0, 1}
    assert 0.14 < labels.float().mean() < 0.20  # pattern nodes: E[m] / E[N] = 19.5 / 117
    assert set(torch.cat([g.x for g in graphs]).unique().tolist()) == {0, 1, 2}
    # graph i uses pattern i % 100: graphs i and i + 100 plant the same pattern (same size, same features)
    for i in (0, 17, 99):
        g, h = graphs[i], graphs[i + 100]
        assert int(g.y.sum()) == int(h.y.sum())
        assert sorted(g.x[g.y == 1].tolist()) == sorted(h.x[h.y == 1].tolist())


def test_cluster_matches_the_published_statistics():
    ds = gt.make_cluster(0, 300, 0, 0, cache=False)
    assert (ds.name, ds.num_classes, ds.num_features, ds.feature_kind) == ("CLUSTER", 6, 7, "categorical")
    graphs = ds.splits["train"]
    ds.check()
    nodes = np.array([g.num_nodes for g in graphs])
    edges = np.array([g.num_edges for g in graphs])
    # generator bounds 30..204; published 40-190; this one's 12000 graphs (seed 0) 49-192
    assert 30 <= nodes.min() and nodes.max() <= 204
    assert 40 - 10 <= nodes.min() < 80 and 150 < nodes.max() <= 190 + 10
    assert abs(nodes.mean() - 117.2) < 6
    assert abs(edges.mean() - 4304) < 0.1 * 4304  # PyG's table: 4303.9 directed edges
    fractions = torch.bincount(torch.cat([g.y for g in graphs]), minlength=6).double() / nodes.sum()
    assert torch.all((fractions - 1 / 6).abs() < 0.02)
    for g in graphs[:50]:  # one labelled node per community: feature r + 1 on a node of community r
        lab = g.x > 0
        assert int(lab.sum()) == 6
        assert sorted((g.x[lab] - 1).tolist()) == list(range(6))
        assert torch.equal(g.x[lab] - 1, g.y[lab])


def test_sbm_graphs_are_undirected_without_loops_or_duplicates():
    for g in gt.make_pattern(0, 5, 0, 0, cache=False).splits["train"] + \
            gt.make_cluster(0, 5, 0, 0, cache=False).splits["train"]:
        src, dst = g.edge_index
        fwd = set(zip(src.tolist(), dst.tolist()))
        assert fwd == set(zip(dst.tolist(), src.tolist())) and len(fwd) == g.num_edges
        assert not bool((src == dst).any())
        key = dst * g.num_nodes + src
        assert torch.equal(key, key.sort().values)  # sorted by destination, then source


def test_bad_seed_and_sizes_are_data_errors():
    with pytest.raises(DataError, match="seed"):
        gt.make_pattern(-1, 2, 0, 0, cache=False)
    with pytest.raises(DataError, match="number of valid graphs"):
        gt.make_cluster(0, 2, -3, 0, cache=False)


# --------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------
@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = gt._generate_sbm

    def counting(*args, **kwargs):
        calls.append(args[:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(gt, "_generate_sbm", counting)
    return calls


def test_cache_is_read_back(counted, cache_home):
    first = gt.make_pattern(3, 6, 2, 2)
    assert len(counted) == 1
    files = list(cache_home.glob("pattern-*.pt"))
    assert len(files) == 1
    second = gt.make_pattern(3, 6, 2, 2)
    assert len(counted) == 1  # read from the file, not generated
    for split in gt.SPLITS:
        assert same_graphs(first.splits[split], second.splits[split])
    assert same_graphs(second.splits["train"], gt.make_pattern(3, 6, 2, 2, cache=False).splits["train"])
    assert not list(cache_home.glob("*.tmp"))
    c1 = gt.make_cluster(3, 4, 1, 1)
    c2 = gt.make_cluster(3, 4, 1, 1)
    assert len(counted) == 3 and same_graphs(c1.splits["train"], c2.splits["train"])  # (one was cache=False)


def test_cache_changed_parameter_regenerates(counted, cache_home):
    gt.make_pattern(3, 4, 1, 1)
    gt.make_pattern(3, 4, 1, 1, params=gt.PatternParams(q=0.3))
    gt.make_pattern(3, 5, 1, 1)
    gt.make_pattern(4, 4, 1, 1)
    assert len(counted) == 4
    assert len(list(cache_home.glob("pattern-*.pt"))) == 4
    gt.make_pattern(3, 4, 1, 1, params=gt.PatternParams(q=0.3))
    assert len(counted) == 4


def test_corrupt_cache_warns_and_regenerates(counted, cache_home):
    good = gt.make_cluster(5, 4, 1, 1)
    (path,) = cache_home.glob("cluster-*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable graph cache"):
        again = gt.make_cluster(5, 4, 1, 1)
    assert len(counted) == 2
    assert same_graphs(good.splits["train"], again.splits["train"])
    gt.make_cluster(5, 4, 1, 1)  # the rewritten file is good again
    assert len(counted) == 2
    # a readable file with the wrong content is corrupt too
    blob = torch.load(path, weights_only=True)
    blob["splits"]["train"]["num_nodes"] = blob["splits"]["train"]["num_nodes"][:2]
    torch.save(blob, path)
    with pytest.warns(UserWarning, match="unreadable graph cache"):
        gt.make_cluster(5, 4, 1, 1)
    assert len(counted) == 3


# --------------------------------------------------------------------------
# Karate
# --------------------------------------------------------------------------
def test_karate():
    ds = gt.karate()
    g = ds.splits["train"][0]
    assert all(s[0] is g for s in ds.splits.values())
    assert (g.num_nodes, g.num_edges, ds.num_classes) == (34, 156, 2)
    assert len({frozenset(e) for e in g.edge_index.t().tolist()}) == 78
    assert ds.feature_kind == "dense" and torch.equal(g.x, torch.eye(34))
    ds.check()
    masks = torch.stack([g.train_mask, g.val_mask, g.test_mask]).int()
    assert torch.all(masks.sum(0) == 1)  # disjoint, and together every node
    assert g.train_mask.nonzero().flatten().tolist() == [0, 33]
    assert g.y[0] == 0 and g.y[33] == 1  # Mr. Hi, Officer
    assert (int(g.val_mask.sum()), int(g.test_mask.sum())) == (8, 24)
    assert g.y.bincount().tolist() == [17, 17]
    ids = gt.karate(features="id")
    assert ids.feature_kind == "categorical" and ids.num_features == 34
    ids.check()
    with pytest.raises(DataError, match="onehot"):
        gt.karate(features="degree")


# --------------------------------------------------------------------------
# Planetoid
# --------------------------------------------------------------------------
class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 did: bytes as (latin-1) str opcodes, not Python 3's _codecs.encode."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _pickle(path, obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # and with the module names of the original (Python 2 era) files
    data = buf.getvalue().replace(b"scipy.sparse._csr\n", b"scipy.sparse.csr\n")
    assert b"_codecs" not in data and (b"scipy.sparse.csr\n" in data or b"scipy" not in data)
    path.write_bytes(data)


def write_planetoid(root, name="cora", gaps=False, seed=0):
    """A tiny dataset in the Planetoid format: 3 classes, 6 features, 2 labelled nodes per
    class, 520 allx nodes (so the standard 500 validation nodes fit), 10 test nodes."""
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(seed)
    num_allx, num_test, classes, width = 520, 10, 3, 6
    span = num_test + (2 if gaps else 0)
    test_nodes = np.arange(num_allx, num_allx + span)
    if gaps:
        test_nodes = np.delete(test_nodes, [3, 7])  # two isolated nodes absent from the test files
    test_index = rng.permutation(test_nodes)
    n = num_allx + span
    feats = (rng.random((n, width)) < 0.4).astype(np.float32)
    labels = rng.integers(0, classes, n)
    labels[:6] = [0, 1, 2, 0, 1, 2]
    onehot = np.eye(classes, dtype=np.int64)[labels]
    root.mkdir(parents=True, exist_ok=True)
    p = lambda part: root / f"ind.{name}.{part}"
    _pickle(p("x"), sparse.csr_matrix(feats[:6]))
    _pickle(p("y"), onehot[:6])
    _pickle(p("allx"), sparse.csr_matrix(feats[:num_allx]))
    _pickle(p("ally"), onehot[:num_allx])
    _pickle(p("tx"), sparse.csr_matrix(feats[test_index]))
    _pickle(p("ty"), onehot[test_index])
    graph = defaultdict(list)
    ring = [v for v in range(n) if v in set(range(num_allx)) | set(test_nodes.tolist())]
    for a, b in zip(ring, ring[1:] + ring[:1]):
        graph[a].append(b)
        graph[b].append(a)
    graph[0].append(ring[1])  # a duplicate edge and a self loop, as the real files have
    graph[5].append(5)
    _pickle(p("graph"), graph)
    p("test.index").write_text("".join(f"{i}\n" for i in test_index))
    return {"n": n, "feats": feats, "labels": labels, "test_index": test_index, "ring": len(ring)}


def test_load_planetoid_standard_split(tmp_path):
    truth = write_planetoid(tmp_path / "cora")
    ds = pl.load_planetoid("Cora", tmp_path / "cora")
    g = ds.splits["test"][0]
    assert (ds.name, ds.num_classes, ds.num_features, ds.feature_kind) == ("Cora", 3, 6, "dense")
    assert g.num_nodes == truth["n"] == 530
    assert [int(m.sum()) for m in (g.train_mask, g.val_mask, g.test_mask)] == [6, 500, 10]
    assert g.train_mask[:6].all() and g.val_mask[6:506].all()
    assert sorted(g.test_mask.nonzero().flatten().tolist()) == sorted(truth["test_index"].tolist())
    assert torch.equal(g.x, torch.from_numpy(truth["feats"]))  # row test.index[r] holds tx[r]
    assert torch.equal(g.y, torch.from_numpy(truth["labels"]))
    assert g.x.dtype == torch.float32 and g.y.dtype == torch.int64
    assert g.num_edges == 2 * truth["ring"]  # symmetric, the duplicate and the self loop dropped
    ds.check()


def test_load_planetoid_citeseer_gaps(tmp_path):
    truth = write_planetoid(tmp_path / "cs", name="citeseer", gaps=True)
    ds = pl.load_planetoid("citeseer", tmp_path / "cs")
    g = ds.splits["train"][0]
    assert g.num_nodes == truth["n"] == 532
    gap = [523, 527]
    assert torch.all(g.x[gap] == 0) and torch.all(g.y[gap] == 0)
    assert not (g.train_mask | g.val_mask | g.test_mask)[gap].any()
    keep = np.setdiff1d(np.arange(532), gap)
    assert torch.equal(g.x[keep], torch.from_numpy(truth["feats"][keep]))
    assert torch.equal(g.y[keep], torch.from_numpy(truth["labels"][keep]))
    ds.check(isolated=False)
    with pytest.raises(DataError, match="2 of 532 nodes have no in-edges"):
        ds.check()


def test_load_planetoid_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"lacks ind\.pubmed\.x.*fetch_planetoid\('pubmed'"):
        pl.load_planetoid("PubMed", tmp_path)
    with pytest.raises(DataError, match="unknown Planetoid dataset"):
        pl.load_planetoid("reddit", tmp_path)


class FakeResponse:
    def __init__(self, data):
        self.data = data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self):
        return self.data


def test_fetch_planetoid_writes_atomically_and_keeps_files(tmp_path, monkeypatch):
    dest = tmp_path / "cora"
    dest.mkdir()
    (dest / "ind.cora.x").write_bytes(b"\x80\x02old")
    requested, written = [], []
    real_write = download.atomic_write_bytes   # the one downloader's atomic write
    monkeypatch.setattr(download, "atomic_write_bytes",
                        lambda path, data: written.append(path.name) or real_write(path, data))

    def opener(url):
        requested.append(url)
        name = url.rsplit("/", 1)[1]
        return FakeResponse(b"1708\n1709\n" if name.endswith("test.index") else b"\x80\x02" + name.encode())

    done = pl.fetch_planetoid("cora", dest, opener=opener)
    assert done["ind.cora.x"] == "exists" and list(done.values()).count("downloaded") == 7
    assert sorted(written) == sorted(f for f in pl.planetoid_files("cora") if f != "ind.cora.x")
    assert all(u.startswith(pl.PLANETOID_URL + "/ind.cora.") for u in requested) and len(requested) == 7
    assert (dest / "ind.cora.x").read_bytes() == b"\x80\x02old"
    assert (dest / "ind.cora.graph").read_bytes() == b"\x80\x02ind.cora.graph"
    assert sorted(os.listdir(dest)) == sorted(pl.planetoid_files("cora"))  # no temporary files left
    pl.fetch_planetoid("cora", dest, opener=opener, force=True)
    assert (dest / "ind.cora.x").read_bytes() == b"\x80\x02ind.cora.x"


def test_fetch_planetoid_failures(tmp_path):
    def failing(url):
        raise urllib.error.URLError("no route to host")

    url = f"{pl.PLANETOID_URL}/ind.citeseer.x"
    with pytest.raises(DataError, match=re.escape(url) + ".*no route to host"):
        pl.fetch_planetoid("citeseer", tmp_path, opener=failing)
    assert not list(tmp_path.iterdir())
    with pytest.raises(DataError, match="HTML page"):
        pl.fetch_planetoid("citeseer", tmp_path, opener=lambda url: FakeResponse(b"<!DOCTYPE html><html>"))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_planetoid_refuses_foreign_pickles(tmp_path):
    write_planetoid(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "ind.cora.x").write_bytes(pickle.dumps(Evil(marker), protocol=2))
    with pytest.raises(DataError, match=r"ind\.cora\.x.*refusing to load (posix|nt|os)\.system"):
        pl.load_planetoid("cora", tmp_path)
    assert not marker.exists()
    (tmp_path / "ind.cora.graph").write_bytes(pickle.dumps(eval, protocol=0))
    with pytest.raises(DataError, match=r"ind\.cora\.graph.*refusing to load (__builtin__|builtins)\.eval"):
        pl.read_planetoid_pickle(tmp_path / "ind.cora.graph")
    (tmp_path / "ind.cora.y").write_bytes(b"\x80\x02truncated")
    with pytest.raises(DataError, match=r"ind\.cora\.y"):
        pl.read_planetoid_pickle(tmp_path / "ind.cora.y")


# --------------------------------------------------------------------------
# Laplacian positional encodings
# --------------------------------------------------------------------------
def _connected_graph(n=30, seed=0):
    rng = np.random.default_rng(seed)
    pairs = {(i, (i + 1) % n) for i in range(n)} | {tuple(sorted(rng.choice(n, 2, replace=False))) for _ in range(n)}
    e = np.array(sorted(pairs)).T
    return torch.from_numpy(np.concatenate([e, e[::-1]], axis=1).astype(np.int64))


def _check_eigenvectors(pe, edge_index, n):
    lap = torch.from_numpy(lp.normalized_laplacian(edge_index, n))
    v = pe.double()
    assert torch.allclose(v.T @ v, torch.eye(v.shape[1], dtype=torch.float64), atol=1e-5)
    lam = torch.diag(v.T @ lap @ v)
    assert torch.allclose(lap @ v, v * lam, atol=1e-5)
    assert torch.all(lam > 1e-6) and torch.all(lam[1:] >= lam[:-1] - 1e-9)  # non-trivial, increasing
    deg = torch.bincount(edge_index[1], minlength=n).double()
    assert torch.allclose(deg.sqrt() @ v, torch.zeros(v.shape[1], dtype=torch.float64), atol=1e-5)  # ⟂ trivial
    return lam


def test_laplacian_pe_eigenvectors():
    ei, n, k = _connected_graph(), 30, 5
    pe = lp.laplacian_pe(ei, n, k)
    assert pe.shape == (n, k) and pe.dtype == torch.float32
    _check_eigenvectors(pe, ei, n)
    top = pe.abs().argmax(dim=0)
    assert torch.all(pe[top, torch.arange(k)] > 0)  # the sign convention
    assert torch.equal(pe, lp.laplacian_pe(ei, n, k))
    g = gt.make_pattern(0, 1, 0, 0, cache=False).splits["train"][0]
    _check_eigenvectors(lp.laplacian_pe(g.edge_index, g.num_nodes, 8), g.edge_index, g.num_nodes)


def test_laplacian_pe_sparse_path_agrees():
    ei, n = _connected_graph(80, seed=1), 80
    dense = lp.laplacian_pe(ei, n, 4)
    sparse = lp.laplacian_pe(ei, n, 4, dense_limit=10)
    lam_dense = _check_eigenvectors(dense, ei, n)
    lam_sparse = _check_eigenvectors(sparse, ei, n)
    assert torch.allclose(lam_dense, lam_sparse, atol=1e-5)


def test_laplacian_pe_pads_small_graphs():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    pe = lp.laplacian_pe(ei, 3, 5)
    assert pe.shape == (3, 5)
    assert torch.all(pe[:, 2:] == 0) and torch.all(pe[:, :2].norm(dim=0) > 0.99)
    _check_eigenvectors(pe[:, :2], ei, 3)
    assert lp.laplacian_pe(torch.zeros(2, 0, dtype=torch.long), 1, 3).shape == (1, 3)


def test_random_sign_flip_changes_only_signs():
    pe = lp.laplacian_pe(_connected_graph(), 30, 6)
    seen = set()
    for s in range(8):
        flipped = lp.random_sign_flip(pe, torch.Generator().manual_seed(s))
        assert torch.equal(flipped.abs(), pe.abs())
        signs = (flipped * pe).sum(0).sign()
        assert torch.equal(flipped, pe * signs)
        seen |= set(signs.tolist())
        again = lp.random_sign_flip(pe, torch.Generator().manual_seed(s))
        assert torch.equal(flipped, again)
    assert seen == {-1.0, 1.0}


# --------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------
def path_graph(n=4, **kw):
    src = list(range(n - 1)) + list(range(1, n))
    dst = list(range(1, n)) + list(range(n - 1))
    sample = dict(num_nodes=n, edge_index=torch.tensor([src, dst]), x=torch.zeros(n, 3),
                  y=torch.zeros(n, dtype=torch.long))
    sample.update(kw)
    return GraphSample(**sample)


def test_check_graph_accepts_a_good_graph():
    gt.check_graph(path_graph(), "g", 2, 3)
    gt.check_no_isolated_nodes(path_graph(), "g")


@pytest.mark.parametrize("change, match", [
    (dict(y=torch.tensor([0, 1, 2, 0])), r"node 2 has label 2, outside \[0, num_classes=2\).*fix"),
    (dict(y=torch.tensor([0, -1, 0, 0])), r"label -1, outside"),
    (dict(x=torch.zeros(4, 5)), r"x has shape \(4, 5\).*num_features=3"),
    (dict(x=torch.zeros(3, 3)), r"x has shape \(3, 3\) but the graph has 4 nodes"),
    (dict(x=torch.zeros(4, 3, dtype=torch.float64)), r"dense features x must be float32"),
    (dict(x=torch.tensor([0, 1, 2, 3])), r"feature id 3 lies outside the vocabulary \[0, num_features=3\)"),
    (dict(edge_index=torch.tensor([[0, 5], [1, 0]])), r"edge 1 \(5 -> 0\).*outside \[0, num_nodes=4\)"),
    (dict(edge_index=torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)), r"must be an int64 tensor of shape \(2, E\)"),
    (dict(edge_index=torch.tensor([[0, 1], [1, 0], [1, 2]])), r"int64 tensor of shape \(3, 2\).*\.t\(\)"),
    (dict(edge_index=torch.tensor([[0, 1, 2], [1, 0, 2]])), r"self loop"),
    (dict(edge_index=torch.tensor([[0, 1, 0], [1, 0, 1]])), r"1 duplicate edges"),
    (dict(train_mask=torch.ones(4)), r"train_mask must be a bool tensor"),
])
def test_check_graph_errors(change, match):
    with pytest.raises(DataError, match=r"^PATTERN train graph 7: .*" + match):
        gt.check_graph(path_graph(**change), "PATTERN train graph 7", 2, 3)


def test_isolated_nodes_are_refused_with_the_fix():
    g = path_graph(edge_index=torch.tensor([[0, 1], [1, 0]]))  # nodes 2 and 3 have no edges
    gt.check_graph(g, "g", 2, 3)  # valid data ...
    with pytest.raises(DataError, match=r"^karate: 2 of 4 nodes have no in-edges \(nodes 2, 3\); attention on a node "
                                        r"with no neighbours is undefined.*self loops.*global nodes"):
        gt.check_no_isolated_nodes(g, "karate")  # ... but not for attention


def test_dataset_check_names_the_graph():
    ds = gt.make_pattern(0, 3, 0, 0, cache=False)
    ds.splits["train"][1].y[0] = 5
    with pytest.raises(DataError, match=r"^PATTERN train graph 1: node 0 has label 5"):
        ds.check()
    with pytest.raises(DataError, match="feature_kind"):
        gt.GraphDataset("x", {}, 2, 3, "sparse")
