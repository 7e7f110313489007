"""Subword vocabularies: a joint SentencePiece model (BPE or unigram) over the tokenised text.

The pipeline is words first, pieces second: each task tokenises raw text as it always did
(Moses for Multi30k, whitespace otherwise, :mod:`transformer_graph.data.text`), and the model
splits those tokens into pieces. So tokenised BLEU is still computed on the same word tokens
(pieces are joined back first) and word-level and subword runs compare on the same numbers.

Three settings make the pieces lossless and ``<unk>``-free, which is the point of using them:

- ``normalization_rule_name=identity``: SentencePiece's default NFKC rule would rewrite
  characters, so joining pieces back would not give the text that went in;
- ``character_coverage=1.0``: every character of the training text gets a piece;
- ``byte_fallback``: a character never seen in training becomes its UTF-8 bytes
  (``<0xC3>`` ...), never ``<unk>``.

Training on the 58k Multi30k sentences takes a few seconds; the model is cached on disk keyed
by a hash of the training text and the settings (like the Moses token cache) and saved with the
run (``RUN_DIR/subwords.model``, and inside every checkpoint), so evaluation and translation
never depend on the cache.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import sentencepiece as spm
import torch

from transformer_graph.data.datasets import SPECIALS, DataError, Vocab
from transformer_graph.files import atomic_write_bytes

KINDS = ("bpe", "unigram")
CACHE_FORMAT = 1  # bump when the trainer settings below change

# Fixed trainer settings (see the module docstring); the kind and size come from the config.
SETTINGS = {
    "character_coverage": 1.0,
    "byte_fallback": True,
    "normalization_rule_name": "identity",
    "split_digits": False,
    "unk_id": 0, "bos_id": -1, "eos_id": -1, "pad_id": -1,  # our own specials live in Vocab
    "num_threads": 1,           # one thread: the same input always gives the same model
    "shuffle_input_sentence": False,
    "input_sentence_size": 0,   # use every sentence
    "minloglevel": 2,           # SentencePiece's own progress lines stay quiet
}


def sentencepiece_version() -> str:
    try:
        return metadata.version("sentencepiece")
    except metadata.PackageNotFoundError:
        return getattr(spm, "__version__", "unknown")


class SubwordModel:
    """A trained SentencePiece model: word tokens <-> pieces, and the vocabulary of its pieces.

    Built from the model's serialized bytes (what the run directory and checkpoints keep)."""

    def __init__(self, proto: bytes, source: str = "subword model"):
        self.proto = bytes(proto)
        self.source = source
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.proto)
        except (RuntimeError, OSError, TypeError) as err:
            raise DataError(f"{source}: not a SentencePiece model ({str(err).splitlines()[0] if str(err) else err}); "
                            f"expected a .model file written by SentencePiece (e.g. RUN_DIR/subwords.model)") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, what: str = "data.subword_model") -> SubwordModel:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"{what}: SentencePiece model {str(path)!r} does not exist; expected a .model file "
                            f"(RUN_DIR/subwords.model of a run trained with data.subwords, or one written by "
                            f"spm_train)")
        return cls(path.read_bytes(), f"{what} {str(path)!r}")

    def __len__(self) -> int:
        return self._sp.GetPieceSize()

    def tensor(self):
        """The model's bytes as a uint8 tensor: how a checkpoint carries it (the safe loader
        reads tensors and plain values, not ``bytes``)."""
        return torch.frombuffer(bytearray(self.proto), dtype=torch.uint8)

    @classmethod
    def from_tensor(cls, t, source: str = "subword model") -> SubwordModel:
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
            raise DataError(f"{source}: expected the model's bytes as a 1-d uint8 tensor, got "
                            f"{type(t).__name__}")
        return cls(t.numpy().tobytes(), source)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.proto).hexdigest()

    def pieces(self) -> list[str]:
        """The model's pieces in id order, without its control and unknown symbols."""
        sp = self._sp
        return [sp.IdToPiece(i) for i in range(len(self)) if not (sp.IsControl(i) or sp.IsUnknown(i))]

    def vocab(self) -> Vocab:
        """Our vocabulary of this model: the four specials, then every piece. Every piece is in it,
        so with byte fallback no input ever becomes <unk>."""
        return Vocab([*SPECIALS, *(p for p in self.pieces() if p not in SPECIALS)])

    def check_vocab(self, vocab: Vocab, where: str) -> None:
        """A DataError unless ``vocab`` is this model's vocabulary (a model from another run would
        silently map ids to other pieces)."""
        if vocab.itos != self.vocab().itos:
            raise DataError(f"{where}: the vocabulary ({len(vocab)} tokens) is not the one of {self.source} "
                            f"({len(self.vocab())} tokens); the SentencePiece model comes from another run. "
                            f"Use the run's own subwords.model (or the checkpoint's embedded one)")

    def encode(self, tokens: Sequence[str]) -> list[str]:
        """Pieces of one sentence's word tokens."""
        if not tokens:
            return []
        return self._sp.EncodeAsPieces(" ".join(tokens))

    def encode_all(self, token_lists: Iterable[Sequence[str]]) -> list[list[str]]:
        lists = list(token_lists)
        if not lists:
            return []
        encoded = self._sp.EncodeAsPieces([" ".join(t) for t in lists])
        return [p if t else [] for p, t in zip(encoded, lists)]

    def decode(self, pieces: Sequence[str]) -> list[str]:
        """Word tokens of pieces (the inverse of :meth:`encode` on normalised text)."""
        pieces = [p for p in pieces if p not in SPECIALS]
        if not pieces:
            return []
        return self._sp.DecodePieces(list(pieces)).split()


