"""From a :class:`~transformer_graph.config.Config` to data, vocabularies, graphs and a model.

The training, evaluation, translation and picture scripts all start here, so a
checkpoint's saved config and vocabulary rebuild exactly the model and data
that produced it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformer_graph.checkpoint import CheckpointError, load_checkpoint
from transformer_graph.config import Config, DataConfig, ModelConfig, config_from_dict
from transformer_graph.data.datasets import (DataError, Dataset, Vocab, build_vocabs, filter_pairs, load_parallel_dir,
                                             load_task)
from transformer_graph.data.multi30k import load_multi30k
from transformer_graph.data.subwords import SubwordModel, cached_model
from transformer_graph.data.text import TextPipeline, lowercase_tokens
from transformer_graph.graphs.build import GraphSpec
from transformer_graph.graphs.structures import spec_from_config
from transformer_graph.message_passing.base import set_engine
from transformer_graph.nn import MODELS

SYNTHETIC = ("copy", "sort")
TRANSLATION = ("parallel", "multi30k")


@dataclass
class Experiment:
    cfg: Config
    splits: dict[str, Dataset]          # "train", "valid", "test"
    src_vocab: Vocab
    tgt_vocab: Vocab
    spec: GraphSpec
    tokens: dict                        # split -> [(source tokens, target tokens)] the model reads
    text: TextPipeline                  # raw text <-> those tokens (words, or subword pieces)

    @property
    def translation(self) -> bool:
        return self.cfg.data.task in TRANSLATION


def load_token_splits(data: DataConfig) -> dict:
    """split -> list of (source tokens, target tokens), before any filtering."""
    if data.task in SYNTHETIC:
        return load_task(data.task, seed=data.seed, train_size=data.train_size,
                         valid_size=data.valid_size, test_size=data.test_size,
                         length_mean=data.length_mean, length_std=data.length_std, alphabet=data.alphabet)
    if data.task == "multi30k":
        splits = load_multi30k(data.path, src_lang=data.src_lang, tgt_lang=data.tgt_lang)
        if data.lowercase:
            splits = {name: list(zip(lowercase_tokens([s for s, _ in pairs]), lowercase_tokens([t for _, t in pairs])))
                      for name, pairs in splits.items()}
        return splits
    prefixes = {"train": data.train_prefix, "valid": data.valid_prefix, "test": data.test_prefix}
    return load_parallel_dir(data.path, data.src_lang, data.tgt_lang, prefixes, lowercase=data.lowercase)


def graph_spec(model: ModelConfig) -> GraphSpec:
    """The attention structures named in the config, with their parameters (window, ...)
    applied (see :mod:`transformer_graph.graphs.structures`); unknown names raise ConfigError."""
    return spec_from_config(model.structure)


def subword_model(data: DataConfig, train_words: list) -> SubwordModel | None:
    """The run's SentencePiece model: ``data.subword_model`` when given, else one trained (or
    taken from the cache) on both sides of the training split; None for a word vocabulary."""
    if data.subwords == "none":
        if data.subword_model:
            raise DataError(f"data.subword_model is {data.subword_model!r} but data.subwords is 'none'; "
                            f"set data.subwords to the model's kind (bpe or unigram) to use it")
        return None
    if data.subword_model:
        return SubwordModel.from_file(data.subword_model)
    return cached_model([toks for pair in train_words for toks in pair], data.subwords, data.subword_vocab_size)


def make_vocabs(cfg: Config, train_pairs: list, subwords: SubwordModel | None) -> tuple[Vocab, Vocab]:
    """The vocabularies a config builds from its training pairs: every piece of the subword model
    (one joint vocabulary), or the words seen ``data.min_freq`` times."""
    if subwords is not None:
        vocab = subwords.vocab()
        return vocab, vocab
    d = cfg.data
    return build_vocabs(train_pairs, joint=d.joint_vocab or cfg.model.share_embeddings, min_freq=d.min_freq)


def build_experiment(cfg: Config, vocabs: tuple[Vocab, Vocab] | None = None,
                     subwords: SubwordModel | None = None) -> Experiment:
    """Load the task's splits and encode them; build vocabularies from the training
    split unless ``vocabs`` (e.g. from a checkpoint) are given, and the subword model
    (``data.subwords``) unless ``subwords`` (a checkpoint's) is given."""
    d = cfg.data
    spec = graph_spec(cfg.model)  # before loading data: a bad structure name fails fast
    if d.subwords == "none" and subwords is not None:
        raise DataError("data.subwords is 'none' but a SentencePiece model was given (the checkpoint was "
                        "trained with subwords); use the checkpoint's own config")
    if subwords is None and (d.subwords == "none" or d.subword_model):
        subwords = subword_model(d, [])  # nothing to train: a bad setting or file fails before loading data
    tokens = load_token_splits(d)
    if subwords is None and d.subwords != "none":
        subwords = subword_model(d, tokens["train"])
    text = TextPipeline(d, subwords)
    if subwords is not None:
        tokens = {split: list(zip(text.pieces([s for s, _ in pairs]), text.pieces([t for _, t in pairs])))
                  for split, pairs in tokens.items()}
    tokens["train"] = filter_pairs(tokens["train"], d.max_src_len, d.max_tgt_len, d.long_pairs,
                                   name="train")
    # Evaluation splits are never shortened: drop only pairs with an empty side.
    for split in ("valid", "test"):
        tokens[split] = filter_pairs(tokens.get(split, []), None, None, "skip", name=split)
    if vocabs is None:
        vocabs = make_vocabs(cfg, tokens["train"], subwords)
    elif subwords is not None:
        for vocab, side in zip(vocabs, ("source", "target")):
            subwords.check_vocab(vocab, f"the {side} vocabulary")
    src_vocab, tgt_vocab = vocabs
    splits = {name: Dataset.from_tokens(pairs, src_vocab, tgt_vocab) for name, pairs in tokens.items()}
    return Experiment(cfg, splits, src_vocab, tgt_vocab, spec, tokens, text)


def build_model(model: ModelConfig, src_vocab: int, tgt_vocab: int):
    """The network the config describes: ``model.kind`` picks the class, which takes the
    options that belong to it (the universal model has no ``layers``, the standard one no
    ``max_depth``)."""
    if model.kind not in MODELS:
        raise ValueError(f"model.kind: {model.kind!r} is not available in this build; expected one of "
                         f"{', '.join(MODELS)}")
    return MODELS[model.kind].from_options(model, src_vocab, tgt_vocab)


SUBWORDS_FILE = "subwords.model"  # a run's SentencePiece model, beside vocab.*.json


def vocab_paths(run_dir: Path) -> tuple[Path, Path]:
    return run_dir / "vocab.src.json", run_dir / "vocab.tgt.json"


def load_trained(path, map_location="cpu", engine: str | None = None):
    """(model in eval mode, config, (src_vocab, tgt_vocab), checkpoint dict) from a checkpoint.

    The model runs on the engine its config names (``train.engine``), or on ``engine`` when
    given (the engines compute the same results; e.g. 'torch' where DGL is not installed);
    loading never changes any other model's engine."""
    ckpt = load_checkpoint(path, map_location)
    try:
        cfg = config_from_dict(ckpt["config"], source=f"{path} (saved config)")
        vocabs = (Vocab.from_dict(ckpt["src_vocab"]), Vocab.from_dict(ckpt["tgt_vocab"]))
        checkpoint_subwords(ckpt, cfg, vocabs, path)  # a checkpoint's text pipeline is checked at load
        model = build_model(cfg.model, len(vocabs[0]), len(vocabs[1]))
        model.load_state_dict(ckpt["model"])
        if engine is None:
            set_engine(model, cfg.train.engine, f"{path} (saved config): train.engine")
        else:
            set_engine(model, engine)
    except KeyError as err:
        raise CheckpointError(f"{path}: checkpoint lacks {err}; it was not written by scripts/train.py") from None
    except RuntimeError as err:  # shape or key mismatch: another model or vocabulary
        raise CheckpointError(f"{path}: weights do not fit the saved config/vocabulary: "
                              f"{str(err).splitlines()[0]}") from None
    if vocabs[0].to_dict() == vocabs[1].to_dict():
        vocabs = (vocabs[0], vocabs[0])
    return model.eval(), cfg, vocabs, ckpt


def checkpoint_subwords(ckpt: dict, cfg: Config, vocabs: tuple[Vocab, Vocab], path) -> SubwordModel | None:
    """The SentencePiece model a checkpoint embeds (None for a word-level one), checked against its
    config and vocabulary."""
    proto = ckpt.get("subwords")
    if cfg.data.subwords == "none":
        if proto is not None:
            raise CheckpointError(f"{path}: checkpoint embeds a SentencePiece model but its config says "
                                  f"data.subwords: none; the file was altered")
        return None
    if proto is None:
        raise CheckpointError(f"{path}: its config says data.subwords: {cfg.data.subwords} but the checkpoint "
                              f"has no SentencePiece model; it was not written by tg-train")
    try:
        model = SubwordModel.from_tensor(proto, f"the SentencePiece model inside {path}")
        for vocab, side in zip(vocabs, ("source", "target")):
            model.check_vocab(vocab, f"{path}: the {side} vocabulary")
    except DataError as err:
        raise CheckpointError(str(err)) from None
    return model


def trained_text(cfg: Config, ckpt: dict, path) -> TextPipeline:
    """Raw text <-> tokens the way a checkpoint's model was trained (words, or its subwords)."""
    vocabs = (Vocab.from_dict(ckpt["src_vocab"]), Vocab.from_dict(ckpt["tgt_vocab"]))
    return TextPipeline(cfg.data, checkpoint_subwords(ckpt, cfg, vocabs, path))
