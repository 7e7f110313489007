#!/usr/bin/env python
"""Translate raw sentences with a checkpoint. Same as `tg-translate`: see `tg-translate --help`.

Needs the package installed (`make install` or `pip install -e .`).
"""
from transformer_graph.cli.translate import main

if __name__ == "__main__":
    raise SystemExit(main())
