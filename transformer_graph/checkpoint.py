"""Checkpoints: written atomically, loaded safely.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
it loads with ``torch.load(weights_only=True)``: no pickled code runs when a user
opens a file. It is written with :func:`transformer_graph.files.atomic_torch_save`
(a temporary file in the same directory, flushed to disk and renamed over the
target), so a crash mid-write never leaves a half-written ``last.pt`` or ``best.pt``.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import zipfile
from pathlib import Path

import torch

from transformer_graph.files import atomic_torch_save

FORMAT = "transformer_graph/1"


class CheckpointError(ValueError):
    """A file that is missing, corrupt, or not one of our checkpoints."""


# The checkpoint writer under its old name (the tests and older callers import it from here).
atomic_save = atomic_torch_save


def save_checkpoint(path, **content) -> None:
    """Save ``content`` (model/optimizer state dicts, config dict, vocab dict, ...) atomically."""
    atomic_save({"format": FORMAT, **content}, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dict at ``path``; any file that is not one of ours is a :class:`CheckpointError`
    whose message names the file and says what it is instead (empty, truncated, foreign, unsafe)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; expected a checkpoint file such as {path / 'last.pt'}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (expected RUN_DIR/last.pt or best.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds (and words) for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a readable transformer_graph checkpoint: {_unreadable(path, err)}; "
                              f"expected a checkpoint written by tg-train (RUN_DIR/last.pt, best.pt, ...)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a transformer_graph checkpoint (expected format "
                              f"{FORMAT!r}, found {found!r})")
    return ckpt


_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's pre-1.6 format starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_REFUSED = re.compile(r"Unsupported (?:global: GLOBAL |class )([\w.]+)")


def _unreadable(path: Path, err: Exception) -> str:
    """Why ``path`` does not load, from its bytes rather than torch's text: that text varies between
    versions, can be cut mid-word, and recommends the unsafe reload (weights_only=False)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(len(_LEGACY_MAGIC))
    except OSError as os_err:
        return f"cannot read it ({os_err.strerror or type(os_err).__name__})"
    if size == 0:
        return "the file is empty (0 bytes)"
    refused = _REFUSED.search(str(err))
    if refused:
        return (f"it holds a pickled Python object ({refused.group(1)}) that the safe loader refuses to "
                f"create; tg-train writes only tensors and plain values, so this file was made elsewhere")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return f"its zip archive is incomplete ({size} bytes): the file is truncated or damaged"
        return "its zip archive does not hold a PyTorch checkpoint (or is damaged)"
    if head.startswith(_LEGACY_MAGIC):
        return f"the file ({size} bytes, PyTorch's old format) is truncated or damaged"
    return (f"the file ({size} bytes, starting {head[:4].hex(' ')}) is not in PyTorch's format "
            f"(a zip archive starting 50 4b 03 04)")


def last_checkpoint_status(run_dir) -> str:
    """What a user who must stop can rely on: the run's ``last.pt``, if it exists."""
    last = Path(run_dir) / "last.pt"
    return (f"The last good checkpoint {last} is intact: continue with --resume {run_dir}"
            if last.exists() else "No checkpoint was written yet")


# --------------------------------------------------------------------------- resuming

# What --resume needs besides the format: a training state, not an averaged or foreign file.
TRAINING_STATE = ("model", "optimizer", "scheduler", "rng", "progress", "config", "src_vocab", "tgt_vocab")


def check_training_state(ckpt: dict, path) -> None:
    """A :class:`CheckpointError` unless ``ckpt`` is a state a run can continue from."""
    if "averaged_from" in ckpt:
        raise CheckpointError(f"{path}: is the average of {', '.join(ckpt['averaged_from'])}, not a training "
                              f"state; a run continues from its last.pt (or best.pt, epoch<N>.pt)")
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(map(repr, missing))}; a run continues only from a "
                              f"checkpoint tg-train wrote (RUN_DIR/last.pt, best.pt, epoch<N>.pt)")


