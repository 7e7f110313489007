"""Nothing lost, nothing silent: one test (or a few) per class of failure of issue 16, each with
inputs of its own, and the step checkpoints, the fallback to an intact checkpoint and a disk that
fills up during a save. docs/RELIABILITY.md lists the same cases with the message each gets.

The runs are tiny copy tasks (a few steps, one thread); commands run in-process, except the one
that must read bytes from a real stdin.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from transformer_graph.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from transformer_graph.cli import evaluate, plot_act, train, translate, visualize
from transformer_graph.config import ConfigError, config_from_dict, load_config
from transformer_graph.data.datasets import DataError, DataWarning, build_vocabs
from transformer_graph.inference import evaluation
from transformer_graph.inference.evaluation import evaluate_checkpoint
from transformer_graph.inference.translate import InputError, Translator, check_text, read_text_lines
from transformer_graph.train.resume import CheckpointWarning, ResumeError
from transformer_graph.train.run_dir import RunDirError
from transformer_graph.train.signals import deferred_signals, stop_requests
from transformer_graph.train.trainer import Trainer, TrainingError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
torch.set_num_threads(1)


def raw(**overrides) -> dict:
    """A tiny copy config (6 batches an epoch); ``overrides`` maps 'section.key' to values."""
    cfg = {
        "model": dict(layers=1, d_model=16, d_ff=32, heads=2, dropout=0.1, share_embeddings=True, max_len=40),
        "data": dict(task="copy", train_size=48, valid_size=8, test_size=8, batch_size=8,
                     length_mean=5.0, length_std=1.0, alphabet="abcdef"),
        "optim": dict(warmup=10),
        "train": dict(max_epochs=1, seed=5, threads=1, log_every=1),
        "eval": dict(max_len_a=1.0, max_len_b=2),
    }
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        cfg[section][name] = value
    return cfg


def cfg_of(**overrides):
    return config_from_dict(raw(**overrides), source="test")


def write_config(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(raw(**overrides)))
    return path


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its bytes: to show that nothing changed."""
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def fails(command, argv, capsys) -> str:
    """Run a command in-process; it must exit with code 2 and one ``error:`` line, which is returned."""
    with pytest.raises(SystemExit) as exit_:
        command.main([str(a) for a in argv])
    assert exit_.value.code == 2
    return one_error_line(capsys)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-epoch run (last.pt, best.pt); tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("reliability") / "run"
    Trainer(cfg_of(), run_dir, quiet=True).fit()
    return run_dir


@pytest.fixture
def copy_of(run, tmp_path):
    def make(name="run") -> Path:
        target = tmp_path / name
        target.mkdir()
        for p in run.iterdir():
            if p.is_file():
                (target / p.name).write_bytes(p.read_bytes())
        return target
    return make


# --------------------------------------------------------------------------- 1. data loss

@pytest.mark.parametrize("files", [
    {"best.pt": b"weights", "config.yaml": b"model: {}\n", "metrics.jsonl": b"{}\n", "averaged.pt": b"old"},
    {"notes.txt": b"my notes"},
    {"sub/deep.txt": b"x"},
], ids=["results-without-last.pt", "a-user-file", "a-subdirectory"])
def test_a_new_run_never_writes_into_a_used_directory(tmp_path, files):
    used = tmp_path / "used"
    for name, content in files.items():
        (used / name).parent.mkdir(parents=True, exist_ok=True)
        (used / name).write_bytes(content)
    before = snapshot(used)
    with pytest.raises(RunDirError, match=rf"run directory {used}: already holds .*choose another --run-dir"):
        Trainer(cfg_of(), used, quiet=True)
    assert snapshot(used) == before


def test_a_new_run_into_a_run_is_told_to_resume_it_and_the_cli_says_so_in_one_line(run, tmp_path, capsys):
    before = snapshot(run)
    line = fails(train, ["--config", write_config(tmp_path / "c.yaml"), "--run-dir", run], capsys)
    assert "already holds" in line and f"--resume {run}" in line
    assert snapshot(run) == before


def test_run_dir_that_is_a_file_or_under_a_file_fails_before_the_data_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr("transformer_graph.train.trainer.build_experiment",
                        lambda *a, **k: pytest.fail("loaded the data before checking the run directory"))
    with pytest.raises(RunDirError, match="is an existing file"):
        Trainer(cfg_of(), blocker, quiet=True)
    with pytest.raises(RunDirError, match="cannot be created"):
        Trainer(cfg_of(), blocker / "run", quiet=True)


