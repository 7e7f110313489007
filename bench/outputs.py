"""Where the tools write: a scratch directory by default, ``docs/`` only when asked, and no file
of an earlier run replaced unless asked (``--force``), all checked before any work starts.

Paths are relative to the current directory, which for ``python -m bench...`` is the checkout:
``docs/`` means ``./docs``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class OutputError(ValueError):
    """An output location is unusable, or writing there would replace files not meant to be replaced."""


def inside_docs(path: str | os.PathLike) -> bool:
    """True when ``path`` is the checkout's ``docs/`` directory or anything inside it."""
    docs = (Path.cwd() / "docs").resolve()
    target = Path(path).resolve()
    return target == docs or docs in target.parents


def _listed(paths: Sequence[Path], limit: int = 4) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def check_output_dir(out: str | os.PathLike, names: Sequence[str], *, option: str = "--out",
                     replace: bool = False, hint: str = "pass --force to replace them") -> list[Path]:
    """Check that directory ``out`` can be created or written and that none of ``names`` (paths
    relative to it) exists there unless ``replace``; returns those that exist (to be replaced).

    Nothing is created: a failed check leaves the disk as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out}: is an existing file; expected a directory (existing or to be created)")
    existing_parent = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing_parent.is_dir() or not os.access(existing_parent, os.W_OK | os.X_OK):
        what = "cannot be created" if existing_parent != out else "is not writable"
        raise OutputError(f"{option} {out}: {what}: {existing_parent} is not a writable directory; "
                          f"choose another {option}")
    clashes = [out / name for name in names if (out / name).exists()]
    if clashes and not replace:
        raise OutputError(f"{option} {out}: would replace {_listed(clashes)} from an earlier run; {hint}, "
                          f"or choose another {option}")
    return clashes
