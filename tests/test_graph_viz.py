"""Attention pictures and the HTML explorer of node classifiers (transformer_graph.viz.node_attention).

1. The weights: what a GraphEncoder reports per layer and head, in its attention graph's edge order, is
   each block's own (attention and GAT: a direct softmax computed here from the layer's projections;
   mean and SAGE: 1 / in-degree), sums to 1 over every node's in-edges, and asking for it changes
   neither the outputs nor the state_dict.
2. Drawing: the spring layout is seeded, large graphs keep each node's strongest in-edges only, a tiny
   trained karate model gets one PNG per layer through tg-visualize, and bad input is one error line.
3. The page: it embeds the graph (edges, weights, positions, classes, predictions, the split's nodes);
   in headless Chromium (skipping as tests/test_html.py does, when none is installed) the graph view
   draws exactly the edges it should and hovering or clicking a node highlights all of its in-edges.

Tiny models only: karate (34 nodes) trained for 3 epochs, untrained encoders elsewhere, one thread.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_html import embedded_data, open_page
from transformer_graph.cli.visualize import main as visualize
from transformer_graph.config import load_config
from transformer_graph.experiment import build_graph_model, build_node_experiment, graph_data_info, load_trained_nodes
from transformer_graph.message_passing.base import set_engine
from transformer_graph.train.trainer import Trainer
from transformer_graph.viz import html as explorer
from transformer_graph.viz import node_attention as nviz

ROOT = Path(__file__).resolve().parents[1]
KARATE = ROOT / "configs" / "karate.yaml"
PATTERN = ROOT / "configs" / "pattern.yaml"
TINY_PATTERN = ["data.graphs_train=1", "data.graphs_valid=2", "data.graphs_test=1", "model.layers=2",
                "model.d_model=16", "model.heads=4", "model.d_ff=32"]

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def graph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # PATTERN graphs: never the user's cache


def untrained(config: Path, *overrides: str, engine: str = "torch"):
    """(experiment, an untrained encoder in eval mode) of ``config`` with ``overrides``."""
    cfg = load_config(config, ["train.threads=1", *overrides])
    exp = build_node_experiment(cfg)
    model = build_graph_model(cfg.model, graph_data_info(exp.dataset))
    set_engine(model, engine)
    return exp, model.eval()


@pytest.fixture(scope="module")
def karate_run(tmp_path_factory) -> Path:
    """configs/karate.yaml for 3 epochs (a few seconds)."""
    run = tmp_path_factory.mktemp("karate") / "run"
    Trainer(load_config(KARATE, ["train.max_epochs=3", "train.threads=1"]), run, quiet=True).fit()
    return run


# --------------------------------------------------------------------------
# 1. the weights
# --------------------------------------------------------------------------
def direct_weights(block, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int) -> torch.Tensor:
    """(heads, edges) softmax of ``block``'s scores over each node's in-edges, as a dense masked softmax."""
    q, k, _ = block.project_qkv(x)
    if type(block).__name__ == "GATBlock":   # additive: LeakyReLU(a_q . W h_i + a_k . W h_j)
        scores = torch.nn.functional.leaky_relu(q[dst] + k[src], block.negative_slope).squeeze(-1)
    else:                                    # scaled dot product q_i . k_j / sqrt(d_k)
        scores = (q[dst] * k[src]).sum(-1) / math.sqrt(q.shape[-1])
    dense = torch.full((block.heads, n, n), float("-inf"), dtype=scores.dtype)
    dense[:, dst, src] = scores.t()
    return dense.softmax(-1)[:, dst, src]


@pytest.mark.parametrize("aggregator, structure", [("attention", "sparse"), ("attention", "global"),
                                                   ("gat", "complete")])
def test_attention_weights_are_the_blocks_softmax_in_edge_order(aggregator, structure, engine):
    exp, model = untrained(KARATE, f"model.aggregator={aggregator}", f"model.graph_structure={structure}",
                           "model.self_loops=true", engine=engine)
    att = nviz.node_attention(model, exp, 0, "valid")
    batch = exp.batch(exp.graphs("valid"))
    src, dst = batch.graph.edges()
    assert torch.equal(att.src, src) and torch.equal(att.dst, dst)
    assert att.weights.shape == (2, 4, len(src))
    with torch.no_grad():
        x = model.embed_nodes(batch)
        for layer, got in zip(model.encoder.layers, att.weights):
            want = direct_weights(layer.self_attn, layer.res_attn.inp(x), src, dst, batch.num_nodes)
            torch.testing.assert_close(got, want.float(), rtol=0, atol=1e-5)
            x, _ = layer(batch.graph, x)
    per_node = torch.zeros(2, 4, batch.num_nodes).index_add_(2, att.dst, att.weights)
    torch.testing.assert_close(per_node, torch.ones_like(per_node))


@pytest.mark.parametrize("aggregator", ["mean", "sage"])
def test_mean_and_sage_weights_are_one_over_the_in_degree(aggregator):
    exp, model = untrained(KARATE, f"model.aggregator={aggregator}", "model.graph_structure=global")
    att = nviz.node_attention(model, exp, 0, "test")
    indeg = torch.bincount(att.dst, minlength=att.num_nodes).float()
    assert att.num_global == 1 and torch.equal(att.weights, (1 / indeg[att.dst]).expand_as(att.weights))
    assert all(att.same_heads(layer) for layer in range(att.num_layers))


def test_asking_for_the_weights_changes_neither_outputs_nor_state(karate_run):
    model, cfg, _, _ = load_trained_nodes(karate_run / "best.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exp = build_node_experiment(cfg)
    batch = exp.batch(exp.graphs("test"))
    with torch.no_grad():
        plain = model(batch)
        logits, weights = model(batch, return_attention=True)
    assert torch.equal(plain, logits) and len(weights["enc"]) == cfg.model.layers
    att = nviz.node_attention(model, exp, 0, "test")
    assert torch.equal(att.preds, plain.argmax(1)) and torch.equal(att.scored, batch.masks["test"])
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------
# 2. drawing
# --------------------------------------------------------------------------
def test_spring_layout_is_seeded_and_global_nodes_sit_above():
    exp, model = untrained(KARATE, "model.graph_structure=global", "model.global_nodes=2")
    att = nviz.node_attention(model, exp, 0, "valid")
    pos = nviz.spring_positions(att)
    assert pos.shape == (36, 2) and np.array_equal(pos, nviz.spring_positions(att))   # deterministic
    real, glob = pos[:34], pos[34:]
    assert real[:, 0].min() == pytest.approx(0) and real[:, 0].max() == pytest.approx(1)
    assert real[:, 1].min() == pytest.approx(0) and real[:, 1].max() <= 1 + 1e-9   # the longer axis is x
    assert np.allclose(glob[:, 1], real[:, 1].max() + nviz.GLOBAL_GAP) and glob[0, 0] < glob[1, 0]
    assert not np.array_equal(pos, nviz.spring_positions(att, seed=1))


def test_large_graphs_draw_each_nodes_strongest_in_edges():
    exp, model = untrained(KARATE, "model.graph_structure=complete", "model.self_loops=true")
    att = nviz.node_attention(model, exp, 0, "valid")
    assert int((att.src != att.dst).sum()) == 34 * 33 > nviz.EDGE_BUDGET
    assert nviz.resolve_top_k(att) == nviz.TOP_K and nviz.resolve_top_k(att, 0) is None
    w = att.head_weights(1, "mean")
    idx = nviz.drawn_edges(att, w, 3)
    assert len(idx) == 34 * 3 and not (att.src[idx] == att.dst[idx]).any()
    for node in range(34):
        mine = ((att.dst == node) & (att.src != node)).nonzero().flatten()
        strongest = set(mine[w[mine].argsort(descending=True)[:3]].tolist())
        assert set(idx[att.dst[idx].numpy() == node].tolist()) == strongest
    assert len(nviz.drawn_edges(att, w, None)) == 34 * 33
    # the friendships alone (156 edges) are drawn in full
    exp, model = untrained(KARATE)
    assert nviz.resolve_top_k(nviz.node_attention(model, exp, 0, "valid")) is None


def test_a_pattern_graph_keeps_legible(tmp_path):
    exp, model = untrained(PATTERN, *TINY_PATTERN)
    att = nviz.node_attention(model, exp, 1, "valid")
    assert att.num_real > 60 and len(att.src) > 1000 and not att.transductive and bool(att.scored.all())
    fig = nviz.graph_figure(att, nviz.spring_positions(att), 0)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 5   # mean over heads + 4 heads
    assert all("top 3 in-edges per node" in ax.get_title() for ax in panels)
    drawn = panels[0].collections[0].get_segments()   # the half-edges: 3 per node
    assert len(drawn) == 3 * att.num_nodes


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_visualize_draws_one_png_per_layer_of_a_karate_model(karate_run, tmp_path, capsys):
    out = tmp_path / "figs"
    assert visualize(["--checkpoint", str(karate_run / "best.pt"), "--example", "0", "--split", "test",
                      "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "karate: the graph, 34 nodes, 156 directed edges; test nodes right:" in printed
    assert sorted(p.name for p in out.iterdir()) == ["graph_layer0.png", "graph_layer1.png"]
    w, h = png_size(out / "graph_layer0.png")
    assert w > 1000 and h > 500   # a 2 x 3 grid: the mean and 4 heads
    assert visualize(["--checkpoint", str(karate_run / "best.pt"), "--example", "0", "--layer", "1",
                      "--out", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["graph_layer1.png"]


def test_a_mean_model_gets_one_panel_of_its_fixed_weights(tmp_path):
    exp, model = untrained(KARATE, "model.aggregator=mean", "model.graph_structure=global")
    att = nviz.node_attention(model, exp, 0, "train")
    fig = nviz.graph_figure(att, nviz.spring_positions(att), 0)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["every head (identical)"]
    [path] = nviz.write_graph_figures(att, tmp_path, layers=[1])
    assert path.name == "graph_layer1.png" and png_size(path)[0] > 300


@pytest.mark.parametrize("argv, message", [
    (["--text", "a sentence", "--out", "{out}"], "--text: .* is a node-classification checkpoint"),
    (["--example", "1", "--out", "{out}"], "example: index 1 is out of range for the valid split: karate is one "
                                           "graph"),
    (["--example", "0", "--layer", "2", "--out", "{out}"], "layer: 2 does not exist; the model has 2 layer"),
    (["--example", "0", "--kind", "enc", "--out", "{out}"], "--kind: .* one attention kind"),
    (["--example", "0", "--top-k", "-1", "--out", "{out}"], "--top-k: expected an integer >= 0, got -1"),
    (["--example", "3", "--html", "{out}.html"], "example: index 3 is out of range"),
    (["--text", "a", "--html", "{out}.html"], "text: .* its input is a graph, not a sentence"),
    (["--example", "0", "--layer", "5", "--html", "{out}.html"], "layers: layer 5 does not exist for "
                                                                  "self-attention on the graph"),
])
def test_bad_input_is_one_error_line_before_the_model_runs(karate_run, tmp_path, capsys, monkeypatch, argv, message):
    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(nviz, "node_attention", no_work)
    out = tmp_path / "figs"
    argv = [a.replace("{out}", str(out)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        visualize(["--checkpoint", str(karate_run / "best.pt"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]
    assert not any(out.glob("*.png")) and not Path(f"{out}.html").exists()


def test_top_k_on_a_sequence_checkpoint_is_refused(tmp_path, capsys):
    from tests.test_html import tiny_cfg   # the explorer tests' copy model, here for one epoch

    run = tmp_path / "copy"
    Trainer(tiny_cfg(**{"train.max_epochs": 1, "viz.example": None}), run, quiet=True).fit()
    for target in (["--out", str(tmp_path / "figs")], ["--html", str(tmp_path / "p.html")]):
        with pytest.raises(SystemExit) as exc:
            visualize(["--checkpoint", str(run / "best.pt"), "--example", "0", "--top-k", "2", *target])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "applies to node-classification checkpoints" in err[0]
    assert not (tmp_path / "p.html").exists() and not list((tmp_path / "figs").glob("*.png"))


def test_animate_on_a_node_run_says_what_to_do_instead(karate_run, tmp_path, capsys):
    for target in (["--out", str(tmp_path / "a.gif")], ["--html", str(tmp_path / "a.html")]):
        with pytest.raises(SystemExit) as exc:
            visualize(["--animate", str(karate_run), *target])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1
        assert "is a node-classification run (data.task 'karate')" in err[0]
        assert f"tg-visualize --checkpoint {karate_run / 'best.pt'} --example 0" in err[0]
    assert not (tmp_path / "a.gif").exists() and not (tmp_path / "a.html").exists()


# --------------------------------------------------------------------------
# 3. the page
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def karate_page(karate_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "karate.html"
    assert visualize(["--checkpoint", str(karate_run / "best.pt"), "--example", "0", "--split", "test",
                      "--html", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def karate_att(karate_run):
    return nviz.load_node_attention(karate_run / "best.pt", 0, "test")[0]


def test_page_embeds_the_graph_its_layout_and_weights(karate_page, karate_att):
    text = karate_page.read_text(encoding="utf-8")
    assert re.findall(r"https?://[^\s\"'<>]+", text) == ["http://www.w3.org/2000/svg"]   # offline
    data = embedded_data(karate_page)
    [frame] = data["frames"]
    assert list(frame["kinds"]) == ["node"]
    node, graph = frame["kinds"]["node"], frame["graph"]
    assert node["src"] == karate_att.src.tolist() and node["dst"] == karate_att.dst.tolist()
    assert node["layers"] == [0, 1] and node["heads"] == 4 and node["rows"] == 34
    got = torch.tensor(node["weights"], dtype=torch.float64)
    assert (got - karate_att.weights.double()).abs().max() < 1e-6
    pos = torch.tensor(graph["pos"]).view(-1, 2)
    assert (pos - torch.from_numpy(nviz.spring_positions(karate_att))).abs().max() < 1e-4
    assert graph["labels"] == karate_att.labels.tolist() and graph["preds"] == karate_att.preds.tolist()
    assert graph["scored"].count("1") == 24 and graph["split"] == "test" and graph["transductive"]
    assert graph["top_k"] == 0 and graph["names"][:2] == ["0", "1"] and graph["nodes"] == 34
    right, total = karate_att.correct()
    assert dict(data["outputs"])["accuracy on the test nodes"].startswith(f"{right} / {total}")
    assert data["model"]["structure"] == {"node": "sparse (the graph's edges and self loops)"}


def graph_edges(drv) -> list[list[float]]:
    return drv.execute_script("return [...document.querySelectorAll('#figure g.edges line.edge')]"
                              ".map(e => [+e.dataset.q, +e.dataset.k, +e.dataset.w])")


def highlighted(drv) -> list[list[float]]:
    return drv.execute_script("return [...document.querySelectorAll('#figure line.edge.hl')]"
                              ".map(e => [+e.dataset.q, +e.dataset.k, +e.dataset.w])")


def test_graph_view_draws_the_edges_and_a_node_highlights_its_in_edges(browser, karate_page, karate_att):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    open_page(browser, karate_page)
    browser.refresh()   # once more, this time with the network log kept: the page loads nothing
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert urls and all(u == karate_page.resolve().as_uri() or u.startswith("data:") for u in urls), urls
    assert browser.execute_script("return tgxExplorer.state.view") == "graph"
    assert browser.execute_script("return document.querySelector('#figure svg').dataset.layout") == "nodes"
    # Every friendship in both directions (156 half-edges; self loops are rings), with the model's weights.
    mean0 = karate_att.head_weights(0, "mean")
    edges = graph_edges(browser)
    assert len(edges) == 156
    pairs = {(int(s), int(d)): float(w) for s, d, w in zip(karate_att.src, karate_att.dst, mean0)}
    assert all(abs(pairs[(int(k), int(q))] - w) < 1e-6 for q, k, w in edges)
    assert browser.execute_script("return document.querySelectorAll('#figure .node').length") == 34
    assert browser.execute_script("return document.querySelectorAll('#figure circle.selfloop').length") == 34
    wrong = int((karate_att.preds != karate_att.labels).sum())
    assert browser.execute_script("return document.querySelectorAll('#figure .shape.wrong').length") == wrong
    # Hover node 33: all of its in-edges light up (its 17 friends), every other edge dims.
    ActionChains(browser).move_to_element(browser.find_element(By.CSS_SELECTOR, "#figure .node[data-i='33']")).perform()
    hl = highlighted(browser)
    friends = karate_att.src[(karate_att.dst == 33) & (karate_att.src != 33)].tolist()
    assert sorted(int(k) for _, k, _ in hl) == sorted(friends) and {q for q, _, _ in hl} == {33}
    assert all(abs(pairs[(int(k), 33)] - w) < 1e-6 for _, k, w in hl)
    assert browser.execute_script("return document.querySelectorAll('#figure g.edges line.edge.dim').length") == 156
    assert "node 33" in browser.find_element(By.ID, "readout").text
    # Click node 0 to pin it; the pin survives a change of head (same node, that head's weights).
    browser.find_element(By.CSS_SELECTOR, "#figure .node[data-i='0']").click()
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "title")).perform()
    assert browser.execute_script("return tgxExplorer.state.pin") == {"side": "node", "i": 0}
    Select(browser.find_element(By.ID, "head")).select_by_value("2")
    hl = highlighted(browser)
    head2 = karate_att.head_weights(0, 2)
    want = {int(s): float(w) for s, d, w in zip(karate_att.src, karate_att.dst, head2) if d == 0 and s != 0}
    assert {int(k): w for _, k, w in hl}.keys() == want.keys()
    assert all(abs(want[int(k)] - w) < 1e-6 for _, k, w in hl)
    # Escape unpins: nothing highlighted, nothing dimmed.
    browser.find_element(By.ID, "title").click()   # focus leaves the select
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert highlighted(browser) == [] and browser.execute_script(
        "return document.querySelectorAll('#figure line.edge.dim').length") == 0
    # Top 1 per node: one half-edge per node; the heatmap of a 34-node graph has 34 x 34 cells.
    Select(browser.find_element(By.ID, "topk")).select_by_value("1")
    assert len(graph_edges(browser)) == 34
    browser.find_element(By.CSS_SELECTOR, "#views button[data-view=heatmap]").click()
    assert browser.execute_script("return document.querySelectorAll('#figure rect.cell').length") == 34 * 34
    assert browser.execute_script("return document.getElementById('topk-group').hidden")
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []


def test_a_large_graphs_page_draws_top_k_and_offers_only_the_graph_view(browser, tmp_path):
    exp, model = untrained(PATTERN, *TINY_PATTERN, "model.graph_structure=global")
    att = nviz.node_attention(model, exp, 1, "valid")
    cfg = exp.cfg
    page = explorer.write_node_html(att, tmp_path / "pattern.html", title="pattern",
                                    model=explorer.describe_node_model(cfg), notes=explorer.node_notes(cfg, att, None))
    data = embedded_data(page)
    assert data["frames"][0]["graph"]["top_k"] == nviz.TOP_K and data["frames"][0]["graph"]["global"] == 1
    assert any("strongest in-edge" in n for n in data["notes"])
    open_page(browser, page)
    views = browser.execute_script("return [...document.querySelectorAll('#views button')].map(b => b.dataset.view)")
    assert views == ["graph"]   # no N x N heatmap of a graph this size
    non_self = [(att.dst == i) & (att.src != i) for i in range(att.num_nodes)]
    assert len(graph_edges(browser)) == sum(min(nviz.TOP_K, int(m.sum())) for m in non_self)
    assert browser.execute_script("return document.querySelectorAll('#figure .node rect.shape').length") == 1
    # A click on node 2 (dispatched: in a crowded picture another node may cover its centre) pins all of
    # its in-edges, not only the 3 drawn.
    browser.execute_script("document.querySelector(\"#figure .node[data-i='2'] .shape\")"
                           ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    hl = highlighted(browser)
    assert len(hl) == int(non_self[2].sum()) > nviz.TOP_K and {q for q, _, _ in hl} == {2}
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
