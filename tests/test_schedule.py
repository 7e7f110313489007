"""optim.schedule 'plateau': torch's ReduceLROnPlateau on the validation loss, once per epoch, and
the stop below optim.min_lr (the learning-rate schedule of Benchmarking GNNs), on the karate club
(one 34-node graph: an epoch is one step, milliseconds)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.cli.train import run as train_main
from transformer_graph.config import ConfigError, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
KARATE = ROOT / "configs" / "karate.yaml"

torch.set_num_threads(1)

# A high rate and a patience of 1: karate's validation loss (8 members) soon stops improving, so the
# schedule cuts the rate several times, and min_lr stops the run after a handful of cuts.
PLATEAU = ["optim.schedule=plateau", "optim.lr=0.05", "optim.plateau_factor=0.5", "optim.plateau_patience=1",
           "optim.min_lr=0.004", "train.max_epochs=200", "train.log_every=1", "train.threads=1"]


def sets(overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def train(run_dir: Path, *overrides: str) -> dict:
    return train_main(["--config", str(KARATE), "--run-dir", str(run_dir), "--quiet", "--no-test", *sets(overrides)])


def records(run_dir: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def expected_rates(valid_losses, lr, factor, patience):
    """The rate of each epoch's step by ReduceLROnPlateau's rule (mode min, relative threshold 1e-4),
    written out independently: a cut after more than ``patience`` epochs without a new best."""
    rates, best, bad = [], float("inf"), 0
    for loss in valid_losses:
        rates.append(lr)
        if loss < best * (1 - 1e-4):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
    return rates


@pytest.fixture(scope="module")
def plateau_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("plateau") / "run"
    return run, train(run, *PLATEAU)


def test_the_rate_is_cut_on_plateaus_of_the_validation_loss_and_training_stops_below_min_lr(plateau_run):
    run, summary = plateau_run
    epochs, steps = records(run, "epoch"), records(run, "train_step")
    assert len(steps) == len(epochs) == summary["epochs"] < 200       # karate: one step per epoch
    rates = [s["lr"] for s in steps]
    assert rates == pytest.approx(expected_rates([e["valid_loss"] for e in epochs], 0.05, 0.5, 1), rel=1e-12)
    assert len(set(rates)) >= 3                                       # it was cut more than once
    assert summary["stopped_by"].startswith("optim.min_lr=0.004")
    final = load_checkpoint(run / "last.pt")["optimizer"]["param_groups"][0]["lr"]
    assert final < 0.004 <= rates[-1]                                 # stopped at the first epoch below it


def test_a_resumed_run_that_stopped_below_min_lr_stays_stopped(plateau_run, tmp_path):
    run, summary = plateau_run
    again = train_main(["--resume", str(run), "--quiet", "--no-test"])
    assert again["stopped_by"].startswith("optim.min_lr") and again["steps"] == summary["steps"]


def test_resume_mid_schedule_continues_exactly(plateau_run, tmp_path):
    full, summary = plateau_run
    cut = tmp_path / "cut"
    train(cut, *PLATEAU, "train.max_epochs=7")
    resumed = train_main(["--resume", str(cut), "--quiet", "--no-test", "--set", "train.max_epochs=200"])
    assert resumed["steps"] == summary["steps"]
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["scheduler"] == b["scheduler"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [s["lr"] for s in records(full, "train_step")] == [s["lr"] for s in records(cut, "train_step")]


@pytest.mark.parametrize("optim, message", [
    ({"schedule": "plateau"}, "optim.lr: required for optim.schedule 'plateau'"),
    ({"schedule": "noam", "plateau_patience": 3}, "optim.plateau_patience: expected 10 (its default) unless "
                                                  "optim.schedule is 'plateau'"),
    ({"schedule": "constant", "lr": 0.1, "min_lr": 0.001}, "optim.min_lr: expected None (its default) unless"),
    ({"schedule": "plateau", "lr": 0.001, "min_lr": 0.01}, "optim.min_lr: expected below optim.lr (0.001)"),
    ({"schedule": "plateau", "lr": 0.001, "plateau_factor": 1.0}, "optim.plateau_factor"),
])
def test_bad_plateau_settings_are_config_errors_naming_the_key(optim, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": {"task": "karate"}, "optim": optim})
    assert message in str(err.value)
