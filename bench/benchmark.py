"""Benchmarks: what the graph formulation costs against a dense ``nn.Transformer``.

Five sections, each a function returning plain JSON-able data (the report is
written by :mod:`bench.report`):

1. ``training``: tokens/s (source + target nodes) and peak memory of one
   optimizer step, graph model vs :class:`~transformer_graph.nn.dense.DenseTransformer`
   (same weights, same batches, same threads), float32 and bfloat16 autocast, at
   several model sizes. The two models alternate within every repeat (graph
   first in even repeats, dense first in odd ones), so slow drifts of the machine
   hit both alike; the median over repeats is reported.
2. ``decoding``: greedy and beam-5 sentences/s, graph incremental vs graph full
   recomputation vs dense full recomputation (``nn.TransformerDecoder`` has no
   key/value cache), all driven by the same beam search.
3. ``attention``: attention alone, forward + backward, vs sequence length at a
   fixed number of tokens per batch: dense ``scaled_dot_product_attention``
   (without and with a padding mask) vs the complete graph vs a local window.
4. ``ceiling``: the machine's float32 and bfloat16 matrix-product FLOP/s, measured
   in the same run, and the model FLOP/s of section 1 as a fraction of them.
5. ``profile``: the top ops of one training step (torch.profiler), graph and dense.

Times are wall-clock (``time.perf_counter``) with ``torch.set_num_threads``
fixed for the whole run; memory is measured as described in
:mod:`bench.profiling`. See docs/BENCHMARKS.md for the commands and
the meaning of every number.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from transformer_graph.graphs._dgl import dgl
from transformer_graph.message_passing.attention import GraphAttention
from transformer_graph.config import ModelConfig, load_config
from transformer_graph.data.datasets import SPECIALS, Batcher, DataError, Dataset, Vocab, collate
from transformer_graph.nn.dense import DenseTransformer
from bench.flops import ModelShape, attention_flops, training_flops
from transformer_graph.graphs.build import KINDS, batch_graph, complete
from transformer_graph.nn.loss import label_smoothed_loss
from transformer_graph.train.malloc import malloc_settings, tune_malloc
from bench.profiling import graph_index_bytes, peak_memory, top_ops
from transformer_graph.message_passing import csr as sparse_attention

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {1: "training", 2: "decoding", 3: "attention", 4: "ceiling", 5: "profile"}
PRECISIONS = ("fp32", "bf16")
MODELS = ("graph", "dense")
DECODERS = ("graph_incremental", "graph_recompute", "dense_recompute")
ATTENTION_METHODS = ("dense_sdpa", "dense_masked", "graph_complete", "graph_window", "graph_complete_dgl",
                     "graph_window_dgl")
MB = 2 ** 20


class BenchmarkError(ValueError):
    """A benchmark option is out of range or the data it needs is missing."""


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------
@dataclass
class BenchOptions:
    """Everything a benchmark run depends on (all recorded in the JSON)."""

    out: str = "docs"
    sections: tuple[int, ...] = (1, 2, 3, 4, 5)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    quick: bool = False
    seed: int = 0
    malloc: str = "tuned"                    # "tuned" or glibc's "default" (see transformer_graph.train.malloc)
    config: str = "configs/multi30k_cpu.yaml"  # data, batching and the multi30k_cpu size
    data: str = "auto"                       # "auto": Multi30k when present, else synthetic
    synthetic_vocab: int = 14550             # joint vocabulary of the synthetic fallback
    # 1. training
    sizes: tuple[str, ...] = ("copy", "multi30k_cpu", "reference")
    precisions: tuple[str, ...] = PRECISIONS
    max_tokens: int | None = None            # None: the config's data.max_tokens
    train_batches: int = 6
    mem_batches: int = 2
    repeats: int = 3
    # 2. decoding
    decode_sentences: int = 1000
    decode_size: str = "multi30k_cpu"
    beams: tuple[int, ...] = (1, 5)
    checkpoint: str | None = None
    # 3. attention
    attn_tokens: int = 8192
    attn_lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    attn_d_model: int = 256
    attn_heads: int = 4
    window: int = 8
    attn_repeats: int = 3
    attn_max_mb: float = 8000.0
    attn_dgl_max_len: int = 512             # DGL's kernels are slow: measured up to this length
    # 4. ceiling
    ceiling_n: int = 2048
    # 5. profile
    profile_size: str = "multi30k_cpu"
    profile_threads: int | None = 1          # None: the run's threads
    profile_ops: int = 15

    @classmethod
    def quick_options(cls, **overrides) -> "BenchOptions":
        """Tiny sizes and few repeats: the whole benchmark in seconds (for tests)."""
        quick = dict(quick=True, malloc="default", data="synthetic", synthetic_vocab=300, sizes=("copy", "tiny"),
                     max_tokens=256, train_batches=2, mem_batches=1, repeats=2, decode_sentences=4,
                     decode_size="tiny", attn_tokens=128, attn_lengths=(16, 32, 64), attn_repeats=2,
                     window=2, ceiling_n=128, profile_size="tiny", profile_ops=8)
        quick.update(overrides)
        return cls(**quick)

    def validate(self) -> "BenchOptions":
        def bad(name, expected):
            return BenchmarkError(f"benchmark option {name}: expected {expected}, got {getattr(self, name)!r}")

        if not self.sections or any(s not in SECTIONS for s in self.sections):
            raise bad("sections", f"a non-empty subset of {sorted(SECTIONS)} "
                                  f"({', '.join(f'{k}={v}' for k, v in SECTIONS.items())})")
        for name in ("threads", "train_batches", "mem_batches", "repeats", "decode_sentences",
                     "attn_tokens", "attn_d_model", "attn_heads", "attn_repeats", "ceiling_n",
                     "synthetic_vocab", "profile_ops"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "a positive integer")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", "a positive integer or None")
        if self.profile_threads is not None and self.profile_threads < 1:
            raise bad("profile_threads", "a positive integer or None")
        if self.window < 0:
            raise bad("window", "a non-negative integer")
        if self.synthetic_vocab <= len(SPECIALS):
            raise bad("synthetic_vocab", f"more than the {len(SPECIALS)} special tokens")
        if self.malloc not in ("default", "tuned"):
            raise bad("malloc", "'default' or 'tuned'")
        if self.data not in ("auto", "multi30k", "synthetic"):
            raise bad("data", "'auto', 'multi30k' or 'synthetic'")
        for size in (*self.sizes, self.decode_size, self.profile_size):
            if size not in SIZE_NAMES:
                raise BenchmarkError(f"benchmark size {size!r} is unknown; expected one of {SIZE_NAMES}")
        if not self.sizes:
            raise bad("sizes", "at least one model size")
        if not self.precisions or any(p not in PRECISIONS for p in self.precisions):
            raise bad("precisions", f"a non-empty subset of {PRECISIONS}")
        if not self.beams or any(b < 1 for b in self.beams):
            raise bad("beams", "positive beam sizes")
        if self.attn_d_model % self.attn_heads:
            raise BenchmarkError(f"benchmark option attn_d_model={self.attn_d_model} must be divisible "
                                 f"by attn_heads={self.attn_heads}")
        if not self.attn_lengths or any(not 1 <= n <= self.attn_tokens for n in self.attn_lengths):
            raise bad("attn_lengths", f"sequence lengths between 1 and attn_tokens={self.attn_tokens}")
        if self.attn_max_mb <= 0:
            raise bad("attn_max_mb", "a positive number")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise BenchmarkError(f"benchmark option checkpoint: file {self.checkpoint!r} does not exist")
        return self


# --------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def machine_info(threads: int) -> dict:
    """CPU, flags, library versions and thread settings of this run."""
    model, flags = _cpuinfo()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "dgl": dgl.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "malloc": malloc_settings(),
        "load_average_at_start": load,
        "cuda": torch.cuda.is_available(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------
# Data and model sizes
# --------------------------------------------------------------------------
def _project_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else PROJECT_ROOT / p


def size_config(name: str, opts: BenchOptions) -> ModelConfig:
    """The model architecture called ``name`` (see :data:`SIZE_NAMES`)."""
    if name == "copy":
        return load_config(_project_path("configs/copy.yaml")).model
    if name == "multi30k_cpu":
        return load_config(_project_path(opts.config)).model
    if name == "reference":
        return ModelConfig()  # the paper's base model: 6 layers, d_model 512, 8 heads, d_ff 2048
    if name == "tiny":
        return ModelConfig(layers=2, d_model=32, d_ff=64, heads=2, dropout=0.1)
    raise BenchmarkError(f"benchmark size {name!r} is unknown; expected one of {SIZE_NAMES}")


SIZE_NAMES = ("copy", "multi30k_cpu", "reference", "tiny")

# Multi30k (train, Moses tokens): log source length ~ N(2.53, 0.30), 4..41 tokens;
# target length ~ 0.97 * source + N(0, 2.2). Used only when the data is absent.
_LOG_SRC_MEAN, _LOG_SRC_STD, _TGT_RATIO, _TGT_NOISE = 2.53, 0.30, 0.97, 2.2


def synthetic_pairs(n: int, vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``n`` (source, target) id pairs with Multi30k-like lengths and random words."""
    rng = np.random.default_rng(seed)
    src_lens = np.clip(np.rint(np.exp(rng.normal(_LOG_SRC_MEAN, _LOG_SRC_STD, n))), 4, 41).astype(int)
    tgt_lens = np.clip(np.rint(_TGT_RATIO * src_lens + rng.normal(0, _TGT_NOISE, n)), 1, 45).astype(int)
    words = rng.integers(len(SPECIALS), vocab, int(src_lens.sum() + tgt_lens.sum())).tolist()
    pairs, at = [], 0
    for s, t in zip(src_lens.tolist(), tgt_lens.tolist()):
        pairs.append((words[at:at + s], words[at + s:at + s + t]))
        at += s + t
    return pairs


