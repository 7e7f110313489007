"""The ablation tool (python -m bench.ablation): its grid, one real (tiny) row through the Trainer,
its reports, and where it writes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench.ablation as ablation
from bench.ablation import (INTERPRETATION_END, INTERPRETATION_START, PLACEHOLDER, Row, grid, main, per_task,
                            row_config, run_row, select_rows, task_overrides, write_reports)
from transformer_graph.experiment import graph_spec, load_trained
from transformer_graph.graphs.structures import Structure

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

TINY = ["model.layers=1", "model.d_model=32", "model.d_ff=64", "model.heads=2", "data.train_size=64",
        "data.valid_size=8", "data.test_size=8", "data.batch_size=16", "data.length_mean=6",
        "data.alphabet=abcdefgh", "optim.warmup=10"]


def test_grid_has_the_issues_rows_for_every_task():
    rows = grid(["copy", "sort"])
    assert len(rows) == 12
    copy = [(r.aggregator, r.structure) for r in rows if r.task == "copy"]
    assert copy == [("attention", "complete"), ("mean", "complete"), ("gat", "complete"),
                    ("attention", "window w=3"), ("attention", "window w=8"),
                    ("attention", "global+window w=3 g=1")]
    assert len({r.slug for r in rows}) == 12
    with pytest.raises(ValueError, match="--tasks: unknown task 'cpy'"):
        grid(["cpy"])


@pytest.mark.parametrize("restrict_cross", [False, True])
def test_every_row_makes_a_valid_config_with_the_intended_graphs(restrict_cross):
    for row in grid(["copy", "sort", "multi30k"], restrict_cross):
        cfg = row_config(row, budget=7, threads=1, extra=[], config_dir=ROOT / "configs")
        assert cfg.train.max_time == 7 and cfg.train.threads == 1
        assert cfg.model.aggregator == row.aggregator
        assert cfg.data.task == row.task
        spec = graph_spec(cfg.model)
        if row.structure == "complete":
            assert (spec.enc, spec.dec, spec.cross) == ("complete", "causal", "complete")
            continue
        assert isinstance(spec.enc, Structure) and spec.enc.mode == "self"
        assert isinstance(spec.dec, Structure) and spec.dec.mode == "causal"
        assert spec.enc.window == (8 if "w=8" in row.structure else 3)
        if restrict_cross:
            assert isinstance(spec.cross, Structure) and spec.cross.mode == "aligned"
        else:
            assert spec.cross == "complete"


def test_one_tiny_row_end_to_end(tmp_path):
    row = Row("copy", "gat", "window w=3", ("model.aggregator=gat", "model.structure.enc=window",
                                            "model.structure.dec=window", "model.structure.window=3"))
    r = run_row(row, budget=1.0, threads=1, runs_dir=tmp_path, extra=TINY, config_dir=ROOT / "configs")
    assert r["stopped_by"] == "max_time=1.0s"
    assert r["steps"] >= 1 and r["train_tokens"] > 0
    assert (tmp_path / row.slug / "config.yaml").exists()
    model, cfg, _, _ = load_trained(tmp_path / row.slug / "last.pt")   # what the row trained
    assert cfg.model.aggregator == "gat" and cfg.train.max_time == 1.0
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert 0 <= r["valid_acc"] <= 1 and 0 <= r["valid_exact_match"] <= 1
    assert r["decoded_sentences"] == 8
    by_kind = r["edges_per_token_by_kind"]
    assert r["edges_per_token"] == pytest.approx(sum(by_kind.values()))
    assert by_kind["enc"] < by_kind["cross"]        # windowed encoder vs complete cross-attention
    assert r["wall_s"] >= r["train_time_s"] > 0


def fake_result(task, agg, structure, **kw):
    base = dict(task=task, aggregator=agg, structure=structure, overrides=[], budget_s=5.0, params=1234,
                steps=10, train_tokens_per_s=999.0, edges_per_token=12.5, valid_acc=0.5, wall_s=7.0)
    return {**base, **kw}


def test_reports_are_written_and_keep_the_interpretation(tmp_path):
    results = [fake_result("copy", "attention", "complete", valid_exact_match=0.25),
               fake_result("copy", "mean", "complete", valid_exact_match=0.0, train_tokens_per_s=None),
               fake_result("multi30k", "gat", "complete", valid_bleu=12.34)]
    meta = {"budget_s": 5.0, "threads": 1, "restrict_cross": False, "machine": "m", "torch": "t",
            "command": "python -m bench.ablation --budget 5"}
    paths = write_reports(results, meta, tmp_path)
    md = paths["md"].read_text()
    assert "| copy | attention | complete | 50.0% | 25.0% | 999 | 12.50 | 1,234 | 10 | 7 |" in md
    assert "| copy | mean | complete | 50.0% | 0.0% | – |" in md
    assert "BLEU 12.34" in md and "### multi30k" in md and "![ablation](ablation.png)" in md
    assert PLACEHOLDER in md
    assert paths["png"].stat().st_size > 1000
    assert json.loads(paths["json"].read_text())["results"][2]["valid_bleu"] == 12.34
    # The lead writes the interpretation; regenerating the tables keeps it.
    paths["md"].write_text(md.replace(PLACEHOLDER, "Attention wins."))
    write_reports(results[:1], meta, tmp_path)
    md = paths["md"].read_text()
    assert f"{INTERPRETATION_START}\nAttention wins.\n{INTERPRETATION_END}" in md
    assert "### multi30k" not in md


def test_cli_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        main(["--tasks", "copy,nope", "--out", "/nonexistent"])
    assert "unknown task 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--budget", "0"])


def test_step_budget_trains_every_row_the_same_number_of_steps(tmp_path):
    row = Row("copy", "mean", "complete", ("model.aggregator=mean",))
    r = run_row(row, budget=600.0, threads=1, runs_dir=tmp_path, extra=TINY, steps=3, config_dir=ROOT / "configs")
    assert r["stopped_by"] == "max_steps=3" and r["steps"] == 3 and r["budget_steps"] == 3


def test_budgets_and_overrides_can_differ_per_task():
    assert per_task("--steps", "300", ["copy", "sort"], int) == {"copy": 300, "sort": 300}
    assert per_task("--steps", None, ["copy"], int) == {"copy": None}
    assert per_task("--budget", "copy=60,multi30k=3600", ["copy", "sort", "multi30k"]) == \
        {"copy": 60.0, "sort": None, "multi30k": 3600.0}
    with pytest.raises(ValueError, match="--steps: unknown task 'cpy'"):
        per_task("--steps", "cpy=3", ["copy"], int)
    with pytest.raises(ValueError, match="--steps: copy='x' is not a int"):
        per_task("--steps", "copy=x", ["copy"], int)
    with pytest.raises(ValueError, match="expected a number or task=number pairs"):
        per_task("--budget", "lots", ["copy"])
    extra = ["viz.example=null", "multi30k:optim.warmup=400", "data.path=/a:b"]
    assert task_overrides(extra, "copy") == ["viz.example=null", "data.path=/a:b"]
    assert task_overrides(extra, "multi30k") == ["viz.example=null", "optim.warmup=400", "data.path=/a:b"]
    with pytest.raises(ValueError, match="unknown task 'm30k'"):
        task_overrides(["m30k:optim.warmup=4"], "copy")


def test_resume_keeps_only_rows_with_the_same_budget_and_overrides(tmp_path, monkeypatch, capsys):
    ran = []

    def fake_run_row(row, budget, threads, runs_dir, *, extra=(), valid_limit=None, steps=None, config_dir=None):
        ran.append(row.slug)
        return fake_result(row.task, row.aggregator, row.structure, overrides=list(row.overrides),
                           extra=list(extra), budget_s=budget, budget_steps=steps, valid_exact_match=0.5)

    monkeypatch.setattr(ablation, "run_row", fake_run_row)
    monkeypatch.setattr(ablation, "grid", lambda tasks, rc=False: [r for r in grid(tasks, rc)
                                                                    if r.structure == "complete"])
    monkeypatch.chdir(ROOT)   # the task configs are read from the checkout
    base = ["--out", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--threads", "1"]
    main(["--tasks", "copy", "--steps", "5", "--budget", "60", "--set", "viz.example=null", *base])
    assert len(ran) == 3
    ran.clear()
    # Same budget and overrides for copy: kept; sort is new: run. A sort-only override does not
    # change what copy's rows were trained with.
    main(["--tasks", "copy,sort", "--steps", "copy=5,sort=7", "--budget", "60", "--set", "viz.example=null",
          "--set", "sort:optim.warmup=9", "--resume", *base])
    assert ran == ["sort-attention-complete", "sort-mean-complete", "sort-gat-complete"]
    assert "copy-attention-complete: kept" in capsys.readouterr().out
    md = (tmp_path / "ABLATION.md").read_text()
    assert "copy: **5 optimizer steps**; sort: **7 optimizer steps**" in md
    assert "Overrides for every sort row: `optim.warmup=9`, `viz.example=null`." in md
    ran.clear()
    # Another override for copy: its rows are trained again.
    main(["--tasks", "copy", "--steps", "5", "--budget", "60", "--resume", *base])
    assert len(ran) == 3


def test_rows_option_selects_rows_by_name():
    rows = grid(["copy", "multi30k"])
    assert select_rows(rows, None) == rows
    picked = select_rows(rows, "multi30k-attention-window-w-3, multi30k-attention-complete")
    assert [r.slug for r in picked] == ["multi30k-attention-complete", "multi30k-attention-window-w-3"]
    with pytest.raises(ValueError, match="--rows: unknown row\\(s\\) 'multi30k-attn'"):
        select_rows(rows, "multi30k-attn")


# --------------------------------------------------------------------------
# Where the tool writes
# --------------------------------------------------------------------------
@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A scratch copy of the checkout's layout as the current directory: configs/ and a tracked docs/."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ABLATION.md").write_text("the tracked report\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fake_rows(monkeypatch):
    """run_row replaced by one that makes the row's run directory (as the Trainer does) and returns numbers."""
    ran = []

    def fake_run_row(row, budget, threads, runs_dir, *, extra=(), valid_limit=None, steps=None, config_dir=None):
        ran.append(row.slug)
        (runs_dir / row.slug).mkdir(parents=True)
        return fake_result(row.task, row.aggregator, row.structure, overrides=list(row.overrides),
                           extra=list(extra), budget_s=budget, budget_steps=steps, valid_exact_match=0.5)

    monkeypatch.setattr(ablation, "run_row", fake_run_row)
    return ran


