"""Run configuration: YAML files -> typed, validated dataclasses.

A run is described by one YAML file with up to six sections (model, data,
optim, train, eval, viz), plus command-line overrides like
``--set model.layers=2``. Everything has a default, so an empty file is a valid
config. Validation is driven by the dataclass annotations (int, float, str,
bool, Optional[...], list[...], nested dataclasses) plus a few per-field rules
kept in ``field(metadata=...)``:

    doc      one line shown by describe()
    min/gt   value >= min / value > gt
    max/lt   value <= max / value < lt
    choices  allowed values
    len      exact length of a list

Every error is a ConfigError whose message reads
``"{source}: {dotted.key}: {what is expected}, got {value!r}"`` so a typo in a
config file or on the command line points at the file (or the --set) and key.

    cfg = load_config("configs/copy.yaml", ["model.layers=2"])
    save_config(cfg, run_dir / "config.yaml")   # load_config() of it == cfg
    print(describe())                           # every key, type, default, doc
"""
from __future__ import annotations

import copy
import types
import difflib
import math
import operator
import re
import reprlib
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints
from collections.abc import Callable, Iterable

import yaml

from transformer_graph.files import atomic_write_text

__all__ = ["Config", "ModelConfig", "StructureConfig", "DataConfig", "OptimConfig", "TrainConfig",
           "EvalConfig", "VizConfig", "ConfigError", "ConfigDeprecationWarning", "load_config", "config_from_dict",
           "config_to_dict", "save_config", "describe", "config_field", "dataclass_from_dict"]


def _field(default: Any, doc: str, **rules: Any) -> Any:
    """A dataclass field with its doc line and validation rules in metadata."""
    meta = {"doc": doc, **rules}
    if isinstance(default, list):  # mutable defaults need a factory
        return field(default_factory=lambda: list(default), metadata=meta)
    if isinstance(default, type) and is_dataclass(default):  # nested section
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


# The field helper under a public name, for dataclasses validated by dataclass_from_dict.
config_field = _field


# --------------------------------------------------------------------------- schema

# The positional table is max_len x d_model floats built at model creation: 2**28 entries are 1 GiB,
# far beyond any sentence a complete attention graph can hold, and a typo such as 200000000 would
# otherwise try to allocate tens of GB before failing.
MAX_POSITION_TABLE = 2 ** 28

# data.task: the sequence-to-sequence tasks (an encoder-decoder reads source tokens and writes
# target tokens) and the node-classification tasks (a graph encoder labels the nodes of given graphs).
SEQUENCE_TASKS = ("copy", "sort", "parallel", "multi30k")
NODE_TASKS = ("pattern", "cluster", "karate", "planetoid")
SBM_TASKS = ("pattern", "cluster")        # many small graphs, the benchmark's weighted loss and metric
TRANSDUCTIVE_TASKS = ("karate", "planetoid")  # one graph; node masks select each split's labels
NODE_STRUCTURES = ("sparse", "complete", "global")
PLANETOID_GRAPHS = ("cora", "citeseer", "pubmed")


def is_node_task(cfg: Config) -> bool:
    """Whether ``cfg`` trains a node classifier (data.task pattern, cluster, karate or planetoid)."""
    return cfg.data.task in NODE_TASKS


@dataclass
class StructureConfig:
    """Which attention graph each attention block uses; names are checked later
    against the graph-structure registry, so they are free strings here."""
    enc: str = _field("complete", "Encoder self-attention graph structure: complete, causal, window, dilated "
                      "or global_window (transformer_graph/structures.py).")
    dec: str = _field("causal", "Decoder self-attention graph structure: causal, window, dilated or "
                      "global_window (always their causal variant).")
    cross: str = _field("complete", "Decoder-to-encoder (cross) attention graph structure: complete, or window, "
                        "dilated, global_window centred on the diagonal-aligned source position.")
    window: int = _field(8, "Neighbours on each side for windowed structures.", min=0)
    dilation: int = _field(2, "Step between attended positions for dilated structures.", min=1)
    global_tokens: int = _field(1, "Tokens that attend to / are attended by all others (global structures).", min=0)