@dataclass
class BenchData:
    """Training pairs, their batches and test sources, Multi30k or synthetic."""

    source: str                    # what the data is, in words
    train: Dataset
    batches: list[list[int]]       # index lists into ``train``: the timed batches
    test_src: list[list[int]]      # sources for decoding
    vocab: Vocab                   # joint vocabulary (pad/sos/eos ids)
    max_tokens: int


def load_bench_data(opts: BenchOptions) -> BenchData:
    cfg = load_config(_project_path(opts.config))
    max_tokens = opts.max_tokens or cfg.data.max_tokens or 4096
    exp = None
    if opts.data != "synthetic":
        from transformer_graph.experiment import build_experiment
        try:
            exp = build_experiment(cfg)
        except (DataError, OSError) as err:
            if opts.data == "multi30k":
                raise BenchmarkError(f"benchmark data: Multi30k requested but not loadable: {err}") from None
            warnings.warn(f"Multi30k not available ({err}); benchmarking on synthetic Multi30k-like data")
    if exp is not None:
        train, vocab = exp.splits["train"], exp.tgt_vocab
        test_src = [s for s, _ in exp.splits["test"].pairs]
        source = f"Multi30k ({cfg.data.src_lang}->{cfg.data.tgt_lang}, vocabulary {len(vocab)})"
    else:
        vocab = Vocab([*SPECIALS, *(f"w{i}" for i in range(opts.synthetic_vocab - len(SPECIALS)))])
        n_train = max(2000, 40 * opts.train_batches * max_tokens // 26)
        train = Dataset(synthetic_pairs(n_train, len(vocab), opts.seed), vocab, vocab)
        test_src = [s for s, _ in synthetic_pairs(opts.decode_sentences, len(vocab), opts.seed + 1)]
        source = f"synthetic Multi30k-like lengths, random words (vocabulary {len(vocab)})"
    batcher = Batcher(train.lengths, batch_size=None, max_tokens=max_tokens, shuffle=True,
                      seed=cfg.train.seed)
    return BenchData(source, train, batcher.batches(0)[:opts.train_batches],
                     test_src[:opts.decode_sentences], vocab, max_tokens)


def build_size(name: str, opts: BenchOptions, vocab: int):
    """A freshly initialised graph model of size ``name`` (seeded), in train mode."""
    from transformer_graph.experiment import build_model
    torch.manual_seed(opts.seed)
    return build_model(size_config(name, opts), vocab, vocab).train()


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@contextmanager
def num_threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


# --------------------------------------------------------------------------
# 1. Training
# --------------------------------------------------------------------------
class TrainStep:
    """One optimizer step as the trainer takes it: forward under autocast, the
    label-smoothed loss in float32, backward, Adam."""

    def __init__(self, model, pad: int, precision: str, label_smoothing: float = 0.1):
        self.model, self.pad, self.precision, self.eps = model.train(), pad, precision, label_smoothing
        # Parameters the model does not use (the dense wrapper holds the graph model's
        # layers) never get a gradient, so Adam keeps no state for them.
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

    def __call__(self, batch) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.precision):
            logp = self.model(batch)
        loss_sum, _ = label_smoothed_loss(logp.float(), batch.labels, self.eps, self.pad)
        (loss_sum / batch.labels.numel()).backward()
        self.optimizer.step()
        return float(loss_sum)