def test_empty_directory_and_leftover_temporary_files_are_fine_for_a_new_run(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".last.pt.k1l2.tmp").write_bytes(b"half a checkpoint a kill left")
    Trainer(cfg_of(**{"train.max_steps": 1}), fresh, quiet=True).fit()
    assert (fresh / "last.pt").is_file() and not list(fresh.glob(".*.tmp"))


def test_a_stale_averaged_checkpoint_is_not_the_resumed_runs_final_model(copy_of):
    run = copy_of()
    save_checkpoint(run / "averaged.pt", **{k: v for k, v in load_checkpoint(run / "best.pt").items()
                                            if k != "format"}, averaged_from=["epoch0.pt", "epoch1.pt"])
    tr = Trainer(cfg_of(**{"train.max_epochs": 2, "train.average_last": 3}), run, resume=True, quiet=True)
    tr.fit()  # one epoch file this session: nothing to average
    assert tr.final_checkpoint() == run / "best.pt"


def test_a_second_ctrl_c_during_a_save_waits_for_the_save(tmp_path, monkeypatch):
    """Two SIGINTs while the first last.pt is being written: the save completes, then the run
    stops (KeyboardInterrupt); last.pt is whole. The handlers are restored afterwards."""
    real_save = torch.save
    sent = []

    def save(obj, f, *args, **kwargs):
        if not sent:  # the first save of the run, half-way
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    before = signal.getsignal(signal.SIGINT)
    tr = Trainer(cfg_of(**{"train.save_every_steps": 2}), tmp_path / "run", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before


def test_deferred_signals_deliver_to_the_previous_handler_after_the_block():
    got = []
    with stop_requests(got.append):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []  # not during the block
        assert got == ["SIGTERM"]
        with pytest.raises(KeyboardInterrupt), deferred_signals():  # the second one: stop, after the block
            os.kill(os.getpid(), signal.SIGINT)
            got.append("block finished")
    assert got == ["SIGTERM", "block finished"]


# --------------------------------------------------------------------------- 2. resume checks

@pytest.mark.parametrize("overrides,expected", [
    (["model.d_model=32"], ["model.d_model: 16 in the checkpoint, 32 now"]),
    (["model.structure.enc=window", "optim.warmup=99"],
     ["model.structure.enc: 'complete' in the checkpoint, 'window' now", "optim.warmup: 10 in the checkpoint, 99 now"]),
    (["data.train_size=50"], ["data.train_size: 48 in the checkpoint, 50 now"]),
    (["train.seed=6", "train.bf16=true"], ["train.seed: 5", "train.bf16: False in the checkpoint, True now"]),
])
def test_resume_names_every_key_that_may_not_change(copy_of, overrides, expected):
    run = copy_of()
    before = snapshot(run)
    with pytest.raises(ResumeError) as err:
        Trainer(load_config(run / "config.yaml", overrides), run, resume=True, quiet=True)
    message = str(err.value)
    for text in expected:
        assert text in message
    assert "may change only train.max_epochs" in message and "\n" not in message
    assert snapshot(run) == before


def test_resume_accepts_the_safe_keys(copy_of):
    run = copy_of()
    vocab = (run / "vocab.src.json").read_bytes()
    cfg = load_config(run / "config.yaml", ["train.max_epochs=2", "train.threads=1", "train.log_every=3",
                                            "eval.beam=2", "viz.every_epoch=true", "train.save_every_minutes=5"])
    assert Trainer(cfg, run, resume=True, quiet=True).fit()["epochs"] == 2
    assert (run / "vocab.src.json").read_bytes() == vocab  # the checkpoint's vocabulary: never rewritten


def test_an_edited_config_yaml_is_caught_through_the_cli(copy_of, capsys):
    run = copy_of()
    text = (run / "config.yaml").read_text().replace("d_ff: 32", "d_ff: 48")
    (run / "config.yaml").write_text(text)
    line = fails(train, ["--resume", run, "--quiet"], capsys)
    assert "model.d_ff: 32 in the checkpoint, 48 now" in line


def test_a_last_pt_of_another_run_is_caught(copy_of, tmp_path):
    run = copy_of()
    other = tmp_path / "other"
    Trainer(cfg_of(**{"train.seed": 9, "train.max_steps": 2}), other, quiet=True).fit()
    (run / "last.pt").write_bytes((other / "last.pt").read_bytes())
    with pytest.raises(ResumeError, match="train.seed: 9 in the checkpoint, 5 now"):
        Trainer(load_config(run / "config.yaml"), run, resume=True, quiet=True)


def _parallel(directory: Path, train_lines: list[str]) -> Path:
    directory.mkdir(exist_ok=True)
    for split, lines in (("train", train_lines), ("valid", ["a b", "c d"]), ("test", ["b a"])):
        for lang in ("en", "de"):
            (directory / f"{split}.{lang}").write_text("".join(line + "\n" for line in lines))
    return directory


def parallel_cfg(data: Path, **overrides):
    return cfg_of(**{"data.task": "parallel", "data.path": str(data), "data.valid_prefix": "valid",
                     "data.test_prefix": "test", **overrides})


def test_other_data_under_the_same_config_is_caught(tmp_path):
    data = _parallel(tmp_path / "data", ["a b c", "c b a", "b c"] * 4)
    Trainer(parallel_cfg(data, **{"train.max_steps": 1}), tmp_path / "run", quiet=True).fit()
    _parallel(data, ["a b c", "c c a", "b c"] * 4)  # the same words, other sentences
    with pytest.raises(ResumeError, match="training data: 12 pairs now, 12 in the checkpoint, other sentences"):
        Trainer(parallel_cfg(data), tmp_path / "run", resume=True, quiet=True)
    _parallel(data, ["a b c", "c b a", "b c", "d e"] * 3)  # new words: another vocabulary too
    with pytest.raises(ResumeError, match="vocabulary: the training data now gives 9 tokens, the checkpoint's has 7"):
        Trainer(parallel_cfg(data), tmp_path / "run", resume=True, quiet=True)


def test_a_checkpoint_without_fingerprint_still_resumes_and_its_vocabulary_is_checked(copy_of):
    run = copy_of()
    ckpt = load_checkpoint(run / "last.pt")
    del ckpt["fingerprint"]
    save_checkpoint(run / "last.pt", **{k: v for k, v in ckpt.items() if k != "format"})
    tr = Trainer(load_config(run / "config.yaml", ["train.max_epochs=2"]), run, resume=True, quiet=True)
    tr.fit()
    assert "fingerprint" in load_checkpoint(run / "last.pt")  # written from now on
    ckpt["src_vocab"]["itos"].append("zz")  # another vocabulary than the data gives
    save_checkpoint(run / "other.pt", **{k: v for k, v in ckpt.items() if k != "format"})
    (run / "last.pt").write_bytes((run / "other.pt").read_bytes())
    with pytest.raises(ResumeError, match="vocabulary"):
        Trainer(load_config(run / "config.yaml", ["train.max_epochs=3"]), run, resume=True, quiet=True)


# --------------------------------------------------------------------------- fallback, step saves, full disk

@pytest.mark.parametrize("damage", ["truncated", "empty", "random-bytes", "missing"])
def test_a_damaged_last_pt_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    run = tmp_path / "run"
    Trainer(cfg_of(**{"train.max_epochs": 2, "train.keep_last": 2}), run, quiet=True).fit()
    last = run / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:3000])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "random-bytes":
        last.write_bytes(os.urandom(500))
    else:
        last.unlink()
    (run / "best.pt").write_bytes(b"")  # damaged too: the epoch file is the newest intact one
    with pytest.warns(CheckpointWarning, match=r"resuming from .*epoch2\.pt instead.*\(step 12\)"):
        tr = Trainer(load_config(run / "config.yaml", ["train.max_epochs=3"]), run, resume=True, quiet=True)
    assert tr.progress.step == 12 and tr.resumed_from == run / "epoch2.pt"
    tr.fit()
    assert load_checkpoint(last)["progress"]["step"] == 18


