"""The Planetoid citation graphs (Cora, CiteSeer, PubMed) in their original format.

Kipf & Welling's GCN and PyG read the files of Yang et al.'s Planetoid repository,
``ind.{name}.{x,y,tx,ty,allx,ally,graph,test.index}``, and use one fixed split (the
"standard split"), which is what results on these datasets are quoted on. This module
downloads those files (:func:`fetch_planetoid`) and reads them into one
:class:`~transformer_graph.data.graph_tasks.GraphSample` with the standard masks
(:func:`load_planetoid`).

The files are Python-2 pickles (read with ``encoding="latin1"``) of scipy sparse
matrices, numpy arrays and a ``defaultdict`` of neighbour lists. Unpickling runs
whatever the file names, so they are read with a restricted unpickler that resolves
only the handful of numpy/builtin names these files use and refuses anything else
with a :class:`DataError` naming the file. The sparse matrices are not rebuilt as
scipy objects: their pickled state (``data``/``indices``/``indptr``/``_shape``) is
read into a stand-in class and densified with numpy, which needs no scipy and does
not depend on the attribute layout of whichever scipy version reads them.

The format, as PyG's ``torch_geometric/io/planetoid.py`` and Kipf's ``gcn/utils.py``
read it: ``allx``/``ally`` are the features / one-hot labels of nodes ``0..len(allx)-1``,
of which ``x``/``y`` are the first ``len(y)`` (the labelled training nodes: 20 per
class); ``tx``/``ty`` those of the test nodes, row i belonging to node ``test.index[i]``
(one integer per line, unsorted); ``graph`` maps each node to its neighbours.
"""
from __future__ import annotations

import codecs
import copyreg
import logging
import os
import pickle
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from transformer_graph.data.datasets import DataError
from transformer_graph.data.graph_tasks import SPLITS, GraphDataset, GraphSample, check_graph
from transformer_graph.data.download import fetch_files

log = logging.getLogger(__name__)

PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data"
PLANETOID_NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
NUM_VAL = 500  # the standard split's validation nodes: the 500 after the training nodes


def _key(name: str) -> str:
    key = str(name).lower()
    if key not in PLANETOID_NAMES:
        raise DataError(f"unknown Planetoid dataset {name!r}; expected one of {sorted(PLANETOID_NAMES.values())}")
    return key


def planetoid_files(name: str) -> list[str]:
    """The eight file names of ``name``: ``ind.cora.x``, ..., ``ind.cora.test.index``."""
    key = _key(name)
    return [f"ind.{key}.{part}" for part in PARTS]


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------
def _looks_wrong(name: str, data: bytes) -> str | None:
    """Why ``data`` cannot be the file ``name`` (an empty body, an HTML error page), else None."""
    if not data:
        return "an empty response"
    if data.lstrip()[:1] == b"<":
        return "an HTML page (an error page or a proxy's login page?)"
    if name.endswith(".test.index") and not all(c in b"0123456789 \t\r\n" for c in data):
        return "text that is not one integer per line"
    return None


def fetch_planetoid(name: str, dest: str | os.PathLike, opener: Callable[[str], object] | None = None, *,
                    force: bool = False, base_url: str = PLANETOID_URL) -> dict[str, str]:
    """Download the eight files of ``name`` ("cora", "citeseer", "pubmed") into ``dest``.

    Existing files are kept unless ``force``. ``opener(url)`` returns a readable context
    manager (``urllib.request.urlopen`` by default; tests pass a fake). Each file is
    written to a temporary name and renamed, so an interrupted download never leaves a
    truncated file. Returns ``file name -> "downloaded" | "exists"``.
    """
    files = planetoid_files(name)
    return fetch_files(files, Path(dest), base_url, opener=opener, force=force,
                       check=lambda fname, data: _looks_wrong(fname, data),
                       hint=f" (the files {', '.join(files)} from {base_url})")


# --------------------------------------------------------------------------
# Safe unpickling
# --------------------------------------------------------------------------
class _PickledSparse:
    """Stand-in for a pickled ``scipy.sparse`` matrix: unpickling fills its ``__dict__``
    with the matrix's state, which :func:`_dense` turns into a numpy array."""

    format = ""


class _PickledCSR(_PickledSparse):
    format = "csr"


class _PickledCSC(_PickledSparse):
    format = "csc"


class _PickledCOO(_PickledSparse):
    format = "coo"


def _numpy_names() -> dict[str, object]:
    # The running numpy's own reconstructors, whatever module (numpy.core / numpy._core) they live in.
    reconstruct = np.array([]).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    return {"_reconstruct": reconstruct, "scalar": scalar}


_SPARSE = {"csr_matrix": _PickledCSR, "csc_matrix": _PickledCSC, "coo_matrix": _PickledCOO}


