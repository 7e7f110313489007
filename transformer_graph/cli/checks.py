"""Option values a command checks before any work, beyond what argparse's types check.

    at_least(1, limit=args.limit)            # --limit: expected an integer >= 1, got -1
    at_least(0, layer=args.layer, head=args.head)

A negative index or count would otherwise be taken Python's way (``[:-1]``: all but the last).
"""
from __future__ import annotations


def at_least(minimum: int, **options: int | None) -> None:
    """A ValueError naming the first option (``head`` -> ``--head``) set below ``minimum``."""
    for name, value in options.items():
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {minimum}, got {value}")
