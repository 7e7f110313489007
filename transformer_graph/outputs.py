"""Output locations, checked before the work that fills them (decoding, drawing), creating nothing.

    check_output_file(args.json, "--json")     # before decoding, not after
    check_output_dir(args.out, "--out")

A file may be new or replace a file; it may not be a directory, and the nearest existing
directory above it must be writable (missing directories in between are created when writing).
The errors are :class:`OutputError` (a ValueError) naming the option, the path and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written: a directory where a file goes, or the reverse, or unwritable."""


def _writable_ancestor(path: Path, option: str) -> None:
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot be written, {existing} is not a writable directory; "
                          f"choose another {option}")


def check_output_file(path: str | os.PathLike | None, option: str) -> Path | None:
    """``path`` as a Path (None stays None) once it is known that a file can be written there."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a directory; expected the path of a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: is an existing file that is not writable; choose another {option}")
    _writable_ancestor(path, option)
    return path


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a Path once it is known to be, or to be creatable as, a writable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is an existing file; expected a directory (existing or to be created)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {path}: is not writable; choose another {option}")
        return path
    _writable_ancestor(path, option)
    return path
