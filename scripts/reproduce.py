#!/usr/bin/env python
"""Train a config with several seeds and report mean ± std. Same as `tg-reproduce`: see
`tg-reproduce --help`.

Needs the package installed (`make install` or `pip install -e .`).
"""
from transformer_graph.cli.reproduce import main

if __name__ == "__main__":
    raise SystemExit(main())
