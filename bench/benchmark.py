"""Benchmarks: what the graph formulation costs against a dense ``nn.Transformer``.

Run from the checkout: ``python -m bench.benchmark [--quick] [--sections 1,2] [--out DIR]``
(``--help`` lists every option; they are validated by the config engine, see
:mod:`bench.options`). Results go to ``runs/bench/`` unless ``--out`` names another directory,
``docs`` included; files of an earlier run there are replaced only with ``--force``.

Six sections, each a function returning plain JSON-able data (the report is
written by :mod:`bench.report`):

1. ``training``: tokens/s (source + target nodes) and peak memory of one
   optimizer step, graph model vs :class:`~transformer_graph.nn.dense.DenseTransformer`
   (same weights, same batches, same threads), float32 and bfloat16 autocast, at
   several model sizes, the graph model on each of ``--engines`` (rows ``graph``:
   torch, ``graph_dgl``: dgl). The models take turns within every repeat (each
   first in turn: with two, graph first in even repeats, dense first in odd ones),
   so slow drifts of the machine hit all alike; the median over repeats is reported.
2. ``decoding``: greedy and beam-5 sentences/s, graph incremental vs graph full
   recomputation vs dense full recomputation (``nn.TransformerDecoder`` has no
   key/value cache) vs the dense layers with their own key/value caches
   (:class:`~transformer_graph.inference.dense_decoding.DenseKVState`), all driven by
   the same beam search and the library's batching
   (:func:`~transformer_graph.inference.evaluation.decode_dataset`).
3. ``attention``: attention alone, forward + backward, vs sequence length at a
   fixed number of tokens per batch: dense ``scaled_dot_product_attention``
   (without and with a padding mask) vs the complete graph vs a local window
   (the structure registry's ``window``).
4. ``ceiling``: the machine's float32 and bfloat16 matrix-product FLOP/s, measured
   in the same run, and the model FLOP/s of section 1 as a fraction of them.
5. ``profile``: the top ops of one training step (torch.profiler), graph and dense.
6. ``peer``: DGL's own Transformer example trained on the copy task beside the graph model,
   same batches, 1 thread (:mod:`bench.peer`); only with ``--peer-dir``, else skipped.

Times are wall-clock (``time.perf_counter``) with ``torch.set_num_threads``
fixed for the whole run; memory is measured as described in
:mod:`bench.profiling`. See docs/BENCHMARKS.md for the commands and
the meaning of every number.
"""
from __future__ import annotations

import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bench.flops import ModelShape, attention_flops, training_flops
from bench.options import BenchmarkError, BenchOptions, parse_options, size_config
from bench.outputs import OutputError, check_output_dir, inside_docs
from bench.profiling import graph_index_bytes, peak_memory, top_ops
from bench.report import markdown, write_results
from bench.sections import ATTENTION_METHODS, DECODERS, ENGINE_MODELS, PRECISIONS, SECTIONS, output_names
from transformer_graph.cli.errors import user_errors
from transformer_graph.config import load_config
from transformer_graph.data.datasets import SPECIALS, Batcher, DataError, Dataset, Vocab, collate
from transformer_graph.experiment import build_experiment, build_model, graph_spec, load_trained
from transformer_graph.graphs.build import KINDS, batch_graph, complete
from transformer_graph.graphs.structures import make_structure
from transformer_graph.inference.dense_decoding import DenseKVState, DenseRecomputeState
from transformer_graph.inference.evaluation import decode_dataset
from transformer_graph.message_passing import csr, resolve_engine, set_engine, using_engine
from transformer_graph.message_passing.attention import GraphAttention
from transformer_graph.nn.dense import DenseTransformer
from transformer_graph.nn.loss import label_smoothed_loss, label_smoothed_loss_from_logits
from transformer_graph.train.malloc import malloc_settings, tune_malloc