@dataclass
class ModelConfig:
    kind: str = _field("standard", "'standard' stack of distinct layers, or 'universal' (one shared layer "
                       "applied recurrently with adaptive halting; sequence tasks only). The task picks the "
                       "model: an encoder-decoder for the sequence tasks, a graph encoder (layers encoder "
                       "layers on each graph, then a node classifier) for the node tasks.",
                       choices=("standard", "universal"))
    layers: int = _field(6, "Encoder layers (and decoder layers unless decoder_layers is set).", min=1)
    decoder_layers: int | None = _field(None, "Decoder layers; null means the same as layers.", min=1)
    d_model: int = _field(512, "Width of the token (node) representations.", min=1)
    d_ff: int = _field(2048, "Hidden width of the position-wise feed-forward network.", min=1)
    heads: int = _field(8, "Attention heads; must divide d_model.", min=1)
    dropout: float = _field(0.1, "Dropout on embeddings and sublayer outputs.", min=0, lt=1)
    attn_dropout: float | None = _field(None, "Dropout on attention weights; null means the same as dropout.",
                                           min=0, lt=1)
    norm_first: bool = _field(True, "Pre-norm (LayerNorm before each sublayer) instead of the paper's post-norm.")
    share_embeddings: bool = _field(False, "One embedding table for source and target (needs a joint vocabulary).")
    tie_generator: bool | None = _field(None, "Tie the output projection to the target embedding; null means "
                                           "tie exactly when embeddings are shared.")
    max_len: int = _field(512, "Longest sequence the positional-encoding table covers; the table of "
                          "max_len x d_model floats may hold at most 2**28 entries (1 GiB).", min=1)
    embed_init_std: float | None = _field(None, "Std of a normal init for token embeddings; null means "
                                             "Xavier like every other matrix.", gt=0)
    aggregator: str = _field("attention", "How a node combines its incoming messages: attention (softmax of "
                             "q.k), mean (fully connected GCN, 1/in-degree), gat (additive GAT scores) or sage "
                             "(GraphSAGE: W [h_i || mean of the neighbours]).",
                             choices=("attention", "mean", "gat", "sage"))
    structure: StructureConfig = _field(StructureConfig, "Attention graph structures.")
    max_depth: int = _field(8, "Universal transformer: most recurrent steps per token.", min=1)
    act_threshold: float = _field(0.99, "Universal transformer: halting-probability mass at which a token stops.",
                                  gt=0, max=1)
    ponder_weight: float = _field(0.01, "Universal transformer: weight of the ponder-cost loss term.", min=0)
    halting: bool = _field(True, "Universal transformer: adaptive computation time; false runs all max_depth steps.")
    graph_structure: str = _field("sparse", "Node tasks: who attends to whom within each graph: 'sparse' (the "
                                  "graph's own edges, plus self loops), 'complete' (every node of the graph: full "
                                  "attention) or 'global' (sparse plus model.global_nodes virtual nodes linked both "
                                  "ways to every node of their graph).", choices=NODE_STRUCTURES)
    global_nodes: int = _field(1, "Node tasks: virtual nodes per graph of model.graph_structure 'global'.", min=1)
    self_loops: bool = _field(True, "Node tasks: every node also attends to itself (structures sparse and "
                              "global); false needs every node to have an in-edge.")
    pe_dim: int = _field(0, "Node tasks: Laplacian positional encoding width (eigenvectors of the graph's "
                         "normalised Laplacian, Dwivedi et al.) added to the node embeddings; 0 means none.", min=0)
    pe_sign_flip: bool = _field(True, "Node tasks: random signs for each graph's positional-encoding columns in "
                                "training (eigenvector signs are arbitrary); never in evaluation.")
    readout: str = _field("mlp", "Node tasks: the node classifier: 'mlp' (the benchmark's MLPReadout, d_model -> "
                          "d_model/2 -> d_model/4 -> classes) or 'linear'.", choices=("mlp", "linear"))