def test_no_intact_checkpoint_at_all_is_one_clear_error(copy_of, capsys):
    run = copy_of()
    (run / "last.pt").write_bytes(b"")
    (run / "best.pt").write_bytes(os.urandom(64))
    line = fails(train, ["--resume", run], capsys)
    assert "the file is empty (0 bytes)" in line and "no other checkpoint" in line


def test_a_run_killed_before_its_first_checkpoint_starts_over_on_resume(tmp_path):
    run = tmp_path / "run"
    Trainer(cfg_of(), run, quiet=True)  # config.yaml and vocabularies written, no training yet
    with pytest.warns(CheckpointWarning, match="no checkpoint yet"):
        tr = Trainer(load_config(run / "config.yaml"), run, resume=True, quiet=True)
    assert tr.fit()["steps"] == 6


def test_step_checkpoints_inside_an_epoch(tmp_path, monkeypatch):
    saved = []
    real = Trainer.save

    def save(self, name):
        saved.append((name, self.progress.step, self.progress.batch_in_epoch))
        return real(self, name)

    monkeypatch.setattr(Trainer, "save", save)
    Trainer(cfg_of(**{"train.save_every_steps": 2}), tmp_path / "steps", quiet=True).fit()
    assert saved == [("last.pt", 2, 2), ("last.pt", 4, 4)]  # step 6 ends the epoch: its own save
    saved.clear()
    Trainer(cfg_of(**{"train.save_every_minutes": 1e-9, "train.max_steps": 3}), tmp_path / "minutes", quiet=True).fit()
    assert saved[:2] == [("last.pt", 1, 1), ("last.pt", 2, 2)]
    assert cfg_of().train.save_every_minutes == 10.0  # the default: a kill loses at most ten minutes


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_stops_clearly(copy_of, monkeypatch, capsys):
    run = copy_of()
    before = (run / "last.pt").read_bytes()
    real = torch.save

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    tr = Trainer(load_config(run / "config.yaml", ["train.max_epochs=2", "train.save_every_steps=3"]), run,
                 resume=True, quiet=True)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainingError) as err:
        tr.fit()
    message = str(err.value)
    assert f"writing {run / 'last.pt'} failed: No space left on device (ENOSPC)" in message
    assert f"The last good checkpoint {run / 'last.pt'} is intact" in message
    assert (run / "last.pt").read_bytes() == before and not list(run.glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real)
    # Through the command: the same, as one line.
    monkeypatch.setattr(torch, "save", full)
    line = fails(train, ["--resume", run, "--set", "train.max_epochs=2", "--quiet"], capsys)
    assert "No space left on device" in line and (run / "last.pt").read_bytes() == before