ONE_ROW = ["--tasks", "copy", "--steps", "2", "--rows", "copy-attention-complete", "--threads", "1"]


def test_default_output_is_scratch_and_docs_stay_untouched(checkout, fake_rows):
    main(ONE_ROW)
    assert fake_rows == ["copy-attention-complete"]
    out = checkout / "runs" / "ablation"
    assert json.loads((out / "ablation.json").read_text())["results"][0]["task"] == "copy"
    assert (out / "ABLATION.md").is_file() and (out / "copy-attention-complete").is_dir()
    assert json.loads((out / "ablation.json").read_text())["meta"]["command"].startswith(
        "python -m bench.ablation --tasks copy")
    assert [p.name for p in (checkout / "docs").iterdir()] == ["ABLATION.md"]
    assert (checkout / "docs" / "ABLATION.md").read_text() == "the tracked report\n"


def test_earlier_results_are_replaced_only_with_force(checkout, fake_rows, capsys):
    main(ONE_ROW)
    out = checkout / "runs" / "ablation"
    first = (out / "ablation.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(ONE_ROW)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out runs/ablation: would replace runs/ablation/ablation.json, ")
    assert "pass --force to replace them, --resume to keep its finished rows, or choose another --out" in err
    assert fake_rows == ["copy-attention-complete"] and (out / "ablation.json").read_text() == first
    # the rows' run directories of an earlier ablation are protected too, whatever --out is
    with pytest.raises(SystemExit):
        main([*ONE_ROW, "--out", "elsewhere"])
    assert ("error: --runs-dir runs/ablation: would replace runs/ablation/copy-attention-complete"
            in capsys.readouterr().err)
    assert not (checkout / "elsewhere").exists() and len(fake_rows) == 1
    main([*ONE_ROW, "--force"])
    assert fake_rows == ["copy-attention-complete"] * 2
    assert "replacing runs/ablation/copy-attention-complete (--force)" in capsys.readouterr().out
    # docs/ is written only when named, and its existing report is replaced only with --force
    with pytest.raises(SystemExit):
        main([*ONE_ROW, "--out", "docs", "--runs-dir", "runs/other"])
    assert "error: --out docs: would replace docs/ABLATION.md from an earlier run" in capsys.readouterr().err
    assert (checkout / "docs" / "ABLATION.md").read_text() == "the tracked report\n"


def test_a_bad_override_for_a_later_task_fails_before_any_row(checkout, fake_rows, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--tasks", "copy,sort", "--steps", "2", "--set", "sort:model.layers=0"])
    assert stop.value.code == 2 and fake_rows == []
    assert capsys.readouterr().err == ("error: sort-attention-complete: --set model.layers=0: model.layers: "
                                       "expected a positive integer, got 0\n")
    assert not (checkout / "runs").exists()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in ("--tasks", "--budget", "--steps", "--threads", "--out", "--runs-dir", "--config-dir",
                   "--valid-limit", "--restrict-cross", "--set", "--rows", "--resume", "--force"):
        assert option in text
    assert "python -m bench.ablation" in text and "default runs/ablation" in text


def test_runs_as_a_module_from_the_checkout():
    proc = subprocess.run([sys.executable, "-m", "bench.ablation", "--tasks", "copy", "--budget", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "error: --budget: expected a positive number of seconds for copy, got 0.0\n"