@dataclass
class DataConfig:
    task: str = _field("copy", "Sequence tasks: synthetic 'copy'/'sort', or real text from 'parallel' files or "
                       "'multi30k'. Node classification: 'pattern', 'cluster' (the SBM benchmarks of Dwivedi et al.), "
                       "'karate' (Zachary's karate club) or 'planetoid' (data.graph_name in data.path).",
                       choices=(*SEQUENCE_TASKS, *NODE_TASKS))
    seed: int = _field(1234, "Seed for generating synthetic data (copy/sort sequences, PATTERN/CLUSTER graphs).")
    train_size: int = _field(9000, "Synthetic training examples.", min=1)
    valid_size: int = _field(1000, "Synthetic validation examples.", min=0)
    test_size: int = _field(1000, "Synthetic test examples.", min=0)
    length_mean: float = _field(15.0, "Mean length of synthetic sequences.", gt=0)
    length_std: float = _field(3.0, "Standard deviation of synthetic sequence lengths.", min=0)
    alphabet: str = _field("abcdefghijklmnopqrstuvwxyz", "Symbols of synthetic sequences.")
    path: str | None = _field(None, "Data directory for the parallel/multi30k tasks; for planetoid the directory "
                              "with its ind.<name>.* files.")
    src_lang: str = _field("en", "Source-language file suffix.")
    tgt_lang: str = _field("de", "Target-language file suffix.")
    train_prefix: str = _field("train", "File prefix of the training split ({prefix}.{lang}).")
    valid_prefix: str = _field("val", "File prefix of the validation split.")
    test_prefix: str = _field("test_2016_flickr", "File prefix of the test split.")
    min_freq: int = _field(1, "Tokens seen fewer times in training become <unk>.", min=1)
    max_src_len: int = _field(256, "Longest source sentence in tokens.", min=1)
    max_tgt_len: int = _field(256, "Longest target sentence in tokens.", min=1)
    long_pairs: str = _field("skip", "What to do with training pairs over the length limits.",
                             choices=("skip", "truncate"))
    joint_vocab: bool = _field(False, "One vocabulary built from both languages.")
    lowercase: bool = _field(False, "Lowercase the text (parallel files: before tokenizing; Multi30k: its Moses "
                             "tokens); output is then lowercase too.")
    subwords: str = _field("none", "Split words into subword pieces with a joint SentencePiece model trained on the "
                           "training split: 'bpe' or 'unigram'; 'none' keeps a word vocabulary "
                           "(transformer_graph/data/subwords.py).", choices=("none", "bpe", "unigram"))
    subword_vocab_size: int = _field(8000, "Pieces of the SentencePiece model (data.subwords), its 256 byte "
                                     "pieces included.", min=300)
    subword_model: str | None = _field(None, "A trained SentencePiece .model file to use instead of training "
                                       "one (data.subwords must name its kind).")
    graph_name: str | None = _field(None, "Planetoid: which citation graph, with the standard split.",
                                    choices=PLANETOID_GRAPHS)
    graphs_train: int | None = _field(None, "PATTERN/CLUSTER training graphs; null means the published 10000.",
                                      min=1)
    graphs_valid: int | None = _field(None, "PATTERN/CLUSTER validation graphs; null means the published size "
                                      "(2000 for PATTERN, 1000 for CLUSTER).", min=0)
    graphs_test: int | None = _field(None, "PATTERN/CLUSTER test graphs; null means the published size (2000 for "
                                     "PATTERN, 1000 for CLUSTER).", min=0)
    karate_features: str = _field("onehot", "Karate: node features, 'onehot' (the identity matrix, dense) or 'id' "
                                  "(the node id, categorical).", choices=("onehot", "id"))
    batch_size: int = _field(128, "Sentences per batch (node tasks: graphs per batch; evaluation averages the "
                             "class-weighted accuracy over batches of this size, as the benchmark does).", min=1)
    max_tokens: int | None = _field(None, "Token budget per batch; when set it takes precedence over batch_size.",
                                       min=1)
    bucket: bool = _field(True, "Batch sentences of similar length together.")