def _forget_patterns(batches) -> None:
    for b in batches:
        for kind in KINDS:
            sparse_attention.forget_patterns(getattr(b.graphs, kind))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _agreement(model, dense, batch, pad: int) -> dict:
    """Eval-mode losses of both models in both precisions on one batch (no dropout):
    the graph and dense models must agree, bf16 must stay close to fp32."""
    model.eval(), dense.eval()
    losses = {}
    for name, m in (("graph", model), ("dense", dense)):
        for prec in PRECISIONS:
            # With gradients enabled, as in training: nn.TransformerEncoderLayer's
            # inference fast path (no_grad + eval) ignores autocast in torch 2.2.
            with autocast(prec):
                logp = m(batch).detach()
            losses[f"{name}_{prec}"] = float(label_smoothed_loss(logp.float(), batch.labels, 0.0, pad)[0]
                                             / batch.labels.numel())
    model.train(), dense.train()
    rel = lambda a, b: abs(a - b) / max(abs(b), 1e-12)  # noqa: E731
    return {"loss_per_token": losses,
            "graph_vs_dense_fp32_rel": rel(losses["graph_fp32"], losses["dense_fp32"]),
            "graph_bf16_vs_fp32_rel": rel(losses["graph_bf16"], losses["graph_fp32"]),
            "dense_bf16_vs_fp32_rel": rel(losses["dense_bf16"], losses["dense_fp32"])}


