"""Data: vocabularies, synthetic copy/sort tasks, parallel text, batching.

Everything here works on plain Python lists of tokens/ids; the only place a
tensor appears is :func:`collate`, which turns a list of example indices into a
:class:`~transformer_graph.data.batch.GraphBatch`. Because the graph model has no
padding, batches are measured in *tokens actually present* (source tokens plus
target tokens plus the one extra <sos>/<eos> node), never in padded rectangles.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from transformer_graph.data.batch import GraphBatch, make_batch
from transformer_graph.files import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported: old import path)
from transformer_graph.graphs.build import GraphSpec
from transformer_graph.seeds import derive_seed

TokenPair = tuple[list[str], list[str]]
IdPair = tuple[list[int], list[int]]

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Bad or missing input data (files, vocabularies, configurations)."""


class DataWarning(UserWarning):
    """Data was dropped or altered on the way in (filtering, truncation)."""


# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------
SPECIALS = ("<pad>", "<unk>", "<sos>", "<eos>")


@dataclass
class Vocab:
    """Token <-> id map whose first four ids are the special tokens.

    The special ids are fixed (``pad=0, unk=1, sos=2, eos=3``) so that a model,
    a checkpoint and a decoder can agree on them without looking at the data.
    """

    itos: list[str]
    stoi: dict[str, int] = field(init=False, repr=False)

    pad = 0
    unk = 1
    sos = 2
    eos = 3

    def __post_init__(self) -> None:
        self.itos = list(self.itos)
        if tuple(self.itos[: len(SPECIALS)]) != SPECIALS:
            raise DataError(f"vocabulary must start with the special tokens {list(SPECIALS)}, "
                            f"got {self.itos[: len(SPECIALS)]}")
        self.stoi = {}
        for i, tok in enumerate(self.itos):
            if not isinstance(tok, str):
                raise DataError(f"vocabulary entry {i} is {tok!r}; expected a string token")
            if tok in self.stoi:
                raise DataError(f"vocabulary token {tok!r} appears twice (ids {self.stoi[tok]} and {i})")
            self.stoi[tok] = i

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1,
              max_size: int | None = None) -> Vocab:
        """Vocabulary of the tokens seen at least ``min_freq`` times.

        Order is frequency (descending) then token, so the same data always
        gives the same ids. ``max_size`` bounds the *total* size, specials
        included, so it is directly the embedding table's row count.
        """
        if min_freq < 1:
            raise DataError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < len(SPECIALS):
            raise DataError(f"max_size must be >= {len(SPECIALS)} (the special tokens), got {max_size}")
        counts = Counter(tok for toks in token_lists for tok in toks)
        for special in SPECIALS:
            counts.pop(special, None)  # they already have fixed ids
        kept = sorted((tok for tok, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Token ids; tokens not in the vocabulary become ``unk``."""
        unk = self.unk
        return [self.stoi.get(tok, unk) for tok in tokens]

    def decode(self, ids: Iterable[int], strip_special: bool = True) -> list[str]:
        """Tokens of ``ids``.

        With ``strip_special`` (the default, for model output) decoding stops at
        the first ``eos`` and drops ``pad``/``sos``; ``unk`` is kept so that
        unknown words stay visible. Without it every id is mapped verbatim.
        """
        out = []
        for i in ids:
            i = int(i)  # accept tensors/numpy scalars
            if not 0 <= i < len(self.itos):
                raise DataError(f"token id {i} is out of range for a vocabulary of size {len(self.itos)}")
            if strip_special:
                if i == self.eos:
                    break
                if i in (self.pad, self.sos):
                    continue
            out.append(self.itos[i])
        return out

    # -- persistence -------------------------------------------------------
    def to_dict(self) -> dict:
        return {"specials": list(SPECIALS), "itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if not isinstance(d, dict) or not isinstance(d.get("itos"), list):
            raise DataError(f"expected a dict with an 'itos' list of tokens, got {type(d).__name__}")
        if "specials" in d and tuple(d["specials"]) != SPECIALS:
            raise DataError(f"vocabulary was saved with specials {d['specials']}, "
                            f"this code expects {list(SPECIALS)}")
        return cls(d["itos"])

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"vocabulary file {str(path)!r} does not exist; expected a JSON file "
                            f"written by Vocab.save") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"vocabulary file {str(path)!r} is not valid UTF-8 JSON: {err}") from None
        try:
            return cls.from_dict(d)
        except DataError as err:
            raise DataError(f"vocabulary file {str(path)!r}: {err}") from None


# --------------------------------------------------------------------------
# Synthetic tasks (DGL Transformer tutorial): copy and sort
# --------------------------------------------------------------------------
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
TASKS = ("copy", "sort")


def make_copy_sort(task: str, n: int, seed: int, length_mean: float = 15.0, length_std: float = 3.0,
                   alphabet: Sequence[str] = ALPHABET) -> list[TokenPair]:
    """``n`` pairs of random symbol strings; target = source (copy) or sorted(source) (sort).

    Lengths are drawn from N(length_mean, length_std), rounded and clipped to
    at least 1; symbols uniformly from ``alphabet`` (a string of one-character
    symbols or a sequence of symbol strings). Deterministic per ``seed``.
    """
    if task not in TASKS:
        raise DataError(f"unknown synthetic task {task!r}; expected one of {TASKS}")
    if n < 0:
        raise DataError(f"number of examples must be >= 0, got {n}")
    symbols = list(alphabet)
    if not symbols:
        raise DataError("alphabet is empty; expected at least one symbol")
    if length_std < 0:
        raise DataError(f"length_std must be >= 0, got {length_std}")
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.normal(length_mean, length_std, size=n)), 1, None).astype(np.int64)
    # One draw for all symbols, then cut: faster than n small draws, and still
    # a pure function of the seed.
    flat = rng.integers(len(symbols), size=int(lengths.sum()))
    chunks = np.split(flat, np.cumsum(lengths)[:-1]) if n else []
    pairs = []
    for chunk in chunks:
        src = [symbols[i] for i in chunk]
        pairs.append((src, list(src) if task == "copy" else sorted(src)))
    return pairs


def load_task(task: str, *, seed: int = 0, train_size: int = 10000, valid_size: int = 1000,
              test_size: int = 1000, length_mean: float = 15.0, length_std: float = 3.0,
              alphabet: Sequence[str] = ALPHABET) -> dict[str, list[TokenPair]]:
    """The copy or sort task as ``{"train", "valid", "test"} -> pairs``.

    Each split draws from its own seed derived from (seed, split index), so
    splits are independent and resizing one does not change the others.
    """
    sizes = {"train": train_size, "valid": valid_size, "test": test_size}
    return {
        split: make_copy_sort(task, size, seed=derive_seed(seed, k),
                              length_mean=length_mean, length_std=length_std, alphabet=alphabet)
        for k, (split, size) in enumerate(sizes.items())
    }


# --------------------------------------------------------------------------
# Parallel text
# --------------------------------------------------------------------------
def read_lines(path: str | os.PathLike, what: str = "file") -> list[str]:
    r"""Lines of a UTF-8 text file, plain or gzip (detected by content), without newlines.

    Lines are split on ``\n`` (and ``\r\n``) only: ``str.splitlines`` would
    also split on characters such as U+2028 inside a sentence and silently
    misalign a parallel corpus.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist; expected a UTF-8 text file "
                        f"(plain or .gz) with one sentence per line")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if data[:2] == b"\x1f\x8b":  # gzip magic, so a misnamed file still reads
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # unreadable or truncated/corrupt gzip
        raise DataError(f"{what} {str(path)!r}: cannot read ({err}); expected a UTF-8 text "
                        f"or gzip file") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{what} {str(path)!r} line {line}: not valid UTF-8 ({err.reason})") from None
    if not text:
        raise DataError(f"{what} {str(path)!r} is empty; expected one sentence per line")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def check_parallel(src_path, tgt_path, n_src: int, n_tgt: int) -> None:
    if n_src != n_tgt:
        raise DataError(f"line-count mismatch: source {str(src_path)!r} has {n_src} lines but target "
                        f"{str(tgt_path)!r} has {n_tgt}; expected one target sentence per source line")


def read_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike,
                  tokenize: Callable[[str], list[str]] = str.split,
                  lowercase: bool = False) -> list[TokenPair]:
    """Aligned (source tokens, target tokens) pairs from two line-aligned files."""
    src_lines = read_lines(src_path, "source file")
    tgt_lines = read_lines(tgt_path, "target file")
    check_parallel(src_path, tgt_path, len(src_lines), len(tgt_lines))
    prep = (lambda s: s.lower()) if lowercase else (lambda s: s)
    return [(list(tokenize(prep(s))), list(tokenize(prep(t)))) for s, t in zip(src_lines, tgt_lines)]