@dataclass
class OptimConfig:
    schedule: str = _field("noam", "Learning rate: 'noam' (warm-up, then inverse square root: optim.factor, "
                           "optim.warmup), 'constant' (optim.lr throughout) or 'plateau' (optim.lr, multiplied "
                           "by optim.plateau_factor whenever the validation loss has not improved for "
                           "optim.plateau_patience epochs; training stops once it falls below optim.min_lr: "
                           "the schedule of Benchmarking GNNs).", choices=("noam", "constant", "plateau"))
    lr: float | None = _field(None, "The (initial) learning rate of optim.schedule 'constant' and 'plateau'; "
                              "required there, not used by 'noam'.", gt=0)
    plateau_factor: float = _field(0.5, "optim.schedule 'plateau': the factor applied to the learning rate on "
                                   "a plateau.", gt=0, lt=1)
    plateau_patience: int = _field(10, "optim.schedule 'plateau': epochs without a better validation loss "
                                   "before the rate is cut.", min=0)
    min_lr: float | None = _field(None, "optim.schedule 'plateau': stop training once the learning rate is "
                                  "below this (null: never stop for it).", gt=0)
    factor: float = _field(1.0, "Noam schedule factor (scales the whole learning-rate curve).", gt=0)
    warmup: int = _field(400, "Noam warm-up steps.", min=1)
    betas: list[float] = _field([0.9, 0.98], "Adam betas.", len=2, min=0, lt=1)
    eps: float = _field(1e-9, "Adam epsilon.", gt=0)
    weight_decay: float = _field(0.0, "Decoupled (AdamW) weight decay.", min=0)
    label_smoothing: float = _field(0.0, "Label smoothing of the training loss.", min=0, lt=1)
    clip_grad: float | None = _field(None, "Clip the gradient norm to this; null means no clipping.", gt=0)
    accum_steps: int = _field(1, "Batches whose gradients are summed per optimizer step.", min=1)


@dataclass
class TrainConfig:
    max_epochs: int = _field(4, "Epochs to train.", min=1)
    max_steps: int | None = _field(None, "Stop after this many optimizer steps; null means no limit.", min=0)
    max_time: float | None = _field(None, "Stop after this many seconds; null means no limit.", gt=0)
    seed: int = _field(1234, "Seed for model initialisation, dropout and shuffling.")
    device: str = _field("cpu", "Where to train; 'auto' picks cuda when available.", choices=("cpu", "cuda", "auto"))
    threads: int | None = _field(None, "torch CPU threads per process; null: the CPUs this process may use "
                                 "(affinity, cgroup quota) that are idle at start-up, shared by the ranks "
                                 "(transformer_graph.threads).", min=1)
    bf16: bool = _field(False, "bfloat16 autocast.")
    engine: str = _field("auto", "Who computes phi and □: 'dgl' (DGL's u_dot_v/edge_softmax/u_mul_e_sum, the "
                         "reference; needs the dgl extra), 'torch' (the same in PyTorch: sparse CSR on CPU, any "
                         "torch, no DGL) or 'auto' (dgl where DGL can be imported, else torch).",
                         choices=("auto", "dgl", "torch"))
    kernels: str | None = _field(None, "Deprecated, use train.engine: 'sparse' means engine 'torch'; 'dgl' "
                                    "(the old default, in every config saved before) means 'auto': DGL's "
                                    "kernels where DGL is installed.", choices=("dgl", "sparse"))
    tune_malloc: bool = _field(True, "Tune glibc's allocator for training (train/malloc.py): freed large blocks are "
                               "reused instead of unmapped and page-faulted in again, at the price of keeping the "
                               "peak memory mapped; no effect where the C library is not glibc. Measured, whole "
                               "process, 1 thread, true vs false: copy.yaml 150 steps CPU time x0.96 (peak memory "
                               "+3%); the copy task with an 8000-symbol vocabulary, 60 steps, wall time x0.75 "
                               "(peak +14%).")
    log_every: int = _field(50, "Log training loss every this many steps.", min=1)
    save_every_steps: int | None = _field(None, "Also write last.pt every this many optimizer steps inside an "
                                             "epoch (a kill loses at most these steps); null means no step "
                                             "count.", min=1)
    save_every_minutes: float | None = _field(10.0, "Also write last.pt when this many minutes of training "
                                                 "passed since the last save (a kill loses at most these "
                                                 "minutes); null means only at epoch ends and stops.", gt=0)
    keep_last: int = _field(1, "Epoch checkpoints kept on disk.", min=1)
    average_last: int = _field(1, "Average the last N epoch checkpoints at the end.", min=1)


@dataclass
class EvalConfig:
    beam: int = _field(1, "Beam size; 1 is greedy decoding.", min=1)
    alpha: float = _field(0.6, "Beam-search length-penalty exponent.", min=0)
    max_len_a: float = _field(1.0, "Max decode length = max_len_a * src_len + max_len_b.", min=0)
    max_len_b: int = _field(10, "Max decode length = max_len_a * src_len + max_len_b.", min=0)
    bleu: bool = _field(False, "Compute validation BLEU each epoch.")
    exact_match: bool = _field(True, "Report the fraction of exactly reproduced targets.")
    max_valid_sentences: int | None = _field(None, "Decode only the first N validation sentences; null means all.",
                                                min=1)


