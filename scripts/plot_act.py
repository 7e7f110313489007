#!/usr/bin/env python
"""ACT step pictures of a Universal Transformer. Same as `tg-plot-act`: see `tg-plot-act --help`.

Needs the package installed (`make install` or `pip install -e .`).
"""
from transformer_graph.cli.plot_act import main

if __name__ == "__main__":
    raise SystemExit(main())
