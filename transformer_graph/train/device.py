"""Where a run computes: the config's ``train.device`` turned into a ``torch.device``.

Its own module because both the trainer and the process-group setup of
:mod:`transformer_graph.train.distributed` need it, and neither may import the other's
module for it (the trainer builds on distributed, not the reverse).
"""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The configured device does not exist on this machine."""


def resolve_device(name: str) -> torch.device:
    """``cpu``/``cuda`` as asked, ``auto`` = cuda when available; a clear error for a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device: 'cuda' was asked for but no CUDA device is available; "
                          "use 'cpu' or 'auto'")
    return torch.device(name)
