"""Import DGL with the PyTorch backend, quietly.

DGL picks its tensor backend from ``DGLBACKEND`` when it is first imported and
warns when the variable is unset. Every module of this package imports DGL from
here, so the variable is always set first and users see no backend warning.
"""
import os

os.environ.setdefault("DGLBACKEND", "pytorch")

import dgl  # noqa: E402  (must come after the environment variable)
from dgl import ops  # noqa: E402

__all__ = ["dgl", "ops"]
