"""Shared test setup: DGL's backend chosen before any import, seeded randomness, and the
``needs_dgl`` marker / ``engine`` fixture for tests that run on both engines.

Tests marked ``@pytest.mark.needs_dgl`` (and the ``dgl`` case of the ``engine`` fixture)
skip, with the reason, where DGL cannot be imported (the modern stack); everything else
runs on the torch engine there.
"""
import os
import random
import shutil
import tempfile

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


# --------------------------------------------------------------------------- a real browser

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def _browser_paths():
    try:
        import selenium  # noqa: F401, PLC0415  (optional: only the browser tests need it, dev extra)
    except ImportError:
        return None, "selenium is not installed (pip install selenium; it is in the dev extra)"
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        return None, ("no headless Chromium found (need chromium and chromedriver on PATH; on Debian: "
                      "apt-get install chromium chromium-driver)")
    return (chrome, driver), ""


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium (the explorer tests); skips, saying why, where none can be had."""
    paths, why = _browser_paths()
    if paths is None:
        pytest.skip(why)
    from selenium import webdriver  # noqa: PLC0415  (optional, see _browser_paths)
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    chrome, driver_path = paths
    profile = tempfile.mkdtemp(prefix="tg-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,800"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
