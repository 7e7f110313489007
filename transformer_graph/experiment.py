"""From a :class:`~transformer_graph.config.Config` to data, vocabularies, graphs and a model.

The training, evaluation, translation and picture scripts all start here, so a
checkpoint's saved config and vocabulary rebuild exactly the model and data
that produced it.

Two kinds of task: the sequence tasks (:class:`Experiment`: token splits, vocabularies, the
attention-graph spec, an encoder-decoder of ``nn.MODELS``) and the node-classification tasks
(:class:`NodeExperiment`: a :class:`~transformer_graph.data.graph_tasks.GraphDataset`, the
:class:`~transformer_graph.nn.graph_encoder.GraphEncoderConfig` the config and the data give,
and the batches of graphs that model reads).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transformer_graph.checkpoint import CheckpointError, load_checkpoint
from transformer_graph.config import (NODE_TASKS, SBM_TASKS, TRANSDUCTIVE_TASKS, Config, DataConfig, ModelConfig,
                                      config_from_dict)
from transformer_graph.data.datasets import (DataError, Dataset, Vocab, build_vocabs, filter_pairs, load_parallel_dir,
                                             load_task)
from transformer_graph.data.graph_tasks import GraphDataset, GraphSample, karate, make_cluster, make_pattern
from transformer_graph.data.laplacian import laplacian_pe
from transformer_graph.data.multi30k import load_multi30k
from transformer_graph.data.planetoid import load_planetoid
from transformer_graph.data.subwords import SubwordModel, cached_model
from transformer_graph.data.text import TextPipeline, lowercase_tokens
from transformer_graph.graphs.build import GraphSpec
from transformer_graph.graphs.node_graphs import NodeBatch, batch_graphs
from transformer_graph.graphs.structures import spec_from_config
from transformer_graph.message_passing.base import set_engine
from transformer_graph.nn import MODELS
from transformer_graph.nn.graph_encoder import GraphEncoder, GraphEncoderConfig

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
    """(model in eval mode, config, (src_vocab, tgt_vocab), checkpoint dict) from a checkpoint of a
    sequence task (a node task's checkpoint is :func:`load_trained_nodes`'s).

    The model runs on the engine its config names (``train.engine``), or on ``engine`` when
    given (the engines compute the same results; e.g. 'torch' where DGL is not installed);
    loading never changes any other model's engine."""
    return trained_from_checkpoint(load_checkpoint(path, map_location), path, engine)


def checkpoint_config(ckpt: dict, path) -> Config:
    """The config a checkpoint was trained with (validated as any config file)."""
    try:
        return config_from_dict(ckpt["config"], source=f"{path} (saved config)")
    except KeyError as err:
        raise CheckpointError(f"{path}: checkpoint lacks {err}; it was not written by scripts/train.py") from None


def trained_from_checkpoint(ckpt: dict, path, engine: str | None = None):
    """:func:`load_trained` of a checkpoint dict already loaded from ``path``."""
    cfg = checkpoint_config(ckpt, path)
    if cfg.data.task in NODE_TASKS:
        raise CheckpointError(f"{path}: is a node-classification checkpoint (data.task {cfg.data.task!r}); this "
                              f"command works on the sequence tasks' models; evaluate it with tg-evaluate")
    try:
        vocabs = (Vocab.from_dict(ckpt["src_vocab"]), Vocab.from_dict(ckpt["tgt_vocab"]))
        checkpoint_subwords(ckpt, cfg, vocabs, path)  # a checkpoint's text pipeline is checked at load
    except KeyError as err:
        raise CheckpointError(f"{path}: checkpoint lacks {err}; it was not written by scripts/train.py") from None
    model = _with_weights(lambda: build_model(cfg.model, len(vocabs[0]), len(vocabs[1])), ckpt, cfg, path, engine,
                          "config/vocabulary")
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


# --------------------------------------------------------------------------- node classification

# The published splits (graphs per train/valid/test): benchmarking-gnns' data/SBMs generators.
PUBLISHED_SIZES = {"pattern": (10000, 2000, 2000), "cluster": (10000, 1000, 1000)}
SPLITS = ("train", "valid", "test")


