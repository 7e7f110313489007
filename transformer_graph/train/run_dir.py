"""A run directory is only ever created fresh or resumed, never trained into on top of other files.

A new run gets a directory that does not exist yet, or an empty one; anything else (another
run's results, a stale ``averaged.pt``, a file) is a :class:`RunDirError` before any work, so
no ``best.pt``, ``config.yaml``, vocabulary or ``metrics.jsonl`` of anyone is ever replaced or
appended to. A resumed run continues its own directory (:mod:`transformer_graph.train.resume`).
"""
from __future__ import annotations

import os
from pathlib import Path


class RunDirError(ValueError):
    """A run directory that cannot be used the way asked (new run into a used one, unwritable)."""


def _listed(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_fresh(run_dir: str | os.PathLike) -> Path:
    """Check, creating nothing, that a new run may use ``run_dir``: it does not exist yet and can be
    created, or it is an empty writable directory."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir}: is an existing file; choose another --run-dir")
    if run_dir.is_dir():
        # (the temporary file of an atomic write a kill cut short is no one's: see remove_stale_temp_files)
        names = sorted(p.name for p in run_dir.iterdir() if not _is_temp(p))
        if names:
            hint = (f"it holds a run (last.pt): continue it with --resume {run_dir}, or choose another --run-dir"
                    if "last.pt" in names else
                    "a new run needs a new or empty directory: choose another --run-dir")
            raise RunDirError(f"run directory {run_dir}: already holds {_listed(names)}; {hint}")
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = ("is not writable" if existing == run_dir
                else f"cannot be created ({existing} is not a writable directory)")
        raise RunDirError(f"run directory {run_dir}: {what}; choose another --run-dir")
    return run_dir


def create(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"run directory {run_dir}: cannot be created ({err.strerror or err}); "
                          f"choose another --run-dir") from None


def check_writable(run_dir: Path) -> None:
    """Fail now, not at the first checkpoint, when nothing can be written in ``run_dir``."""
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir}: is not writable; fix its permissions or choose "
                          f"another --run-dir")


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files of atomic writes a killed process left behind (``.last.pt.*.tmp``,
    see :mod:`transformer_graph.files`): nothing ever reads them."""
    stale = sorted(p for p in run_dir.iterdir() if _is_temp(p))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