@dataclass
class VizConfig:
    example: int | None = _field(None, "Index into the valid split whose attention is snapshotted each epoch.",
                                    min=0)
    every_epoch: bool = _field(False, "Keep an attention figure for every epoch instead of only the latest.")


@dataclass
class Config:
    model: ModelConfig = _field(ModelConfig, "The network.")
    data: DataConfig = _field(DataConfig, "Dataset, vocabulary and batching.")
    optim: OptimConfig = _field(OptimConfig, "Optimizer and learning-rate schedule.")
    train: TrainConfig = _field(TrainConfig, "Training loop.")
    eval: EvalConfig = _field(EvalConfig, "Decoding and metrics.")
    viz: VizConfig = _field(VizConfig, "Attention visualisation.")


# --------------------------------------------------------------------------- errors

class ConfigError(ValueError):
    """A config value is missing, misspelled, of the wrong type or out of range."""


_short = reprlib.Repr()  # keep "got ..." readable when someone passes a whole file's worth of value
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 80, 80, 8, 6


def _bad(source: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{source}: {key}: expected {expected}, got {_short.repr(value)}")


def _unknown(source: str, key: str, names: list[str], section: bool) -> ConfigError:
    what = "unknown section" if section else "unknown key"
    close = difflib.get_close_matches(str(key.rsplit(".", 1)[-1]), names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(names)}"
    return ConfigError(f"{source}: {key}: {what}; {hint}")


# --------------------------------------------------------------------------- validation

_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
_RULES = {"min": operator.ge, "gt": operator.gt, "max": operator.le, "lt": operator.lt}
# PyYAML follows YAML 1.1, where a float needs a dot: `1e-9` loads as the string '1e-9'.
# Accept exactly that spelling for float fields so `eps: 1e-9` works as anyone would expect.
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _range_phrase(typ: type, meta: dict) -> str:
    """'a positive integer', 'a number in [0, 1)', ... from the min/gt/max/lt rules."""
    noun = "integer" if typ is int else "number"
    lo = ("[", meta["min"]) if "min" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["max"]) if "max" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"{'an' if typ is int else 'a'} {noun} in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo == ("(", 0) or (typ is int and lo == ("[", 1)):
        return f"a positive {noun}"
    if lo == ("[", 0):
        return f"a non-negative {noun}"
    if lo:
        return f"{_TYPE_NAMES[typ]} {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{_TYPE_NAMES[typ]} {'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return _TYPE_NAMES[typ]


def is_optional(typ: Any) -> bool:
    """Whether ``typ`` is ``X | None`` (written either way: ``Optional[X]`` or ``X | None``)."""
    return get_origin(typ) in (Union, types.UnionType) and type(None) in get_args(typ)


def _non_null(typ: Any) -> Any:
    """X for X | None, else typ itself."""
    return next(a for a in get_args(typ) if a is not type(None)) if is_optional(typ) else typ


def _convert(value: Any, typ: Any, meta: dict, key: str, src) -> Any:
    """Check one value against its annotation and rules; return it normalised
    (ints become floats in float fields). ``src(key)`` names where it came from."""
    null = ""
    if is_optional(typ):  # X | None: null means "not set"
        if value is None:
            return None
        typ, null = _non_null(typ), " or null"
    if is_dataclass(typ):
        return _build(typ, value, key, src)
    if get_origin(typ) is list:
        (item,) = get_args(typ)
        n = meta.get("len")
        if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n):
            noun = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}[item]
            raise _bad(src(key), key, f"a list of {n or 'any number of'} {noun}{null}", value)
        return [_convert(v, item, meta, f"{key}[{i}]", src) for i, v in enumerate(value)]

    if typ is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)
    if typ is float:  # an int is a fine float; a bool is not a number
        ok = (isinstance(value, int) and not isinstance(value, bool)
              or isinstance(value, float) and math.isfinite(value))
    else:
        ok = isinstance(value, typ) and (typ is bool or not isinstance(value, bool))
    if "choices" in meta and not (ok and value in meta["choices"]):
        raise _bad(src(key), key, f"one of {', '.join(map(repr, meta['choices']))}{null}", value)
    if not ok:
        raise _bad(src(key), key, _TYPE_NAMES[typ] + null, value)
    if not all(op(value, meta[rule]) for rule, op in _RULES.items() if rule in meta):
        raise _bad(src(key), key, _range_phrase(typ, meta) + null, value)  # "got" what was written
    return float(value) if typ is float else value


