"""glibc allocator settings for CPU training: reuse freed memory instead of faulting it in again.

Training applies them once per process when ``train.tune_malloc`` is true (the default; the
Trainer calls :func:`tune_malloc`); ``python -m bench.benchmark --malloc default|tuned``
measures with and without.

Why: glibc serves every allocation above its mmap threshold (128 KiB, raised
dynamically up to 32 MiB) with a fresh ``mmap`` and returns it to the kernel
on free. A training step allocates many large tensors (the generator alone makes
several (target tokens x vocabulary) ones: 116 MB each for 2000 tokens and a
14.5k vocabulary), so every step the kernel maps and zeroes the same memory
again, one 4 KiB page fault at a time. Measured on this project's 2-core
machine at ``multi30k_cpu`` size (4k-token Multi30k batches, 1 thread, CPU time
per training step): ~140k minor page faults per step with glibc's defaults, none
once tuned; float32 2.09 s -> 1.78 s (-15%), bfloat16 autocast 1.19 s -> 0.96 s
(-20%). A plain ``x + 1`` on a 116 MB tensor took 60 ms of CPU with a fresh
output against 10 ms with a reused one.

:func:`tune_malloc` raises the mmap threshold (so large blocks come from the
heap) and the trim threshold (so freed heap memory is kept for the next step).
The price: the process keeps its peak memory mapped instead of giving it back
between steps, which a training loop, whose every step reaches the same peak,
does not notice. It changes nothing on non-glibc systems (returns False).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
import resource

M_TRIM_THRESHOLD = -1   # mallopt parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3

_state = {"tuned": False, "mmap_threshold": None, "trim_threshold": None}


def _libc():
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Keep large freed blocks in the heap for reuse (process-wide, from now on).

    Returns True when glibc accepted the settings. Some glibc versions cap the
    mmap threshold at 32 MiB; that value is tried when the requested one is refused.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 31:
            raise ValueError(f"tune_malloc: {name} must be a positive int below 2**31, got {value!r}")
    libc = _libc()
    if libc is None:
        return False
    mmap_ok = 0
    for value in (mmap_threshold, min(mmap_threshold, 32 << 20)):
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, value)
        if mmap_ok:
            _state["mmap_threshold"] = value
            break
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
    if trim_ok:
        _state["trim_threshold"] = trim_threshold
    _state["tuned"] = bool(mmap_ok and trim_ok)
    return _state["tuned"]


def malloc_settings() -> dict:
    """What :func:`tune_malloc` set in this process (all None/False when never called)."""
    return dict(_state, libc=" ".join(platform.libc_ver()).strip() or "unknown")


def minor_page_faults() -> int:
    """This process's minor page faults so far (each is one 4 KiB page mapped in)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
