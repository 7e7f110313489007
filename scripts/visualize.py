#!/usr/bin/env python
"""Attention pictures (logic in transformer_graph/viz.py):

    python scripts/visualize.py --checkpoint RUN/best.pt --example 0 [--split valid] --out DIR [--layer L]
    python scripts/visualize.py --checkpoint RUN/best.pt --text "A man rides a bike." --out DIR
    python scripts/visualize.py --animate RUN --out FILE.gif [--kind cross --layer 0 --head 0]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformer_graph.viz.attention import main  # noqa: E402

if __name__ == "__main__":
    main()
