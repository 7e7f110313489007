"""DGL, imported on first use and only here: the project runs without it.

DGL is the reference engine, an optional dependency (``pip install 'transformer_graph[dgl]'``):
its last PyPI wheel (2.1.0) binds torch to 2.2.1, and on a current torch ``import dgl``
fails. So nothing imports DGL at module level; :func:`load` does, the first time a DGL
view of a graph is built or the ``dgl``/``auto`` engine is resolved, and remembers the
outcome (an import either works in this process or it does not).

DGL picks its tensor backend from ``DGLBACKEND`` when it is first imported and warns
when the variable is unset, so :func:`load` sets it (unless the user has) right before
the one import of DGL.
"""
from __future__ import annotations

import importlib
import os
from functools import cache

INSTALL_HINT = "pip install 'transformer_graph[dgl]'"


class DGLUnavailable(ValueError):
    """DGL was asked for but cannot be imported in this environment."""


@cache
def _import():
    """(dgl module, dgl.ops, None) or (None, None, why the import failed)."""
    # Only now, and only if the user has not chosen: the backend DGL reads at its first import.
    os.environ.setdefault("DGLBACKEND", "pytorch")
    try:
        dgl = importlib.import_module("dgl")
        ops = importlib.import_module("dgl.ops")
    except Exception as err:  # noqa: BLE001  (DGL 2.1 on a new torch fails in many ways: a missing
        # .so, setuptools.extern, torchdata; each means the same here: no DGL)
        return None, None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return dgl, ops, None


def available() -> bool:
    """Whether DGL can be imported here (importing it if nobody has yet)."""
    return _import()[0] is not None


def why_unavailable() -> str | None:
    """Why ``import dgl`` failed, or None when it works."""
    return _import()[2]


def load(what: str = "engine"):
    """``(dgl, dgl.ops)``; raises :class:`DGLUnavailable` naming ``what`` asked for DGL and how
    to install it."""
    dgl, ops, why = _import()
    if dgl is None:
        raise DGLUnavailable(f"{what}: 'dgl' needs DGL, which cannot be imported here ({why}); install "
                             f"it with {INSTALL_HINT} (DGL 2.1.0: torch 2.2.1, Python <= 3.12), or use "
                             "the 'torch' engine (the same results without DGL)")
    return dgl, ops


def version() -> str | None:
    """DGL's version, or None without DGL."""
    dgl = _import()[0]
    return None if dgl is None else dgl.__version__


__all__ = ["DGLUnavailable", "INSTALL_HINT", "available", "load", "version", "why_unavailable"]
