"""Does ``torch.compile`` make a training step faster here? Eager vs compiled, interleaved.

``python -m bench.compile_check [--variants model,model_eager_attention,layers,ffn]`` builds the
``multi30k_cpu`` graph model twice with the same weights (the torch engine), compiles one of
them as each variant says, and times the benchmark's training step
(:class:`bench.benchmark.TrainStep`, section 1's step) on both over the same batches, the two
alternating within every repeat; it prints one table row per variant and precision: tokens/s
of both, the speed-up (median eager pass / median compiled pass), the seconds the compiled
model's first pass over the batches took (compiling its training graph), and how far its loss
and gradients are from the eager model's (eval mode, no dropout, one batch, before either takes
a step). A variant that fails to compile is reported with its error and skipped.
docs/BENCHMARKS.md ("Engines and stacks") records what it measured.

Variants (``dynamic=True`` throughout: every batch has its own node and edge counts):

* ``model``: ``model.compile()``, the whole model;
* ``model_eager_attention``: the whole model with each block's φ/□ (``attend``) left eager
  (``torch.compiler.disable`` on that block only): what the sparse CSR kernels would not let
  the compiler trace anyway;
* ``layers``: every encoder and decoder layer compiled, the rest eager;
* ``ffn``: only the position-wise MLPs compiled.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

from bench.benchmark import TrainStep, _forget_patterns, autocast, build_size, load_bench_data, num_threads
from bench.options import BenchOptions
from bench.sections import PRECISIONS, SIZE_NAMES
from transformer_graph.data.datasets import collate
from transformer_graph.files import atomic_write_text
from transformer_graph.message_passing import blocks
from transformer_graph.nn.loss import label_smoothed_loss


def _layers(model) -> list:
    return [*model.encoder.layers, *model.decoder.layers]


def _whole(model) -> None:
    model.compile(dynamic=True)


def _eager_attention(model) -> None:
    for block in blocks(model):
        block.attend = torch.compiler.disable(block.attend)   # this block's instance only
    model.compile(dynamic=True)


VARIANTS: dict[str, Callable] = {
    "model": _whole,
    "model_eager_attention": _eager_attention,
    "layers": lambda model: [layer.compile(dynamic=True) for layer in _layers(model)],
    "ffn": lambda model: [layer.ffn.compile(dynamic=True) for layer in _layers(model)],
}


def _loss_and_grads(model, batch, pad: int, precision: str) -> tuple[float, torch.Tensor]:
    """Eval mode (no dropout: the compiled model draws its own dropout masks): the per-token
    loss of one batch and all gradients, flattened."""
    model.eval().zero_grad(set_to_none=True)
    with autocast(precision):
        logp = model(batch)
    loss = label_smoothed_loss(logp.float(), batch.labels, 0.1, pad)[0] / batch.labels.numel()
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.train().zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def _pass(step, batches) -> float:
    _forget_patterns(batches)   # the CSR patterns are built inside the step, as on a fresh batch
    start = time.perf_counter()
    for b in batches:
        step(b)
    return time.perf_counter() - start


def check(variant: str, precision: str, opts: BenchOptions, data, batches, repeats: int) -> dict:
    """One row: eager and ``variant``-compiled models of ``opts.sizes[0]``, same weights."""
    size, pad = opts.sizes[0], data.vocab.pad
    tokens = sum(b.num_tokens for b in batches)
    row = {"variant": variant, "precision": precision, "size": size, "tokens": tokens}
    eager = build_size(size, opts, len(data.vocab))
    compiled = build_size(size, opts, len(data.vocab))   # seeded: the same weights
    torch.compiler.reset()   # nothing compiled for an earlier row is reused
    VARIANTS[variant](compiled)
    steps = {"eager": TrainStep(eager, pad, precision), "compiled": TrainStep(compiled, pad, precision)}
    try:
        # Numbers first, while both models still hold the same weights (steps update them).
        loss, grads = _loss_and_grads(compiled, batches[0], pad, precision)
        start = time.perf_counter()
        for b in batches:   # compiles the training graph (once per new kind of shape), then runs
            steps["compiled"](b)
        row["compile_warmup_s"] = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001  (the compiler fails in many ways; each is the finding)
        row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        return row
    ref_loss, ref_grads = _loss_and_grads(eager, batches[0], pad, precision)
    row["loss_rel"] = abs(loss - ref_loss) / abs(ref_loss)
    row["grad_rel"] = float((grads - ref_grads).norm() / ref_grads.norm())
    for b in batches:
        steps["eager"](b)
    times = {name: [] for name in steps}
    for r in range(repeats):
        for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            times[name].append(_pass(steps[name], batches))
    for name, ts in times.items():
        row[f"{name}_seconds"] = ts
        row[f"{name}_tokens_per_s"] = tokens / statistics.median(ts)
    row["speedup"] = statistics.median(times["eager"]) / statistics.median(times["compiled"])
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | precision | eager tok/s | compiled tok/s | speed-up | compile + warm-up s | "
             "loss rel. diff. | grad rel. diff. |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['precision']} | fails: {r['error']} | | | | | |")
        else:
            lines.append(f"| {r['variant']} | {r['precision']} | {r['eager_tokens_per_s']:.0f} | "
                         f"{r['compiled_tokens_per_s']:.0f} | {r['speedup']:.2f}x | {r['compile_warmup_s']:.0f} | "
                         f"{r['loss_rel']:.1e} | {r['grad_rel']:.1e} |")
    return "\n".join(lines)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _names(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list from {', '.join(choices)}, "
                                             f"got {text!r}")
        return names
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.compile_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", type=_names(tuple(VARIANTS)), default=list(VARIANTS),
                   help=f"what to compile, comma-separated from {', '.join(VARIANTS)} (default all)")
    p.add_argument("--precisions", type=_names(PRECISIONS), default=list(PRECISIONS),
                   help="fp32 and/or bf16 autocast (default both)")
    p.add_argument("--size", choices=SIZE_NAMES, default="multi30k_cpu", help="model size (default multi30k_cpu)")
    p.add_argument("--threads", type=_positive, default=1, help="torch threads (default 1)")
    p.add_argument("--batches", type=_positive, default=3, help="batches per timed pass (default 3)")
    p.add_argument("--repeats", type=_positive, default=4, help="timed passes per model; medians (default 4)")
    p.add_argument("--json", metavar="PATH", help="also write the rows there as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    opts = BenchOptions(data="synthetic", sizes=[args.size], train_batches=args.batches,
                        threads=args.threads).validate()
    rows = []
    with num_threads(args.threads):
        data = load_bench_data(opts)
        batches = [collate(data.train, idx) for idx in data.batches]
        for variant in args.variants:
            for precision in args.precisions:
                rows.append(check(variant, precision, opts, data, batches, args.repeats))
                print(f"  {variant} {precision}: " + (rows[-1].get("error") or f"{rows[-1]['speedup']:.2f}x"),
                      file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), size {args.size}, {args.batches} synthetic "
          f"batches ({rows[0]['tokens']} tokens), {args.repeats} interleaved passes per model\n")
    print(markdown(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps({"torch": torch.__version__, "threads": args.threads,
                                                 "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
