"""Seed derivation: one seed per purpose (data split, rank, step) from the run's seed.

Synthetic data splits and each rank's dropout draw from seeds derived here, so
they are independent of one another and of how many of the others exist, and a
run repeats exactly from its config.
"""
from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that is a pure function of ``parts`` (and differs for different parts)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