def train_model(sentences: Sequence[Sequence[str]], kind: str, vocab_size: int) -> SubwordModel:
    """A SentencePiece model of ``kind`` with ``vocab_size`` pieces trained on tokenised sentences."""
    if kind not in KINDS:
        raise DataError(f"data.subwords: {kind!r} is not a subword model kind; expected one of {', '.join(KINDS)}")
    lines = [" ".join(t) for t in sentences if t]
    if not lines:
        raise DataError("data.subwords: the training split has no text to learn subwords from")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(sentence_iterator=iter(lines), model_writer=out, model_type=kind,
                                       vocab_size=vocab_size, **SETTINGS)
    except RuntimeError as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        if "Vocabulary size" in msg or "vocab_size" in msg:
            raise DataError(f"data.subword_vocab_size: {vocab_size} is more pieces than the training text "
                            f"supports ({msg.split(']')[-1].strip()}); choose a smaller size") from None
        raise DataError(f"data.subwords: SentencePiece could not train a {kind} model of {vocab_size} pieces "
                        f"({msg})") from None
    return SubwordModel(out.getvalue(), f"the {kind} model of {vocab_size} pieces trained on the training split")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/transformer_graph/subwords`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer_graph" / "subwords"


def cache_key(sentences: Sequence[Sequence[str]], kind: str, vocab_size: int) -> str:
    """Hash of everything a trained model depends on: the text, the kind and size, the fixed
    settings and the SentencePiece version."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "kind": kind, "vocab_size": vocab_size,
                                   "settings": SETTINGS, "sentencepiece": sentencepiece_version()},
                                  sort_keys=True).encode())
    for tokens in sentences:
        h.update(" ".join(tokens).encode("utf-8") + b"\n")
    return h.hexdigest()


def cached_model(sentences: Sequence[Sequence[str]], kind: str, vocab_size: int,
                 cache_dir: str | os.PathLike | None = None) -> SubwordModel:
    """:func:`train_model`, or the model trained on the same inputs before."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(sentences, kind, vocab_size)
    path = cache_dir / f"spm-{kind}{vocab_size}-{key[:16]}.model"
    if path.is_file():
        try:
            return SubwordModel(path.read_bytes(), f"the cached model {str(path)!r}")
        except (DataError, OSError) as err:  # corrupt cache: train again
            warnings.warn(f"ignoring unreadable subword cache {str(path)!r} ({err}); retraining it")
    model = train_model(sentences, kind, vocab_size)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, model.proto)
    except OSError as err:  # a read-only home should not stop training
        warnings.warn(f"could not write the subword cache {str(path)!r} ({err}); it is trained again next time")
    return model