def _allowed() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for attr, obj in _numpy_names().items():
            allowed[module, attr] = obj
    allowed["numpy", "ndarray"] = np.ndarray
    allowed["numpy", "dtype"] = np.dtype
    for cls_name, stand_in in _SPARSE.items():
        short = cls_name[:3]
        for module in (f"scipy.sparse.{short}", f"scipy.sparse._{short}", "scipy.sparse"):
            allowed[module, cls_name] = stand_in
    allowed["collections", "defaultdict"] = defaultdict
    for module in ("__builtin__", "builtins"):  # Python 2 / 3 names of the builtins
        for obj in (list, dict, tuple, set, frozenset, object):
            allowed[module, obj.__name__] = obj
    for module in ("copy_reg", "copyreg"):  # protocol 0/1 pickles of new-style objects
        allowed[module, "_reconstructor"] = copyreg._reconstructor
    allowed["_codecs", "encode"] = codecs.encode  # bytes in Python-3 protocol-2 pickles
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a Planetoid file uses; anything else is refused before it runs."""

    ALLOWED = _allowed()

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_planetoid_pickle(path: str | os.PathLike):
    """Unpickle one Planetoid file safely (numpy arrays, sparse matrices as stand-ins, dicts
    and lists only). Raises :class:`DataError` naming the file on anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{str(path)!r} is not a Planetoid file that can be read safely ({err}): these files "
                        f"hold only numpy arrays, scipy sparse matrices and a dict of neighbour lists, and other "
                        f"objects are never unpickled (they could run code). Download it again "
                        f"(fetch_planetoid(..., force=True))") from None
    except OSError as err:
        raise DataError(f"cannot read {str(path)!r} ({err})") from None
    except Exception as err:  # a truncated or garbled pickle raises almost anything
        raise DataError(f"{str(path)!r} is not a readable Planetoid pickle ({type(err).__name__}: {err}); "
                        f"download it again (fetch_planetoid(..., force=True))") from None


def _dense(obj, path: Path) -> np.ndarray:
    """A 2-D float32 array from a pickled numpy array or sparse matrix."""
    try:
        if isinstance(obj, np.ndarray):
            if obj.ndim != 2 or not np.issubdtype(obj.dtype, np.number):
                raise ValueError(f"a {obj.dtype} array of shape {obj.shape}, expected a 2-D numeric array")
            return obj.astype(np.float32)
        if isinstance(obj, _PickledSparse):
            state = obj.__dict__
            shape = tuple(int(s) for s in state.get("_shape", state.get("shape", ())))
            if len(shape) != 2:
                raise ValueError(f"a sparse matrix without a 2-D shape ({shape})")
            out = np.zeros(shape, np.float32)
            data = np.asarray(state["data"], dtype=np.float32)
            if obj.format == "coo":
                row, col = state["coords"] if "coords" in state else (state["row"], state["col"])
            else:
                indptr = np.asarray(state["indptr"], dtype=np.int64)
                major = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
                minor = np.asarray(state["indices"], dtype=np.int64)
                row, col = (major, minor) if obj.format == "csr" else (minor, major)
            np.add.at(out, (np.asarray(row, np.int64), np.asarray(col, np.int64)), data)
            return out
        raise ValueError(f"a {type(obj).__name__}, expected a sparse matrix or an array")
    except (KeyError, ValueError, IndexError, TypeError) as err:
        raise DataError(f"{str(path)!r} does not hold a feature/label matrix ({type(err).__name__}: {err}); "
                        f"download it again (fetch_planetoid(..., force=True))") from None


def _read_index(path: Path) -> np.ndarray:
    try:
        values = [int(line) for line in path.read_text(encoding="ascii").split()]
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{str(path)!r} is not a list of node indices, one integer per line ({err})") from None
    return np.array(values, dtype=np.int64)


