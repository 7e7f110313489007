"""The attention explorer (transformer_graph.viz.html), checked in a real browser.

1. Without a browser: the page is one file with nothing to fetch, small (a
   Multi30k-sized model well under 2 MB), its weights agree with the model's to
   1e-6; bad input (example index, layer, empty text, missing output directory)
   raises a ValueError naming the value before any model runs.
2. In headless Chromium (Selenium + chromedriver, both from Debian): the page
   loads from file:// with no console error and no network request; the default
   view has exactly m x n cells whose values are the model's weights; switching
   kind/layer/head (buttons, selects, arrow keys, thumbnails) changes them; the
   graph view draws exactly the structure's edges of a window model and hovering
   a token highlights exactly its edges; PNG/SVG export give valid files; the run
   page's slider steps through the epochs; a Universal Transformer page shows its
   ACT steps; a mean-aggregator page says its weights are fixed; 40-token labels
   do not overlap and a narrow window does not overflow.

The browser tests skip, saying why, only when no Chromium/chromedriver/Selenium
can be had (CI installs them: apt-get install chromium chromium-driver).
"""
from __future__ import annotations

import base64
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from io import BytesIO
from pathlib import Path

import pytest
import torch
from PIL import Image

from transformer_graph.config import config_from_dict
from transformer_graph.data.datasets import Vocab
from transformer_graph.experiment import build_experiment, load_trained
from transformer_graph.nn.model import make_model
from transformer_graph.train.trainer import Trainer
from transformer_graph.viz import attention as viz
from transformer_graph.viz import html as explorer

