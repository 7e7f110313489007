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
import difflib
import math
import operator
import re
import reprlib
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = ["Config", "ModelConfig", "StructureConfig", "DataConfig", "OptimConfig", "TrainConfig",
           "EvalConfig", "VizConfig", "ConfigError", "load_config", "config_from_dict",
           "config_to_dict", "save_config", "describe"]


def _field(default: Any, doc: str, **rules: Any) -> Any:
    """A dataclass field with its doc line and validation rules in metadata."""
    meta = {"doc": doc, **rules}
    if isinstance(default, list):  # mutable defaults need a factory
        return field(default_factory=lambda: list(default), metadata=meta)
    if isinstance(default, type) and is_dataclass(default):  # nested section
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- schema

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
                       "applied recurrently with adaptive halting).", choices=("standard", "universal"))
    layers: int = _field(6, "Encoder layers (and decoder layers unless decoder_layers is set).", min=1)
    decoder_layers: Optional[int] = _field(None, "Decoder layers; null means the same as layers.", min=1)
    d_model: int = _field(512, "Width of the token (node) representations.", min=1)
    d_ff: int = _field(2048, "Hidden width of the position-wise feed-forward network.", min=1)
    heads: int = _field(8, "Attention heads; must divide d_model.", min=1)
    dropout: float = _field(0.1, "Dropout on embeddings and sublayer outputs.", min=0, lt=1)
    attn_dropout: Optional[float] = _field(None, "Dropout on attention weights; null means the same as dropout.",
                                           min=0, lt=1)
    norm_first: bool = _field(True, "Pre-norm (LayerNorm before each sublayer) instead of the paper's post-norm.")
    share_embeddings: bool = _field(False, "One embedding table for source and target (needs a joint vocabulary).")
    tie_generator: Optional[bool] = _field(None, "Tie the output projection to the target embedding; null means "
                                           "tie exactly when embeddings are shared.")
    max_len: int = _field(512, "Longest sequence the positional-encoding table covers.", min=1)
    embed_init_std: Optional[float] = _field(None, "Std of a normal init for token embeddings; null means "
                                             "Xavier like every other matrix.", gt=0)
    aggregator: str = _field("attention", "How a node combines its incoming messages: attention (softmax of "
                             "q.k), mean (fully connected GCN, 1/in-degree) or gat (additive GAT scores).",
                             choices=("attention", "mean", "gat"))
    structure: StructureConfig = _field(StructureConfig, "Attention graph structures.")
    max_depth: int = _field(8, "Universal transformer: most recurrent steps per token.", min=1)
    act_threshold: float = _field(0.99, "Universal transformer: halting-probability mass at which a token stops.",
                                  gt=0, max=1)
    ponder_weight: float = _field(0.01, "Universal transformer: weight of the ponder-cost loss term.", min=0)
    halting: bool = _field(True, "Universal transformer: adaptive computation time; false runs all max_depth steps.")


@dataclass
class DataConfig:
    task: str = _field("copy", "Synthetic 'copy'/'sort', or real text from 'parallel' files or 'multi30k'.",
                       choices=("copy", "sort", "parallel", "multi30k"))
    seed: int = _field(1234, "Seed for generating synthetic data.")
    train_size: int = _field(9000, "Synthetic training examples.", min=1)
    valid_size: int = _field(1000, "Synthetic validation examples.", min=0)
    test_size: int = _field(1000, "Synthetic test examples.", min=0)
    length_mean: float = _field(15.0, "Mean length of synthetic sequences.", gt=0)
    length_std: float = _field(3.0, "Standard deviation of synthetic sequence lengths.", min=0)
    alphabet: str = _field("abcdefghijklmnopqrstuvwxyz", "Symbols of synthetic sequences.")
    path: Optional[str] = _field(None, "Data directory for the parallel/multi30k tasks.")
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
    lowercase: bool = _field(False, "Lowercase text before tokenizing.")
    batch_size: int = _field(128, "Sentences per batch.", min=1)
    max_tokens: Optional[int] = _field(None, "Token budget per batch; when set it takes precedence over batch_size.",
                                       min=1)
    bucket: bool = _field(True, "Batch sentences of similar length together.")


