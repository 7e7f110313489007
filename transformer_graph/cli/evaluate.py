"""``tg-evaluate``: metrics of a checkpoint on a split of its task, or on raw parallel text files."""
from __future__ import annotations

import argparse
import json

from transformer_graph.files import atomic_write_text
from transformer_graph.cli.errors import command, readable_warnings
from transformer_graph.cli.help import make_parser
from transformer_graph.cli.threads import add_threads_option, apply_threads_option
from transformer_graph.inference.evaluation import evaluate_checkpoint
from transformer_graph.outputs import check_output_file


def parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "tg-evaluate",
        "Decode a split (or --src-file) with a trained checkpoint and print its metrics: token "
        "accuracy and exact match for the synthetic tasks, tokenised BLEU and detokenised sacreBLEU "
        "for translation. The hypotheses are written to a text file beside the checkpoint. A node-"
        "classification checkpoint (data.task pattern, cluster, karate, planetoid) is scored on the split's "
        "graphs instead, no decoding: class_weighted_acc (PATTERN/CLUSTER: the benchmark's accuracy, the mean "
        "over batches of the training batch size, in percent; class_weighted_acc_pooled over all nodes at once) "
        "and acc, the fraction of nodes right (karate/Planetoid: of the split's mask).",
        ["tg-evaluate --checkpoint runs/copy/best.pt",
         "tg-evaluate --checkpoint runs/pattern/best.pt --split test",
         "tg-evaluate --checkpoint runs/multi30k_cpu/averaged.pt --split test --beam 5 --json metrics.json",
         "tg-evaluate --checkpoint runs/multi30k_cpu/averaged.pt --src-file my.en --ref-file my.de"])
    ap.add_argument("--checkpoint", required=True, metavar="PATH",
                    help="a checkpoint written by tg-train: RUN_DIR/best.pt, last.pt or averaged.pt (required)")
    ap.add_argument("--split", default="test", choices=("train", "valid", "test"),
                    help="split of the run's task to evaluate on")
    ap.add_argument("--beam", type=int, help="beam size; 1 is greedy (default: the run's eval.beam)")
    ap.add_argument("--alpha", type=float,
                    help="length-penalty exponent of beam search (default: the run's eval.alpha)")
    ap.add_argument("--src-file", metavar="PATH",
                    help="evaluate on these raw source sentences, one per line, .gz ok, instead of --split; "
                         "needs --ref-file (default: use --split)")
    ap.add_argument("--ref-file", metavar="PATH",
                    help="raw reference translations of --src-file, one per line, .gz ok (default: none)")
    ap.add_argument("--hyp-file", metavar="PATH",
                    help="where to write the hypotheses "
                         "(default: RUN_DIR/<checkpoint name>.<split>.beam<N>.hyp.txt)")
    ap.add_argument("--full-recompute", action="store_true",
                    help="decode by rerunning the whole prefix at every step (the reference's way; slower) "
                         "instead of the incremental decoder state")
    ap.add_argument("--allow-unk", action="store_true",
                    help="let the decoder emit <unk> (masked by default): shows where a word vocabulary "
                         "cannot express the translation")
    ap.add_argument("--limit", type=int, metavar="N",
                    help="evaluate only the first N sentences (node tasks: graphs) (default: all)")
    ap.add_argument("--json", metavar="PATH",
                    help="also write the checkpoint, hypotheses file and metrics to this JSON file (default: none)")
    add_threads_option(ap)
    return ap


@command
def run(argv: list[str] | None = None) -> dict:
    """Evaluate as the command line says; returns ``{"checkpoint", "hypotheses", "metrics"}``."""
    ap = parser()
    args = ap.parse_args(argv)
    if bool(args.src_file) != bool(args.ref_file):
        ap.error("--src-file and --ref-file go together")
    json_out = check_output_file(args.json, "--json")  # before decoding, not after
    threads = apply_threads_option(args)
    with readable_warnings():
        result = evaluate_checkpoint(args.checkpoint, split=args.split, beam=args.beam, alpha=args.alpha,
                                     src_file=args.src_file, ref_file=args.ref_file, hyp_file=args.hyp_file,
                                     incremental=not args.full_recompute, limit=args.limit,
                                     allow_unk=args.allow_unk)
    result["metrics"]["threads"] = threads   # beside decode_time_s: what the timing ran on
    for k, v in result["metrics"].items():
        print(f"{k:<16} {v:.4f}" if isinstance(v, float) else f"{k:<16} {v}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
