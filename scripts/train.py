#!/usr/bin/env python
"""Train a graph Transformer from a YAML config. Same as `tg-train`: see `tg-train --help`.

Needs the package installed (`make install` or `pip install -e .`).
"""
from transformer_graph.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
