"""The benchmark's options: one dataclass, validated by the config engine, and its command line.

Every option is a :func:`~transformer_graph.config.config_field` with its doc line and rules, so
:func:`~transformer_graph.config.dataclass_from_dict` checks types and ranges with the same
messages as a YAML config (``--threads: threads: expected a positive integer, got 0``), and
``--help`` is generated from the same doc lines. Only rules that involve several options or the
disk are written here (:func:`_cross_check`).

Paths (``out``, ``config``, ``checkpoint``) are relative to the current directory: the
benchmark runs from the checkout as ``python -m bench.benchmark``.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from bench.sections import ENGINE_MODELS, PRECISIONS, SECTIONS, SIZE_NAMES
from transformer_graph.config import ConfigError, ModelConfig, config_field, dataclass_from_dict, load_config
from transformer_graph.data.datasets import SPECIALS
from transformer_graph.graphs import _dgl

COPY_CONFIG = "configs/copy.yaml"   # the "copy" model size
DEFAULT_SOURCE = "benchmark options"
_SECTION_NAMES = ", ".join(f"{k}={v}" for k, v in SECTIONS.items())


class BenchmarkError(ValueError):
    """A benchmark option is out of range, or the data or files it needs are missing."""


@dataclass
class BenchOptions:
    """Everything a benchmark run depends on (all recorded in the JSON).

    ``X | None`` for optional values, as in transformer_graph.config."""

    out: str = config_field("runs/bench", "Output directory of benchmark.md, benchmark.json and "
                            "figures/benchmark_*.png; docs/ only when named here, never with --quick.")
    force: bool = config_field(False, "Replace the files of an earlier run in --out (otherwise an error "
                               "before any work).")
    sections: list[int] = config_field(list(SECTIONS), f"Sections to run, comma-separated: {_SECTION_NAMES}.",
                                       choices=tuple(SECTIONS))
    threads: int = config_field(os.cpu_count() or 1, "torch threads for every timing (default: all logical "
                                f"CPUs, here {os.cpu_count() or 1}).", min=1)
    quick: bool = config_field(False, "Tiny sizes and few repeats: the whole pipeline in seconds (tests).")
    seed: int = config_field(0, "Seed of the models and the synthetic data.")
    malloc: str = config_field("tuned", "glibc allocator: 'tuned' (freed memory reused instead of page-faulted "
                               "in again, transformer_graph/train/malloc.py) or glibc's 'default'.",
                               choices=("tuned", "default"))
    config: str = config_field("configs/multi30k_cpu.yaml", "Config giving the data, the batching and the "
                               "multi30k_cpu model size.")
    data: str = config_field("auto", "'auto': Multi30k when present, else synthetic Multi30k-like lengths; "
                             "'multi30k' or 'synthetic' to insist.", choices=("auto", "multi30k", "synthetic"))
    synthetic_vocab: int = config_field(14550, "Joint vocabulary of the synthetic data.", min=len(SPECIALS) + 1)
    # 1. training
    sizes: list[str] = config_field(["copy", "multi30k_cpu", "reference"], "Model sizes of section 1, "
                                    f"comma-separated from {', '.join(SIZE_NAMES)}.")
    precisions: list[str] = config_field(list(PRECISIONS), "Precisions of section 1 (fp32, bf16 autocast).",
                                         choices=PRECISIONS)
    engines: list[str] = config_field(["torch"], "Engines of section 1's graph model, comma-separated: "
                                      "torch (rows 'graph') and/or dgl (rows 'graph_dgl'; needs DGL), each "
                                      "beside the same dense baseline.", choices=tuple(ENGINE_MODELS))
    max_tokens: int | None = config_field(None, "Token budget per training batch; null: the config's "
                                             "data.max_tokens.", min=1)
    train_batches: int = config_field(6, "Batches per timed training pass.", min=1)
    mem_batches: int = config_field(2, "Batches whose step memory is measured.", min=1)
    repeats: int = config_field(3, "Timed passes per model and precision (the median is reported).", min=1)
    # 2. decoding
    decode_sentences: int = config_field(1000, "Test sentences decoded (1000: all of test2016).", min=1)
    decode_size: str = config_field("multi30k_cpu", "Model size decoded when no --checkpoint is given.")
    beams: list[int] = config_field([1, 5], "Beam sizes to decode with (1 is greedy).", min=1)
    checkpoint: str | None = config_field(None, "Trained checkpoint for section 2 (default: an untrained "
                                             "model of --decode-size).")
    # 3. attention
    attn_tokens: int = config_field(8192, "Tokens per attention batch (batch = tokens / length).", min=1)
    attn_lengths: list[int] = config_field([16, 32, 64, 128, 256, 512, 1024, 2048], "Sequence lengths of "
                                           "section 3.", min=1)
    attn_d_model: int = config_field(256, "Width of q, k, v in section 3.", min=1)
    attn_heads: int = config_field(4, "Attention heads in section 3; must divide --attn-d-model.", min=1)
    window: int = config_field(8, "Half-width w of the local-window graph (|i - j| <= w).", min=0)
    attn_repeats: int = config_field(3, "Timed repeats per attention run.", min=1)
    attn_max_mb: float = config_field(8000.0, "Skip attention runs estimated to need more memory (MB).", gt=0)
    attn_dgl_max_len: int = config_field(512, "Longest length timed on DGL's (slow) kernels.", min=1)
    # 4. ceiling
    ceiling_n: int = config_field(2048, "Matrix size n of the n x n ceiling product.", min=1)
    # 5. profile
    profile_size: str = config_field("multi30k_cpu", "Model size profiled.")
    profile_threads: int | None = config_field(1, "Threads while profiling; null: --threads.", min=1)
    profile_ops: int = config_field(15, "Top ops listed per profile.", min=1)
    # 6. peer
    peer_dir: str | None = config_field(None, "Directory of DGL's Transformer example (dgl's "
                                        "examples/pytorch/transformer, fetched by you; never part of this "
                                        "repository): section 6 trains it beside the graph model on the copy "
                                        "task at 1 thread (bench/peer.py). Without it section 6 is skipped.")
    peer_batches: int = config_field(20, "Copy-task batches (128 sentences) per timed pass of section 6.", min=1)

    @classmethod
    def quick_options(cls, **overrides) -> BenchOptions:
        """Tiny sizes and few repeats: the whole benchmark in seconds (for tests)."""
        return cls(**{**QUICK, **overrides})

    def validate(self) -> BenchOptions:
        """The same options, checked (lists normalised); raises BenchmarkError."""
        return validated(asdict(self), lambda *keys: DEFAULT_SOURCE)


QUICK = dict(quick=True, malloc="default", data="synthetic", synthetic_vocab=300, sizes=["copy", "tiny"],
             max_tokens=256, train_batches=2, mem_batches=1, repeats=2, decode_sentences=4,
             decode_size="tiny", attn_tokens=128, attn_lengths=[16, 32, 64], attn_repeats=2,
             window=2, ceiling_n=128, profile_size="tiny", profile_ops=8)


def size_config(name: str, config: str) -> ModelConfig:
    """The model architecture called ``name`` (one of SIZE_NAMES); ``config`` gives multi30k_cpu."""
    if name == "copy":
        return load_config(COPY_CONFIG).model
    if name == "multi30k_cpu":
        return load_config(config).model
    if name == "reference":
        return ModelConfig()  # the paper's base model: 6 layers, d_model 512, 8 heads, d_ff 2048
    if name == "tiny":
        return ModelConfig(layers=2, d_model=32, d_ff=64, heads=2, dropout=0.1)
    raise BenchmarkError(f"benchmark size {name!r} is unknown; expected one of {', '.join(SIZE_NAMES)}")


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------
def _cross_check(o: BenchOptions, src: Callable[..., str]) -> None:
    """Rules that involve several options, the size names, or files on disk."""
    def bad(key: str, what: str) -> BenchmarkError:
        return BenchmarkError(f"{src(key)}: {key}: {what}")

    for key in ("sections", "sizes", "precisions", "engines", "beams", "attn_lengths"):
        if not getattr(o, key):
            raise bad(key, "expected at least one value, got none")
    if len(set(o.engines)) < len(o.engines):
        raise bad("engines", f"expected each engine once, got {','.join(o.engines)}")
    # Only when section 1 runs: a run of other sections on a stack without DGL stays possible.
    if 1 in o.sections and "dgl" in o.engines and not _dgl.available():
        raise bad("engines", f"'dgl' needs DGL, which cannot be imported here ({_dgl.why_unavailable()}); "
                             f"install it with {_dgl.INSTALL_HINT} or leave dgl out (torch: the same results)")
    for key, names in (("sizes", o.sizes), ("decode_size", [o.decode_size]), ("profile_size", [o.profile_size])):
        for name in names:
            if name not in SIZE_NAMES:
                raise bad(key, f"model size {name!r} is unknown; expected one of {', '.join(SIZE_NAMES)}")
    if o.attn_d_model % o.attn_heads:
        raise bad("attn_heads", f"expected a divisor of attn_d_model ({o.attn_d_model}), got {o.attn_heads}")
    if any(n > o.attn_tokens for n in o.attn_lengths):
        raise bad("attn_lengths", f"expected sequence lengths of at most attn_tokens={o.attn_tokens}, "
                                  f"got {o.attn_lengths}")
    if o.checkpoint is not None and not Path(o.checkpoint).is_file():
        raise bad("checkpoint", f"file {o.checkpoint!r} does not exist")
    if 6 in o.sections and o.peer_dir is not None and not Path(o.peer_dir).is_dir():
        raise bad("peer_dir", f"directory {o.peer_dir!r} does not exist (DGL's examples/pytorch/transformer)")
    # The configs the run reads: a typo in them is an error now, not after section 1.
    named = {*o.sizes, o.decode_size, o.profile_size}
    for key, path, needed in (("config", o.config, True), ("sizes", COPY_CONFIG, "copy" in named)):
        if needed:
            try:
                load_config(path)
            except ConfigError as err:
                raise bad(key, f"config {path} is not usable: {err}") from None


def validated(raw: dict, src: Callable[..., str]) -> BenchOptions:
    """BenchOptions from a plain mapping, through the config engine plus :func:`_cross_check`."""
    try:
        opts = dataclass_from_dict(BenchOptions, raw, src)
    except ConfigError as err:
        raise BenchmarkError(str(err)) from None
    _cross_check(opts, src)
    return opts


# --------------------------------------------------------------------------
# Command line: one flag per field, text turned into values by the field's type, checked above
# --------------------------------------------------------------------------
_FLAGS = ("quick", "force")   # store_true switches


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_types() -> dict[str, Any]:
    return get_type_hints(BenchOptions)


def _parse_value(text: str, typ: Any) -> Any:
    """Command-line text -> a value for the config engine to check. Strings stay as written
    (``--out 2024`` is a directory name); lists are comma-separated; the rest is read as YAML
    scalars (``null``, ``8``, ``1e3``), so a wrong type is reported by the engine, not here."""
    if get_origin(typ) is list:
        (item,) = get_args(typ)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return parts if item is str else [_yaml_scalar(p) for p in parts]
    if str in (typ, *get_args(typ)):   # str or str | None: the text as it is
        return text
    return _yaml_scalar(text)


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text   # the engine then says what was expected


def _default_text(name: str, value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _metavar(name: str, typ: Any, meta: dict) -> str:
    """What a flag's value looks like: its choices, N / X for numbers, comma-separated lists."""
    if "choices" in meta:
        one = "{" + ",".join(map(str, meta["choices"])) + "}"
        return f"{one}[,...]" if get_origin(typ) is list else one
    if get_origin(typ) is list:
        (item,) = get_args(typ)
        return "N,N,..." if item is int else "NAME,NAME,..."
    typ = next((a for a in get_args(typ) if a is not type(None)), typ)   # Optional[X] -> X
    return {int: "N", float: "X"}.get(typ, "PATH" if name in ("out", "config", "checkpoint", "peer_dir") else "NAME")


