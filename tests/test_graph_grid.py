"""bench.graph_grid: the aggregator x structure x positional-encoding grid, on a tiny PATTERN."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench import graph_grid

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.graphs_train=16", "data.graphs_valid=8", "data.graphs_test=8", "data.batch_size=8",
        "model.layers=1", "model.d_model=16", "model.heads=2", "model.d_ff=16", "train.max_epochs=1",
        "train.threads=1"]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.chdir(ROOT)
        # 2 cells x 2 seeds (each run is a tg-train process of its own: seconds each)
        argv = ["--task", "pattern", "--aggregators", "attention,mean", "--structures", "sparse",
                "--encodings", "pe", "--seeds", "1", "2", "--runs", str(root / "runs"), *sets(TINY)]
        return root, argv, graph_grid.main(argv)


def test_every_cell_trains_each_seed_and_reports_the_benchmark_metric(grid):
    root, _, results = grid
    assert [r["cell"] for r in results] == ["attention-sparse-pe", "mean-sparse-pe"]
    for r in results:
        assert set(r["per_seed"]) == {"1", "2"}
        acc = r["summary"]["class_weighted_acc"]
        assert 0 <= acc["mean"] <= 100 and len(acc["values"]) == 2
        for seed in ("1", "2"):
            run = root / "runs" / r["cell"] / f"seed{seed}"
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert cfg["model"]["aggregator"] == r["aggregator"] and cfg["train"]["seed"] == int(seed)
            assert cfg["model"]["pe_dim"] == 2 and cfg["model"]["graph_structure"] == "sparse"
    # the mean aggregator has no query/key projections: fewer parameters than attention
    params = {r["cell"]: r["summary"]["parameters"]["mean"] for r in results}
    assert params["mean-sparse-pe"] < params["attention-sparse-pe"]
    text = (root / "runs" / "GRID.md").read_text()
    assert "| attention | sparse | pe |" in text and "GatedGCN | 84.480 ± 0.122" in text
    saved = json.loads((root / "runs" / "grid.json").read_text())
    assert [c["cell"] for c in saved["cells"]] == [r["cell"] for r in results]


def test_running_it_again_resumes_finished_cells_without_training(grid, monkeypatch):
    root, argv, results = grid
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    monkeypatch.chdir(ROOT)
    again = graph_grid.main(argv)
    assert [r["summary"]["class_weighted_acc"]["values"] for r in again] == \
        [r["summary"]["class_weighted_acc"]["values"] for r in results]


def test_cells_change_the_block_the_graph_and_the_encodings_only():
    assert graph_grid.Cell("gat", "sparse", "nope").overrides(2) == [
        "model.aggregator=gat", "model.graph_structure=sparse", "model.pe_dim=0"]
    assert graph_grid.Cell("attention", "complete", "pe").overrides(4) == [
        "model.aggregator=attention", "model.graph_structure=complete", "model.pe_dim=4", "model.self_loops=true"]


def test_params_gives_every_aggregator_the_width_of_the_same_budget():
    # configs/pattern.yaml: attention at width 56 has 105,184 parameters; mean, gat and sage have
    # no query/key projections and need width 64 (multiples of the 8 heads, d_ff = 2 x width).
    from transformer_graph.config import load_config

    counts = {}
    for agg in ("attention", "mean", "gat", "sage"):
        cfg = load_config(ROOT / "configs" / "pattern.yaml", [f"model.aggregator={agg}"])
        d, ff, n = graph_grid.matched_width(cfg, 105_184)
        assert d % cfg.model.heads == 0 and ff == 2 * d
        wider = graph_grid.parameter_count(load_config(ROOT / "configs" / "pattern.yaml", [
            f"model.aggregator={agg}", f"model.d_model={d + 8}", f"model.d_ff={2 * d + 16}"]))
        narrower = graph_grid.parameter_count(load_config(ROOT / "configs" / "pattern.yaml", [
            f"model.aggregator={agg}", f"model.d_model={d - 8}", f"model.d_ff={2 * d - 16}"]))
        assert abs(n - 105_184) <= min(abs(wider - 105_184), abs(narrower - 105_184))  # the nearest width
        counts[agg] = (d, n)
    assert counts["attention"] == (56, 105_184)
    assert {counts[a][0] for a in ("mean", "gat", "sage")} == {64}
    assert all(abs(n - 105_184) / 105_184 < 0.02 for _, n in counts.values())


@pytest.mark.parametrize("extra, message", [
    (["--params", "0"], "--params: expected a positive number of parameters, got 0"),
    (["--threads", "0"], "--threads"),
    (["--aggregators", "attention,gcn"], "--aggregators 'attention,gcn': expected a comma-separated list"),
    (["--seeds", "1", "1"], "--seeds: [1, 1] repeats a seed"),
    (["--pe-dim", "0"], "--pe-dim: expected a positive integer, got 0"),
    (["--set", "model.heads=5"], "model.heads"),
    (["--task", "cluster"], "trains data.task 'pattern', not --task 'cluster'"),
])
def test_bad_options_are_one_error_line_before_anything_trains(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(ROOT)
    argv = ["--runs", str(tmp_path / "runs"), "--config", "configs/pattern.yaml", *extra]
    with pytest.raises(SystemExit) as exit_:
        graph_grid.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_report_files_elsewhere_are_not_replaced_without_force(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "docs"
    out.mkdir()
    (out / "GRID.md").write_text("mine\n")
    with pytest.raises(SystemExit):
        graph_grid.main(["--runs", str(tmp_path / "runs"), "--out", str(out)])
    assert "GRID.md" in capsys.readouterr().err and (out / "GRID.md").read_text() == "mine\n"