def filter_pairs(pairs: Sequence[TokenPair], max_src_len: int | None = None,
                 max_tgt_len: int | None = None, mode: str = "skip", name: str = "data") -> list[TokenPair]:
    """Drop pairs with an empty side; skip or truncate over-long ones.

    Lengths count tokens without <sos>/<eos>. One :class:`DataWarning`
    summarises what was changed (none when nothing was), so a large corpus
    does not produce thousands of warnings.
    """
    if mode not in ("skip", "truncate"):
        raise DataError(f"filter mode must be 'skip' or 'truncate', got {mode!r}")
    for label, limit in (("max_src_len", max_src_len), ("max_tgt_len", max_tgt_len)):
        if limit is not None and limit < 1:
            raise DataError(f"{label} must be >= 1 or None, got {limit}")
    src_max = max_src_len if max_src_len is not None else math.inf
    tgt_max = max_tgt_len if max_tgt_len is not None else math.inf
    kept, n_empty, n_long = [], 0, 0
    for src, tgt in pairs:
        if not src or not tgt:
            n_empty += 1
            continue
        if len(src) > src_max or len(tgt) > tgt_max:
            n_long += 1
            if mode == "skip":
                continue
            src, tgt = src[:max_src_len], tgt[:max_tgt_len]
        kept.append((src, tgt))
    if n_empty or n_long:
        verb = "skipped" if mode == "skip" else "truncated"
        long_part = f"{verb} {n_long} over-long" if mode == "truncate" else f"{n_long} over-long"
        msg = (f"skipped {n_empty} empty and {long_part} pairs of {len(pairs)} in {name} "
               f"(max_src_len={max_src_len}, max_tgt_len={max_tgt_len}); kept {len(kept)}")
        warnings.warn(msg, DataWarning, stacklevel=2)
    return kept


