"""Decoders of one checkpoint side by side on its test split: the library's incremental decoder
against an older decoding module, ``dense_kv`` and full recomputation (docs/BENCHMARKS.md,
"Decoding in batches of 128 sentences").

Every decoder runs the same search with the same weights on the whole test split, the decoders
taking turns (each first in turn), and the table gives the median seconds, sentences/s, the ratio
to the first decoder and the share of sentences whose output equals the first decoder's.
Forbidden ids are off (``forbid=()``) so that an older decoder, which had none, writes the same
outputs. ``old`` needs ``--old-decoder FILE``: a ``decoding.py`` of an earlier revision, e.g.
``git show c767c8c:transformer_graph/inference/decoding.py > old_decoding.py``; it decodes in
chunks of 128 // beam sentences, as ``decode_dataset`` did then.

    python -m bench.decoders --checkpoint runs/multi30k_spm/seed1/averaged.pt \\
        --decoders new,old,dense_kv,recompute --old-decoder old_decoding.py --threads 1 --repeats 3
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from statistics import median

import torch

from transformer_graph.checkpoint import load_checkpoint
from transformer_graph.cli.errors import user_errors
from transformer_graph.experiment import build_experiment, trained_from_checkpoint, trained_text
from transformer_graph.inference.dense_decoding import DenseKVState
from transformer_graph.inference.evaluation import decode_dataset
from transformer_graph.nn.dense import DenseTransformer

DECODERS = ("new", "new_small_batches", "old", "dense_kv", "recompute")


def load_module(path: Path, name: str = "old_decoding"):
    """An older ``decoding.py`` as a module of its own (it imports the current package's graphs)."""
    if not path.is_file():
        raise ValueError(f"--old-decoder {path}: no such file; write one with git show REV:"
                         f"transformer_graph/inference/decoding.py > {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def decoder_table(model, exp, tgt_vocab, cfg, beam: int, old_module=None) -> dict:
    """name -> function(sources) -> outputs, for every decoder this run can offer."""
    kw = dict(sos=tgt_vocab.sos, eos=tgt_vocab.eos, beam=beam, alpha=cfg.eval.alpha,
              max_len_a=cfg.eval.max_len_a, max_len_b=cfg.eval.max_len_b, forbid=())
    dense = DenseTransformer(model).eval()
    kv = lambda _m, seqs, _s, device: DenseKVState(dense, seqs, device, max_hyps=len(seqs) * beam)  # noqa: E731
    small = max(1, 128 // beam)
    table = {"new": lambda s: decode_dataset(model, s, exp.spec, **kw),
             "new_small_batches": lambda s: decode_dataset(model, s, exp.spec, sentences_per_batch=small, **kw),
             "dense_kv": lambda s: decode_dataset(model, s, exp.spec, state_factory=kv, **kw),
             "recompute": lambda s: decode_dataset(model, s, exp.spec, incremental=False, **kw)}
    if old_module is not None:
        def old(seqs):
            order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
            out = [None] * len(seqs)
            for start in range(0, len(order), small):
                chunk = order[start:start + small]
                hyps = old_module.beam_search(model, [seqs[i] for i in chunk], sos=kw["sos"], eos=kw["eos"],
                                              beam=beam, alpha=kw["alpha"], max_len_a=kw["max_len_a"],
                                              max_len_b=kw["max_len_b"], spec=exp.spec)
                for i, h in zip(chunk, hyps):
                    out[i] = h[0].tokens
            return out
        table["old"] = old
    return table


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.decoders", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a translation checkpoint (averaged.pt, best.pt, ...)")
    ap.add_argument("--decoders", default="new,dense_kv", help=f"comma-separated, from {', '.join(DECODERS)}")
    ap.add_argument("--old-decoder", type=Path, help="an earlier revision's decoding.py (decoder 'old')")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, help="only the first N test sentences")
    args = ap.parse_args(argv)
    with user_errors():
        names = [n.strip() for n in args.decoders.split(",") if n.strip()]
        bad = [n for n in names if n not in DECODERS]
        if bad or not names:
            raise ValueError(f"--decoders {args.decoders!r}: expected a comma-separated list of {', '.join(DECODERS)}")
        if "old" in names and args.old_decoder is None:
            raise ValueError("--decoders: 'old' needs --old-decoder FILE (an earlier revision's decoding.py)")
        for option in ("beam", "threads", "repeats"):
            if getattr(args, option) < 1:
                raise ValueError(f"--{option}: expected a positive integer, got {getattr(args, option)}")
        old = load_module(args.old_decoder) if "old" in names else None
        torch.set_num_threads(args.threads)
        ckpt = load_checkpoint(args.checkpoint)
        model, cfg, (src_vocab, tgt_vocab), ckpt = trained_from_checkpoint(ckpt, args.checkpoint)
        exp = build_experiment(cfg, (src_vocab, tgt_vocab), trained_text(cfg, ckpt, args.checkpoint).subwords)
        src = [s for s, _ in exp.splits["test"].pairs][:args.limit]
        table = decoder_table(model.eval(), exp, tgt_vocab, cfg, args.beam, old)
        times: dict[str, list[float]] = {n: [] for n in names}
        outputs = {}
        with torch.no_grad():
            for rep in range(args.repeats):
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    start = time.perf_counter()
                    outputs[name] = table[name](src)
                    times[name].append(time.perf_counter() - start)
        first = names[0]
        print(f"{args.checkpoint}: {len(src)} test sentences, beam {args.beam}, {args.threads} thread(s), "
              f"median of {args.repeats}")
        print(f"{'decoder':<18} {'seconds':>8} {'sent/s':>8} {'x ' + first:>12} {'same output':>12}")
        result = {}
        for name in names:
            sec = median(times[name])
            same = sum(a == b for a, b in zip(outputs[name], outputs[first])) / len(src)
            result[name] = {"seconds": sec, "passes_s": times[name], "sentences_per_s": len(src) / sec,
                            "ratio_to_first": sec / median(times[first]), "same_output": same}
            print(f"{name:<18} {sec:>8.2f} {len(src) / sec:>8.1f} {sec / median(times[first]):>12.2f} {same:>12.3f}")
        return result


if __name__ == "__main__":
    main()
