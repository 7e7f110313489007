"""Shared test setup: DGL's backend chosen before any import, seeded randomness, and the
``needs_dgl`` marker / ``engine`` fixture for tests that run on both engines.

Tests marked ``@pytest.mark.needs_dgl`` (and the ``dgl`` case of the ``engine`` fixture)
skip, with the reason, where DGL cannot be imported (the modern stack); everything else
runs on the torch engine there.
"""
import os
import random

os.environ.setdefault("DGLBACKEND", "pytorch")

import pytest  # noqa: E402
import torch  # noqa: E402

from transformer_graph.graphs import _dgl  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_dgl: needs DGL (the dgl engine); skipped where DGL cannot be imported")


def pytest_collection_modifyitems(config, items):
    if _dgl.available():
        return
    skip = pytest.mark.skip(reason=f"needs DGL, which cannot be imported here ({_dgl.why_unavailable()}); "
                                   f"install it with {_dgl.INSTALL_HINT}")
    for item in items:
        if "needs_dgl" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=[pytest.param("dgl", marks=pytest.mark.needs_dgl), "torch"])
def engine(request) -> str:
    """Each engine in turn (the dgl case skips without DGL)."""
    return request.param


@pytest.fixture(autouse=True)
def seed_everything():
    """Every test starts from the same random state, so failures reproduce."""
    random.seed(0)
    torch.manual_seed(0)
    yield