MB = 2 ** 20

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


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def dgl_available() -> bool:
    """Whether the dgl engine can run here (DGL is optional; its rows are skipped without it)."""
    return resolve_engine("auto") == "dgl"


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
        "dgl": _version("dgl"),
        "dgl_engine": dgl_available(),
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
    cfg = load_config(opts.config)
    max_tokens = opts.max_tokens or cfg.data.max_tokens or 4096
    exp = None
    if opts.data != "synthetic":
        try:
            exp = build_experiment(cfg)
        except (DataError, OSError) as err:
            if opts.data == "multi30k":
                raise BenchmarkError(f"benchmark data: Multi30k requested but not loadable: {err}") from None
            warnings.warn(f"Multi30k not available ({err}); benchmarking on synthetic Multi30k-like data",
                          stacklevel=2)
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
    """A freshly initialised graph model of size ``name`` (seeded), in train mode, on the torch
    engine (the sparse CSR kernels on CPU): the "graph" rows. Section 5 profiles the dgl engine
    beside it (:func:`~transformer_graph.message_passing.using_engine`)."""
    torch.manual_seed(opts.seed)
    return set_engine(build_model(size_config(name, opts.config), vocab, vocab).train(), "torch")


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
def takes_logits(model) -> bool:
    """Whether ``model(batch, logits=True)`` returns the generator's logits (the graph models do;
    the dense wrapper returns log-probabilities only)."""
    return "logits" in inspect.signature(model.forward).parameters


class TrainStep:
    """One optimizer step as the trainer takes it: forward under autocast, the
    label-smoothed loss in float32, backward, Adam.

    ``fused`` (default: whenever the model can give logits): the loss from logits with the
    log-softmax fused in, as the trainer computes it; otherwise the model's log-probabilities
    and :func:`label_smoothed_loss` (the dense baseline, and the A/B of the fused loss)."""

    def __init__(self, model, pad: int, precision: str, label_smoothing: float = 0.1,
                 fused: bool | None = None):
        self.model, self.pad, self.precision, self.eps = model.train(), pad, precision, label_smoothing
        self.fused = takes_logits(model) if fused is None else fused
        # Parameters the model does not use (the dense wrapper holds the graph model's
        # layers) never get a gradient, so Adam keeps no state for them.
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

    def __call__(self, batch) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.precision):
            out = self.model(batch, logits=True) if self.fused else self.model(batch)
        if self.fused:
            loss_sum, _ = label_smoothed_loss_from_logits(out, batch.labels, self.eps, self.pad)
        else:
            loss_sum, _ = label_smoothed_loss(out.float(), batch.labels, self.eps, self.pad)
        del out
        (loss_sum / batch.labels.numel()).backward()
        self.optimizer.step()
        return float(loss_sum.detach())   # torch 2.13 warns on float() of a tensor that needs grad


def _forget_patterns(batches) -> None:
    """Drop what the engines derived from the batches' graphs (the torch engine's CSR patterns,
    the dgl engine's DGL views): the next step builds them, as a step on a fresh batch does."""
    for b in batches:
        for kind in KINDS:
            graph = getattr(b.graphs, kind)
            csr.forget_patterns(graph)
            graph.derived.pop("dgl", None)