def bench_training(opts: BenchOptions, data: BenchData, log=print) -> dict:
    batches = [collate(data.train, idx) for idx in data.batches]
    tokens = sum(b.num_tokens for b in batches)
    src_lens = [n for b in batches for n in b.src_lens]
    padded = sum(len(b) * (max(b.src_lens) + max(b.tgt_lens)) for b in batches)
    collate_s = [_timed(lambda idx=idx: collate(data.train, idx)) for idx in data.batches]
    out = {"data": data.source, "batches": len(batches), "tokens": tokens, "max_tokens": data.max_tokens,
           "sentences": len(src_lens), "dense_padded_tokens": padded,
           "padding_fraction": 1 - tokens / padded,
           "collate_ms_per_batch": 1e3 * median(collate_s), "sizes": {}}
    for size in opts.sizes:
        model = build_size(size, opts, len(data.vocab))
        dense = DenseTransformer(model)
        shape = ModelShape.of(model)
        flops = {"graph": sum(training_flops(shape, b.src_lens, b.tgt_lens) for b in batches),
                 "dense": sum(training_flops(shape, b.src_lens, b.tgt_lens, padded=True) for b in batches)}
        entry = {"config": {k: v for k, v in model.config.items()},
                 "parameters": sum(p.numel() for p in model.parameters()),
                 "useful_train_flops": flops["graph"], "dense_executed_train_flops": flops["dense"],
                 "agreement": _agreement(model, dense, batches[0], data.vocab.pad), "results": {}}
        for prec in opts.precisions:
            steps = {"graph": TrainStep(model, data.vocab.pad, prec), "dense": TrainStep(dense, data.vocab.pad, prec)}
            for step in steps.values():   # warm-up: allocator, oneDNN primitives, graph caches
                step(batches[0])
            times = {name: [] for name in MODELS}
            for r in range(opts.repeats):
                for name in (MODELS if r % 2 == 0 else MODELS[::-1]):
                    step = steps[name]
                    _forget_patterns(batches)  # built inside the step, as on a fresh batch
                    times[name].append(_timed(lambda: [step(b) for b in batches]))
            for name in MODELS:
                peaks, index_bytes = [], []
                for b in batches[:opts.mem_batches]:
                    _forget_patterns([b])      # its CSR indices are then tensors of the step
                    _, mem = peak_memory(lambda: steps[name](b))
                    peaks.append(mem.peak_bytes)
                    if name == "graph":
                        index_bytes.append(sum(graph_index_bytes(getattr(b.graphs, k)) for k in KINDS))
                t = median(times[name])
                entry["results"][f"{name}_{prec}"] = {
                    "model": name, "precision": prec, "seconds": times[name], "median_s": t,
                    "tokens_per_s": tokens / t, "step_ms": 1e3 * t / len(batches),
                    "peak_mb": (max(peaks) + max(index_bytes, default=0)) / MB,
                    "tensor_peak_mb": max(peaks) / MB, "graph_index_mb": max(index_bytes, default=0) / MB,
                    "model_flops_per_s": flops["graph"] / t, "executed_flops_per_s": flops[name] / t}
            g, d = entry["results"][f"graph_{prec}"], entry["results"][f"dense_{prec}"]
            entry["results"][f"ratio_{prec}"] = {"speed_graph_over_dense": g["tokens_per_s"] / d["tokens_per_s"],
                                                 "memory_graph_over_dense": g["peak_mb"] / d["peak_mb"]}
            log(f"  training {size} {prec}: graph {g['tokens_per_s']:.0f} tok/s {g['peak_mb']:.0f} MB, "
                f"dense {d['tokens_per_s']:.0f} tok/s {d['peak_mb']:.0f} MB")
        out["sizes"][size] = entry
        del model, dense
    return out


# --------------------------------------------------------------------------
# 2. Decoding
# --------------------------------------------------------------------------
def _decode_model(opts: BenchOptions, data: BenchData):
    """(graph model in eval mode, what it is, eval settings) for the decoding section."""
    cfg = load_config(_project_path(opts.config))
    if opts.checkpoint:
        from transformer_graph.experiment import load_trained
        model, ckpt_cfg, _, _ = load_trained(opts.checkpoint)
        if model.config["src_vocab"] != len(data.vocab):
            raise BenchmarkError(f"checkpoint {opts.checkpoint!r} has a vocabulary of {model.config['src_vocab']} "
                                 f"tokens but the benchmark data has {len(data.vocab)}; use the config it was "
                                 f"trained with (--config)")
        return model, f"checkpoint {opts.checkpoint}", ckpt_cfg.eval
    model = build_size(opts.decode_size, opts, len(data.vocab)).eval()
    what = f"{opts.decode_size} size, untrained (random init: hypotheses mostly run to the length limit)"
    return model, what, cfg.eval