def newest_intact_checkpoint(run_dir, skip=()) -> tuple[Path, dict] | None:
    """``(path, checkpoint)`` of the training checkpoint in ``run_dir`` with the most steps that loads
    and holds a training state (``skip``: names not to consider), or None.

    Every save is atomic, so a kill never leaves a torn file; this is for a file damaged after
    the fact (a full disk, a copy cut short, a user's mistake)."""
    run_dir = Path(run_dir)
    found = None
    for path in [run_dir / "last.pt", run_dir / "best.pt", *sorted(run_dir.glob("epoch*.pt"))]:
        if path.name in skip or not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path)
            check_training_state(ckpt, path)
        except CheckpointError:
            continue
        if found is None or ckpt["progress"]["step"] > found[1]["progress"]["step"]:
            found = (path, ckpt)
    return found


# Config keys a resumed run may change: how long, how verbosely and where it trains, on which
# (equivalent) kernels, how often it saves, and how it is evaluated -- never what is learned from
# what. A key ending in "." stands for its whole section.
RESUME_SAFE_KEYS = ("train.max_epochs", "train.max_steps", "train.max_time", "train.threads",
                    "train.log_every", "train.save_every_steps", "train.save_every_minutes", "train.keep_last",
                    "train.average_last", "train.device", "train.engine", "train.kernels", "train.tune_malloc",
                    "eval.", "viz.")


def resume_safe(key: str) -> bool:
    """True when config key ``key`` (dotted) may differ between a checkpoint and the run resuming it."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_SAFE_KEYS)


def flat_config(config: dict, prefix: str = "") -> dict:
    """``{"model.layers": 2, "model.structure.enc": "complete", ...}`` of a nested config dict."""
    out = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        out.update(flat_config(value, f"{key}.") if isinstance(value, dict) else {key: value})
    return out


def config_differences(saved: dict, now: dict) -> list[str]:
    """``"key: X in the checkpoint, Y now"`` for each key of two config dicts (as
    :func:`~transformer_graph.config.config_to_dict` gives them) that differs and may not change on resume."""
    a, b = flat_config(saved), flat_config(now)
    return [f"{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now"
            for k in sorted(set(a) | set(b), key=list({**a, **b}).index)
            if not resume_safe(k) and a.get(k) != b.get(k)]


def digest(obj) -> str:
    """A short stable hash of a JSON-able value (tokens, vocabularies)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(src_vocab: dict, tgt_vocab: dict, train_pairs=None) -> dict:
    """What a checkpoint's weights were trained on besides its config (saved beside it): the
    vocabularies, which fix the embedding shapes, and the training split after filtering.
    ``train_pairs`` None (a checkpoint written before fingerprints) leaves the data part out."""
    fp = {"version": 1, "vocab": {"src": digest(src_vocab["itos"]), "tgt": digest(tgt_vocab["itos"]),
                                  "src_size": len(src_vocab["itos"]), "tgt_size": len(tgt_vocab["itos"])}}
    if train_pairs is not None:
        fp["data"] = {"train_pairs": len(train_pairs), "train": digest(train_pairs)}
    return fp


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """What differs between the fingerprint a checkpoint carries and that of the data now, in words."""
    out = []
    for side, name in (("src", "source"), ("tgt", "target")):
        if saved["vocab"][side] != now["vocab"][side]:
            out.append(f"{name} vocabulary: the training data now gives {now['vocab'][f'{side}_size']} tokens, "
                       f"the checkpoint's has {saved['vocab'][f'{side}_size']}" +
                       (" (other tokens)" if saved["vocab"][f"{side}_size"] == now["vocab"][f"{side}_size"]
                        else ""))
    if "data" in saved and "data" in now and saved["data"] != now["data"]:
        n, m = saved["data"]["train_pairs"], now["data"]["train_pairs"]
        out.append(f"training data: {m} pairs now, {n} in the checkpoint" + (", other sentences" if n == m else ""))
    return out


def rng_state() -> dict:
    """Every random state the training loop draws from (dropout, shuffles)."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