class OnEngine:
    """A :class:`TrainStep` of the graph model run on ``engine`` (the model's own engine is
    restored after every step), so one model serves the rows of every engine."""

    def __init__(self, step: TrainStep, engine: str):
        self.step, self.engine = step, engine

    def __call__(self, batch) -> float:
        with using_engine(self.step.model, self.engine):
            return self.step(batch)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _agreement(model, dense, batch, pad: int, engines: Sequence[str] = ("torch",)) -> dict:
    """Eval-mode losses of both models in both precisions on one batch (no dropout):
    the graph model (on the torch engine, and on every other one of ``engines``) and the
    dense model must agree, bf16 must stay close to fp32."""
    model.eval(), dense.eval()
    losses = {}
    runs = [("graph", model, "torch"), *((ENGINE_MODELS[e], model, e) for e in engines if e != "torch"),
            ("dense", dense, None)]
    for name, m, engine in runs:
        for prec in PRECISIONS:
            # With gradients enabled, as in training: nn.TransformerEncoderLayer's
            # inference fast path (no_grad + eval) ignores autocast in torch 2.2.
            with autocast(prec), (using_engine(model, engine) if engine else nullcontext()):
                logp = m(batch).detach()
            losses[f"{name}_{prec}"] = float(label_smoothed_loss(logp.float(), batch.labels, 0.0, pad)[0]
                                             / batch.labels.numel())
    model.train(), dense.train()
    rel = lambda a, b: abs(a - b) / max(abs(b), 1e-12)  # noqa: E731
    out = {"loss_per_token": losses,
           "graph_vs_dense_fp32_rel": rel(losses["graph_fp32"], losses["dense_fp32"]),
           "graph_bf16_vs_fp32_rel": rel(losses["graph_bf16"], losses["graph_fp32"]),
           "dense_bf16_vs_fp32_rel": rel(losses["dense_bf16"], losses["dense_fp32"])}
    for name, _, _engine in runs[1:-1]:   # the other engines: the same numbers as the torch engine
        out[f"{name}_vs_graph_fp32_rel"] = rel(losses[f"{name}_fp32"], losses["graph_fp32"])
    return out


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
                 "agreement": _agreement(model, dense, batches[0], data.vocab.pad, opts.engines), "results": {}}
        for prec in opts.precisions:
            steps = {ENGINE_MODELS[e]: OnEngine(TrainStep(model, data.vocab.pad, prec), e) for e in opts.engines}
            steps["dense"] = TrainStep(dense, data.vocab.pad, prec)
            names = list(steps)
            for step in steps.values():   # warm-up: allocator, oneDNN primitives, graph caches
                step(batches[0])
            times = {name: [] for name in names}
            for r in range(opts.repeats):
                # Each model first in turn (with two: graph first in even repeats, dense in odd ones).
                for name in names[r % len(names):] + names[:r % len(names)]:
                    step = steps[name]
                    _forget_patterns(batches)  # built inside the step, as on a fresh batch
                    times[name].append(_timed(lambda step=step: [step(b) for b in batches]))
            for name in names:
                peaks, index_bytes = [], []
                for b in batches[:opts.mem_batches]:
                    _forget_patterns([b])      # its CSR indices are then tensors of the step
                    _, mem = peak_memory(lambda step=steps[name], b=b: step(b))
                    peaks.append(mem.peak_bytes)
                    if name != "dense":
                        index_bytes.append(sum(graph_index_bytes(getattr(b.graphs, k)) for k in KINDS))
                t = median(times[name])
                entry["results"][f"{name}_{prec}"] = {
                    "model": name, "precision": prec, "engine": getattr(steps[name], "engine", None),
                    "seconds": times[name], "median_s": t,
                    "tokens_per_s": tokens / t, "step_ms": 1e3 * t / len(batches),
                    "peak_mb": (max(peaks) + max(index_bytes, default=0)) / MB,
                    "tensor_peak_mb": max(peaks) / MB, "graph_index_mb": max(index_bytes, default=0) / MB,
                    "model_flops_per_s": flops["graph"] / t,
                    "executed_flops_per_s": flops["dense" if name == "dense" else "graph"] / t}
            d, ratio = entry["results"][f"dense_{prec}"], {}
            for name in names[:-1]:   # speed_graph_over_dense, speed_graph_dgl_over_dense, ...
                g = entry["results"][f"{name}_{prec}"]
                ratio[f"speed_{name}_over_dense"] = g["tokens_per_s"] / d["tokens_per_s"]
                ratio[f"memory_{name}_over_dense"] = g["peak_mb"] / d["peak_mb"]
            entry["results"][f"ratio_{prec}"] = ratio
            log(f"  training {size} {prec}: " + ", ".join(
                f"{name} {entry['results'][f'{name}_{prec}']['tokens_per_s']:.0f} tok/s "
                f"{entry['results'][f'{name}_{prec}']['peak_mb']:.0f} MB" for name in names))
        out["sizes"][size] = entry
        del model, dense
    return out


# --------------------------------------------------------------------------
# 2. Decoding
# --------------------------------------------------------------------------
def _decode_model(opts: BenchOptions, data: BenchData):
    """(graph model in eval mode, what it is, its graph structures, eval settings) for the decoding section."""
    cfg = load_config(opts.config)
    if opts.checkpoint:
        model, ckpt_cfg, _, _ = load_trained(opts.checkpoint, engine="torch")   # as the graph rows run
        if model.config["src_vocab"] != len(data.vocab):
            raise BenchmarkError(f"checkpoint {opts.checkpoint!r} has a vocabulary of {model.config['src_vocab']} "
                                 f"tokens but the benchmark data has {len(data.vocab)}; use the config it was "
                                 f"trained with (--config)")
        return model, f"checkpoint {opts.checkpoint}", graph_spec(ckpt_cfg.model), ckpt_cfg.eval
    model = build_size(opts.decode_size, opts, len(data.vocab)).eval()
    what = f"{opts.decode_size} size, untrained (random init: hypotheses mostly run to the length limit)"
    return model, what, graph_spec(size_config(opts.decode_size, opts.config)), cfg.eval