try:  # optional: only the browser tests need it (dev extra)
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - depends on the environment (conftest's browser fixture skips)
    pass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# Models and runs (tiny: seconds of training at most)
# --------------------------------------------------------------------------
def tiny_cfg(**over):
    raw = {
        "model": dict(layers=2, d_model=16, d_ff=32, heads=2, dropout=0.0, share_embeddings=True,
                      structure=dict(enc="window", dec="window", cross="window", window=1)),
        "data": dict(task="copy", train_size=48, valid_size=6, test_size=4, batch_size=16,
                     length_mean=7.0, length_std=1.0, alphabet="abcdefgh"),
        "optim": dict(warmup=10), "train": dict(max_epochs=2, seed=3, threads=1),
        "eval": dict(max_len_a=1.0, max_len_b=2),
        "viz": dict(example=1, every_epoch=True),
    }
    for key, value in over.items():
        section, name = key.split(".")
        raw[section][name] = value
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def window_run(tmp_path_factory):
    """A 2-epoch copy run of a window model (w=1), snapshotting valid example 1 every epoch."""
    run = tmp_path_factory.mktemp("html") / "run"
    Trainer(tiny_cfg(), run, quiet=True).fit()
    return run


@pytest.fixture(scope="module")
def window_maps(window_run):
    """What the page of valid example 1 must show: the model's own extracted attention."""
    model, cfg, vocabs, _ = load_trained(window_run / "best.pt")
    return viz.example_attention(model, build_experiment(cfg, vocabs), 1, "valid")


@pytest.fixture(scope="module")
def window_page(window_run, tmp_path_factory):
    return explorer.html_for_checkpoint(window_run / "best.pt", tmp_path_factory.mktemp("page") / "copy.html",
                                        example=1)


def random_maps(src_len: int, tgt_len: int, layers: int = 3, heads: int = 4):
    """A Multi30k-sized untrained model (3+3 layers x 4 heads) on one pair."""
    vocab = Vocab(["<pad>", "<unk>", "<sos>", "<eos>", *[f"w{i}" for i in range(60)]])
    torch.manual_seed(0)
    model = make_model(len(vocab), len(vocab), layers=layers, d_model=32, d_ff=64, heads=heads, dropout=0.0)
    src = [4 + (7 * i) % 60 for i in range(src_len)]
    tgt = [4 + (11 * i) % 60 for i in range(tgt_len)]
    return viz.extract_attention(model, src, tgt, src_vocab=vocab, tgt_vocab=vocab)


def embedded_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="tgx-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(blob)


# --------------------------------------------------------------------------
# 1. without a browser
# --------------------------------------------------------------------------
def test_page_is_self_contained_and_small(tmp_path):
    maps = random_maps(25, 24)
    page = explorer.write_html(maps, tmp_path / "m30k.html", title="m30k-sized", output_text="x")
    text = page.read_text(encoding="utf-8")
    assert page.stat().st_size < 1_000_000, page.stat().st_size   # "well under 2 MB"
    # Nothing that could make a request: no external src/href, no @import/url(), a CSP forbidding all.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "@import" not in text and "url(" not in text
    assert "default-src 'none'" in text and "connect-src 'none'" in text
    assert re.findall(r"https?://[^\s\"'<>]+", text) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only
    data = embedded_data(page)
    for kind in ("enc", "dec", "cross"):
        kd = data["frames"][0]["kinds"][kind]
        assert kd["layers"] == [0, 1, 2] and kd["heads"] == 4
        got = torch.tensor(kd["weights"], dtype=torch.float64).view(3, 4, kd["rows"], kd["cols"])
        assert (got - maps.weights[kind].double()).abs().max() < 1e-6
        assert kd["edges"] == "".join("1" if e else "0" for e in maps.edges[kind].flatten().tolist())


def test_user_text_cannot_break_out_of_the_page(tmp_path):
    maps = random_maps(3, 2, layers=1, heads=1)
    maps.src_tokens = ["</script><script>alert(1)</script>", "<!--", "@DATA@"]
    page = explorer.write_html(maps, tmp_path / "p.html", title="</title><b>@TITLE@", output_text="/*@SCRIPT@*/")
    text = page.read_text(encoding="utf-8")
    assert text.count("</script>") == 2 and "<b>" not in text
    assert embedded_data(page)["frames"][0]["src"] == maps.src_tokens


def test_bad_input_is_rejected_before_any_work(window_run, tmp_path, monkeypatch):
    ckpt = window_run / "best.pt"

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(explorer, "greedy", no_work)
    monkeypatch.setattr(explorer, "example_attention", no_work)
    out = tmp_path / "p.html"
    with pytest.raises(ValueError, match=r"example: index 6 is out of range for the valid split \(6 examples"):
        explorer.html_for_checkpoint(ckpt, out, example=6)
    with pytest.raises(ValueError, match=r"layers: layer 2 does not exist .*expected 0\.\.1"):
        explorer.html_for_checkpoint(ckpt, out, example=0, layers=[0, 2])
    with pytest.raises(ValueError, match=r"text: '  ' tokenises to nothing"):
        explorer.html_for_checkpoint(ckpt, out, text="  ")
    with pytest.raises(ValueError, match=r"example/text: give exactly one"):
        explorer.html_for_checkpoint(ckpt, out)
    # The output path is checked first of all: even before the checkpoint is read.
    with pytest.raises(ValueError, match=r"out: the directory '.*missing' does not exist; create it first"):
        explorer.html_for_checkpoint(tmp_path / "no.pt", tmp_path / "missing" / "p.html", example=0)
    with pytest.raises(ValueError, match=r"out: .* is a directory"):
        explorer.html_for_checkpoint(ckpt, tmp_path, example=0)
    with pytest.raises(ValueError, match=r"out: .*p\.png' does not end in \.html"):
        explorer.html_for_run(window_run, tmp_path / "p.png")
    with pytest.raises(ValueError, match=r"run dir: .* has no attention snapshots"):
        explorer.html_for_run(tmp_path, out)
    assert not out.exists()


def test_layers_option_keeps_only_those_layers(window_run, window_maps, tmp_path):
    page = explorer.html_for_checkpoint(window_run / "best.pt", tmp_path / "l1.html", example=1, layers=[1])
    data = embedded_data(page)
    cross = data["frames"][0]["kinds"]["cross"]
    assert cross["layers"] == [1] and len(cross["weights"]) == 1
    got = torch.tensor(cross["weights"][0][1]).view(cross["rows"], cross["cols"])
    assert (got - window_maps.weights["cross"][1, 1]).abs().max() < 1e-6
    assert [label for label, _ in data["outputs"]] == ["source", "reference (shown: teacher-forced)",
                                                       "model output (greedy)"]


# --------------------------------------------------------------------------
# 2. in a real browser
# --------------------------------------------------------------------------
def open_page(drv, page: Path, fragment: str = ""):
    drv.set_window_size(1280, 800)
    drv.get(page.resolve().as_uri() + (f"#{fragment}" if fragment else ""))
    drv.refresh()  # a fragment-only change does not reload; start every test from a fresh page
    drv.get_log("browser")
    drv.get_log("performance")


def cells(drv):
    """(query, key, weight, edge present) of every heatmap cell on screen."""
    return drv.execute_script(
        "return [...document.querySelectorAll('#figure rect.cell')].map(c => "
        "[+c.dataset.q, +c.dataset.k, +c.dataset.w, c.dataset.edge === '1'])")


def assert_cells_match(drv, maps, kind, layer, head):
    got = cells(drv)
    want = maps.weights[kind][layer].mean(0) if head == "mean" else maps.weights[kind][layer, head]
    n_q, n_k = want.shape
    assert len(got) == n_q * n_k
    dense = torch.zeros(n_q, n_k, dtype=torch.float64)
    present = torch.zeros(n_q, n_k, dtype=torch.bool)
    for q, k, w, e in got:
        dense[q, k], present[q, k] = w, e
    assert (dense - want.double()).abs().max() < 1e-6
    assert torch.equal(present, maps.edges[kind])


def click(drv, css):
    drv.find_element(By.CSS_SELECTOR, css).click()


def press(drv, key):
    ActionChains(drv).send_keys(key).perform()


def test_page_loads_offline_without_errors(browser, window_page):
    browser.set_window_size(1280, 800)
    browser.get("about:blank")
    browser.get_log("performance")  # drop what the browser's own start-up page loaded
    browser.get_log("browser")
    browser.get(window_page.resolve().as_uri())
    assert browser.execute_script("return !!window.tgxExplorer")
    severe = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert severe == []
    # DevTools network log: the page itself is the only thing loaded, and nothing from the web.
    urls = []
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    assert urls and all(u == window_page.resolve().as_uri() or u.startswith("data:") for u in urls), urls
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


def test_default_view_shows_the_models_weights(browser, window_page, window_maps):
    open_page(browser, window_page)
    m, n = len(window_maps.tgt_tokens), len(window_maps.src_tokens)
    assert browser.execute_script("return document.querySelectorAll('#figure rect.cell').length") == m * n
    assert_cells_match(browser, window_maps, "cross", 0, 0)
    labels = browser.execute_script(
        "return [...document.querySelectorAll('#figure .lbl.col')].map(t => t.textContent)")
    assert labels == window_maps.src_tokens
    outputs = browser.find_element(By.ID, "outputs").text
    assert " ".join(window_maps.src_tokens) in outputs


def test_switching_kind_layer_and_head_changes_the_cells(browser, window_page, window_maps):
    open_page(browser, window_page)
    click(browser, "#kinds button[data-kind=enc]")
    assert_cells_match(browser, window_maps, "enc", 0, 0)
    Select(browser.find_element(By.ID, "layer")).select_by_value("1")
    assert_cells_match(browser, window_maps, "enc", 1, 0)
    Select(browser.find_element(By.ID, "head")).select_by_value("1")
    assert_cells_match(browser, window_maps, "enc", 1, 1)
    Select(browser.find_element(By.ID, "head")).select_by_value("mean")
    assert_cells_match(browser, window_maps, "enc", 1, "mean")
    # Arrow keys: left/right step heads, up/down step layers; number keys pick the kind.
    browser.find_element(By.ID, "title").click()  # focus leaves the select
    press(browser, "2")
    press(browser, Keys.ARROW_LEFT)
    assert_cells_match(browser, window_maps, "dec", 1, 1)
    press(browser, Keys.ARROW_UP)
    assert_cells_match(browser, window_maps, "dec", 0, 1)
    press(browser, Keys.ARROW_LEFT)
    assert_cells_match(browser, window_maps, "dec", 0, 0)
    # Overview: layers x (heads + mean) thumbnails; a click opens that one as a heatmap.
    click(browser, "#views button[data-view=overview]")
    assert browser.execute_script("return document.querySelectorAll('#figure .thumb').length") == 2 * 3
    click(browser, "#figure .thumb[data-layer='1'][data-head='1']")
    assert browser.execute_script("return tgxExplorer.state.view") == "heatmap"
    assert_cells_match(browser, window_maps, "dec", 1, 1)


def test_graph_view_draws_the_structures_edges_and_hover_highlights_them(browser, window_page, window_maps):
    open_page(browser, window_page, "view=graph")
    for kind in ("cross", "enc", "dec"):
        click(browser, f"#kinds button[data-kind={kind}]")
        edges = browser.execute_script("return [...document.querySelectorAll('#figure line.edge')]"
                                       ".map(e => [+e.dataset.q, +e.dataset.k, +e.dataset.w])")
        mask = window_maps.edges[kind]
        assert len(edges) == int(mask.sum()) < mask.numel()  # a window: far fewer than all pairs
        want = window_maps.weights[kind][0, 0]
        assert all(mask[q, k] and abs(w - float(want[q, k])) < 1e-6 for q, k, w in edges)
    # Hover query node 3 of the decoder: exactly its in-edges light up, every other edge dims.
    node = browser.find_element(By.CSS_SELECTOR, "#figure .node[data-side=query][data-i='3']")
    ActionChains(browser).move_to_element(node).perform()
    hl = browser.execute_script(
        "return [...document.querySelectorAll('#figure line.edge.hl')].map(e => +e.dataset.q)")
    dim = browser.execute_script("return document.querySelectorAll('#figure line.edge.dim').length")
    assert hl == [3] * int(window_maps.edges["dec"][3].sum())
    assert dim == int(window_maps.edges["dec"].sum()) - len(hl)
    # Key node 2 of cross-attention: exactly its out-edges (to target nodes near position 2).
    click(browser, "#kinds button[data-kind=cross]")
    node = browser.find_element(By.CSS_SELECTOR, "#figure .node[data-side=key][data-i='2']")
    ActionChains(browser).move_to_element(node).perform()
    hl = browser.execute_script(
        "return [...document.querySelectorAll('#figure line.edge.hl')].map(e => +e.dataset.k)")
    assert hl == [2] * int(window_maps.edges["cross"][:, 2].sum())
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "title")).perform()
    lit = "return document.querySelectorAll('#figure line.edge.hl, #figure line.edge.dim').length"
    assert browser.execute_script(lit) == 0