def build_parser() -> argparse.ArgumentParser:
    defaults, types = BenchOptions(), _field_types()
    quick = ", ".join(f"{flag(k)} {_default_text(k, v)}" for k, v in QUICK.items() if k != "quick")
    p = argparse.ArgumentParser(
        prog="python -m bench.benchmark",
        description="Graph vs dense Transformer: training, decoding, attention, machine ceiling, profile. "
                    "Writes benchmark.md, benchmark.json and figures/benchmark_*.png under --out "
                    "(default runs/bench/; docs/ only when named) and prints the tables. Run it from the "
                    "checkout on an otherwise idle machine; docs/BENCHMARKS.md explains every number.",
        epilog=f"--quick sets: {quick} (each can still be given).")
    for f in fields(BenchOptions):
        doc = f.metadata["doc"]
        if f.name in _FLAGS:
            p.add_argument(flag(f.name), action="store_true", default=None, help=doc)
        else:
            default = "" if "(default" in doc else f" (default {_default_text(f.name, getattr(defaults, f.name))})"
            p.add_argument(flag(f.name), dest=f.name, metavar=_metavar(f.name, types[f.name], f.metadata),
                           help=doc + default)
    return p


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """BenchOptions from the parsed command line: the defaults (or --quick's), then what was given."""
    types = _field_types()
    raw = asdict(BenchOptions.quick_options() if args.quick else BenchOptions())
    given = {name for name in raw if getattr(args, name, None) is not None}
    for name in given:
        value = getattr(args, name)
        raw[name] = value if name in _FLAGS else _parse_value(value, types[name])

    def src(*keys: str) -> str:
        names = [k.split("[")[0].split(".")[0] for k in keys]
        hit = next((n for n in names if n in given), None)
        return flag(hit) if hit else ("--quick defaults" if args.quick else DEFAULT_SOURCE)

    return validated(raw, src)


def parse_options(argv: Sequence[str] | None = None) -> BenchOptions:
    return options_from_args(build_parser().parse_args(argv))


__all__ = ["BenchOptions", "BenchmarkError", "QUICK", "build_parser", "flag", "options_from_args",
           "parse_options", "size_config", "validated"]