def bench_decoding(opts: BenchOptions, data: BenchData, log=print) -> dict:
    model, what, spec, ev = _decode_model(opts, data)
    dense = DenseTransformer(model).eval()
    v = data.vocab
    kw = dict(sos=v.sos, eos=v.eos, alpha=ev.alpha, max_len_a=ev.max_len_a, max_len_b=ev.max_len_b)
    dense_state = lambda _model, seqs, _spec, device: DenseRecomputeState(dense, seqs, device)
    kv_state = {beam: (lambda _model, seqs, _spec, device, beam=beam:
                       DenseKVState(dense, seqs, device, max_hyps=len(seqs) * beam)) for beam in opts.beams}
    # All three through the library's length-sorted batching, as `evaluate` decodes a test set.
    decoders = {
        "graph_incremental": lambda s, beam: decode_dataset(model, s, spec, beam=beam, incremental=True, **kw),
        "graph_recompute": lambda s, beam: decode_dataset(model, s, spec, beam=beam, incremental=False, **kw),
        "dense_recompute": lambda s, beam: decode_dataset(model, s, spec, beam=beam, state_factory=dense_state,
                                                          **kw),
        "dense_kv": lambda s, beam: decode_dataset(model, s, spec, beam=beam, state_factory=kv_state[beam], **kw),
    }
    src = data.test_src
    out = {"model": what, "sentences": len(src), "source_tokens": sum(map(len, src)),
           "settings": {"alpha": ev.alpha, "max_len_a": ev.max_len_a, "max_len_b": ev.max_len_b},
           "dense_method": "dense_recompute: full recomputation of every prefix (nn.TransformerDecoder has no "
                           "key/value cache); dense_kv: nn.TransformerDecoder's layers one token at a time with "
                           "preallocated per-layer key/value caches (DenseKVState)",
           "results": {}}
    with torch.no_grad():
        for beam in opts.beams:
            label = "greedy" if beam == 1 else f"beam{beam}"
            outputs, passes = {}, {name: [] for name in decoders}
            names = list(decoders)
            for rep in range(opts.repeats):   # the decoders take turns, each first in turn: drift hits all
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    start = time.perf_counter()
                    outputs[name] = decoders[name](src, beam)
                    passes[name].append(time.perf_counter() - start)
            seconds = {name: median(ts) for name, ts in passes.items()}
            ref = outputs["graph_incremental"]
            res = {}
            for name in DECODERS:
                res[name] = {"seconds": seconds[name], "passes_s": passes[name],
                             "sentences_per_s": len(src) / seconds[name],
                             "generated_tokens": sum(len(h) + 1 for h in outputs[name]),
                             "same_output_as_incremental": sum(a == b for a, b in zip(outputs[name], ref)) / len(src)}
            res["speedup_incremental_over_recompute"] = seconds["graph_recompute"] / seconds["graph_incremental"]
            res["speedup_incremental_over_dense"] = seconds["dense_recompute"] / seconds["graph_incremental"]
            res["speedup_incremental_over_dense_kv"] = seconds["dense_kv"] / seconds["graph_incremental"]
            out["results"][label] = res
            log(f"  decoding {label}: " + ", ".join(f"{n} {res[n]['sentences_per_s']:.1f} sent/s" for n in DECODERS))
    return out


# --------------------------------------------------------------------------
# 3. Attention alone
# --------------------------------------------------------------------------

def structure_bytes(graph) -> int:
    """Memory of a graph's structure: its index arrays, DGL's formats and the cached CSR patterns."""
    return graph_index_bytes(graph) + csr.pattern_bytes(graph)


def graph_attention_fn(attn: GraphAttention, graph, q, k, v, grad_out, engine: str = "torch"):
    """Forward + backward of the block's own phi and □ on ``graph`` (no projections:
    :meth:`~transformer_graph.message_passing.MessagePassingBlock.propagate`) on ``engine``."""
    def run():
        q.grad = k.grad = v.grad = None
        with using_engine(attn, engine):
            out, _ = attn.propagate(graph, q, k, v)
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
            if method.endswith("_dgl") and not dgl_available():
                row.update(skipped="DGL is not installed (the dgl engine is optional)")
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
                structure = (complete if method.startswith("graph_complete")
                             else make_structure("window", opts.window))
                graph = batch_graph(structure, [length] * batch, [length] * batch)
                fn = graph_attention_fn(attn, graph, *graph_in, graph_grad,
                                        "dgl" if method.endswith("_dgl") else "torch")
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