def _exports(drv, button):
    drv.execute_script("window.__files = []; window.tgxOnExport = (name, url) => window.__files.push([name, url]);")
    click(drv, button)
    for _ in range(100):
        files = drv.execute_script("return window.__files")
        if files:
            return files
        drv.implicitly_wait(0)
        drv.execute_script("return new Promise(r => setTimeout(r, 50))")
    raise AssertionError(f"{button}: no file was exported")


def test_png_and_svg_export_are_valid_files(browser, window_page, window_maps, tmp_path):
    open_page(browser, window_page)
    [(name, url)] = _exports(browser, "#export-svg")
    assert name == "attention_heatmap_cross_layer0_head0.svg" and url.startswith("data:image/svg+xml")
    svg = urllib.parse.unquote(url.split(",", 1)[1])
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    m, n = len(window_maps.tgt_tokens), len(window_maps.src_tokens)
    assert len(root.findall(".//{http://www.w3.org/2000/svg}rect[@class='cell']")) == m * n
    width, height = int(root.get("width")), int(root.get("height"))
    [(name, url)] = _exports(browser, "#export-png")
    assert name.endswith(".png") and url.startswith("data:image/png;base64,")
    data = base64.b64decode(url.split(",", 1)[1])
    assert data[:8] == PNG_MAGIC
    with Image.open(BytesIO(data)) as im:
        assert im.size == (2 * width, 2 * height)
        im.load()
        assert len(im.convert("RGB").getcolors(1 << 20)) > 10  # the picture was drawn, not a blank canvas
    # Without the hook the buttons download real files (through blob: URLs).
    folder = tmp_path / "downloads"
    folder.mkdir()
    browser.execute_script("window.tgxOnExport = undefined")
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
    click(browser, "#export-svg")
    click(browser, "#export-png")
    want = {"attention_heatmap_cross_layer0_head0.svg", "attention_heatmap_cross_layer0_head0.png"}
    for _ in range(100):
        if {p.name for p in folder.iterdir()} >= want:
            break
        browser.execute_script("return new Promise(r => setTimeout(r, 50))")
    assert ET.parse(folder / "attention_heatmap_cross_layer0_head0.svg").getroot().tag.endswith("svg")
    assert (folder / "attention_heatmap_cross_layer0_head0.png").read_bytes()[:8] == PNG_MAGIC
    # The graph view exports too (its own <style> travels with it).
    click(browser, "#views button[data-view=graph]")
    [(name, url)] = _exports(browser, "#export-svg")
    root = ET.fromstring(urllib.parse.unquote(url.split(",", 1)[1]))
    assert name.startswith("attention_graph_cross") and root.find("{http://www.w3.org/2000/svg}style") is not None
    lines = root.findall(".//{http://www.w3.org/2000/svg}line[@class='edge']")
    assert len(lines) == int(window_maps.edges["cross"].sum())


