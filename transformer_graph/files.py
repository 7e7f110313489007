"""Atomic file writes: a reader, a crash or a concurrent writer never sees half a file.

Every writer here fills a temporary file in the target's own directory (so the
final rename never crosses a file system), flushes it to disk with ``fsync``
and renames it over the target with ``os.replace``. A failure at any point
removes the temporary file and leaves an existing target untouched.

    atomic_write_text(run_dir / "vocab.src.json", text)
    atomic_torch_save({"format": ..., "model": state}, run_dir / "last.pt")
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any
from collections.abc import Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, then move it into place.

    The parent directory is created if needed; returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave a stray .tmp behind
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def read_records(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines file such as a run's ``metrics.jsonl``, in order; a line
    that is not one (cut short by a kill) is skipped, and a missing file has none."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
