"""Translate raw sentences with a trained checkpoint: text in, detokenised text out.

    translator = Translator.from_checkpoint("runs/multi30k_cpu/best.pt", beam=5)
    translator.translate(["A man in a blue shirt.", ""])   # -> ["Ein Mann ...", ""]

Input goes through the same tokenisation as the checkpoint's training data
(Moses for Multi30k, whitespace otherwise), unknown words become ``<unk>``
(and stay visible as ``<unk>`` in the output), sentences longer than the model
can take are truncated with a :class:`TruncationWarning`, and empty lines give
empty translations without touching the model. Input that is not text -- bytes that are
not UTF-8, control characters such as NUL -- is an :class:`InputError`, never a line of
``<unk>``s; a line none of whose words the model knows gets an :class:`UnknownWordsWarning`. Sentences are decoded in
length-sorted batches (:func:`~transformer_graph.inference.evaluation.decode_dataset`);
the output keeps the input order.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from transformer_graph.config import Config
from transformer_graph.data.datasets import Vocab
from transformer_graph.data.text import TextPipeline
from transformer_graph.experiment import graph_spec, load_trained, trained_text
from transformer_graph.inference.evaluation import decode_dataset
from transformer_graph.graphs.build import GraphSpec


class TruncationWarning(UserWarning):
    """A source sentence was longer than the model accepts and was cut."""


class UnknownWordsWarning(UserWarning):
    """No word of a source sentence is in the model's vocabulary: the output can only be noise."""


class InputError(ValueError):
    """Input that is not text: bytes that are not UTF-8, or control characters (binary data)."""


# Tab is ordinary whitespace in text; every other C0 control, DEL and the C1 controls mean binary data.
_CONTROL = {*range(0x00, 0x20), *range(0x7F, 0xA0)} - {0x09}


def check_text(text: str, where: str) -> str:
    """``text`` itself when it is text; an :class:`InputError` naming ``where`` (e.g. "stdin line 3") when
    it holds a control character, or a lone surrogate (bytes that were not UTF-8, escaped by Python)."""
    for column, char in enumerate(text, 1):
        code = ord(char)
        if code in _CONTROL or 0xD800 <= code <= 0xDFFF:
            what = "bytes that are not UTF-8" if code >= 0xD800 else f"the control character U+{code:04X}"
            raise InputError(f"{where}: column {column} holds {what}; expected UTF-8 text, one sentence per "
                             f"line (is this binary data?)")
    return text


def read_text_lines(stream: Iterable[bytes], where: str = "stdin") -> Iterator[str]:
    """The lines of a binary stream as text (newline and a leading byte-order mark removed), each
    checked by :func:`check_text`; invalid UTF-8 is an :class:`InputError`, not replaced by anything."""
    for number, raw in enumerate(stream, 1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"{where} line {number}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is "
                             f"not UTF-8; expected UTF-8 text, one sentence per line (is this binary data?)"
                             ) from None
        yield check_text(text.rstrip("\r\n"), f"{where} line {number}")


@dataclass
class Translator:
    model: torch.nn.Module
    cfg: Config
    src_vocab: Vocab
    tgt_vocab: Vocab
    spec: GraphSpec
    beam: int
    alpha: float
    batch_size: int = 64   # sentences decoded together (each with beam-size hypotheses)
    text: TextPipeline | None = None  # raw text <-> tokens (None: the config's words)

    def __post_init__(self) -> None:
        if self.text is None:
            self.text = TextPipeline(self.cfg.data)

    @classmethod
    def from_checkpoint(cls, path, *, beam: int | None = None, alpha: float | None = None,
                        batch_size: int = 64, map_location="cpu") -> Translator:
        """Load ``path`` (best.pt, last.pt, averaged.pt); beam/alpha default to the run's eval config."""
        if beam is not None and beam < 1:
            raise ValueError(f"beam: expected a positive integer, got {beam!r}")
        if alpha is not None and alpha < 0:
            raise ValueError(f"alpha: expected a non-negative number, got {alpha!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        model, cfg, (src_vocab, tgt_vocab), ckpt = load_trained(path, map_location)
        return cls(model, cfg, src_vocab, tgt_vocab, graph_spec(cfg.model),
                   cfg.eval.beam if beam is None else beam, cfg.eval.alpha if alpha is None else alpha,
                   batch_size, trained_text(cfg, ckpt, path))

    @property
    def max_src_len(self) -> int:
        """Longest source the model takes: its positional table, and what it was trained on."""
        return min(self.model.pos.max_len, self.cfg.data.max_src_len)

    def tokenize(self, lines: Sequence[str]) -> list[list[str]]:
        return self.text.tokenize(list(lines), self.cfg.data.src_lang)

    def detokenize(self, tokens: Sequence[str]) -> str:
        return self.text.detokenize(list(tokens))

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Source ids; unknown words -> <unk>. A literal '<sos>'/'<eos>'/'<pad>' typed by a user
        is a word the model never saw in a source, so it is <unk> too, not a control id."""
        v = self.src_vocab
        return [v.unk if i in (v.pad, v.sos, v.eos) else i for i in v.encode(tokens)]

    def translate(self, lines: Sequence[str]) -> list[str]:
        """One detokenised translation per input line ('' for an empty line)."""
        lines = list(lines)
        out = [""] * len(lines)
        todo, srcs = [], []
        limit = self.max_src_len
        for i, line in enumerate(lines):
            check_text(line, f"line {i + 1}")
        for i, tokens in enumerate(self.tokenize(lines)):
            if not tokens:
                continue
            if all(t not in self.src_vocab for t in tokens):
                warnings.warn(f"line {i + 1}: none of its {len(tokens)} tokens is in the model's source "
                              f"vocabulary, so it reads as <unk> only; is it in the language (or alphabet) "
                              f"the model was trained on?", UnknownWordsWarning, stacklevel=2)
            if len(tokens) > limit:
                warnings.warn(f"line {i + 1}: {len(tokens)} tokens, truncated to the model's limit "
                              f"of {limit}", TruncationWarning, stacklevel=2)
                tokens = tokens[:limit]
            todo.append(i)
            srcs.append(self.encode(tokens))
        if not srcs:
            return out
        e, v = self.cfg.eval, self.tgt_vocab
        hyps = decode_dataset(self.model, srcs, self.spec, sos=v.sos, eos=v.eos, beam=self.beam,
                              alpha=self.alpha, max_len_a=e.max_len_a, max_len_b=e.max_len_b,
                              sentences_per_batch=self.batch_size)
        for i, ids in zip(todo, hyps):
            out[i] = self.detokenize(v.decode(ids))
        return out