def test_run_page_slider_steps_through_the_epochs(browser, window_run, tmp_path):
    page = explorer.html_for_run(window_run, tmp_path / "run.html")
    snaps = viz.load_snapshots(window_run)
    assert [e for e, _ in snaps] == [1, 2]
    open_page(browser, page)
    assert browser.find_element(By.ID, "frame-label").text == "epoch 2"   # opens on the last epoch
    assert_cells_match(browser, snaps[1][1], "cross", 0, 0)
    browser.execute_script("const s = document.getElementById('frame'); s.value = 0; "
                           "s.dispatchEvent(new Event('input', {bubbles: true}));")
    assert browser.find_element(By.ID, "frame-label").text == "epoch 1"
    assert_cells_match(browser, snaps[0][1], "cross", 0, 0)
    press(browser, "]")
    assert_cells_match(browser, snaps[1][1], "cross", 0, 0)
    assert browser.get_log("browser") == []


def test_universal_transformer_page_shows_act_steps(browser, tmp_path):
    run = tmp_path / "ut"
    cfg = tiny_cfg(**{"model.kind": "universal", "model.max_depth": 4, "train.max_epochs": 1})
    Trainer(cfg, run, quiet=True).fit()
    page = explorer.html_for_checkpoint(run / "best.pt", tmp_path / "ut.html", example=0)
    model, cfg, vocabs, _ = load_trained(run / "best.pt")
    maps = viz.example_attention(model, build_experiment(cfg, vocabs), 0, "valid")
    steps = {side: model.act_stats[side].steps.tolist() for side in ("enc", "dec")}
    open_page(browser, page, "view=act")
    bars = browser.execute_script(
        "return [...document.querySelectorAll('#figure rect.act-bar')].map(b => [b.dataset.side, +b.dataset.steps])")
    assert [s for side, s in bars if side == "enc"] == steps["enc"]
    assert [s for side, s in bars if side == "dec"] == steps["dec"]
    summary = browser.find_element(By.ID, "act-summary").text
    assert summary.startswith("encoder: mean") and "(max depth 4)" in summary
    assert browser.find_element(By.ID, "layer-word").text == "step"
    click(browser, "#views button[data-view=heatmap]")
    assert_cells_match(browser, maps, "cross", 0, 0)