def _decode_all(decode: Callable, src: list[list[int]], beam: int) -> list[list[int]]:
    """Sort by length and decode in chunks, as evaluation.decode_dataset does."""
    order = sorted(range(len(src)), key=lambda i: len(src[i]))
    per_batch = max(1, 128 // beam) if beam > 1 else 128
    out: list = [None] * len(src)
    for start in range(0, len(order), per_batch):
        chunk = order[start:start + per_batch]
        for i, hyps in zip(chunk, decode([src[i] for i in chunk], beam)):
            out[i] = hyps[0].tokens
    return out


def bench_decoding(opts: BenchOptions, data: BenchData, log=print) -> dict:
    from transformer_graph.inference.decoding import beam_search
    from transformer_graph.inference.dense_decoding import dense_beam_search

    model, what, ev = _decode_model(opts, data)
    dense = DenseTransformer(model).eval()
    v = data.vocab
    kw = dict(sos=v.sos, eos=v.eos, alpha=ev.alpha, max_len_a=ev.max_len_a, max_len_b=ev.max_len_b)
    decoders = {
        "graph_incremental": lambda s, beam: beam_search(model, s, beam=beam, incremental=True, **kw),
        "graph_recompute": lambda s, beam: beam_search(model, s, beam=beam, incremental=False, **kw),
        "dense_recompute": lambda s, beam: dense_beam_search(dense, s, beam=beam, **kw),
    }
    src = data.test_src
    out = {"model": what, "sentences": len(src), "source_tokens": sum(map(len, src)),
           "settings": {"alpha": ev.alpha, "max_len_a": ev.max_len_a, "max_len_b": ev.max_len_b},
           "dense_method": "full recomputation of every prefix (nn.TransformerDecoder has no key/value cache)",
           "results": {}}
    with torch.no_grad():
        for beam in opts.beams:
            label = "greedy" if beam == 1 else f"beam{beam}"
            outputs, seconds = {}, {}
            for name, decode in decoders.items():
                start = time.perf_counter()
                outputs[name] = _decode_all(decode, src, beam)
                seconds[name] = time.perf_counter() - start
            ref = outputs["graph_incremental"]
            res = {}
            for name in DECODERS:
                res[name] = {"seconds": seconds[name], "sentences_per_s": len(src) / seconds[name],
                             "generated_tokens": sum(len(h) + 1 for h in outputs[name]),
                             "same_output_as_incremental": sum(a == b for a, b in zip(outputs[name], ref)) / len(src)}
            res["speedup_incremental_over_recompute"] = seconds["graph_recompute"] / seconds["graph_incremental"]
            res["speedup_incremental_over_dense"] = seconds["dense_recompute"] / seconds["graph_incremental"]
            out["results"][label] = res
            log(f"  decoding {label}: " + ", ".join(f"{n} {res[n]['sentences_per_s']:.1f} sent/s" for n in DECODERS))
    return out


# --------------------------------------------------------------------------
# 3. Attention alone
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """Structure: key j -> query i iff |i - j| <= w (a local band, self included).

    Built in O(n * w) for self-attention (never the n^2 complete graph, which would
    not fit at long lengths). A frozen dataclass, so equal windows hash alike in the
    pair-edge cache.
    """

    w: int

    @property
    def __name__(self) -> str:  # graphs.pair_edges names structures in its errors
        return f"window{self.w}"

    def __call__(self, n_keys: int, n_queries: int):
        if n_keys != n_queries:
            keys, queries = complete(n_keys, n_queries)
            keep = (keys - queries).abs() <= self.w
            return keys[keep], queries[keep]
        offsets = torch.arange(-self.w, self.w + 1)
        queries = torch.arange(n_queries).repeat_interleave(offsets.numel())
        keys = queries + offsets.repeat(n_queries)
        keep = (keys >= 0) & (keys < n_keys)
        return keys[keep], queries[keep]


def structure_bytes(graph) -> int:
    """Memory of a graph's structure: DGL's sparse formats plus the cached CSR patterns."""
    return graph_index_bytes(graph) + sparse_attention.pattern_bytes(graph)


def graph_attention_fn(attn: GraphAttention, graph, q, k, v, grad_out, kernels: str = "auto"):
    """Forward + backward of the model's own phi and □ on ``graph`` (no projections),
    dispatched as :meth:`GraphAttention.attend` does (``kernels="auto"``) or always on
    DGL's kernels (``"dgl"``)."""
    scale = 1.0 / attn.d_k ** 0.5

    def run():
        q.grad = k.grad = v.grad = None
        with sparse_attention.enabled(sparse_attention.is_enabled() and kernels == "auto"):
            if sparse_attention.supports(graph, q):
                out, _ = sparse_attention.attend(graph, q, k, v, scale)
            else:
                out, _ = attn.aggregate(graph, attn.message(graph, q, k), v)
            out.backward(grad_out)
    return run


def dense_attention_fn(q, k, v, grad_out, mask=None) -> Callable[[], None]:
    def run():
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad_out)
    return run


def _estimate_mb(method: str, batch: int, length: int, heads: int, d_model: int, window: int) -> float:
    """A generous upper estimate of the memory a method needs (to skip what cannot fit)."""
    tokens = batch * length
    if method in ("dense_sdpa", "dense_masked"):
        cells = batch * heads * length * length
        return (6 * cells * 4 + 8 * tokens * d_model * 4) / MB
    edges = tokens * length if method.startswith("graph_complete") else tokens * (2 * window + 1)
    # edge values and their gradients, DGL's formats, the CSR pattern's indices, features
    return (8 * edges * heads * 4 + 8 * edges * 4 + 5 * edges * heads * 4 + 8 * tokens * d_model * 4) / MB


def _sdpa_kernel(q, k, v) -> str:
    """Which ATen kernel scaled_dot_product_attention dispatches to for these inputs."""
    from torch.profiler import ProfilerActivity, profile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            F.scaled_dot_product_attention(q, k, v)
    names = [e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and "attention" in e.key]
    inner = [n for n in names if n != "aten::scaled_dot_product_attention"]
    return inner[0] if inner else (names[0] if names else "unknown")


