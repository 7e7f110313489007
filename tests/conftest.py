"""Shared test setup: DGL's backend chosen before any import, and seeded randomness."""
import os
import random

os.environ.setdefault("DGLBACKEND", "pytorch")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def seed_everything():
    """Every test starts from the same random state, so failures reproduce."""
    random.seed(0)
    torch.manual_seed(0)
    yield