def _find_file(directory: Path, prefix: str, lang: str) -> Path:
    candidates = [directory / f"{prefix}.{lang}", directory / f"{prefix}.{lang}.gz"]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"neither {str(candidates[0])!r} nor {str(candidates[1])!r} exists; expected "
                    f"one sentence per line, UTF-8, plain or gzip")


def load_parallel_dir(path: str | os.PathLike, src_lang: str, tgt_lang: str,
                      prefixes: dict[str, str] | None = None,
                      tokenize: Callable[[str], list[str]] = str.split,
                      lowercase: bool = False) -> dict[str, list[TokenPair]]:
    """Splits of a directory of ``<prefix>.<lang>[.gz]`` files, e.g. ``train.de`` / ``train.en``."""
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"parallel data directory {str(directory)!r} does not exist")
    prefixes = prefixes or {"train": "train", "valid": "valid", "test": "test"}
    return {
        split: read_parallel(_find_file(directory, prefix, src_lang), _find_file(directory, prefix, tgt_lang),
                             tokenize=tokenize, lowercase=lowercase)
        for split, prefix in prefixes.items()
    }


# --------------------------------------------------------------------------
# Encoded dataset
# --------------------------------------------------------------------------
def build_vocabs(pairs: Sequence[TokenPair], *, joint: bool = False, min_freq: int = 1,
                 max_size: int | None = None) -> tuple[Vocab, Vocab]:
    """(source vocab, target vocab) from training pairs; the same object twice when ``joint``.

    A ``min_freq`` that leaves no token of the data is a :class:`DataError` (every word would be
    <unk>); one that turns more than :data:`UNK_WARN_FRACTION` of the training tokens into <unk> a
    :class:`DataWarning`."""
    if joint:
        sides = {"source or target": [toks for pair in pairs for toks in pair]}
    else:
        sides = {"source": [s for s, _ in pairs], "target": [t for _, t in pairs]}
    vocabs = {}
    for side, token_lists in sides.items():
        vocabs[side] = Vocab.build(token_lists, min_freq=min_freq, max_size=max_size)
        if min_freq > 1:
            _check_coverage(vocabs[side], token_lists, min_freq, side)
    if joint:
        return vocabs["source or target"], vocabs["source or target"]
    return vocabs["source"], vocabs["target"]


# More training tokens than this becoming <unk> (data.min_freq) makes a model mostly learn <unk>.
UNK_WARN_FRACTION = 0.25