def bench_attention(opts: BenchOptions, log=print) -> dict:
    h, d = opts.attn_heads, opts.attn_d_model
    dk = d // h
    attn = GraphAttention(d, h, dropout=0.0).eval()
    out = {"tokens_per_batch": opts.attn_tokens, "heads": h, "d_model": d, "window": opts.window,
           "dgl_max_len": opts.attn_dgl_max_len,
           "dense_sdpa_kernel": None, "lengths": [], "results": {m: [] for m in ATTENTION_METHODS}}
    gen = torch.Generator().manual_seed(opts.seed)
    for length in sorted(set(opts.attn_lengths)):
        batch = max(1, opts.attn_tokens // length)
        n = batch * length
        out["lengths"].append(length)
        dense_in = [torch.randn(batch, h, length, dk, generator=gen).requires_grad_() for _ in range(3)]
        dense_grad = torch.randn(batch, h, length, dk, generator=gen)
        graph_in = [x.detach().transpose(1, 2).reshape(n, h, dk).requires_grad_() for x in dense_in]
        graph_grad = dense_grad.transpose(1, 2).reshape(n, h, dk)
        if out["dense_sdpa_kernel"] is None:
            out["dense_sdpa_kernel"] = _sdpa_kernel(*dense_in)
        for method in ATTENTION_METHODS:
            est = _estimate_mb(method, batch, length, h, d, opts.window)
            row = {"length": length, "batch": batch, "tokens": n}
            if est > opts.attn_max_mb:
                row.update(skipped=f"estimated {est:.0f} MB > attn_max_mb={opts.attn_max_mb:.0f}")
                out["results"][method].append(row)
                continue
            if method.endswith("_dgl") and length > opts.attn_dgl_max_len:
                row.update(skipped=f"DGL kernels measured up to attn_dgl_max_len={opts.attn_dgl_max_len}")
                out["results"][method].append(row)
                continue
            graph = None
            if method == "dense_sdpa":
                fn = dense_attention_fn(*dense_in, dense_grad)
                pairs = batch * length * length
            elif method == "dense_masked":
                # What nn.Transformer runs with a key padding mask: a boolean mask (here
                # all True: no padding) that rules out the fused kernels.
                mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
                fn = dense_attention_fn(*dense_in, dense_grad, mask)
                pairs = batch * length * length
            else:
                structure = complete if method.startswith("graph_complete") else Window(opts.window)
                graph = batch_graph(structure, [length] * batch, [length] * batch)
                fn = graph_attention_fn(attn, graph, *graph_in, graph_grad,
                                        "dgl" if method.endswith("_dgl") else "auto")
                pairs = graph.num_edges()
            fn()  # warm-up; also creates the graph's sparse formats
            times = [_timed(fn) for _ in range(opts.attn_repeats)]
            _, mem = peak_memory(fn)
            index_mb = structure_bytes(graph) / MB if graph is not None else 0.0
            t = median(times)
            row.update(pairs=pairs, seconds=times, median_ms=1e3 * t, peak_mb=mem.peak_bytes / MB + index_mb,
                       graph_index_mb=index_mb, gflops_per_s=attention_flops(pairs, d) / t / 1e9)
            out["results"][method].append(row)
            del graph, fn
        log(f"  attention L={length}: " + ", ".join(
            f"{m} {r[-1]['median_ms']:.1f} ms" for m, r in out["results"].items() if "median_ms" in r[-1]))
    out["summary"] = attention_summary(out)
    return out


def _loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def attention_summary(att: dict) -> dict:
    """Crossovers (first length from which a method beats dense SDPA for good),
    speed-ups at the longest measured length, and memory growth (log-log slopes)."""
    res = att["results"]
    def ok(rows):
        return {r["length"]: r for r in rows if "median_ms" in r}
    dense = ok(res["dense_sdpa"])
    summary = {}
    for method in ("graph_window", "graph_complete", "graph_window_dgl", "graph_complete_dgl", "dense_masked"):
        rows = ok(res[method])
        common = sorted(set(rows) & set(dense))
        faster = [n for n in common if rows[n]["median_ms"] < dense[n]["median_ms"]]
        crossover = next((n for n in common if all(m in faster for m in common if m >= n)), None)
        longest = common[-1] if common else None
        summary[method] = {
            "crossover_length_vs_dense_sdpa": crossover,
            "longest_common_length": longest,
            "speedup_vs_dense_sdpa_at_longest": (dense[longest]["median_ms"] / rows[longest]["median_ms"]
                                                 if longest else None),
            "memory_ratio_vs_dense_sdpa_at_longest": (rows[longest]["peak_mb"] / dense[longest]["peak_mb"]
                                                      if longest else None),
            "memory_loglog_slope": _loglog_slope(sorted(rows), [max(rows[n]["peak_mb"], 1e-6) for n in sorted(rows)]),
        }
    summary["dense_sdpa"] = {"memory_loglog_slope": _loglog_slope(
        sorted(dense), [max(dense[n]["peak_mb"], 1e-6) for n in sorted(dense)])}
    return summary


# --------------------------------------------------------------------------
# 4. Ceiling
# --------------------------------------------------------------------------
def matmul_flops_per_s(n: int, dtype: torch.dtype, repeats: int = 5, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
    torch.mm(a, b)
    times = [_timed(lambda: torch.mm(a, b)) for _ in range(repeats)]
    t = median(times)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": times, "gflops_per_s": 2 * n ** 3 / t / 1e9}


def bench_ceiling(opts: BenchOptions, training: dict | None, log=print) -> dict:
    ceiling = {"fp32": matmul_flops_per_s(opts.ceiling_n, torch.float32, seed=opts.seed),
               "bf16": matmul_flops_per_s(opts.ceiling_n, torch.bfloat16, seed=opts.seed)}
    log(f"  ceiling: fp32 {ceiling['fp32']['gflops_per_s']:.1f} GFLOP/s, "
        f"bf16 {ceiling['bf16']['gflops_per_s']:.1f} GFLOP/s")
    rows = []
    for size, entry in ((training or {}).get("sizes") or {}).items():
        for key, r in entry["results"].items():
            if key.startswith("ratio_"):
                continue
            peak = ceiling[r["precision"]]["gflops_per_s"] * 1e9
            rows.append({"size": size, "model": r["model"], "precision": r["precision"],
                         "model_gflops_per_s": r["model_flops_per_s"] / 1e9,
                         "executed_gflops_per_s": r["executed_flops_per_s"] / 1e9,
                         "fraction_of_ceiling": r["model_flops_per_s"] / peak})
    return {"matmul": ceiling, "model_flops": rows}


# --------------------------------------------------------------------------
# 5. Profile
# --------------------------------------------------------------------------
# Ops that are graph attention, with everything they call (their self time and children's).
ATTENTION_OPS = ("_ScoresSoftmax", "_WeightedSum", "_ScoresSoftmaxBackward", "_WeightedSumBackward",
                 "GSpMM", "GSDDMM", "EdgeSoftmax", "GSpMMBackward", "GSDDMMBackward", "EdgeSoftmaxBackward")
_CATEGORIES = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                         "aten::_addmm_activation", "mkldnn")),
    ("generator log-softmax", ("aten::_log_softmax", "aten::_log_softmax_backward_data")),
    ("dense attention softmax", ("aten::_softmax", "aten::_softmax_backward_data", "aten::_scaled_dot_product",
                                 "aten::_masked_softmax")),
    ("memory (fill/copy/cast)", ("aten::fill_", "aten::copy_", "aten::zero_", "aten::empty", "aten::zeros",
                                 "aten::clone", "aten::cat", "aten::index", "aten::index_copy", "aten::_to_copy",
                                 "aten::index_select", "aten::contiguous", "aten::new_")),
    ("dropout", ("aten::bernoulli_", "aten::native_dropout")),
    ("optimizer", ("Optimizer.", "aten::_foreach", "aten::sqrt", "aten::addcmul_", "aten::addcdiv_", "aten::lerp_")),
)


