#!/usr/bin/env python
"""Train: python scripts/train.py --config configs/copy.yaml [--set k=v ...] [--run-dir DIR] [--resume DIR]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformer_graph.cli.main import train_main  # noqa: E402

if __name__ == "__main__":
    train_main()