def _check_coverage(vocab: Vocab, token_lists: Sequence[Sequence[str]], min_freq: int, side: str) -> None:
    counts = Counter(tok for toks in token_lists for tok in toks if tok not in SPECIALS)
    total = sum(counts.values())
    if not total:
        return
    if len(vocab) == len(SPECIALS):
        raise DataError(f"data.min_freq={min_freq}: no {side} token of the training data occurs that often "
                        f"(the most frequent one occurs {max(counts.values())} times), so the vocabulary would "
                        f"be only the special tokens and every word <unk>; lower data.min_freq")
    unk = sum(c for tok, c in counts.items() if tok not in vocab)
    if unk > UNK_WARN_FRACTION * total:
        warnings.warn(f"data.min_freq={min_freq}: {unk / total:.0%} of the {side} training tokens become <unk> "
                      f"(only {len(vocab) - len(SPECIALS)} of {len(counts)} distinct tokens occur {min_freq} "
                      f"times or more); lower data.min_freq unless that is intended", DataWarning, stacklevel=3)


def check_lengths(splits: dict[str, Sequence[TokenPair]], max_len: int, required: Sequence[str] = ("train",)) -> None:
    """Every pair of every split fits a model whose positional table has ``max_len`` rows: a source of
    at most ``max_len`` tokens, a target of at most ``max_len - 1`` (the decoder reads <sos> + target).

    Run before training so that an over-long validation or test sentence fails now, not after an
    epoch; a :class:`DataError` names the split, the pair and the fix. The ``required`` splits
    must not be empty."""
    for split, pairs in splits.items():
        if split in required and not pairs:
            raise DataError(f"{split} split: no pair is left after dropping empty and over-long pairs "
                            f"(data.max_src_len, data.max_tgt_len, data.long_pairs); check the data or the limits")
        over = [i for i, (src, tgt) in enumerate(pairs) if len(src) > max_len or len(tgt) + 1 > max_len]
        if not over:
            continue
        worst = max(over, key=lambda i: max(len(pairs[i][0]), len(pairs[i][1]) + 1))
        src, tgt = pairs[worst]
        need = max(len(src), len(tgt) + 1)
        fix = (f"raise model.max_len to at least {need}, or lower data.max_src_len/data.max_tgt_len to "
               f"{max_len}/{max_len - 1} (longer training pairs are then skipped or truncated: data.long_pairs)"
               if split == "train" else
               f"raise model.max_len to at least {need} (evaluation splits are never shortened)")
        raise DataError(f"{split} split: {len(over)} pair(s) do not fit model.max_len={max_len} (a source of at "
                        f"most {max_len} tokens, a target of at most {max_len - 1}); pair {worst + 1} has "
                        f"{len(src)} source and {len(tgt)} target tokens; {fix}")


