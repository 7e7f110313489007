"""Downloading a dataset's files: one loop for every dataset (Multi30k, Planetoid).

Each file is fetched once (an existing file is kept unless ``force``), checked before it is
written (a proxy's HTML error page is not data), and written to a temporary name and renamed
(:mod:`transformer_graph.files`), so an interrupted download never leaves a truncated file.
"""
from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from transformer_graph.data.datasets import DataError
from transformer_graph.files import atomic_write_bytes

log = logging.getLogger(__name__)


def default_opener(url: str):
    return urllib.request.urlopen(url, timeout=60)


def fetch_files(names: Sequence[str], dest: Path, base_url: str, *, opener: Callable[[str], object] | None = None,
                force: bool = False, check: Callable[[str, bytes], str | None] = lambda name, data: None,
                hint: str = "") -> dict[str, str]:
    """Download ``base_url/name`` into ``dest/name`` for each name; ``file name -> "downloaded" | "exists"``.

    ``opener(url)`` returns a readable context manager (``urllib.request.urlopen`` by default;
    tests pass a fake). ``check(name, data)`` returns what is wrong with a file's bytes (or None);
    ``hint`` ends a failed download's message (where else to get the files)."""
    opener = opener or default_opener
    dest.mkdir(parents=True, exist_ok=True)
    done = {}
    for name in names:
        target = dest / name
        if target.is_file() and not force:
            done[name] = "exists"
            continue
        url = f"{base_url}/{name}"
        try:
            with opener(url) as response:
                data = response.read()
        except OSError as err:  # urllib.error.URLError and socket timeouts are OSErrors
            raise DataError(f"downloading {url} failed ({err}); check the network (or a proxy), or download "
                            f"it by hand into {str(dest)!r}{hint}") from None
        wrong = check(name, data)
        if wrong:
            raise DataError(f"{url} returned {wrong} ({len(data)} bytes), not {name}; download it by hand "
                            f"into {str(dest)!r}{hint}")
        atomic_write_bytes(target, data)
        log.info("downloaded %s (%d bytes)", url, len(data))
        done[name] = "downloaded"
    return done
