#!/usr/bin/env python
"""Translate: python scripts/translate.py --checkpoint RUN/best.pt [--beam 5] [SENTENCE ...] (else stdin)"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformer_graph.inference.translate import translate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(translate_main())
