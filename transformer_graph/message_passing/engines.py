"""Engines: who computes φ and □. A block's ``engine`` names one; nothing here is a switch.

========  ==================================================================
``dgl``   DGL's built-ins (``u_dot_v``, ``edge_softmax``, ``u_mul_e_sum``,
          ``u_add_v``): the reference. Needs DGL (``pip install 'transformer_graph[dgl]'``).
``torch`` the same primitives in PyTorch (sparse CSR on CPU, gather/segment/index_add
          elsewhere): identical results, any torch, any device, no DGL.
``auto``  ``dgl`` where DGL can be imported, else ``torch``.
========  ==================================================================

An engine provides the four primitives every block's φ and □ are written with, and
may provide fused kernels for what a block declares it computes
(:attr:`~transformer_graph.message_passing.base.MessagePassingBlock.fused`).
"""
from __future__ import annotations

from transformer_graph.graphs import _dgl
from transformer_graph.message_passing.dgl_engine import DGLEngine
from transformer_graph.message_passing.torch_engine import TorchEngine

ENGINES = ("auto", "dgl", "torch")
_IMPLEMENTATIONS = {"dgl": DGLEngine(), "torch": TorchEngine()}


def resolve_engine(name: str, what: str = "engine") -> str:
    """``"dgl"`` or ``"torch"`` for an engine name; ``what`` names the setting in errors.

    Raises ValueError for an unknown name, and :class:`~transformer_graph.graphs._dgl.DGLUnavailable`
    (a ValueError saying how to install DGL) for ``"dgl"`` where DGL cannot be imported.
    """
    if name not in ENGINES:
        raise ValueError(f"{what}: unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    if name == "auto":
        return "dgl" if _dgl.available() else "torch"
    if name == "dgl":
        _dgl.load(what)
    return name


def get_engine(name: str, what: str = "engine"):
    """The engine object (its primitives and fused kernels) ``name`` stands for."""
    return _IMPLEMENTATIONS[resolve_engine(name, what)]


__all__ = ["ENGINES", "get_engine", "resolve_engine"]