def _edges(graph, num_nodes: int, path: Path) -> torch.Tensor:
    """The neighbour lists as an undirected edge_index: both directions, no self loops, no
    duplicates (the files have both), sorted by destination then source."""
    if not isinstance(graph, dict):
        raise DataError(f"{str(path)!r} holds a {type(graph).__name__}, expected a dict of neighbour lists")
    try:
        src = np.fromiter((int(k) for k, vs in graph.items() for _ in vs), dtype=np.int64)
        dst = np.fromiter((int(v) for vs in graph.values() for v in vs), dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{str(path)!r}: the neighbour lists must map node ids to lists of node ids ({err})") from None
    for ids in (src, dst):
        if ids.size and (ids.min() < 0 or ids.max() >= num_nodes):
            bad = int(ids[(ids < 0) | (ids >= num_nodes)][0])
            raise DataError(f"{str(path)!r} names node {bad}, but the feature files describe {num_nodes} nodes "
                            f"(0..{num_nodes - 1}); the files do not belong together: download them again")
    keep = src != dst
    s, d = np.concatenate([src[keep], dst[keep]]), np.concatenate([dst[keep], src[keep]])
    key = np.unique(d * num_nodes + s)  # sorted by destination, then source
    return torch.from_numpy(np.stack([key % num_nodes, key // num_nodes]).astype(np.int64))


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------
def load_planetoid(name: str, root: str | os.PathLike) -> GraphDataset:
    """Cora, CiteSeer or PubMed from the eight files in ``root``, with the standard split.

    One graph: dense float32 features (the raw bag-of-words / TF-IDF values, not row-
    normalised), labels = the argmax of the one-hot rows, edges undirected. Masks: train =
    the first ``len(y)`` nodes (20 per class: 140 for Cora, 120 CiteSeer, 60 PubMed), val =
    the next 500, test = the 1000 nodes of ``test.index``.

    CiteSeer's test indices have gaps (isolated nodes absent from the test files): as in
    Kipf's and PyG's readers, the test block spans min..max of the indices and the missing
    rows are zero features with an all-zero label row (label 0 after the argmax); they are in
    no mask. Those nodes have no edges either, so CiteSeer fails
    :func:`~transformer_graph.data.graph_tasks.check_no_isolated_nodes` until the attention
    graph adds self loops. The gap handling is applied to any of the three whose indices have
    gaps (only CiteSeer's do).
    """
    key = _key(name)
    root = Path(root)
    files = {part: root / f"ind.{key}.{part}" for part in PARTS}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"Planetoid {PLANETOID_NAMES[key]} not found: {str(root)!r} lacks {', '.join(missing)}; "
                        f"download them with fetch_planetoid({key!r}, {str(root)!r}) (from {PLANETOID_URL})")
    mats = {part: _dense(read_planetoid_pickle(files[part]), files[part])
            for part in ("x", "y", "tx", "ty", "allx", "ally")}
    graph = read_planetoid_pickle(files["graph"])
    test_index = _read_index(files["test.index"])

    def fail(what: str) -> DataError:
        return DataError(f"Planetoid {PLANETOID_NAMES[key]} in {str(root)!r}: {what}; the files do not belong "
                         f"together or are damaged: download them again (fetch_planetoid(..., force=True))")

    for feats, labels in (("x", "y"), ("tx", "ty"), ("allx", "ally")):
        if mats[feats].shape[0] != mats[labels].shape[0]:
            raise fail(f"ind.{key}.{feats} has {mats[feats].shape[0]} rows but ind.{key}.{labels} has "
                       f"{mats[labels].shape[0]}")
    widths = {mats[p].shape[1] for p in ("x", "tx", "allx")}
    classes = {mats[p].shape[1] for p in ("y", "ty", "ally")}
    if len(widths) != 1 or len(classes) != 1:
        raise fail(f"the feature widths {sorted(widths)} or label widths {sorted(classes)} differ between files")
    if len(test_index) != mats["tx"].shape[0]:
        raise fail(f"ind.{key}.test.index lists {len(test_index)} nodes but ind.{key}.tx has "
                   f"{mats['tx'].shape[0]} rows")
    if len(test_index) == 0 or len(np.unique(test_index)) != len(test_index):
        raise fail(f"ind.{key}.test.index is empty or lists a node twice")
    num_allx, num_train = mats["allx"].shape[0], mats["x"].shape[0]
    lo, hi = int(test_index.min()), int(test_index.max())
    if lo != num_allx:
        raise fail(f"the test nodes start at {lo}, expected {num_allx} (right after the allx nodes)")
    # The test block: rows lo..hi, row r of the test files at node test_index[r]; gaps stay zero.
    span = hi - lo + 1
    tx = np.zeros((span, mats["tx"].shape[1]), np.float32)
    ty = np.zeros((span, mats["ty"].shape[1]), np.float32)
    tx[test_index - lo], ty[test_index - lo] = mats["tx"], mats["ty"]
    features = np.concatenate([mats["allx"], tx])
    onehot = np.concatenate([mats["ally"], ty])
    n = features.shape[0]
    if num_train + NUM_VAL > lo:
        raise fail(f"the {num_train} training and {NUM_VAL} validation nodes overlap the test nodes (from {lo})")
    masks = {}
    for split, index in (("train", np.arange(num_train)), ("val", np.arange(num_train, num_train + NUM_VAL)),
                         ("test", test_index)):
        masks[split] = torch.zeros(n, dtype=torch.bool)
        masks[split][torch.from_numpy(index)] = True
    sample = GraphSample(n, _edges(graph, n, files["graph"]), torch.from_numpy(features),
                         torch.from_numpy(onehot.argmax(axis=1).astype(np.int64)),
                         masks["train"], masks["val"], masks["test"])
    num_classes, num_features = onehot.shape[1], features.shape[1]
    check_graph(sample, f"Planetoid {PLANETOID_NAMES[key]}", num_classes, num_features, "dense")
    return GraphDataset(PLANETOID_NAMES[key], {s: [sample] for s in SPLITS}, num_classes, num_features, "dense",
                        {"root": str(root), "isolated_test_gaps": span - len(test_index)})