def graph_sizes(data: DataConfig) -> dict[str, int]:
    """PATTERN/CLUSTER graphs per split: ``data.graphs_*``, or the published size where null."""
    given = (data.graphs_train, data.graphs_valid, data.graphs_test)
    return {split: published if n is None else n
            for split, n, published in zip(SPLITS, given, PUBLISHED_SIZES[data.task])}


def load_graph_dataset(data: DataConfig) -> GraphDataset:
    """The node task's graphs: PATTERN/CLUSTER generated from ``data.seed`` (and cached on disk, see
    :func:`~transformer_graph.data.graph_tasks.make_pattern`), the karate club, or a Planetoid graph
    from ``data.path``."""
    if data.task in SBM_TASKS:
        make = make_pattern if data.task == "pattern" else make_cluster
        sizes = graph_sizes(data)
        return make(data.seed, sizes["train"], sizes["valid"], sizes["test"])
    if data.task == "karate":
        return karate(features=data.karate_features)
    if data.task == "planetoid":
        return load_planetoid(data.graph_name, data.path)
    raise DataError(f"data.task: {data.task!r} is not a node-classification task; expected one of "
                    f"{', '.join(NODE_TASKS)}")


def graph_data_info(dataset: GraphDataset) -> dict:
    """What a graph encoder is built for besides the config (saved in every node checkpoint)."""
    return {"name": dataset.name, "num_features": dataset.num_features, "feature_kind": dataset.feature_kind,
            "num_classes": dataset.num_classes}


def encoder_config(model: ModelConfig, info: dict) -> GraphEncoderConfig:
    """The graph encoder of a node task: the ``model`` section plus the data's features and classes."""
    return GraphEncoderConfig(
        num_features=info["num_features"], feature_kind=info["feature_kind"], num_classes=info["num_classes"],
        d_model=model.d_model, layers=model.layers, heads=model.heads, d_ff=model.d_ff, dropout=model.dropout,
        attn_dropout=model.attn_dropout, norm_first=model.norm_first, aggregator=model.aggregator,
        structure=model.graph_structure, self_loops=model.self_loops, global_nodes=model.global_nodes,
        pe_dim=model.pe_dim, pe_sign_flip=model.pe_sign_flip, readout=model.readout)


def build_graph_model(model: ModelConfig, info: dict) -> GraphEncoder:
    """The node task's network: a :class:`GraphEncoder` (the PE signs flip on torch's default generator,
    so they are part of the run's saved random state)."""
    return GraphEncoder(encoder_config(model, info))


class PositionalCache:
    """:func:`~transformer_graph.data.laplacian.laplacian_pe` as a ``pe_fn`` that computes each graph's
    encoding once (an eigendecomposition per graph and batch would cost more than the model's step).

    Keyed by the identity of the graph's ``edge_index`` tensor, which the cache keeps alive."""

    def __init__(self, fn=laplacian_pe):
        self._fn = fn
        self._cache: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, edge_index: torch.Tensor, num_nodes: int, k: int) -> torch.Tensor:
        key = (id(edge_index), int(num_nodes), int(k))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not edge_index:
            hit = (edge_index, self._fn(edge_index, num_nodes, k))
            self._cache[key] = hit
        return hit[1]

    def __len__(self) -> int:
        return len(self._cache)