@dataclass
class Dataset:
    """Encoded (source ids, target ids) pairs plus the vocabularies that encode them.

    Target ids carry no <sos>/<eos>; :func:`make_batch` adds them.
    ``src_vocab`` and ``tgt_vocab`` may be the same object (joint vocabulary).
    """

    pairs: list[IdPair]
    src_vocab: Vocab
    tgt_vocab: Vocab

    @classmethod
    def from_tokens(cls, pairs: Sequence[TokenPair], src_vocab: Vocab, tgt_vocab: Vocab) -> Dataset:
        return cls([(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in pairs], src_vocab, tgt_vocab)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> IdPair:
        return self.pairs[i]

    @property
    def joint(self) -> bool:
        return self.src_vocab is self.tgt_vocab

    @property
    def lengths(self) -> list[tuple[int, int]]:
        """(source length, target length) of every pair: the input of :class:`Batcher`."""
        return [(len(s), len(t)) for s, t in self.pairs]


# --------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------
def example_cost(src_len: int, tgt_len: int) -> int:
    """Graph nodes of one pair: source tokens + target tokens + the <sos>/<eos> shift.

    The graph model has no padding, so this, not a padded rectangle, is what a
    batch costs.
    """
    return src_len + tgt_len + 1


class Batcher:
    """Deterministic, length-bucketed batches of example indices.

    Each epoch: shuffle (seeded by (seed, epoch)), sort pools of about 100
    batches by (source length, target length) so batch-mates have similar
    lengths (stable sort: the shuffle is the random tie-break), cut into
    batches, shuffle the batch order. ``batch_size`` caps sentences per batch
    and ``max_tokens`` caps :func:`example_cost` summed over the batch; both
    apply when both are set (pass ``batch_size=None`` to cap by tokens only).
    A single example costlier than ``max_tokens`` gets a batch of its own.
    """

    def __init__(self, pairs_lengths: Sequence[tuple[int, int]], batch_size: int | None = 128,
                 max_tokens: int | None = None, shuffle: bool = True, seed: int = 0, bucket: bool = True,
                 pool_batches: int = 100):
        if batch_size is None and max_tokens is None:
            raise DataError("Batcher needs batch_size or max_tokens (or both); got neither")
        if batch_size is not None and batch_size < 1:
            raise DataError(f"batch_size must be >= 1 or None, got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise DataError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        lengths = np.asarray([tuple(p) for p in pairs_lengths], dtype=np.int64).reshape(-1, 2)
        if len(lengths) == 0:
            raise DataError("Batcher got no examples; expected at least one (src_len, tgt_len) pair")
        if (lengths < 0).any():
            raise DataError(f"example {int(np.argwhere(lengths < 0)[0, 0])} has a negative length")
        self.src_lens, self.tgt_lens = lengths[:, 0], lengths[:, 1]
        self.costs = self.src_lens + self.tgt_lens + 1
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.shuffle, self.seed, self.bucket = shuffle, seed, bucket
        per_batch = batch_size or max(1, max_tokens // max(1, int(self.costs.mean())))
        self.pool_size = max(1, pool_batches * per_batch)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches of ``epoch`` (default: the current one); the same list for the same (seed, epoch)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._make(epoch))
        return [list(b) for b in self._cache[1]]

    def _make(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.costs)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucket:
            pools = []
            for start in range(0, n, self.pool_size):
                pool = order[start:start + self.pool_size]
                # lexsort's last key is primary; it is stable, so ties keep the shuffled order.
                pools.append(pool[np.lexsort((self.tgt_lens[pool], self.src_lens[pool]))])
            order = np.concatenate(pools)
        batches = self._cut(order)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        batches, current, cost = [], [], 0
        cap_n = self.batch_size or math.inf
        cap_t = self.max_tokens or math.inf
        for i in order.tolist():
            c = int(self.costs[i])
            if current and (len(current) >= cap_n or cost + c > cap_t):
                batches.append(current)
                current, cost = [], 0
            current.append(i)
            cost += c
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())

    def shard(self, rank: int, world_size: int, remainder: str = "drop") -> ShardedBatcher:
        return ShardedBatcher(self, rank, world_size, remainder)


class ShardedBatcher:
    """Rank ``rank``'s share of a :class:`Batcher`'s batches for distributed training.

    All ranks compute the same global batch list (same seed and epoch) and take
    every ``world_size``-th batch, so shards are disjoint. Every rank gets the
    same number of batches, or a rank would wait forever in a collective: the
    leftover batches are dropped (``remainder="drop"``, they are different
    ones each epoch) or filled up by repeating the first batches
    (``remainder="wrap"``, which makes those few batches appear twice).
    """

    def __init__(self, batcher: Batcher, rank: int, world_size: int, remainder: str = "drop"):
        if world_size < 1:
            raise DataError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, {world_size}), got {rank}")
        if remainder not in ("drop", "wrap"):
            raise DataError(f"remainder must be 'drop' or 'wrap', got {remainder!r}")
        self.batcher, self.rank, self.world_size, self.remainder = batcher, rank, world_size, remainder
        self.epoch = batcher.epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else int(epoch)
        every = self.batcher.batches(epoch)
        w = self.world_size
        if len(every) < w and self.remainder == "drop":
            raise DataError(f"epoch {epoch} has {len(every)} batches, fewer than world_size={w}; "
                            f"use smaller batches or remainder='wrap'")
        if self.remainder == "drop":
            every = every[: len(every) - len(every) % w]
        else:
            short = -len(every) % w
            every = every + [every[k % len(every)] for k in range(short)]
        return every[self.rank::w]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def collate(dataset: Dataset, indices: Sequence[int], spec: GraphSpec | None = None,
            device=None) -> GraphBatch:
    """The :class:`GraphBatch` of the examples ``indices`` of ``dataset``."""
    src = [dataset.pairs[i][0] for i in indices]
    tgt = [dataset.pairs[i][1] for i in indices]
    return make_batch(src, tgt, sos=dataset.tgt_vocab.sos, eos=dataset.tgt_vocab.eos, spec=spec, device=device)
