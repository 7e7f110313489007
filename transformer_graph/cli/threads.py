"""The ``--threads`` option every command shares (see :mod:`transformer_graph.threads`)."""
from __future__ import annotations

import argparse

from transformer_graph.threads import apply_threads

HELP = ("torch CPU threads (default: the CPUs this process may use, per affinity and cgroup quota, that are "
        "idle at start-up, or OMP_NUM_THREADS if set; never more than the machine can give)")


def add_threads_option(ap: argparse.ArgumentParser, help: str = HELP) -> None:  # noqa: A002 (argparse's name)
    ap.add_argument("--threads", type=int, metavar="N", help=help)


def apply_threads_option(args: argparse.Namespace) -> int:
    """Set torch's threads from ``--threads`` (or the default); returns the count."""
    return apply_threads(args.threads, "--threads")
