"""tg-reproduce: several seeds of one config, mean ± std of every metric, resumable."""
from __future__ import annotations

import json
import statistics
import sys

import pytest
import yaml

from transformer_graph.cli import reproduce as reproduce_cli
from transformer_graph.train import reproduce
from transformer_graph.train.reproduce import SeedRunError, format_table, stopped_by, summarize, train_seeds

TINY = {"model": dict(layers=1, d_model=16, d_ff=32, heads=2, max_len=32),
        "data": dict(task="copy", train_size=32, valid_size=8, test_size=8, batch_size=8, alphabet="abcd"),
        "train": dict(max_epochs=2, threads=1, average_last=2), "eval": dict(beam=2)}


def test_summary_is_mean_and_sample_std_of_each_numeric_metric():
    per_seed = {1: {"bleu": 40.0, "acc": 0.5, "name": "x", "flag": True},
                2: {"bleu": 42.0, "acc": 0.7, "name": "y", "flag": False},
                3: {"bleu": 41.0, "acc": 0.6, "name": "z", "flag": True}}
    s = summarize(per_seed)
    assert set(s) == {"bleu", "acc"}
    assert s["bleu"]["mean"] == pytest.approx(41.0) and s["bleu"]["std"] == pytest.approx(1.0)
    assert s["acc"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))
    assert summarize({1: {"bleu": 3.0}})["bleu"]["std"] == 0.0
    assert "41.000 ± 1.000" in format_table(s, [1, 2, 3])


def test_seeds_train_evaluate_and_resume(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    root = tmp_path / "runs"
    out = reproduce_cli.run(["--config", str(cfg), "--seeds", "1", "2", "--runs", str(root), "--parallel", "2",
                             "--threads", "1"])
    per_seed = out["sets"]["test"]["per_seed"]
    assert set(per_seed) == {"1", "2"} and all(m["checkpoint"] == "averaged.pt" for m in per_seed.values())
    summary = out["sets"]["test"]["summary"]
    accs = [per_seed[s]["acc"] for s in ("1", "2")]
    assert summary["acc"]["values"] == accs and summary["acc"]["mean"] == pytest.approx(sum(accs) / 2)
    assert "train_time_s" in summary and "exact_match" in summary
    assert json.loads((root / "summary.json").read_text()) == out
    assert (root / "seed1" / "config.yaml").is_file() and "seed: 2" in (root / "seed2" / "config.yaml").read_text()
    assert (root / "seed1.log").read_text().startswith("$ ")
    assert "--set train.threads=1" in (root / "seed1.log").read_text()  # --threads reaches the training
    # The same command again resumes the finished runs (nothing retrained) and reports the same numbers.
    again = reproduce_cli.run(["--config", str(cfg), "--seeds", "1", "2", "--runs", str(root), "--threads", "1"])
    assert again["sets"]["test"]["summary"]["acc"] == summary["acc"]
    assert (root / "seed1.log").read_text().count("--resume") == 1


def test_a_seed_stopped_by_a_signal_is_not_finished(tmp_path, monkeypatch):
    # Each "training" writes the summary a real one writes; seed 2's ends with a SIGTERM.
    def fake_command(config, run_dir, seed, overrides):
        reason = "signal (SIGTERM)" if seed == 2 else "max_epochs"
        code = (f"import json, pathlib; d = pathlib.Path({str(run_dir)!r}); d.mkdir(exist_ok=True); "
                f"(d / 'metrics.jsonl').write_text(json.dumps({{'event': 'epoch'}}) + chr(10) + "
                f"json.dumps({{'event': 'summary', 'stopped_by': {reason!r}}}) + chr(10) + '{{cut')")
        return [sys.executable, "-c", code]

    monkeypatch.setattr(reproduce, "train_command", fake_command)
    with pytest.raises(SeedRunError, match=r"did not finish for seed 2 \(stopped by a signal \(SIGTERM\) "
                                           r"before it finished; its last.pt is kept\).*run the same command again"):
        train_seeds("c.yaml", tmp_path, [1, 2], parallel=2, echo=lambda *_: None)
    assert stopped_by(tmp_path / "seed1") == "max_epochs"  # the cut-short last line is skipped
    assert stopped_by(tmp_path / "seed3") is None
    assert train_seeds("c.yaml", tmp_path, [1], echo=lambda *_: None) == {1: tmp_path / "seed1"}


def test_bad_arguments_are_errors_before_any_training(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    with pytest.raises(SystemExit):
        reproduce_cli.main(["--config", str(cfg), "--seeds", "1", "1", "--runs", str(tmp_path / "r")])
    with pytest.raises(SystemExit):
        reproduce_cli.main(["--config", str(cfg), "--set", "model.layers=zero", "--runs", str(tmp_path / "r")])
    with pytest.raises(SystemExit):
        reproduce_cli.main(["--config", str(cfg), "--eval-set", "x=nope.en,nope.de", "--runs", str(tmp_path / "r")])
    with pytest.raises(SystemExit):
        reproduce_cli.main(["--config", str(cfg), "--threads", "0", "--runs", str(tmp_path / "r")])
    with pytest.raises(SystemExit):  # --no-train on runs that do not exist
        reproduce_cli.main(["--config", str(cfg), "--no-train", "--runs", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
