"""Checkpoints: written atomically, loaded safely.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
it loads with ``torch.load(weights_only=True)``: no pickled code runs when a user
opens a file. It is written to a temporary file in the same directory, flushed
to disk and renamed over the target, so a crash mid-write never leaves a
half-written ``last.pt`` or ``best.pt``.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import torch

FORMAT = "transformer_graph/1"


class CheckpointError(ValueError):
    """A file that is missing, corrupt, or not one of our checkpoints."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path, **content) -> None:
    """Save ``content`` (model/optimizer state dicts, config dict, vocab dict, ...) atomically."""
    atomic_save({"format": FORMAT, **content}, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (expected RUN_DIR/last.pt or best.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a readable transformer_graph checkpoint "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a transformer_graph checkpoint (expected format "
                              f"{FORMAT!r}, found {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r})")
    return ckpt


def last_checkpoint_status(run_dir) -> str:
    """What a user who must stop can rely on: the run's ``last.pt``, if it exists."""
    last = Path(run_dir) / "last.pt"
    return (f"The last good checkpoint {last} is intact: continue with --resume {run_dir}"
            if last.exists() else "No checkpoint was written yet")


def rng_state() -> dict:
    """Every random state the training loop draws from (dropout, shuffles)."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
