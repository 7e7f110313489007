"""How many CPU threads torch should use: the CPUs this process may use that nobody else is using.

torch's own default is one thread per logical CPU of the *machine*. That oversubscribes in
three common cases, and oversubscribed OpenMP threads do not just share a core, they wait
for each other at every parallel region while one of them is descheduled: ``tg-evaluate``
(100 sentences, beam 5) took 64 s instead of 6.9 s on a 2-core machine with one core
kept busy by another process (docs/BENCHMARKS.md, "Threads").

:func:`default_threads` counts, in order:

1. the CPUs the process may run on (``os.sched_getaffinity``: ``taskset``, ``numactl``,
   container cpusets);
2. the CPU quota of its cgroup (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` /
   ``cpu.cfs_period_us`` of v1; Docker ``--cpus``, Kubernetes CPU limits), rounded up;
3. how many of the CPUs of 1. are idle right now: their idle time in ``/proc/stat`` over
   :data:`SAMPLE_SECONDS`, rounded to the nearest whole CPU (a busy loop on one core of
   two leaves one);

and returns the smallest, at least 1, divided among ``processes`` (data-parallel workers
on one machine). ``OMP_NUM_THREADS``, when set, is the user's choice and wins. Where a
source is unavailable (no ``/proc``, no cgroup limit, not Linux) it is skipped.

Every command takes ``--threads N`` (``train.threads`` for training); without it the
command applies :func:`default_threads` once at start-up (:func:`apply_threads`, which also
caps the BLAS pools of NumPy and SciPy). The library itself never changes a thread count.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

SAMPLE_SECONDS = 0.1    # /proc/stat counts in 10 ms ticks: 10 per CPU, enough to tell busy from idle


class ThreadsError(ValueError):
    """A thread count that is not a positive integer."""


def affinity_cpus() -> set[int] | None:
    """The CPUs this process may run on, or None where the OS does not say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _cgroup_dirs() -> list[Path]:
    """This process's cgroup directories (v2 and v1 "cpu" controller), innermost first, up to the root."""
    dirs: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = Path("/sys/fs/cgroup")
        elif "cpu" in controllers.split(","):
            base = Path("/sys/fs/cgroup") / controllers
            if not base.is_dir():
                base = Path("/sys/fs/cgroup/cpu")
        else:
            continue
        d = base / path.lstrip("/")
        while True:
            dirs.append(d)
            if d == base or d == d.parent:
                break
            d = d.parent
    return dirs


def quota_cpus() -> float | None:
    """The cgroup CPU quota in CPUs (the tightest along the cgroup path), or None if unlimited."""
    quotas = []
    for d in _cgroup_dirs():
        try:
            if (d / "cpu.max").exists():
                quota, period = (d / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    quotas.append(int(quota) / int(period))
            elif (d / "cpu.cfs_quota_us").exists():
                quota = int((d / "cpu.cfs_quota_us").read_text())
                if quota > 0:
                    quotas.append(quota / int((d / "cpu.cfs_period_us").read_text()))
        except (OSError, ValueError):
            continue
    return min(quotas) if quotas else None


def _cpu_times(cpus: set[int] | None) -> tuple[int, int] | None:
    """(idle ticks, all ticks) summed over ``cpus`` (all CPUs when None), from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    idle = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        ticks = [int(f) for f in fields[:8]]       # user nice system idle iowait irq softirq steal
        idle += ticks[3] + ticks[4]
        total += sum(ticks)
    return (idle, total) if total else None


def idle_cpus(cpus: set[int] | None = None, seconds: float = SAMPLE_SECONDS) -> float | None:
    """How many of ``cpus`` were idle over the next ``seconds`` (e.g. 1.0 of 2 while another
    process runs a busy loop), or None without /proc/stat."""
    before = _cpu_times(cpus)
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times(cpus)
    if after is None or after[1] <= before[1]:
        return None
    n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    return n * (after[0] - before[0]) / (after[1] - before[1])


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 1 else None


def default_threads(processes: int = 1, sample: bool = True) -> int:
    """The CPU threads a command uses when not told: ``OMP_NUM_THREADS`` if set, else the CPUs
    the process may use (affinity, cgroup quota) that are idle now, shared among ``processes``;
    at least 1 (see the module doc). ``sample=False`` skips the idle-time sample."""
    env = _env_threads()
    if env is not None:
        return env
    cpus = affinity_cpus()
    counts = [len(cpus) if cpus else (os.cpu_count() or 1)]
    quota = quota_cpus()
    if quota is not None:
        counts.append(math.ceil(quota))
    if sample:
        idle = idle_cpus(cpus)
        if idle is not None:
            counts.append(int(idle + 0.5))
    return max(1, min(counts) // max(1, processes))


def check_threads(value, what: str = "--threads") -> int:
    """``value`` as a thread count; a :class:`ThreadsError` naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ThreadsError(f"{what}: expected a positive integer (CPU threads), got {value!r}")
    return value


def apply_threads(threads: int | None, what: str = "--threads", processes: int = 1) -> int:
    """Set this process's CPU threads (a command's start-up): ``threads``, or
    :func:`default_threads` when None. Returns the count set.

    torch's pool and the BLAS pools of the libraries loaded so far (NumPy's and SciPy's
    OpenBLAS, which the Laplacian encodings' ``eigh`` runs on) get the same count, through
    ``threadpoolctl``: OpenBLAS starts one thread per CPU of the machine and its threads wait
    for each other by yielding, so beside one busy core a PATTERN graph's eigenvectors took
    100 ms instead of 2 ms (measured here: three 1-thread trainings on the 2 cores).
    """
    n = default_threads(processes) if threads is None else check_threads(threads, what)
    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")
    return n