@dataclass
class OptimConfig:
    factor: float = _field(1.0, "Noam schedule factor (scales the whole learning-rate curve).", gt=0)
    warmup: int = _field(400, "Noam warm-up steps.", min=1)
    betas: list[float] = _field([0.9, 0.98], "Adam betas.", len=2, min=0, lt=1)
    eps: float = _field(1e-9, "Adam epsilon.", gt=0)
    weight_decay: float = _field(0.0, "Decoupled (AdamW) weight decay.", min=0)
    label_smoothing: float = _field(0.0, "Label smoothing of the training loss.", min=0, lt=1)
    clip_grad: Optional[float] = _field(None, "Clip the gradient norm to this; null means no clipping.", gt=0)
    accum_steps: int = _field(1, "Batches whose gradients are summed per optimizer step.", min=1)


@dataclass
class TrainConfig:
    max_epochs: int = _field(4, "Epochs to train.", min=1)
    max_steps: Optional[int] = _field(None, "Stop after this many optimizer steps; null means no limit.", min=0)
    max_time: Optional[float] = _field(None, "Stop after this many seconds; null means no limit.", gt=0)
    seed: int = _field(1234, "Seed for model initialisation, dropout and shuffling.")
    device: str = _field("cpu", "Where to train; 'auto' picks cuda when available.", choices=("cpu", "cuda", "auto"))
    threads: Optional[int] = _field(None, "torch CPU threads; null leaves torch's default.", min=1)
    bf16: bool = _field(False, "bfloat16 autocast.")
    kernels: str = _field("dgl", "Attention kernels: 'dgl' (DGL's u_dot_v/edge_softmax/u_mul_e_sum) or "
                          "'sparse' (the same phi/□ on PyTorch's sparse CSR kernels, faster on CPU).",
                          choices=("dgl", "sparse"))
    log_every: int = _field(50, "Log training loss every this many steps.", min=1)
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
    max_valid_sentences: Optional[int] = _field(None, "Decode only the first N validation sentences; null means all.",
                                                min=1)


@dataclass
class VizConfig:
    example: Optional[int] = _field(None, "Index into the valid split whose attention is snapshotted each epoch.",
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
        return f"a {noun} in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo == ("(", 0) or (typ is int and lo == ("[", 1)):
        return f"a positive {noun}"
    if lo == ("[", 0):
        return f"a non-negative {noun}"
    if lo:
        return f"{_TYPE_NAMES[typ]} {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{_TYPE_NAMES[typ]} {'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return _TYPE_NAMES[typ]


def _non_null(typ: Any) -> Any:
    """X for Optional[X], else typ itself."""
    return next(a for a in get_args(typ) if a is not type(None)) if get_origin(typ) is Union else typ


def _convert(value: Any, typ: Any, meta: dict, key: str, src) -> Any:
    """Check one value against its annotation and rules; return it normalised
    (ints become floats in float fields). ``src(key)`` names where it came from."""
    null = ""
    if get_origin(typ) is Union:  # Optional[X]: null means "not set"
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
            raise _unknown(src(key), key, list(specs), section=not prefix)
        kwargs[name] = _convert(value, hints[name], dict(specs[name].metadata), key, src)
    return cls(**kwargs)


def _cross_check(cfg: Config, src) -> None:
    """Rules that involve more than one field."""
    m, d = cfg.model, cfg.data
    if m.d_model % m.heads:
        raise _bad(src("model.heads", "model.d_model"), "model.heads",
                   f"a divisor of model.d_model ({m.d_model})", m.heads)
    if d.task == "parallel" and d.path is None:
        raise ConfigError(f"{src('data.path', 'data.task')}: data.path: required for task 'parallel', got None")


# --------------------------------------------------------------------------- overrides

def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected dotted.key=value (e.g. model.layers=2), got {item!r}")
    try:
        return key, yaml.safe_load(text)
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

def config_from_dict(d: Optional[dict], source: str = "<dict>", overrides: Iterable[str] = ()) -> Config:
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
    _cross_check(cfg, src)
    return cfg


def load_config(path: Union[str, Path], overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config file, apply ``overrides`` and validate everything."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', None) or e}") from None
    return config_from_dict(data, str(path), overrides)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict of the config (sections in schema order)."""
    return asdict(cfg)


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    """Write the effective config as YAML; ``load_config(path) == cfg``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


def _type_name(typ: Any) -> str:
    if get_origin(typ) is Union:
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