def _build(cls: type, raw: Any, prefix: str, src) -> Any:
    """Build dataclass ``cls`` from mapping ``raw``; missing keys keep their defaults."""
    if raw is None:  # `model:` with everything under it commented out
        raw = {}
    if not isinstance(raw, dict):
        raise _bad(src(prefix), prefix, "a mapping of keys to values", raw)
    hints, specs = get_type_hints(cls), {f.name: f for f in fields(cls)}
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in specs:
            raise _unknown(src(key), key, list(specs), section=not prefix and cls is Config)
        kwargs[name] = _convert(value, hints[name], dict(specs[name].metadata), key, src)
    return cls(**kwargs)


class ConfigDeprecationWarning(FutureWarning):
    """A config key that still works but has a replacement (shown to users by default)."""


# train.kernels: 'dgl' was the default, so every config and checkpoint saved before train.engine
# says it; it becomes 'auto' (DGL's kernels wherever DGL is installed, as before) so that those
# runs also load and resume where DGL cannot be installed, on the torch engine's identical results.
_KERNELS_ENGINE = {"dgl": "auto", "sparse": "torch"}


def _migrate(cfg: Config, src) -> None:
    """Deprecated keys -> their replacements (configs and checkpoints written before them still load)."""
    t = cfg.train
    if t.kernels is not None:
        engine = _KERNELS_ENGINE[t.kernels]
        if t.engine == "auto":
            t.engine = engine
            what = f"using train.engine: {engine!r}"
        else:
            what = f"train.engine: {t.engine!r} is set and wins"
        why = (" ('dgl' was the default; 'auto' runs DGL's kernels wherever DGL is installed, else the torch "
               "engine's, with the same results)" if t.kernels == "dgl" else "")
        warnings.warn(f"{src('train.kernels')}: train.kernels is deprecated; write train.engine: {engine!r} "
                      f"instead{why} ({what})", ConfigDeprecationWarning, stacklevel=3)
        t.kernels = None


def _cross_check(cfg: Config, src) -> None:
    """Rules that involve more than one field."""
    m, d = cfg.model, cfg.data
    if m.d_model % m.heads:
        raise _bad(src("model.heads", "model.d_model"), "model.heads",
                   f"a divisor of model.d_model ({m.d_model})", m.heads)
    if m.max_len * m.d_model > MAX_POSITION_TABLE:
        raise _bad(src("model.max_len", "model.d_model"), "model.max_len",
                   f"at most {MAX_POSITION_TABLE // m.d_model} with model.d_model={m.d_model} (the positional "
                   f"table holds max_len x d_model floats; {m.max_len} would need "
                   f"{m.max_len * m.d_model * 4 / 2 ** 30:.0f} GiB)", m.max_len)
    if d.task == "parallel" and d.path is None:
        raise ConfigError(f"{src('data.path', 'data.task')}: data.path: required for task 'parallel', got None")
    _check_task_keys(cfg, src)


# Keys that mean something for some tasks only: set to anything but their default with another task, they
# would be silently ignored, so they are an error. (Keys of the sequence models that a node task does not
# read -- model.max_len, model.structure, ... -- keep their defaults there and are not checked.)
_TASK_KEYS = {
    "model.graph_structure": NODE_TASKS, "model.global_nodes": NODE_TASKS, "model.self_loops": NODE_TASKS,
    "model.pe_dim": NODE_TASKS, "model.pe_sign_flip": NODE_TASKS, "model.readout": NODE_TASKS,
    "data.graph_name": ("planetoid",), "data.graphs_train": SBM_TASKS, "data.graphs_valid": SBM_TASKS,
    "data.graphs_test": SBM_TASKS, "data.karate_features": ("karate",),
    "data.max_tokens": SEQUENCE_TASKS, "optim.label_smoothing": SEQUENCE_TASKS, "viz.example": SEQUENCE_TASKS,
}