# --------------------------------------------------------------------------- 3. errors before the work

def test_an_over_long_validation_or_test_sentence_fails_before_the_first_step(tmp_path):
    data = _parallel(tmp_path / "data", ["a b c"] * 8)
    (data / "test.en").write_text("a " * 45 + "\n")  # 45 tokens, model.max_len 40
    (data / "test.de").write_text("b\n")
    with pytest.raises(DataError, match=r"test split: 1 pair\(s\) do not fit model.max_len=40 .* pair 1 has 45 "
                                        r"source and 1 target tokens; raise model.max_len to at least 45"):
        Trainer(parallel_cfg(data), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    # A target needs room for <sos> too: 40 target tokens do not fit max_len 40.
    (data / "test.en").write_text("a\n")
    (data / "test.de").write_text("b " * 40 + "\n")
    with pytest.raises(DataError, match="raise model.max_len to at least 41"):
        Trainer(parallel_cfg(data), tmp_path / "run", quiet=True)
    # Training pairs over the limits may be skipped instead (data.max_src_len), which the message offers.
    (data / "test.de").write_text("b\n")
    (data / "train.en").write_text("a " * 50 + "\n" + "a b c\n" * 7)
    with pytest.raises(DataError, match="train split: .*lower data.max_src_len/data.max_tgt_len to 40/39"):
        Trainer(parallel_cfg(data), tmp_path / "run", quiet=True)
    Trainer(parallel_cfg(data, **{"data.max_src_len": 40, "data.max_tgt_len": 39}), tmp_path / "run", quiet=True)


def test_evaluate_checks_its_outputs_and_options_before_decoding(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluation, "decode_dataset", lambda *a, **k: pytest.fail("decoded before the checks"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ckpt = run / "best.pt"
    cases = [
        (["--hyp-file", blocker / "sub" / "hyp.txt"], f"--hyp-file {blocker / 'sub' / 'hyp.txt'}: cannot be written"),
        (["--hyp-file", tmp_path], f"--hyp-file {tmp_path}: is a directory"),
        (["--json", tmp_path], f"--json {tmp_path}: is a directory"),
        (["--json", blocker / "m.json"], "cannot be written"),
        (["--limit", "-1"], "--limit: expected a positive integer, got -1"),
        (["--limit", "0"], "--limit: expected a positive integer, got 0"),
        (["--beam", "0"], "--beam: expected a positive integer, got 0"),
        (["--alpha", "-0.5"], "--alpha: expected a non-negative number, got -0.5"),
    ]
    for args, message in cases:
        assert message in fails(evaluate, ["--checkpoint", ckpt, *args], capsys), args
    assert blocker.read_text() == "x"


def test_evaluate_writes_into_a_new_directory_and_limit_takes_the_first_n(run, tmp_path):
    result = evaluate_checkpoint(run / "best.pt", split="valid", hyp_file=tmp_path / "new" / "hyp.txt", limit=3)
    assert len((tmp_path / "new" / "hyp.txt").read_text().splitlines()) == 3
    assert result["metrics"]["exact_match"] * 3 == round(result["metrics"]["exact_match"] * 3)


def test_picture_commands_check_out_and_numbers_first(run, tmp_path, capsys):
    png = tmp_path / "a.png"
    png.write_bytes(b"not a directory")
    ckpt = run / "best.pt"
    assert f"--out {png}: is an existing file; expected a directory" in fails(
        visualize, ["--checkpoint", ckpt, "--example", "0", "--out", png], capsys)
    assert "--example: expected an integer >= 0, got -1" in fails(
        visualize, ["--checkpoint", ckpt, "--example", "-1", "--out", tmp_path / "figs"], capsys)
    assert "--head: expected an integer >= 0, got -2" in fails(
        visualize, ["--animate", run, "--head", "-2", "--out", tmp_path / "a.gif"], capsys)
    assert f"--out {tmp_path}: is a directory" in fails(visualize, ["--animate", run, "--out", tmp_path], capsys)
    assert f"--out {tmp_path}: is a directory" in fails(plot_act, ["--checkpoint", ckpt, "--out", tmp_path], capsys)
    assert "--limit: expected an integer >= 1, got -5" in fails(
        plot_act, ["--checkpoint", ckpt, "--out", tmp_path / "p.png", "--limit", "-5"], capsys)


# --------------------------------------------------------------------------- 4. tracebacks and cut messages

@pytest.mark.parametrize("content,expected", [
    (b"", "the file is empty (0 bytes)"),
    (b"\x00" * 7, "is not in PyTorch's format"),
    (b"PK\x03\x04" + b"\x01" * 200, "its zip archive is incomplete"),
    (b"not a checkpoint, just a text someone saved as .pt\n", "is not in PyTorch's format"),
], ids=["empty", "zeros", "cut-zip", "text"])
@pytest.mark.parametrize("command", ["evaluate", "translate", "visualize", "plot_act", "resume"])
def test_bad_checkpoint_files_are_one_error_line_in_every_command(tmp_path, capsys, content, expected, command):
    bad = tmp_path / "x.pt"
    bad.write_bytes(content)
    argv = {"evaluate": (evaluate, ["--checkpoint", bad]),
            "translate": (translate, ["--checkpoint", bad, "a b"]),
            "visualize": (visualize, ["--checkpoint", bad, "--example", "0", "--out", tmp_path / "f"]),
            "plot_act": (plot_act, ["--checkpoint", bad, "--out", tmp_path / "p.png"]),
            "resume": (train, ["--resume", tmp_path])}[command]
    if command == "resume":
        write_config(tmp_path / "config.yaml")
        bad.rename(tmp_path / "last.pt")
        bad = tmp_path / "last.pt"
    line = fails(*argv, capsys)
    assert str(bad) in line and expected in line
    assert "weights_only" not in line and "Re-running" not in line


def test_a_pickled_object_is_refused_without_the_unsafe_advice(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"format": "transformer_graph/1", "x": Path("/")}, bad)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert "pickled Python object" in str(err.value) and "weights_only" not in str(err.value)


@pytest.mark.parametrize("max_len,d_model", [(200_000_000, 16), (600_000, 512), (2 ** 40, 1)])
def test_an_absurd_max_len_is_a_config_error_not_an_allocation(max_len, d_model):
    with pytest.raises(ConfigError, match=rf"model.max_len: expected at most {2 ** 28 // d_model} .*got {max_len}"):
        config_from_dict({"model": {"max_len": max_len, "d_model": d_model, "heads": 1}})


# --------------------------------------------------------------------------- 5. silent garbage

def test_min_freq_that_keeps_no_word_is_an_error_and_one_that_keeps_few_a_warning(tmp_path):
    with pytest.raises(DataError, match=r"data.min_freq=1000: no source or target token .* occurs that often .*lower "
                                        r"data.min_freq"):
        Trainer(cfg_of(**{"data.min_freq": 1000}), tmp_path / "run", quiet=True)
    pairs = [(["a", "b"], ["x", "y"]), (["a", "c"], ["x", "z"]), (["a", "d"], ["x", "w"])]
    with pytest.warns(DataWarning, match=r"data.min_freq=2: 50% of the source training tokens become <unk>"):
        build_vocabs(pairs, min_freq=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_vocabs(pairs, min_freq=1)  # nothing lost, nothing said


@pytest.mark.parametrize("text,line,key", [
    ("model:\n  layers: 1\ndata:\n  task: copy\nmodel:\n  d_model: 16\n", 5, "'model'"),
    ("model:\n  layers: 1\n  heads: 2\n  layers: 3\n", 4, "'layers'"),
    ("train: {seed: 1, seed: 2}\n", 1, "'seed'"),
])
def test_duplicate_yaml_keys_are_an_error_naming_both_lines(tmp_path, text, line, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}: line {line}, .*duplicate key {key} \(first at line"):
        load_config(path)


def test_yaml_merge_keys_still_override_and_tags_are_still_refused(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("model: &m {layers: 1, heads: 2}\ndata: {task: copy}\n")
    assert load_config(path).model.layers == 1
    path.write_text("model: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


@pytest.mark.parametrize("data,message", [
    (b"a b\n\xff\xfe\x00\x01garbage\n", "stdin line 2: byte 0xff at column 1 is not UTF-8"),
    (b"a b\nc\x00d\n", "stdin line 2: column 2 holds the control character U+0000"),
    (bytes(range(256)), "stdin line 1: column 1 holds the control character U+0000"),
])
def test_binary_input_is_refused_not_translated_as_unk(data, message):
    with pytest.raises(InputError, match=re.escape(message)):
        list(read_text_lines(io.BytesIO(data).readlines()))


def test_text_input_reads_as_text():
    assert list(read_text_lines([b"\xef\xbb\xbfa b\r\n", "é ü\tß\n".encode()])) == ["a b", "é ü\tß"]
    with pytest.raises(InputError, match="line 3: column 1 holds bytes that are not UTF-8"):
        check_text("\udcff", "line 3")  # what Python makes of such bytes in argv


def test_translate_command_refuses_binary_stdin_in_one_line(run):
    proc = subprocess.run([sys.executable, "-m", "transformer_graph.cli.translate", "--checkpoint",
                           str(run / "best.pt")], input=b"a b c\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n",
                          capture_output=True, env=ENV, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.splitlines() == ["error: stdin line 2: byte 0x89 at column 1 is not UTF-8; expected UTF-8 text, "
                                "one sentence per line (is this binary data?)"]


def test_a_line_of_unknown_words_is_warned_about(run):
    translator = Translator.from_checkpoint(run / "best.pt")
    with pytest.warns(UserWarning, match="line 2: none of its 2 tokens is in the model's source vocabulary"):
        translator.translate(["a b", "xyz qqq"])


# --------------------------------------------------------------------------- 6. signals

def test_ctrl_c_during_the_final_test_evaluation_interrupts(tmp_path, monkeypatch, capsys):
    def evaluate_slowly(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # a user's Ctrl-C while the test split is decoded
        pytest.fail("the signal was swallowed by the training's handler")

    monkeypatch.setattr(train, "evaluate_checkpoint", evaluate_slowly)
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(write_config(tmp_path / "c.yaml")),
                    "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert exit_.value.code == 130 and capsys.readouterr().err.endswith("interrupted\n")


def test_one_signal_during_training_stops_after_the_step_and_saves(tmp_path):
    tr = Trainer(cfg_of(**{"train.max_epochs": 3}), tmp_path / "run", quiet=True)
    real = tr.train_step

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        if tr.progress.step == 2:  # (train_step runs before the step count moves on)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    tr.train_step = step
    summary = tr.fit()
    assert summary["stopped_by"] == "signal SIGTERM" and summary["steps"] == 3
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler was the run's alone
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["event"] == "summary"
