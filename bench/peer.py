"""The peer: DGL's own Transformer example trained on the copy task beside the graph model.

``python -m bench.peer --peer-dir PATH`` times training of the DGL Transformer example
(``examples/pytorch/transformer`` of the DGL repository; the tutorial "Transformer as a Graph
Neural Network" drives the same code) in the tutorial's setting, and this project's graph
model on the very same batches, alternating, and prints (or with ``--json`` writes) tokens/s.
The example's code is never part of this repository: fetch it yourself and name its
directory. ``python -m bench.benchmark --peer-dir PATH`` runs this as its section 6, in a
child process (the example's packages ``modules``, ``loss``, ``optims``, ``dataset`` are
top-level names, and DGL's OpenMP threads are fixed per process by ``OMP_NUM_THREADS``).

The tutorial's setting ("Put it all together"): copy task, sentences of N(15, 3) letters,
batches of 128 sentences in data order, 1 layer, 1 head, d_model 128, d_ff 128, dropout 0.1
(the example's default), shared embeddings and a tied generator, label smoothing 0.1, Adam
with the Noam schedule (factor 1, warm-up 400). Rows:

* ``peer``: the example's ``make_model``, ``LabelSmoothing``, ``SimpleLossCompute``,
  ``NoamOpt`` and ``GraphPool``, as its training loop calls them;
* ``graph_tutorial``: this project's model in the same setting (pre-norm as the example's
  ``SublayerConnection``, dropout 0.1, no attention dropout, label smoothing 0.1): the
  comparison the target is read from;
* ``graph_copy_yaml``: the model of ``configs/copy.yaml`` as shipped (post-norm, dropout 0).

Both sides build their batches inside the timed loop, as their trainers do (``GraphPool``
there, :func:`~transformer_graph.data.batch.make_batch` here); step-only rates are reported
too. Tokens: source + target nodes (target length + 1), the same count for every row.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.benchmark import TrainStep
from bench.options import size_config
from transformer_graph.data.batch import make_batch
from transformer_graph.data.datasets import ALPHABET, SPECIALS, Vocab, make_copy_sort
from transformer_graph.experiment import build_model
from transformer_graph.cli.errors import user_errors
from transformer_graph.files import atomic_write_text
from transformer_graph.outputs import check_output_file
from transformer_graph.message_passing import set_engine
from transformer_graph.train.malloc import tune_malloc

# The tutorial's setting (DGL tutorial 4_old_wines/7_transformer.py, "Put it all together").
BATCH_SENTENCES, LAYERS, D_MODEL, D_FF, HEADS, DROPOUT, SMOOTHING = 128, 1, 128, 128, 1, 0.1, 0.1
NOAM_FACTOR, NOAM_WARMUP = 1.0, 400
# What the example's directory must hold (its training script imports these packages).
PEER_FILES = ("modules/__init__.py", "loss/__init__.py", "optims/__init__.py", "dataset/graph.py")
ROWS = ("peer", "graph_tutorial", "graph_copy_yaml")


class PeerError(ValueError):
    """The peer's directory is not the DGL Transformer example, or it cannot be run here."""


def check_peer_dir(path: str | os.PathLike) -> Path:
    """``path`` as a directory holding the DGL Transformer example; PeerError otherwise."""
    peer = Path(path)
    missing = [f for f in PEER_FILES if not (peer / f).is_file()]
    if missing:
        raise PeerError(f"--peer-dir {path}: not the DGL Transformer example (dgl's examples/pytorch/transformer): "
                        f"missing {', '.join(missing)}; fetch that directory and name it here")
    return peer


def load_peer(path: str | os.PathLike) -> SimpleNamespace:
    """The example's pieces, imported from its directory (as its training script does)."""
    peer = str(check_peer_dir(path).resolve())
    sys.path.insert(0, peer)
    try:
        modules, loss, optims = (importlib.import_module(m) for m in ("modules", "loss", "optims"))
        graph = importlib.import_module("dataset.graph")
    except Exception as err:   # noqa: BLE001 -- whatever the example's code raises, name the directory
        raise PeerError(f"--peer-dir {path}: importing the example failed: {type(err).__name__}: {err}") from None
    finally:
        sys.path.remove(peer)
    return SimpleNamespace(make_model=modules.make_model, LabelSmoothing=loss.LabelSmoothing,
                           SimpleLossCompute=loss.SimpleLossCompute, NoamOpt=optims.NoamOpt,
                           GraphPool=graph.GraphPool)


