#!/usr/bin/env python
"""Download and verify Multi30k. Same as `tg-fetch-multi30k`: see `tg-fetch-multi30k --help`.

Needs the package installed (`make install` or `pip install -e .`).
"""
from transformer_graph.cli.fetch import main

if __name__ == "__main__":
    raise SystemExit(main())
