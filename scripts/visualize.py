#!/usr/bin/env python
"""Attention pictures and animations. Same as `tg-visualize`: see `tg-visualize --help`.

Needs the package installed (`make install` or `pip install -e .`).
"""
from transformer_graph.cli.visualize import main

if __name__ == "__main__":
    raise SystemExit(main())
