#!/usr/bin/env python
"""Benchmark graph vs dense: python scripts/benchmark.py [--quick] [--sections 1,2,3,4,5] [--threads N] [--out docs]

See docs/BENCHMARKS.md for the methods, the exact commands and what every number means.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