# --------------------------------------------------------------------------
# The two sides, each a (build batch, train step) pair over the same sentences
# --------------------------------------------------------------------------
class PeerSide:
    """The example's model, loss and optimizer, called as its ``run_epoch`` calls them."""

    # The example's vocabulary: <sos>, <eos>, <pad>, then the letters (dataset/fields.py).
    SOS, EOS, PAD = 0, 1, 2

    def __init__(self, api: SimpleNamespace, seed: int):
        self.ids = {c: 3 + i for i, c in enumerate(ALPHABET)}
        vocab = 3 + len(ALPHABET)
        torch.manual_seed(seed)
        model = api.make_model(vocab, vocab, N=LAYERS, dim_model=D_MODEL, dim_ff=D_FF, h=HEADS, dropout=DROPOUT)
        model.src_embed.lut.weight = model.tgt_embed.lut.weight      # as the tutorial shares them
        model.generator.proj.weight = model.tgt_embed.lut.weight
        self.model = model.train()
        criterion = api.LabelSmoothing(vocab, padding_idx=self.PAD, smoothing=SMOOTHING)
        opt = api.NoamOpt(D_MODEL, NOAM_FACTOR, NOAM_WARMUP,
                          torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9))
        # The example's SimpleLossCompute takes (criterion, grad_accum, opt); the tutorial's older one (criterion, opt).
        takes_accum = "grad_accum" in inspect.signature(api.SimpleLossCompute).parameters
        self.loss = (api.SimpleLossCompute(criterion, 1, opt) if takes_accum
                     else api.SimpleLossCompute(criterion, opt))
        self.pool = api.GraphPool()   # built once (the example builds it before training)

    def build(self, pairs):
        src = [[self.ids[c] for c in s] for s, _ in pairs]
        return self.pool(src, [[self.SOS, *(self.ids[c] for c in t), self.EOS] for _, t in pairs])

    def step(self, g) -> float:
        return self.loss(self.model(g), g.tgt_y, g.n_tokens)   # backward, Noam step and zero_grad inside


class GraphSide:
    """This project's graph model on the torch engine, stepped as the trainer steps it."""

    def __init__(self, variant: str, seed: int):
        self.vocab = Vocab([*SPECIALS, *ALPHABET])
        cfg = size_config("copy", "configs/multi30k_cpu.yaml")
        eps = 0.0
        if variant == "graph_tutorial":
            cfg = dataclasses.replace(cfg, dropout=DROPOUT, attn_dropout=0.0, norm_first=True)
            eps = SMOOTHING
        torch.manual_seed(seed)
        model = set_engine(build_model(cfg, len(self.vocab), len(self.vocab)), "torch")
        self.train_step = TrainStep(model, self.vocab.pad, "fp32", eps)

    def build(self, pairs):
        return make_batch([self.vocab.encode(s) for s, _ in pairs], [self.vocab.encode(t) for _, t in pairs],
                          sos=self.vocab.sos, eos=self.vocab.eos)

    def step(self, batch) -> float:
        return self.train_step(batch)


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------
def _one_pass(side, batches: Sequence) -> dict:
    """Build and step every batch once: wall and CPU seconds in all, and of the steps alone."""
    build = steps = 0.0
    loss = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    for pairs in batches:
        t0 = time.perf_counter()
        b = side.build(pairs)
        t1 = time.perf_counter()
        loss += float(side.step(b))
        steps += time.perf_counter() - t1
        build += t1 - t0
    return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "step_seconds": steps, "build_seconds": build, "loss_sum": loss}


