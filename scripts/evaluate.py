#!/usr/bin/env python
"""Evaluate: python scripts/evaluate.py --checkpoint RUN/best.pt [--split test] [--beam 5] [--json FILE]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformer_graph.cli.main import evaluate_main  # noqa: E402

if __name__ == "__main__":
    evaluate_main()
