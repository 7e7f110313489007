"""Checkpoints written before the house move (commit 8d22503, flat package) still load,
evaluate to the very same numbers and resume.

``tests/fixtures/pre_house/{standard,universal}/`` are tiny copy-task runs made by that
commit's ``scripts/train.py`` (config.yaml, vocabularies, last.pt); ``expected.json`` holds
what that commit's ``scripts/evaluate.py`` printed for them on the test split.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.config import load_config
from transformer_graph.experiment import load_trained
from transformer_graph.inference.evaluation import evaluate_checkpoint
from transformer_graph.train.trainer import Trainer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_house"
KINDS = ("standard", "universal")


@pytest.mark.parametrize("kind", KINDS)
def test_old_checkpoint_loads_and_evaluates_to_the_recorded_numbers(kind, tmp_path):
    expected = json.loads((FIXTURES / kind / "expected.json").read_text())
    model, cfg, vocabs, _ = load_trained(FIXTURES / kind / "last.pt")
    assert cfg.model.kind == kind
    hyp = tmp_path / "hyp.txt"
    metrics = evaluate_checkpoint(FIXTURES / kind / "last.pt", split="test", hyp_file=hyp)["metrics"]
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert metrics["acc"] == pytest.approx(expected["acc"], abs=1e-12)
    assert metrics["exact_match"] == expected["exact_match"]
    assert hyp.read_text().splitlines() == expected["hypotheses"]


@pytest.mark.parametrize("kind", KINDS)
def test_old_run_resumes(kind, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / kind, run)
    (run / "expected.json").unlink()
    before = load_checkpoint(run / "last.pt")
    cfg = load_config(run / "config.yaml", [f"train.max_epochs={before['progress']['epoch'] + 2}"])
    Trainer(cfg, run, resume=True, quiet=True).fit()
    after = load_checkpoint(run / "last.pt")
    assert after["progress"]["step"] > before["progress"]["step"]
    assert after["model"].keys() == before["model"].keys()
    assert all(after["model"][k].shape == before["model"][k].shape for k in before["model"])
    assert not all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])
