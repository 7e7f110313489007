"""``--resume``: continue exactly the run that stopped, or say exactly why not, before any work.

The checkpoint to continue from is ``RUN_DIR/last.pt``, or -- with a warning -- the newest intact
training checkpoint of the run when ``last.pt`` is missing or damaged. It is compared with the
config the run resumes with (the run's ``config.yaml`` plus any ``--set``) and with the data that
config loads: only the keys of :data:`~transformer_graph.checkpoint.RESUME_SAFE_KEYS` may differ;
anything else -- model shape, data, vocabulary, optimizer, seed -- is a :class:`ResumeError` that
lists every difference. Checkpoints written before fingerprints still resume: their config and
vocabulary are checked, their data through the vocabulary it builds.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from transformer_graph.checkpoint import (RESUME_SAFE_KEYS, CheckpointError, check_training_state, config_differences,
                                          fingerprint, fingerprint_differences, load_checkpoint,
                                          newest_intact_checkpoint)
from transformer_graph.config import Config, ConfigDeprecationWarning, config_from_dict, config_to_dict, load_config

from transformer_graph.experiment import Experiment, make_vocabs
from transformer_graph.files import atomic_write_text


class ResumeError(CheckpointError):
    """The checkpoint was trained with another model, data, vocabulary or optimizer than the config says."""


class CheckpointWarning(UserWarning):
    """The run resumes from an older checkpoint than ``last.pt`` (which is missing or damaged)."""


def load_resume_checkpoint(run_dir: Path) -> tuple[Path | None, dict | None]:
    """``(path, checkpoint)`` to continue ``run_dir`` from: its ``last.pt``, else the newest intact one.

    ``(None, None)`` for a run that was stopped before its first checkpoint (its ``config.yaml`` is
    there, no checkpoint is): it starts over from step 0, which is exactly where it resumes."""
    last = run_dir / "last.pt"
    try:
        ckpt = load_checkpoint(last)
        check_training_state(ckpt, last)
        return last, ckpt
    except CheckpointError as err:
        found = newest_intact_checkpoint(run_dir, skip=("last.pt",))
        if found is None:
            if last.exists():
                raise CheckpointError(f"{err}; no other checkpoint of {run_dir} is intact either") from None
            if (run_dir / "config.yaml").is_file() and not any(run_dir.glob("*.pt")):
                warnings.warn(f"{run_dir} has no checkpoint yet (the run stopped before its first save): "
                              f"starting it over from step 0", CheckpointWarning, stacklevel=2)
                return None, None
            raise
        path, ckpt = found
        problem = "is missing" if not last.exists() else f"cannot be used ({err})"
        warnings.warn(f"{last} {problem}: resuming from {path} instead, the newest intact checkpoint "
                      f"(step {ckpt['progress']['step']}); the steps after it are trained again",
                      CheckpointWarning, stacklevel=2)
        return path, ckpt


def _safe_keys_text() -> str:
    keys = [k for k in RESUME_SAFE_KEYS if not k.endswith(".")]
    sections = [f"{k}*" for k in RESUME_SAFE_KEYS if k.endswith(".")]
    return f"{', '.join(keys)} and any {' or '.join(sections)} key"


def _mismatch(run_dir: Path, path: Path, problems: list[str]) -> ResumeError:
    return ResumeError(f"cannot resume {run_dir}: {path} is of another setup: "
                       f"{'; '.join(problems)}. A resumed run may change only {_safe_keys_text()}; undo "
                       f"the change (in {run_dir / 'config.yaml'} or the --set) or start a new run with "
                       f"another --run-dir")


def check_config(ckpt: dict | None, path: Path | None, cfg: Config, run_dir: Path) -> None:
    """A :class:`ResumeError` naming every config key that differs from the checkpoint's (without one:
    from the run's ``config.yaml``) and may not."""
    with warnings.catch_warnings():  # deprecated keys of the saved config: the run's config.yaml warns
        warnings.simplefilter("ignore", ConfigDeprecationWarning)
        if ckpt is None:
            path = run_dir / "config.yaml"
            saved = config_to_dict(load_config(path))
        else:
            saved = config_to_dict(config_from_dict(ckpt["config"], source=f"{path} (saved config)"))
    problems = config_differences(saved, config_to_dict(cfg))
    if problems:
        raise _mismatch(run_dir, path, problems)


def check_data(ckpt: dict, path: Path, exp: Experiment, run_dir: Path) -> None:
    """A :class:`ResumeError` when the data the config loads now is not what the checkpoint learned:
    another training split (fingerprint) or one that builds another vocabulary."""
    src, tgt = make_vocabs(exp.cfg, exp.tokens["train"], exp.text.subwords)
    saved = ckpt.get("fingerprint") or fingerprint(ckpt["src_vocab"], ckpt["tgt_vocab"])
    problems = fingerprint_differences(saved, fingerprint(src.to_dict(), tgt.to_dict(), exp.tokens["train"]))
    if problems:
        raise _mismatch(run_dir, path, problems)


def truncate_log(path: Path, step: int) -> int:
    """Drop the records of ``metrics.jsonl`` after optimizer step ``step`` (and a line a kill cut
    short): the resumed run logs those steps again. Returns the number of lines dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)