@dataclass
class NodeExperiment:
    """A node-classification task: its graphs, the encoder built for them, their batches."""

    cfg: Config
    dataset: GraphDataset
    encoder: GraphEncoderConfig
    pe_fn: PositionalCache = field(default_factory=PositionalCache)

    @property
    def translation(self) -> bool:
        return False

    @property
    def weighted(self) -> bool:
        """PATTERN/CLUSTER: the benchmark's class-weighted loss and accuracy."""
        return self.cfg.data.task in SBM_TASKS

    @property
    def transductive(self) -> bool:
        """One graph for every split (karate, Planetoid): a split is the nodes of its mask."""
        return self.cfg.data.task in TRANSDUCTIVE_TASKS

    def graphs(self, split: str) -> list[GraphSample]:
        return self.dataset.splits.get(split, [])

    def batch(self, samples, device=None) -> NodeBatch:
        """The batch of ``samples`` the encoder reads (its structure, global nodes and cached PE)."""
        c = self.encoder
        return batch_graphs(samples, c.structure, self_loops=c.self_loops, global_nodes=c.global_nodes,
                            pe_dim=c.pe_dim, pe_fn=self.pe_fn if c.pe_dim else None, device=device)

    def labelled(self, batch: NodeBatch, logits: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, labels)`` of the nodes of ``split`` in ``batch``: every node of an inductive task's
        graphs, the nodes of the split's mask of a transductive one."""
        if not self.transductive:
            return logits, batch.y
        mask = batch.masks[split]
        return logits[mask], batch.y[mask]


def build_node_experiment(cfg: Config) -> NodeExperiment:
    """Load a node task's graphs and derive its encoder's config (a bad combination fails here, before
    the model is built)."""
    if cfg.data.task not in NODE_TASKS:
        raise DataError(f"data.task: {cfg.data.task!r} is a sequence task; build it with build_experiment")
    dataset = load_graph_dataset(cfg.data)
    if not dataset.splits.get("train"):
        raise DataError(f"{dataset.name}: the training split has no graphs")
    return NodeExperiment(cfg, dataset, encoder_config(cfg.model, graph_data_info(dataset)))


def graph_fingerprint(dataset: GraphDataset) -> dict:
    """What a node checkpoint's weights were trained on besides its config: the dataset's shape
    (features, classes) and a digest of its training graphs (edges, features, labels, masks)."""
    digest = hashlib.sha256()
    train = dataset.splits.get("train", [])
    for g in train:
        digest.update(f"{g.num_nodes};".encode())
        for t in (g.edge_index, g.x, g.y, g.train_mask, g.val_mask, g.test_mask):
            digest.update(b"-" if t is None else t.contiguous().numpy().view("uint8"))
    return {"version": 1, "graphs": {**graph_data_info(dataset), "train_graphs": len(train),
                                     "train": digest.hexdigest()[:16]}}


def load_trained_nodes(path, map_location="cpu", engine: str | None = None):
    """(graph encoder in eval mode, config, data info, checkpoint dict) from a node task's checkpoint."""
    return trained_nodes_from_checkpoint(load_checkpoint(path, map_location), path, engine)


def trained_nodes_from_checkpoint(ckpt: dict, path, engine: str | None = None):
    """:func:`load_trained_nodes` of a checkpoint dict already loaded from ``path``."""
    cfg = checkpoint_config(ckpt, path)
    if cfg.data.task not in NODE_TASKS:
        raise CheckpointError(f"{path}: is a checkpoint of the sequence task {cfg.data.task!r}, not of a node task")
    info = ckpt.get("graph_data")
    if not isinstance(info, dict) or not {"num_features", "feature_kind", "num_classes"} <= set(info):
        raise CheckpointError(f"{path}: a node-task checkpoint without its 'graph_data' (features and classes); "
                              f"it was not written by tg-train")
    model = _with_weights(lambda: build_graph_model(cfg.model, info), ckpt, cfg, path, engine, "config and data")
    return model.eval(), cfg, info, ckpt


def _with_weights(build, ckpt: dict, cfg: Config, path, engine: str | None, what: str):
    """``build()`` with the checkpoint's weights, on its config's engine (or ``engine``); a
    CheckpointError naming the file when the weights are missing or do not fit."""
    try:
        model = build()
        model.load_state_dict(ckpt["model"])
        if engine is None:
            set_engine(model, cfg.train.engine, f"{path} (saved config): train.engine")
        else:
            set_engine(model, engine)
    except KeyError as err:
        raise CheckpointError(f"{path}: checkpoint lacks {err}; it was not written by tg-train") from None
    except RuntimeError as err:  # shape or key mismatch: another model, vocabulary or data
        raise CheckpointError(f"{path}: weights do not fit the saved {what}: {str(err).splitlines()[0]}") from None
    return model
