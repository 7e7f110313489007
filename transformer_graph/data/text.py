"""Raw text <-> tokens, the way each task's data is tokenised.

Multi30k follows the reference setup, Moses ``tokenizer.perl -a -no-escape``
with case kept, through ``sacremoses``: aggressive dash splitting turns
``blue-green`` into ``blue @-@ green`` and no ``&amp;``-style escaping happens.
Every other task (parallel files, copy, sort) is split on whitespace,
lowercased first when ``data.lowercase`` is set.

Training data, evaluation references, translation input and the attention
pictures of a typed sentence all go through :func:`task_tokenize` (and output
through :func:`task_detokenize`), so a sentence is tokenised the same way
wherever it enters.
"""
from __future__ import annotations

import functools
import re
from importlib import metadata
from collections.abc import Sequence

from sacremoses import MosesDetokenizer, MosesTokenizer

MOSES_TASKS = ("multi30k",)  # tasks whose text is Moses-tokenised
MOSES_SETTINGS = {"aggressive_dash_splits": True, "escape": False}  # tokenizer.perl -a -no-escape


@functools.cache
def _moses_tokenizer(lang: str) -> MosesTokenizer:
    return MosesTokenizer(lang=lang)


@functools.cache
def _moses_detokenizer(lang: str) -> MosesDetokenizer:
    return MosesDetokenizer(lang=lang)


def moses_tokenize(lines: Sequence[str], lang: str) -> list[list[str]]:
    """Moses tokens of each line (``tokenizer.perl -a -no-escape``, case kept)."""
    tok = _moses_tokenizer(lang)
    return [tok.tokenize(line, **MOSES_SETTINGS) for line in lines]


_DASH = re.compile(r"\s*@-@\s*")


def moses_detokenize(tokens: Sequence[str], lang: str) -> str:
    """Text of Moses tokens; ``blue @-@ green`` becomes ``blue-green``.

    Recent sacremoses undoes ``@-@`` itself, older versions do not, and model
    output may put ``@-@`` where the detokenizer does not expect it (first or
    last token), so the dash is rejoined explicitly afterwards.
    """
    text = _moses_detokenizer(lang).detokenize(list(tokens))
    return _DASH.sub("-", text).strip()


def moses_version() -> str:
    """The installed sacremoses version (part of the Multi30k token cache's key)."""
    try:
        return metadata.version("sacremoses")
    except metadata.PackageNotFoundError:
        return "unknown"


def whitespace_tokenize(lines: Sequence[str], lowercase: bool = False) -> list[list[str]]:
    """Whitespace-separated tokens of each line, lowercased first if asked."""
    return [(line.lower() if lowercase else line).split() for line in lines]


def task_tokenize(data, lines: Sequence[str], lang: str) -> list[list[str]]:
    """Tokens of raw ``lines`` in language ``lang``, the way the training data of the
    task in ``data`` (a :class:`~transformer_graph.config.DataConfig`) was tokenised."""
    if data.task in MOSES_TASKS:
        return lowercase_tokens(moses_tokenize(lines, lang)) if data.lowercase else moses_tokenize(lines, lang)
    return whitespace_tokenize(lines, data.lowercase)


def lowercase_tokens(token_lists: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each token lowercased: ``data.lowercase`` for Moses-tokenised text, applied after the
    tokenizer (which keys some rules on case) — the lowercased Multi30k setups' order."""
    return [[t.lower() for t in toks] for toks in token_lists]


def task_detokenize(data, tokens: Sequence[str]) -> str:
    """Text of target-language ``tokens``: Moses for Moses-tokenised tasks, spaces otherwise."""
    if data.task in MOSES_TASKS:
        return moses_detokenize(tokens, data.tgt_lang)
    return " ".join(tokens)


class TextPipeline:
    """Raw text <-> the model's tokens for one task: its words (:func:`task_tokenize`), then, when
    the run uses subwords, their SentencePiece pieces (:mod:`transformer_graph.data.subwords`).

    ``words`` joins pieces back into word tokens: tokenised BLEU is computed on words for
    word-level and subword models alike."""

    def __init__(self, data, subwords=None):
        self.data = data
        self.subwords = subwords  # a SubwordModel or None

    def words_of(self, lines: Sequence[str], lang: str) -> list[list[str]]:
        """Word tokens of raw lines (no subword split)."""
        return task_tokenize(self.data, lines, lang)

    def pieces(self, word_lists: Sequence[Sequence[str]]) -> list[list[str]]:
        """The model's tokens of word-token lists (the words themselves without subwords)."""
        if self.subwords is None:
            return [list(w) for w in word_lists]
        return self.subwords.encode_all(word_lists)

    def tokenize(self, lines: Sequence[str], lang: str) -> list[list[str]]:
        """The model's tokens of raw lines."""
        return self.pieces(self.words_of(lines, lang))

    def words(self, tokens: Sequence[str]) -> list[str]:
        """Word tokens of the model's (target) tokens."""
        if self.subwords is None:
            return list(tokens)
        return self.subwords.decode(tokens)

    def detokenize(self, tokens: Sequence[str]) -> str:
        """Text of the model's target tokens."""
        return task_detokenize(self.data, self.words(tokens))
