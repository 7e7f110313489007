"""Translate raw sentences with a trained checkpoint: text in, detokenised text out.

    translator = Translator.from_checkpoint("runs/multi30k_cpu/best.pt", beam=5)
    translator.translate(["A man in a blue shirt.", ""])   # -> ["Ein Mann ...", ""]

Input goes through the same tokenisation as the checkpoint's training data
(Moses for Multi30k, whitespace otherwise), unknown words become ``<unk>``
(and stay visible as ``<unk>`` in the output), sentences longer than the model
can take are truncated with a :class:`TruncationWarning`, and empty lines give
empty translations without touching the model. Sentences are decoded in
length-sorted batches (:func:`~transformer_graph.inference.evaluation.decode_dataset`);
the output keeps the input order.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from transformer_graph.config import Config
from transformer_graph.data.datasets import Vocab
from transformer_graph.inference.evaluation import _detokenizer, _tokenize, decode_dataset
from transformer_graph.graphs.build import GraphSpec


class TruncationWarning(UserWarning):
    """A source sentence was longer than the model accepts and was cut."""


@dataclass
class Translator:
    model: torch.nn.Module
    cfg: Config
    src_vocab: Vocab
    tgt_vocab: Vocab
    spec: GraphSpec
    beam: int
    alpha: float
    batch_size: int = 64   # sentences decoded together (divided by the beam size)

    @classmethod
    def from_checkpoint(cls, path, *, beam: int | None = None, alpha: float | None = None,
                        batch_size: int = 64, map_location="cpu") -> "Translator":
        """Load ``path`` (best.pt, last.pt, averaged.pt); beam/alpha default to the run's eval config."""
        from transformer_graph.experiment import graph_spec, load_trained

        if beam is not None and beam < 1:
            raise ValueError(f"beam: expected a positive integer, got {beam!r}")
        if alpha is not None and alpha < 0:
            raise ValueError(f"alpha: expected a non-negative number, got {alpha!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        model, cfg, (src_vocab, tgt_vocab), _ = load_trained(path, map_location)
        return cls(model, cfg, src_vocab, tgt_vocab, graph_spec(cfg.model),
                   cfg.eval.beam if beam is None else beam, cfg.eval.alpha if alpha is None else alpha,
                   batch_size)

    @property
    def max_src_len(self) -> int:
        """Longest source the model takes: its positional table, and what it was trained on."""
        return min(self.model.pos.max_len, self.cfg.data.max_src_len)

    def tokenize(self, lines: Sequence[str]) -> list[list[str]]:
        return _tokenize(self.cfg, list(lines), self.cfg.data.src_lang)

    def detokenize(self, tokens: Sequence[str]) -> str:
        return _detokenizer(self.cfg)(list(tokens))

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
        for i, tokens in enumerate(self.tokenize(lines)):
            if not tokens:
                continue
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


def translate_main(argv=None) -> int:
    """``scripts/translate.py``: sentences from the arguments, else stdin (one per line)."""
    import argparse
    import sys

    from transformer_graph.checkpoint import CheckpointError
    from transformer_graph.config import ConfigError

    ap = argparse.ArgumentParser(description="Translate raw sentences with a trained checkpoint; "
                                 "reads stdin (one sentence per line) when no sentence is given.")
    ap.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt (or last.pt, averaged.pt)")
    ap.add_argument("--beam", type=int, help="beam size (default: the run's eval.beam)")
    ap.add_argument("--alpha", type=float, help="length-penalty exponent (default: the run's eval.alpha)")
    ap.add_argument("--batch-size", type=int, default=64, help="sentences decoded together (default 64)")
    ap.add_argument("sentences", nargs="*", help="sentences to translate (default: read stdin)")
    args = ap.parse_args(argv)

    def show(message, category, *_args, **_kwargs):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("always", TruncationWarning)
    try:
        translator = Translator.from_checkpoint(args.checkpoint, beam=args.beam, alpha=args.alpha,
                                                batch_size=args.batch_size)
        if args.sentences:
            chunks = [args.sentences]
        elif sys.stdin.isatty():
            chunks = ([line.rstrip("\r\n")] for line in sys.stdin)  # interactive: answer each line
        else:
            chunks = _chunks((line.rstrip("\r\n") for line in sys.stdin), 8 * args.batch_size)
        for chunk in chunks:
            for text in translator.translate(chunk):
                print(text)
            sys.stdout.flush()
    except (ConfigError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _chunks(items, size: int):
    """Lists of up to ``size`` items, so long inputs stream out chunk by chunk."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
