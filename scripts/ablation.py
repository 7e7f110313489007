#!/usr/bin/env python
"""Aggregator x structure ablation (issue 9): trains every row of the grid under the same
time budget and writes ABLATION.md, ablation.json and ablation.png.

    python scripts/ablation.py --tasks copy,sort,multi30k --budget 600 --threads 2 --out docs/
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.ablation import main  # noqa: E402

if __name__ == "__main__":
    main()
