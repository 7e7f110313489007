"""Node classification through the trainer, configs, checkpoints and tg-evaluate.

Tiny runs only (karate: one 34-node graph; PATTERN: 40/8/8 graphs, a 2-layer d_model-16 encoder), on
one thread and the torch engine's results wherever DGL is missing. PATTERN/CLUSTER graphs are
generated into a per-test cache directory (XDG_CACHE_HOME), never the user's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from transformer_graph.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from transformer_graph.cli.evaluate import run as evaluate_main
from transformer_graph.cli.train import run as train_main
from transformer_graph.config import ConfigError, NODE_STRUCTURES, config_from_dict, load_config
from transformer_graph.experiment import build_node_experiment, load_trained, load_trained_nodes
from transformer_graph.graphs.node_graphs import NODE_STRUCTURES as GRAPH_STRUCTURES
from transformer_graph.inference.evaluation import evaluate_checkpoint, evaluate_nodes
from transformer_graph.nn.node_loss import class_weighted_accuracy
from transformer_graph.train.resume import ResumeError
from transformer_graph.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
KARATE = ROOT / "configs" / "karate.yaml"
PATTERN = ROOT / "configs" / "pattern.yaml"

torch.set_num_threads(1)

# configs/pattern.yaml cut down: 40/8/8 graphs of 8 per batch (5 steps an epoch), a small encoder
# with dropout and PE sign flips on (both draw random numbers: a resume must restore them).
TINY_PATTERN = ["data.graphs_train=40", "data.graphs_valid=8", "data.graphs_test=8", "data.batch_size=8",
                "model.layers=2", "model.d_model=16", "model.heads=4", "model.d_ff=32", "model.dropout=0.1",
                "train.max_epochs=2", "train.threads=1", "train.log_every=1", "optim.lr=0.003"]


@pytest.fixture(autouse=True)
def graph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pattern_run(tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted tiny PATTERN run (2 epochs, 10 steps) and its summary, test metrics included."""
    root = tmp_path_factory.mktemp("pattern")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        return root / "run", train(PATTERN, root / "run", *TINY_PATTERN)


