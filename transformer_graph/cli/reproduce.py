"""``tg-reproduce``: train one config with several seeds and report every metric as mean ± std."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformer_graph.cli.errors import command, readable_warnings
from transformer_graph.cli.help import make_parser
from transformer_graph.cli.threads import add_threads_option, apply_threads_option
from transformer_graph.threads import check_threads
from transformer_graph.config import load_config
from transformer_graph.files import atomic_write_text
from transformer_graph.inference.evaluation import check_decoding_options, evaluate_checkpoint
from transformer_graph.outputs import check_output_file
from transformer_graph.train.reproduce import (final_checkpoint, format_table, run_facts, summarize, train_seeds)


def eval_set(value: str) -> tuple[str, Path, Path]:
    """NAME=SRC,REF -> (name, source file, reference file)."""
    name, sep, files = value.partition("=")
    src, comma, ref = files.partition(",")
    if not (sep and comma and name and src and ref):
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=SOURCE_FILE,REFERENCE_FILE, e.g. "
                                         f"test2017=data/multi30k/test_2017_flickr.en.gz,"
                                         f"data/multi30k/test_2017_flickr.de.gz")
    for f in (src, ref):
        if not Path(f).is_file():
            raise argparse.ArgumentTypeError(f"{value!r}: {f} does not exist")
    return name, Path(src), Path(ref)


def parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "tg-reproduce",
        "Train a config once per seed (ROOT/seed<N>; a seed whose directory exists is resumed, so an "
        "interrupted reproduction continues where it stopped), evaluate each final model (averaged.pt, else "
        "best.pt) on the test split and on any --eval-set, and print every metric as mean ± sample standard "
        "deviation over the seeds. Writes ROOT/summary.json.",
        ["tg-reproduce --config configs/multi30k_spm_cpu.yaml --seeds 1 2 3 --parallel 3",
         "tg-reproduce --config configs/copy.yaml --seeds 1 2 --runs runs/copy-seeds",
         "tg-reproduce --config configs/multi30k_spm_cpu.yaml --runs runs/multi30k_spm --no-train "
         "--eval-set test2017=data/multi30k/test_2017_flickr.en.gz,data/multi30k/test_2017_flickr.de.gz"])
    ap.add_argument("--config", required=True, metavar="YAML", help="the config every seed trains (required)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], metavar="N",
                    help="train.seed of each run (default: 1 2 3)")
    ap.add_argument("--runs", type=Path, metavar="ROOT",
                    help="directory of the seeds' run directories (default: runs/<config name>-seeds)")
    ap.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="seeds trained at the same time, each in its own process (default: 1)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config value for every seed, as tg-train --set (default: none)")
    ap.add_argument("--no-train", action="store_true", help="only evaluate the existing runs")
    ap.add_argument("--split", default="test", choices=("valid", "test"), help="split to evaluate on")
    ap.add_argument("--eval-set", dest="eval_sets", action="append", default=[], type=eval_set,
                    metavar="NAME=SRC,REF", help="also evaluate on these raw files (repeatable; default: none)")
    ap.add_argument("--beam", type=int, help="beam size (default: the config's eval.beam)")
    ap.add_argument("--json", metavar="PATH", help="also write the summary here (default: ROOT/summary.json only)")
    add_threads_option(ap, "torch CPU threads of each seed's training (its train.threads, also on resume) and of "
                           "the evaluation (default: the config's train.threads for training; for the evaluation "
                           "the CPUs this process may use, per affinity and cgroup quota, that are idle when it "
                           "starts, or OMP_NUM_THREADS if set)")
    return ap


@command
def run(argv: list[str] | None = None) -> dict:
    ap = parser()
    args = ap.parse_args(argv)
    if args.parallel < 1:
        ap.error(f"--parallel: expected a positive integer, got {args.parallel}")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds: {args.seeds} repeats a seed; expected distinct seeds")
    load_config(args.config, args.overrides)  # a bad config or override fails here, before any run starts
    if args.threads is not None:
        check_threads(args.threads, "--threads")
    check_decoding_options(args.beam, None, None)
    root = args.runs or Path("runs") / f"{Path(args.config).stem}-seeds"
    json_out = check_output_file(args.json, "--json")
    summary_file = check_output_file(root / "summary.json", "--runs")
    if args.no_train:
        runs = {s: root / f"seed{s}" for s in args.seeds}
    else:
        runs = train_seeds(args.config, root, args.seeds, args.overrides, parallel=args.parallel,
                           threads=args.threads)
    apply_threads_option(args)
    sets = [(args.split, None, None), *args.eval_sets]
    per_set: dict[str, dict[int, dict]] = {name: {} for name, _, _ in sets}
    with readable_warnings():
        for seed, run_dir in runs.items():
            ckpt = final_checkpoint(run_dir)
            facts = run_facts(run_dir)
            for name, src, ref in sets:
                kw = dict(src_file=src, ref_file=ref) if src is not None else dict(split=name)
                metrics = evaluate_checkpoint(ckpt, beam=args.beam, **kw)["metrics"]
                per_set[name][seed] = {**metrics, **facts, "checkpoint": ckpt.name}
    result = {"config": str(args.config), "overrides": args.overrides, "seeds": args.seeds,
              "sets": {name: {"per_seed": {str(s): m for s, m in by_seed.items()}, "summary": summarize(by_seed)}
                       for name, by_seed in per_set.items()}}
    for name, by_seed in per_set.items():
        print(f"\n== {name} ({len(by_seed)} seed{'s' if len(by_seed) != 1 else ''}) ==")
        print(format_table(summarize(by_seed), list(by_seed)))
    text = json.dumps(result, indent=2) + "\n"
    atomic_write_text(summary_file, text)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_out, text)
    print(f"\nwrote {summary_file}")
    return result


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