def categorize(name: str, ancestors: Sequence[str] = ()) -> str:
    """The category of an op, for the profile's coarse breakdown."""
    if name in ATTENTION_OPS or any(a in ATTENTION_OPS for a in ancestors):
        return "graph attention (phi, □)"
    if name.startswith("Optimizer.") or any(a.startswith("Optimizer.") for a in ancestors):
        return "optimizer"
    for category, prefixes in _CATEGORIES:
        if any(name.startswith(p) for p in prefixes):
            return category
    return "other (elementwise, norms, autograd, Python)"


def bench_profile(opts: BenchOptions, data: BenchData, log=print) -> dict:
    threads = opts.profile_threads or opts.threads
    batches = [collate(data.train, idx) for idx in data.batches[:2]]
    out = {"size": opts.profile_size, "threads": threads, "runs": {}}
    with num_threads(threads):
        model = build_size(opts.profile_size, opts, len(data.vocab))
        dense = DenseTransformer(model)
        runs = [("graph", model, prec, True) for prec in opts.precisions]
        runs += [("graph_dgl_kernels", model, prec, False) for prec in opts.precisions]
        runs += [("dense", dense, prec, True) for prec in opts.precisions]
        for name, m, prec, csr in runs:
            step = TrainStep(m, data.vocab.pad, prec)
            with sparse_attention.enabled(csr):
                step(batches[0])
                _forget_patterns(batches[-1:])
                ops_, total_ms, shares = top_ops(lambda: step(batches[-1]), n=opts.profile_ops,
                                                 category=categorize)
            out["runs"][f"{name}_{prec}"] = {
                "total_self_ms": total_ms, "tokens": batches[-1].num_tokens, "categories": shares,
                "top_ops": [asdict(op) for op in ops_]}
            log(f"  profile {name} {prec}: {total_ms:.0f} ms self time; "
                + ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(shares.items())[:3]))
    return out