def time_sides(sides: dict[str, object], batches: Sequence, repeats: int, log: Callable[[str], None]) -> dict:
    """Warm every side up on one pass, then ``repeats`` passes each, taking turns (each side
    first in turn); medians of the passes."""
    tokens = sum(len(s) + len(t) + 1 for pairs in batches for s, t in pairs)
    for side in sides.values():
        _one_pass(side, batches[:2])
    names, passes = list(sides), {name: [] for name in sides}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            passes[name].append(_one_pass(sides[name], batches))
    out = {}
    for name, ps in passes.items():
        med = {k: statistics.median(p[k] for p in ps) for k in ("seconds", "cpu_seconds", "step_seconds",
                                                                 "build_seconds")}
        out[name] = {"passes": ps, **{f"median_{k}": v for k, v in med.items()},
                     "tokens_per_s": tokens / med["seconds"], "tokens_per_cpu_s": tokens / med["cpu_seconds"],
                     "step_tokens_per_s": tokens / med["step_seconds"],
                     "build_ms_per_batch": 1e3 * med["build_seconds"] / len(batches)}
        log(f"  peer section: {name} {out[name]['tokens_per_s']:.0f} tok/s "
            f"({out[name]['step_tokens_per_s']:.0f} tok/s in steps)")
    return {"tokens": tokens, "rows": out}


def run_peer(peer_dir: str, threads: int = 1, batches: int = 20, repeats: int = 3, seed: int = 0,
             log: Callable[[str], None] = print) -> dict:
    """Time the peer and the graph model on the same ``batches`` copy-task batches (this process)."""
    api = load_peer(peer_dir)
    tune_malloc()   # as the benchmark and training run (both sides profit alike)
    torch.set_num_threads(threads)
    pairs = make_copy_sort("copy", batches * BATCH_SENTENCES, seed)
    data = [pairs[i:i + BATCH_SENTENCES] for i in range(0, len(pairs), BATCH_SENTENCES)]
    try:
        peer = PeerSide(api, seed)
    except Exception as err:   # noqa: BLE001 -- an example of another vintage: say which call failed
        raise PeerError(f"--peer-dir {peer_dir}: the example's make_model/LabelSmoothing/NoamOpt/"
                        f"SimpleLossCompute/GraphPool do not take the tutorial's arguments: "
                        f"{type(err).__name__}: {err}") from None
    sides = {"peer": peer, "graph_tutorial": GraphSide("graph_tutorial", seed),
             "graph_copy_yaml": GraphSide("graph_copy_yaml", seed)}
    timed = time_sides(sides, data, repeats, log)
    rows = timed["rows"]
    return {"peer_dir": str(Path(peer_dir).resolve()), "threads": threads, "omp_num_threads_env":
            os.environ.get("OMP_NUM_THREADS"), "batches": batches, "batch_sentences": BATCH_SENTENCES,
            "repeats": repeats, "seed": seed, "tokens": timed["tokens"], "rows": rows,
            "setting": {"layers": LAYERS, "d_model": D_MODEL, "d_ff": D_FF, "heads": HEADS, "dropout": DROPOUT,
                        "label_smoothing": SMOOTHING, "noam": [NOAM_FACTOR, NOAM_WARMUP]},
            "speedup_graph_tutorial_over_peer": rows["graph_tutorial"]["tokens_per_s"] / rows["peer"]["tokens_per_s"],
            "speedup_graph_copy_yaml_over_peer":
                rows["graph_copy_yaml"]["tokens_per_s"] / rows["peer"]["tokens_per_s"],
            "step_speedup_graph_tutorial_over_peer":
                rows["graph_tutorial"]["step_tokens_per_s"] / rows["peer"]["step_tokens_per_s"]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-dir", required=True, metavar="PATH",
                   help="the DGL Transformer example's directory (dgl's examples/pytorch/transformer)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; set OMP_NUM_THREADS too)")
    p.add_argument("--batches", type=int, default=20, help="batches of 128 sentences per timed pass (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per row; the median is reported (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sentences and of both models (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the results there (default: print them)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns its exit code (2 with one ``error: ...`` line for a user's mistake)."""
    try:
        with user_errors():
            args = parser().parse_args(argv)
            for name in ("threads", "batches", "repeats"):
                if getattr(args, name) < 1:
                    raise ValueError(f"--{name}: expected a positive integer, got {getattr(args, name)}")
            json_out = check_output_file(args.json, "--json")  # before the timing, not after
            results = run_peer(args.peer_dir, args.threads, args.batches, args.repeats, args.seed,
                               log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except SystemExit as stop:   # user_errors printed the error line (or argparse its usage)
        return stop.code if isinstance(stop.code, int) else 2
    text = json.dumps(results, indent=1)
    if json_out is not None:
        atomic_write_text(json_out, text)
    else:
        print(text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