def test_mean_aggregator_page_shows_fixed_weights_and_says_so(browser, tmp_path):
    run = tmp_path / "mean"
    Trainer(tiny_cfg(**{"model.aggregator": "mean", "train.max_epochs": 1}), run, quiet=True).fit()
    page = explorer.html_for_checkpoint(run / "best.pt", tmp_path / "mean.html", example=2)
    open_page(browser, page)
    assert "fixed by the graph structure" in browser.find_element(By.ID, "notes").text
    got = cells(browser)
    rows = {}
    for q, _, w, e in got:
        if e:
            rows.setdefault(q, []).append(w)
    for ws in rows.values():  # every in-edge of a node weighs 1 / in-degree
        assert all(abs(w - 1 / len(ws)) < 1e-6 for w in ws)


def test_long_sentences_stay_legible_and_narrow_windows_fit(browser, tmp_path):
    maps = random_maps(40, 39, layers=1, heads=2)
    page = explorer.write_html(maps, tmp_path / "long.html", title="40 tokens", output_text="x")
    open_page(browser, page, "kind=enc")
    assert len(cells(browser)) == 40 * 40
    # Neighbouring column (rotated) and row labels never overlap.
    boxes = browser.execute_script(
        "const b = s => [...document.querySelectorAll(s)].map(t => t.getBoundingClientRect())"
        ".map(r => [r.left, r.right, r.top, r.bottom]); return [b('#figure .lbl.col'), b('#figure .lbl.row')];")
    cols, rows = boxes
    assert all(a[1] <= b[0] + 0.5 for a, b in zip(cols, cols[1:]))
    assert all(a[3] <= b[2] + 0.5 for a, b in zip(rows, rows[1:]))
    font = browser.execute_script("return +getComputedStyle(document.querySelector('#figure .lbl.col')).fontSize"
                                  ".replace('px', '')")
    assert font >= 10
    # A narrow window: the page never needs sideways scrolling (the figure scrolls inside its pane).
    browser.set_window_size(480, 800)
    browser.execute_script("window.dispatchEvent(new Event('resize'))")
    browser.execute_script("return new Promise(r => setTimeout(r, 300))")
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    side, pane = (browser.find_element(By.ID, i).rect for i in ("side", "pane"))
    assert side["y"] >= pane["y"] + pane["height"] - 1   # the side panel moved below the picture
    assert browser.get_log("browser") == []