# --------------------------------------------------------------------------
# Targets and the whole run
# --------------------------------------------------------------------------
def evaluate_targets(results: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it is met."""
    rows = []

    def add(target, goal, value, met, note=""):
        rows.append({"target": target, "goal": goal, "value": value, "met": met, "note": note})

    training = results.get("training")
    if training:
        size = "multi30k_cpu" if "multi30k_cpu" in training["sizes"] else next(iter(training["sizes"]))
        for key, r in training["sizes"][size]["results"].items():
            if key.startswith("ratio_"):
                prec = key.split("_", 1)[1]
                s, m = r["speed_graph_over_dense"], r["memory_graph_over_dense"]
                add(f"training tokens/s graph / dense ({size}, {prec})", ">= 1.0", s, s >= 1.0)
                add(f"training peak memory graph / dense ({size}, {prec})", "<= 1.0", m, m <= 1.0)
    decoding = results.get("decoding")
    if decoding:
        for label, r in decoding["results"].items():
            if label.startswith("beam"):
                v = r["speedup_incremental_over_recompute"]
                add(f"incremental vs full-recompute {label} ({decoding['sentences']} sentences)", ">= 5", v, v >= 5,
                    "" if decoding["sentences"] >= 1000 else "fewer than the 1000 test2016 sentences")
    attention = results.get("attention")
    if attention:
        s = attention["summary"]["graph_window"]
        if s["longest_common_length"]:
            v = s["speedup_vs_dense_sdpa_at_longest"]
            add(f"window graph vs dense SDPA at length {s['longest_common_length']}", ">= 10", v, v >= 10,
                "" if s["longest_common_length"] >= 2048 else "longest length measured is below 2048")
        slope = s["memory_loglog_slope"]
        if slope is not None:
            # At a fixed number of tokens, memory linear in sequence length means a
            # constant total (slope 0); quadratic per sequence means slope 1.
            add("window graph memory vs length at fixed tokens (log-log slope; 0 = linear per sequence)",
                "< 0.25", slope, slope < 0.25)
    return rows


def run_benchmark(opts: BenchOptions, log=print) -> dict:
    """Run the selected sections; returns the results dict (see :func:`write_results`)."""
    opts.validate()
    if opts.malloc == "tuned" and not tune_malloc():
        warnings.warn("malloc=tuned: glibc refused the settings (or this is not glibc); using the default")
    torch.set_num_threads(opts.threads)
    results = {"machine": machine_info(opts.threads), "options": _jsonable(asdict(opts))}
    sections = set(opts.sections)
    data = load_bench_data(opts) if sections & {1, 2, 5} else None
    if data is not None:
        results["data"] = {"source": data.source, "train_pairs": len(data.train), "max_tokens": data.max_tokens}
    started = time.perf_counter()
    for number, name in SECTIONS.items():
        if number not in sections:
            continue
        log(f"[{number}/{name}]")
        t0 = time.perf_counter()
        if name == "training":
            results[name] = bench_training(opts, data, log)
        elif name == "decoding":
            results[name] = bench_decoding(opts, data, log)
        elif name == "attention":
            results[name] = bench_attention(opts, log)
        elif name == "ceiling":
            results[name] = bench_ceiling(opts, results.get("training"), log)
        else:
            results[name] = bench_profile(opts, data, log)
        results[name]["section_seconds"] = time.perf_counter() - t0
    results["targets"] = evaluate_targets(results)
    try:
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    results["machine"]["total_seconds"] = time.perf_counter() - started
    return results


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def options_from_args(args) -> BenchOptions:
    """BenchOptions from the command line of scripts/benchmark.py (argparse namespace)."""
    base = BenchOptions.quick_options() if args.quick else BenchOptions()
    given = {f.name: getattr(args, f.name) for f in fields(BenchOptions)
             if getattr(args, f.name, None) is not None and f.name != "quick"}
    return replace(base, **given)


# --------------------------------------------------------------------------
# Command line (scripts/benchmark.py)
# --------------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> "argparse.ArgumentParser":
    p = argparse.ArgumentParser(
        prog="scripts/benchmark.py",
        description="Graph vs dense Transformer: training, decoding, attention, machine ceiling, profile. "
                    "Writes benchmark.md, benchmark.json and figures/benchmark_*.png under --out.")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (seconds; for tests)")
    p.add_argument("--sections", type=_int_list,
                   help="comma-separated: " + ", ".join(f"{k}={v}" for k, v in SECTIONS.items()) + " (default all)")
    p.add_argument("--threads", type=int, help="torch threads for every timing (default: all logical CPUs)")
    p.add_argument("--out", help="output directory (default docs)")
    p.add_argument("--config", help="config giving the data, batching and multi30k_cpu size "
                                    "(default configs/multi30k_cpu.yaml)")
    p.add_argument("--data", choices=("auto", "multi30k", "synthetic"),
                   help="auto (default): Multi30k when present, else synthetic Multi30k-like lengths")
    p.add_argument("--sizes", type=_str_list, help=f"training sizes, comma-separated from {SIZE_NAMES}")
    p.add_argument("--precisions", type=_str_list, help="fp32,bf16 (default both)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, help="token budget per training batch")
    p.add_argument("--train-batches", dest="train_batches", type=int, help="batches per timed pass (default 6)")
    p.add_argument("--mem-batches", dest="mem_batches", type=int, help="batches whose step memory is measured")
    p.add_argument("--repeats", type=int, help="timed passes per model and precision (median reported)")
    p.add_argument("--decode-sentences", dest="decode_sentences", type=int,
                   help="test sentences decoded (default 1000: all of test2016)")
    p.add_argument("--beams", type=_int_list, help="beam sizes to decode with (default 1,5)")
    p.add_argument("--checkpoint", help="trained checkpoint for the decoding section (default: untrained "
                                        "multi30k_cpu model)")
    p.add_argument("--attn-tokens", dest="attn_tokens", type=int, help="tokens per attention batch (default 8192)")
    p.add_argument("--attn-lengths", dest="attn_lengths", type=_int_list, help="sequence lengths (default 16..2048)")
    p.add_argument("--window", type=int, help="half-width w of the local-window graph (default 8)")
    p.add_argument("--attn-max-mb", dest="attn_max_mb", type=float,
                   help="skip attention runs estimated to need more memory (default 8000)")
    p.add_argument("--attn-dgl-max-len", dest="attn_dgl_max_len", type=int,
                   help="longest length timed on DGL's kernels (default 512)")
    p.add_argument("--ceiling-n", dest="ceiling_n", type=int, help="matrix size of the ceiling product (default 2048)")
    p.add_argument("--profile-size", dest="profile_size", help="model size profiled (default multi30k_cpu)")
    p.add_argument("--profile-threads", dest="profile_threads", type=int, help="threads while profiling (default 1)")
    p.add_argument("--malloc", choices=("default", "tuned"),
                   help="glibc allocator: tuned (default; reuses freed memory instead of page-faulting it "
                        "in again, see transformer_graph/malloc.py) or glibc's default")
    p.add_argument("--seed", type=int, help="seed of models and synthetic data (default 0)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import shlex
    import sys

    from bench.report import markdown, write_results

    args = build_parser().parse_args(argv)
    # "graph" rows use the fast sparse kernels; section 5 profiles DGL's kernels beside them.
    sparse_attention.set_enabled(True)
    try:
        opts = options_from_args(args).validate()
        results = run_benchmark(opts, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results["command"] = "python scripts/benchmark.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    paths = write_results(results, opts.out)
    print(markdown(results))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}", file=sys.stderr)
    return 0