def sets(overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def train(config: Path, run_dir: Path, *overrides: str, test: bool = True) -> dict:
    return train_main(["--config", str(config), "--run-dir", str(run_dir), "--quiet",
                       *([] if test else ["--no-test"]), *sets(overrides)])


def records(run_dir: Path, event: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == event]


def timeless(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time" and not k.endswith("_per_s")} for r in rs]


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same training state, bit for bit (wall-clock fields aside)."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    oa, ob = a["optimizer"], b["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        for name, t in oa["state"][i].items():
            assert torch.equal(t, ob["state"][i][name]), (i, name)
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and a["rng"]["python"] == b["rng"]["python"]
    drop = lambda p: {k: v for k, v in p.items() if k not in ("elapsed", "history")}  # noqa: E731
    assert drop(a["progress"]) == drop(b["progress"])
    assert timeless(a["progress"]["history"]) == timeless(b["progress"]["history"])
    assert a["fingerprint"] == b["fingerprint"] and a["graph_data"] == b["graph_data"]


# --------------------------------------------------------------------------- end to end

def test_karate_trains_end_to_end_overfits_and_evaluates(tmp_path):
    run = tmp_path / "karate"
    summary = train(KARATE, run, "train.threads=1", "train.max_epochs=40", "train.keep_last=2",
                    "train.average_last=2")
    assert summary["stopped_by"] == "max_epochs=40" and summary["steps"] == 40  # one batch (the graph) an epoch
    epochs = records(run, "epoch")
    assert len(epochs) == 40
    assert {"train_loss", "train_acc", "train_nodes_per_s", "valid_loss", "valid_acc", "valid_score"} <= set(epochs[0])
    assert not any("class_weighted" in k for k in epochs[0])   # karate's metric is the accuracy on the mask
    # the tiny task overfits: both labelled leaders right, with a vanishing loss
    assert epochs[-1]["train_acc"] == 1.0 and epochs[-1]["train_loss"] < 0.01 < epochs[0]["train_loss"]
    assert all(r["lr"] == 0.01 for r in records(run, "train_step"))   # optim.schedule: constant
    # the final test evaluation of tg-train: the average of the last two epochs
    assert summary["test"]["checkpoint"] == "averaged.pt" and summary["test"]["nodes"] == 24
    assert 0.0 <= summary["test"]["acc"] <= 1.0 and "bleu" not in summary["test"]
    for name in ("best.pt", "last.pt", "averaged.pt"):
        model, cfg, info, ckpt = load_trained_nodes(run / name)
        assert cfg.data.task == "karate" and info["num_classes"] == 2 and not model.training
    best = evaluate_checkpoint(run / "best.pt", split="valid")["metrics"]
    assert best["acc"] == pytest.approx(load_checkpoint(run / "best.pt")["progress"]["best"])
    test = evaluate_checkpoint(run / "averaged.pt", split="test")["metrics"]
    assert test["acc"] == pytest.approx(summary["test"]["acc"])
    assert not list(run.glob("vocab.*"))   # a node task has no vocabulary


def test_tiny_pattern_reports_the_benchmarks_metrics(pattern_run, capsys):
    run, summary = pattern_run
    epoch = records(run, "epoch")[-1]
    for key in ("train_loss", "train_acc", "train_class_weighted_acc", "valid_loss", "valid_acc",
                "valid_class_weighted_acc", "valid_class_weighted_acc_pooled"):
        assert math.isfinite(epoch[key]), key
    assert epoch["valid_score"] == epoch["valid_class_weighted_acc"]
    assert 0.0 <= epoch["valid_class_weighted_acc"] <= 100.0   # percent, as the benchmark reports it
    assert [r["step"] for r in records(run, "train_step")] == list(range(1, 11))
    test = summary["test"]
    assert test["checkpoint"] == "best.pt" and test["graphs"] == 8 and test["batch_size"] == 8
    assert {"class_weighted_acc", "class_weighted_acc_pooled", "acc", "loss"} <= set(test)

    # tg-evaluate: the same numbers, printed, and the batch mean is the benchmark's: the mean over test
    # batches of the training batch size of accuracy_SBM; the pooled one is over all nodes at once.
    capsys.readouterr()
    metrics = evaluate_main(["--checkpoint", str(run / "best.pt"), "--split", "test"])["metrics"]
    assert "class_weighted_acc" in capsys.readouterr().out
    assert metrics["class_weighted_acc"] == pytest.approx(test["class_weighted_acc"])
    model, cfg, _, _ = load_trained_nodes(run / "best.pt")
    exp = build_node_experiment(cfg)
    graphs = exp.graphs("test")
    per_batch, preds, labels = [], [], []
    with torch.no_grad():
        for i in range(0, len(graphs), 8):
            batch = exp.batch(graphs[i:i + 8])
            logits = model(batch)
            per_batch.append(class_weighted_accuracy(logits, batch.y, 2))
            preds.append(logits.argmax(1))
            labels.append(batch.y)
    assert metrics["class_weighted_acc"] == pytest.approx(sum(per_batch) / len(per_batch))
    assert metrics["class_weighted_acc_pooled"] == pytest.approx(
        class_weighted_accuracy(torch.cat(preds), torch.cat(labels), 2))
    # --limit takes the first graphs; the batches of 8 are the training batch size
    assert evaluate_checkpoint(run / "best.pt", limit=3)["metrics"]["graphs"] == 3


def test_positional_encodings_are_computed_once_per_graph(tmp_path):
    cfg = load_config(PATTERN, TINY_PATTERN + ["train.max_epochs=1"])
    tr = Trainer(cfg, tmp_path / "run", quiet=True)
    tr.fit()
    assert len(tr.exp.pe_fn) == 40 + 8   # every training and validation graph, once
    one = tr.exp.graphs("train")[0]
    assert tr.exp.pe_fn(one.edge_index, one.num_nodes, 2) is tr.exp.pe_fn(one.edge_index, one.num_nodes, 2)


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("stop_at", [3, 5], ids=["mid-epoch", "epoch-boundary"])
def test_resume_equals_an_uninterrupted_run_to_the_bit(pattern_run, tmp_path, stop_at):
    full = pattern_run[0]
    cut = tmp_path / "cut"
    first = train(PATTERN, cut, *TINY_PATTERN, f"train.max_steps={stop_at}", test=False)
    assert first["stopped_by"] == f"max_steps={stop_at}"
    assert load_checkpoint(cut / "last.pt")["progress"]["batch_in_epoch"] == stop_at % 5
    resumed = train_main(["--resume", str(cut), "--quiet", "--no-test", "--set", "train.max_steps=null"])
    assert resumed["steps"] == 10
    assert_same_state(load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt"))
    assert_same_state(load_checkpoint(full / "best.pt"), load_checkpoint(cut / "best.pt"))
    for event in ("train_step", "epoch"):
        assert timeless(records(full, event)) == timeless(records(cut, event)), event


def test_resume_refuses_other_graphs_and_other_settings(tmp_path):
    run = tmp_path / "run"
    train(PATTERN, run, *TINY_PATTERN, "train.max_steps=2", test=False)
    with pytest.raises(ResumeError, match=r"data\.seed: 0 in the checkpoint, 5 now"):
        Trainer(load_config(run / "config.yaml", ["data.seed=5"]), run, resume=True, quiet=True)
    ckpt = load_checkpoint(run / "last.pt")
    ckpt["fingerprint"]["graphs"]["train"] = "0" * 16   # as if the generator had changed since
    save_checkpoint(run / "last.pt", **{k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(ResumeError, match=r"the training graphs differ \(train: '0000000000000000'"):
        Trainer(load_config(run / "config.yaml"), run, resume=True, quiet=True)


# --------------------------------------------------------------------------- clear errors

@pytest.mark.parametrize("raw, message", [
    ({"data": {"task": "pattern"}, "model": {"kind": "universal"}},
     "model.kind: expected 'standard' for the node task data.task 'pattern'"),
    ({"model": {"pe_dim": 4}}, "model.pe_dim: expected 0 (its default) with data.task 'copy': it applies to "
                               "data.task 'pattern', 'cluster', 'karate' or 'planetoid' only, got 4"),
    ({"data": {"task": "karate", "graphs_train": 10}}, "data.graphs_train: expected null (its default) with "
                                                        "data.task 'karate'"),
    ({"data": {"task": "pattern", "max_tokens": 4096}}, "data.max_tokens: expected null (its default) with "
                                                         "data.task 'pattern'"),
    ({"data": {"task": "pattern"}, "optim": {"label_smoothing": 0.1}}, "optim.label_smoothing: expected 0.0"),
    ({"data": {"task": "pattern"}, "viz": {"example": 0}}, "viz.example: expected null"),
    ({"data": {"task": "planetoid", "path": "x"}}, "data.graph_name: required for task 'planetoid'"),
    ({"data": {"task": "planetoid", "graph_name": "cora"}}, "data.path: required for task 'planetoid'"),
    ({"data": {"task": "planetoid", "graph_name": "cornell", "path": "x"}},
     "data.graph_name: expected one of 'cora', 'citeseer', 'pubmed' or null"),
    ({"data": {"task": "karate"}, "model": {"graph_structure": "complete", "self_loops": False}},
     "model.self_loops: expected true with model.graph_structure 'complete'"),
    ({"data": {"task": "karate"}, "model": {"global_nodes": 2}}, "model.global_nodes: expected 1 (its default) "
                                                                 "unless model.graph_structure is 'global'"),
    ({"data": {"task": "karate"}, "model": {"d_model": 2, "heads": 1}}, "model.d_model: expected at least 4"),
    ({"optim": {"schedule": "constant"}}, "optim.lr: required for optim.schedule 'constant'"),
    ({"optim": {"lr": 0.001}}, "optim.lr: expected null with optim.schedule 'noam'"),
])
def test_bad_combinations_are_config_errors_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, "c.yaml")
    assert str(err.value).startswith("c.yaml: ") and message in str(err.value)


def test_node_configs_load_and_round_trip(tmp_path):
    from transformer_graph.config import save_config
    for name in ("karate", "pattern", "cluster"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.data.task == name and cfg.model.kind == "standard"
        save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config(tmp_path / f"{name}.yaml") == cfg
    assert NODE_STRUCTURES == GRAPH_STRUCTURES
    # the shipped PATTERN model is the benchmark's ~100k-parameter budget
    exp_cfg = load_config(PATTERN, ["data.graphs_train=1", "data.graphs_valid=0", "data.graphs_test=0"])
    tr = Trainer(exp_cfg, tmp_path / "p", quiet=True)
    assert 95_000 <= sum(p.numel() for p in tr.model.parameters()) <= 110_000


def test_a_bad_combination_is_one_error_line_before_any_data_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("transformer_graph.experiment.load_graph_dataset",
                        lambda *a, **k: pytest.fail("loaded the graphs before refusing the config"))
    with pytest.raises(SystemExit) as exit_:
        train(PATTERN, tmp_path / "run", "model.kind=universal")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "model.kind" in err[0]
    assert not (tmp_path / "run").exists()
    # torchrun is not for node tasks: refused first thing
    with pytest.raises(ConfigError, match="trains in one process"):
        Trainer(load_config(KARATE), tmp_path / "ddp", rank=0, world_size=2, quiet=True)


def test_commands_of_the_other_kind_refuse_a_node_checkpoint_clearly(tmp_path, capsys):
    run = tmp_path / "karate"
    train(KARATE, run, "train.threads=1", "train.max_epochs=2", test=False)
    with pytest.raises(CheckpointError, match="is a node-classification checkpoint"):
        load_trained(run / "best.pt")
    with pytest.raises(ValueError, match="--beam, --hyp-file: decoding options"):
        evaluate_checkpoint(run / "best.pt", beam=4, hyp_file=tmp_path / "h.txt")
    with pytest.raises(ValueError, match="--limit"):
        evaluate_checkpoint(run / "best.pt", limit=1)
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", str(run / "best.pt"), "--beam", "2"])
    assert capsys.readouterr().err.startswith("error: --beam: decoding options")
    # and the karate model evaluates on every split's mask
    for split, nodes in (("train", 2), ("valid", 8), ("test", 24)):
        assert evaluate_checkpoint(run / "last.pt", split=split)["metrics"]["nodes"] == nodes


def test_evaluate_nodes_of_an_empty_split_is_empty(tmp_path):
    cfg = load_config(PATTERN, TINY_PATTERN + ["data.graphs_valid=0"])
    tr = Trainer(cfg, tmp_path / "run", quiet=True)
    assert evaluate_nodes(tr.model, tr.exp, "valid", batch_size=8) == {}
    assert tr.validate() == {}


def test_planetoid_trains_on_its_masks_and_evaluates(tmp_path):
    from tests.test_graph_data import write_planetoid   # a tiny dataset in the Planetoid files' format
    write_planetoid(tmp_path / "cora")
    run = tmp_path / "run"
    summary = train(KARATE, run, "data.task=planetoid", "data.graph_name=cora",
                    f"data.path={tmp_path / 'cora'}", "model.layers=1", "model.d_model=8", "model.heads=2",
                    "model.d_ff=16", "train.max_epochs=3", "train.threads=1")
    assert summary["steps"] == 3 and summary["test"]["nodes"] == 10   # the test mask's nodes
    assert records(run, "epoch")[-1]["valid_score"] == records(run, "epoch")[-1]["valid_acc"]
    model, cfg, info, _ = load_trained_nodes(run / "best.pt")
    assert info == {"name": "Cora", "num_features": 6, "feature_kind": "dense", "num_classes": 3}