def _value_of(cfg: Config, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _default_of(key: str) -> Any:
    return _value_of(Config(), key)


def _tasks_phrase(tasks: tuple[str, ...]) -> str:
    names = [repr(t) for t in tasks]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _check_task_keys(cfg: Config, src) -> None:
    """The model and the keys a task reads: a node task builds a graph encoder (a standard stack), a
    sequence task never reads the graph keys; every key set for a task it does not apply to is an error."""
    m, d, o = cfg.model, cfg.data, cfg.optim
    node = d.task in NODE_TASKS
    if node and m.kind != "standard":
        raise _bad(src("model.kind", "data.task"), "model.kind",
                   f"'standard' for the node task data.task {d.task!r} (its graph encoder is a stack of "
                   f"model.layers distinct layers; the universal model is a sequence model)", m.kind)
    for key, tasks in _TASK_KEYS.items():
        value = _value_of(cfg, key)
        if d.task not in tasks and value != _default_of(key):
            raise _bad(src(key, "data.task"), key,
                       f"{_show(_default_of(key))} (its default) with data.task {d.task!r}: it applies to "
                       f"data.task {_tasks_phrase(tasks)} only", value)
    if d.task == "planetoid":
        if d.graph_name is None:
            raise ConfigError(f"{src('data.graph_name', 'data.task')}: data.graph_name: required for task "
                              f"'planetoid' (one of {', '.join(map(repr, PLANETOID_GRAPHS))}), got None")
        if d.path is None:
            raise ConfigError(f"{src('data.path', 'data.task')}: data.path: required for task 'planetoid' (the "
                              f"directory with the ind.{d.graph_name}.* files), got None")
    if d.task in SBM_TASKS and d.seed < 0:
        raise _bad(src("data.seed", "data.task"), "data.seed",
                   f"a non-negative integer for data.task {d.task!r} (the graph generator's seed)", d.seed)
    if node:
        if m.readout == "mlp" and m.d_model < 4:
            raise _bad(src("model.d_model", "model.readout"), "model.d_model",
                       "at least 4 with model.readout 'mlp' (it halves d_model twice), or model.readout 'linear'",
                       m.d_model)
        if m.graph_structure == "complete" and not m.self_loops:
            raise _bad(src("model.self_loops", "model.graph_structure"), "model.self_loops",
                       "true with model.graph_structure 'complete' (full attention includes each node itself; "
                       "use 'sparse' for attention on the graph's edges alone)", m.self_loops)
        if m.global_nodes != _default_of("model.global_nodes") and m.graph_structure != "global":
            raise _bad(src("model.global_nodes", "model.graph_structure"), "model.global_nodes",
                       f"{_default_of('model.global_nodes')} (its default) unless model.graph_structure is "
                       f"'global'", m.global_nodes)
    if o.schedule in ("constant", "plateau") and o.lr is None:
        raise ConfigError(f"{src('optim.lr', 'optim.schedule')}: optim.lr: required for optim.schedule "
                          f"{o.schedule!r}, got None")
    plateau_keys = [k for k in ("plateau_factor", "plateau_patience", "min_lr")
                    if getattr(o, k) != _default_of(f"optim.{k}")]
    if plateau_keys and o.schedule != "plateau":
        k = plateau_keys[0]
        raise _bad(src(f"optim.{k}", "optim.schedule"), f"optim.{k}",
                   f"{_default_of(f'optim.{k}')} (its default) unless optim.schedule is 'plateau'", getattr(o, k))
    if o.schedule == "plateau" and o.min_lr is not None and o.min_lr >= o.lr:
        raise _bad(src("optim.min_lr", "optim.lr"), "optim.min_lr",
                   f"below optim.lr ({o.lr:g}), or training would stop before its first epoch", o.min_lr)
    if o.schedule == "noam" and o.lr is not None:
        raise _bad(src("optim.lr", "optim.schedule"), "optim.lr",
                   "null with optim.schedule 'noam' (its rate comes from optim.factor and optim.warmup)", o.lr)


# --------------------------------------------------------------------------- overrides

def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected dotted.key=value (e.g. model.layers=2), got {item!r}")
    try:
        return key, _yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: {key}: expected a YAML value, got {text!r} "
                          f"({getattr(e, 'problem', None) or e})") from None