def onednn_flops_per_s(n: int, dtype: torch.dtype, repeats: int = 5, seed: int = 0) -> dict | None:
    """The same n x n product through oneDNN's linear kernel (``torch.ops.mkldnn._linear_pointwise``,
    the kernel torch.compile's CPU backend emits), or None where this build lacks it. ``torch.mm``
    in float32 is MKL's sgemm, which on AMD CPUs takes a path without AVX-512 (measured here: 95-105
    GFLOP/s against oneDNN's 215-235 at 1 thread); in bf16 ``torch.mm`` is oneDNN already."""
    linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if linear is None or not torch.backends.mkldnn.is_available():
        return None
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
    try:
        linear(a, b, None, "none", [], "")
    except RuntimeError:   # not for this dtype or CPU
        return None
    times = [_timed(lambda: linear(a, b, None, "none", [], "")) for _ in range(repeats)]
    t = median(times)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "kernel": "oneDNN linear", "seconds": times,
            "gflops_per_s": 2 * n ** 3 / t / 1e9}


def bench_ceiling(opts: BenchOptions, training: dict | None, log=print) -> dict:
    ceiling = {"fp32": matmul_flops_per_s(opts.ceiling_n, torch.float32, seed=opts.seed),
               "bf16": matmul_flops_per_s(opts.ceiling_n, torch.bfloat16, seed=opts.seed)}
    onednn = {prec: onednn_flops_per_s(opts.ceiling_n, dtype, seed=opts.seed)
              for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    # The machine's ceiling: the fastest of the kernels measured, per precision.
    best = {prec: max(ceiling[prec]["gflops_per_s"], (onednn[prec] or {}).get("gflops_per_s", 0.0))
            for prec in ceiling}
    log(f"  ceiling: torch.mm fp32 {ceiling['fp32']['gflops_per_s']:.1f} GFLOP/s, "
        f"bf16 {ceiling['bf16']['gflops_per_s']:.1f} GFLOP/s; fastest kernel fp32 {best['fp32']:.1f}, "
        f"bf16 {best['bf16']:.1f}")
    rows = []
    for size, entry in ((training or {}).get("sizes") or {}).items():
        for key, r in entry["results"].items():
            if key.startswith("ratio_"):
                continue
            peak = ceiling[r["precision"]]["gflops_per_s"] * 1e9
            rows.append({"size": size, "model": r["model"], "precision": r["precision"],
                         "model_gflops_per_s": r["model_flops_per_s"] / 1e9,
                         "executed_gflops_per_s": r["executed_flops_per_s"] / 1e9,
                         "fraction_of_ceiling": r["model_flops_per_s"] / peak,
                         "fraction_of_fastest": r["model_flops_per_s"] / (best[r["precision"]] * 1e9)})
    return {"matmul": ceiling, "onednn": onednn, "fastest_gflops_per_s": best, "model_flops": rows}


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
        runs = [("graph", model, prec, "torch") for prec in opts.precisions]
        if dgl_available():
            runs += [("graph_dgl_kernels", model, prec, "dgl") for prec in opts.precisions]
        runs += [("dense", dense, prec, None) for prec in opts.precisions]
        for name, m, prec, engine in runs:
            step = TrainStep(m, data.vocab.pad, prec)
            with using_engine(model, engine) if engine else nullcontext():
                step(batches[0])
                _forget_patterns(batches[-1:])
                ops_, total_ms, shares = top_ops(lambda step=step: step(batches[-1]), n=opts.profile_ops,
                                                 category=categorize)
            out["runs"][f"{name}_{prec}"] = {
                "total_self_ms": total_ms, "tokens": batches[-1].num_tokens, "categories": shares,
                "top_ops": [asdict(op) for op in ops_]}
            log(f"  profile {name} {prec}: {total_ms:.0f} ms self time; "
                + ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(shares.items())[:3]))
    return out


# --------------------------------------------------------------------------
# 6. Peer
# --------------------------------------------------------------------------
PEER_THREADS = 1   # the target's setting


