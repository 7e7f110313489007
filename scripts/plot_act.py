#!/usr/bin/env python
"""ACT step pictures (logic in transformer_graph/act_plot.py):

    python scripts/plot_act.py --checkpoint RUN/best.pt --out act.png [--split valid] [--limit N]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformer_graph.viz.act import main  # noqa: E402

if __name__ == "__main__":
    main()
