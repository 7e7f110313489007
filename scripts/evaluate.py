#!/usr/bin/env python
"""Evaluate a checkpoint. Same as `tg-evaluate`: see `tg-evaluate --help`.

Needs the package installed (`make install` or `pip install -e .`).
"""
from transformer_graph.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
