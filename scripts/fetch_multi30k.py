#!/usr/bin/env python
"""Download Multi30k (task 1: train, val, test_2016_flickr in en/de) and verify it.

    python scripts/fetch_multi30k.py                # into data/multi30k/, skipping files present
    python scripts/fetch_multi30k.py --force        # download again
    python scripts/fetch_multi30k.py --verify-only  # only check files and line counts

The logic lives in :mod:`transformer_graph.data.multi30k`; this only parses arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformer_graph.data.datasets import DataError  # noqa: E402
from transformer_graph.data.multi30k import BASE_URL, DEFAULT_DIR, fetch, verify_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DIR,
                        help=f"target directory (default {DEFAULT_DIR})")
    parser.add_argument("--force", action="store_true", help="download files even if they exist")
    parser.add_argument("--verify-only", action="store_true", help="do not download, only verify")
    parser.add_argument("--base-url", default=BASE_URL, help="where the .gz files live")
    args = parser.parse_args(argv)

    if not args.verify_only:
        try:
            for name, action in fetch(args.dest, force=args.force, base_url=args.base_url).items():
                print(f"{action:>10}  {args.dest / name}")
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    problems = verify_dir(args.dest)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print(f"{args.dest}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