def bench_peer(opts: BenchOptions, log=print) -> dict:
    """DGL's Transformer example vs the graph model on the copy task (:mod:`bench.peer`), in a
    child process: the example's top-level packages stay out of this one, and DGL's OpenMP
    threads follow the child's ``OMP_NUM_THREADS``. Skipped without ``--peer-dir``."""
    if opts.peer_dir is None:
        return {"skipped": "no --peer-dir: name the directory of DGL's examples/pytorch/transformer to time it"}
    checkout = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(PEER_THREADS), "MKL_NUM_THREADS": str(PEER_THREADS)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        cmd = [sys.executable, "-m", "bench.peer", "--peer-dir", str(Path(opts.peer_dir).resolve()),
               "--threads", str(PEER_THREADS), "--batches", str(opts.peer_batches), "--repeats", str(opts.repeats),
               "--seed", str(opts.seed), "--json", str(out)]
        proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
        for line in proc.stderr.splitlines():
            if line.startswith("  peer section:"):
                log(line)
        if proc.returncode != 0:
            why = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit {proc.returncode}")
            raise BenchmarkError(f"--peer-dir {opts.peer_dir}: the peer section failed: {why}")
        return json.loads(out.read_text())


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
            if key.startswith("ratio_") and "speed_graph_over_dense" in r:   # the torch engine's rows
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
                v = r.get("speedup_incremental_over_dense_kv")   # absent from runs before the dense_kv row
                if v is not None:
                    add(f"incremental vs dense with key/value cache {label}", ">= 1.0", v, v >= 1.0)
    ceiling = results.get("ceiling")
    threads = results.get("machine", {}).get("threads")
    for row in (ceiling or {}).get("model_flops", []):
        goal = {"fp32": 0.5, "bf16": 0.4}.get(row["precision"])
        if row["model"] == "graph" and row["size"] == "multi30k_cpu" and goal is not None:
            v = row["fraction_of_ceiling"]
            add(f"useful model FLOP/s / {row['precision']} matmul ceiling, torch.mm (multi30k_cpu training step, "
                f"{threads} thread(s))", f">= {goal}", v, v >= goal)
            if "fraction_of_fastest" in row:
                v = row["fraction_of_fastest"]
                add(f"useful model FLOP/s / fastest {row['precision']} matmul kernel measured (multi30k_cpu "
                    f"training step, {threads} thread(s))", f">= {goal}", v, v >= goal,
                    "the fastest of torch.mm and oneDNN's linear (section 4)")
    peer = results.get("peer")
    if peer and "rows" in peer:
        v = peer["speedup_graph_tutorial_over_peer"]
        add(f"copy task training tokens/s, graph / DGL's example (tutorial setting, {peer['threads']} thread)",
            ">= 2.5", v, v >= 2.5, "batch building included; CPU-time ratio "
            f"{peer['rows']['graph_tutorial']['tokens_per_cpu_s'] / peer['rows']['peer']['tokens_per_cpu_s']:.2f}")
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
    opts = opts.validate()
    if opts.malloc == "tuned" and not tune_malloc():
        warnings.warn("malloc=tuned: glibc refused the settings (or this is not glibc); using the default",
                      stacklevel=2)
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
        elif name == "peer":
            results[name] = bench_peer(opts, log)
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


# --------------------------------------------------------------------------
# Command line: python -m bench.benchmark
# --------------------------------------------------------------------------
def check_outputs(opts: BenchOptions) -> list[Path]:
    """Before any work: where the run writes, and the earlier run's files it replaces (--force)."""
    if opts.quick and inside_docs(opts.out):
        raise OutputError(f"--out {opts.out}: --quick results (tiny models, synthetic data, 2 repeats) are not "
                          f"documentation and never go into docs/; choose another --out (default runs/bench)")
    return check_output_dir(opts.out, output_names(), replace=opts.force)


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns its exit code (2 with one ``error: ...`` line for a user's mistake)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with user_errors():
            opts = parse_options(argv)
            replaced = check_outputs(opts)
            results = run_benchmark(opts, log=lambda msg: print(msg, file=sys.stderr, flush=True))
            results["command"] = "python -m bench.benchmark " + shlex.join(argv)
            paths = write_results(results, opts.out)
    except SystemExit as stop:   # user_errors printed the error line (or argparse its usage)
        return stop.code if isinstance(stop.code, int) else 2
    # --force: files of the earlier run that this one did not rewrite would describe another run.
    for path in set(replaced) - set(paths.values()):
        path.unlink()
    print(markdown(results))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