def _apply_override(raw: dict, key: str, value: Any, file_source: str, source: str) -> None:
    """Put ``value`` at dotted ``key`` inside the raw mapping, checking the path
    against the schema first so a typo names the --set, not the file."""
    parts, cls, node = key.split("."), Config, raw
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        specs = [f.name for f in fields(cls)]
        if part not in specs:
            raise _unknown(source, where, specs, section=(i == 0))
        if i == len(parts) - 1:
            node[part] = value
            return
        cls = get_type_hints(cls)[part]
        if not is_dataclass(cls):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 2])}: unknown key; {where} is not a section")
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise _bad(file_source, where, "a mapping of keys to values", node[part])
        node = node[part]


# --------------------------------------------------------------------------- public API

def config_from_dict(d: dict | None, source: str = "<dict>", overrides: Iterable[str] = ()) -> Config:
    """Validate a plain mapping (as loaded from YAML) into a Config, after
    applying ``overrides`` ("dotted.key=value" strings). ``source`` names the
    mapping's origin in error messages."""
    raw = {} if d is None else copy.deepcopy(d)  # never modify the caller's dict
    if not isinstance(raw, dict):
        names = ", ".join(f.name for f in fields(Config))
        raise ConfigError(f"{source}: expected a mapping of sections ({names}) at the top level, "
                          f"got {_short.repr(raw)}")
    set_by: dict[str, str] = {}  # dotted key -> the --set that last assigned it, in the order applied
    for item in [overrides] if isinstance(overrides, str) else overrides:
        key, value = _parse_override(item)
        _apply_override(raw, key, value, source, f"--set {item}")
        set_by.pop(key, None)
        set_by[key] = f"--set {item}"

    def src(*keys: str) -> str:
        # Errors name the override that last touched one of these keys (or a section
        # above them), else the file: that is where the user has to go to fix it.
        keys = tuple(k.split("[")[0] for k in keys)
        hits = [s for k, s in set_by.items() if any(x == k or x.startswith(k + ".") for x in keys)]
        return hits[-1] if hits else source

    cfg = _build(Config, raw, "", src)
    _migrate(cfg, src)
    _cross_check(cfg, src)
    return cfg


def dataclass_from_dict(cls: type, d: dict | None, source: str | Callable[..., str] = "<dict>") -> Any:
    """Validate a plain mapping into any dataclass declared like the sections above (annotations
    and ``config_field`` rules), with the checks and messages of :func:`config_from_dict`.

    For option sets outside the YAML schema (the benchmark's, bench/options.py), so there is one
    validation mechanism. ``source`` names the mapping's origin in errors, or is a function of
    the dotted key(s) returning that name (e.g. the command-line flag that set it)."""
    return _build(cls, d, "", source if callable(source) else lambda *keys: source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags run code), except that a key given twice in one mapping is an
    error: plain YAML keeps the last silently, so a second ``model:`` block would drop the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            seen[key] = key_node.start_mark.line + 1
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}); YAML would keep only the "
                                f"last one silently: merge the two into one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config file, apply ``overrides`` and validate everything."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', None) or e}") from None
    return config_from_dict(data, str(path), overrides)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict of the config (sections in schema order)."""
    return asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the effective config as YAML; ``load_config(path) == cfg``."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))  # a kill never leaves half


def _type_name(typ: Any) -> str:
    if is_optional(typ):
        return f"{_type_name(_non_null(typ))} or null"
    return getattr(typ, "__name__", None) if get_origin(typ) is None else repr(typ)


def _rule(typ: Any, meta: Any) -> str:
    """The constraint on a value in words; '' when any value of the type goes."""
    typ = _non_null(typ)
    if get_origin(typ) is list:
        inner = _rule(get_args(typ)[0], meta)
        return f"each {inner}" if inner else ""
    if "choices" in meta:
        return f"one of {', '.join(map(repr, meta['choices']))}"
    return _range_phrase(typ, meta) if any(r in meta for r in _RULES) else ""


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def describe() -> str:
    """Every config key with its type, default, doc and rule, one per line."""
    lines: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in fields(cls):
            key, typ, meta = f"{prefix}.{f.name}" if prefix else f.name, hints[f.name], f.metadata
            if is_dataclass(typ):
                lines.append(f"{key}: {meta['doc']}")
                walk(typ, key)
                continue
            default = f.default if f.default is not MISSING else f.default_factory()
            rule = _rule(typ, meta)
            lines.append(f"  {key} ({_type_name(typ)}, default {_show(default)}): {meta['doc']}"
                         + (f" [{rule}]" if rule else ""))

    walk(Config, "")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