# --------------------------------------------------------------------------
# 3. the command line
# --------------------------------------------------------------------------
def test_visualize_command_writes_the_explorer(window_run, window_maps, tmp_path, capsys):
    from transformer_graph.cli.visualize import main

    out = tmp_path / "page.html"
    assert main(["--checkpoint", str(window_run / "best.pt"), "--example", "1", "--html", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    data = embedded_data(out)
    assert data == embedded_data(explorer.html_for_checkpoint(window_run / "best.pt", tmp_path / "same.html",
                                                              example=1))
    run_page = tmp_path / "epochs.html"
    assert main(["--animate", str(window_run), "--html", str(run_page)]) == 0 and run_page.stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--example", "99"], "99"),                              # index out of range
    (["--example", "1", "--layer", "7"], "7"),                # no such layer
    (["--text", "   "], "text"),                              # tokenises to nothing
])
def test_visualize_command_bad_input_is_one_error_line(window_run, tmp_path, capsys, argv, message):
    from transformer_graph.cli.visualize import main

    out = tmp_path / "page.html"
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(window_run / "best.pt"), "--html", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_visualize_command_missing_output_directory(window_run, tmp_path, capsys):
    from transformer_graph.cli.visualize import main

    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(window_run / "best.pt"), "--example", "1",
              "--html", str(tmp_path / "nowhere" / "page.html")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "nowhere" in err[0]
