"""``tg-translate``: raw sentences in, detokenised translations out, with a trained checkpoint."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator

from transformer_graph.cli.errors import command, readable_warnings
from transformer_graph.cli.help import make_parser
from transformer_graph.cli.threads import add_threads_option, apply_threads_option
from transformer_graph.inference.translate import Translator, read_text_lines


def parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "tg-translate",
        "Translate raw sentences with a trained checkpoint: the sentences given as arguments, else "
        "stdin, one sentence per line (an empty line gives an empty line). Input is tokenised as the "
        "checkpoint's training data was (Moses for Multi30k, whitespace otherwise); unknown words "
        "come out as <unk>; a sentence longer than the model takes is cut, with a warning on stderr. "
        "Input must be UTF-8 text: binary data is an error, not a line of <unk>s.",
        ["tg-translate --checkpoint runs/multi30k_cpu/averaged.pt 'A man is riding a bike.'",
         "echo 'A man is riding a bike.' | tg-translate --checkpoint runs/multi30k_cpu/averaged.pt --beam 5",
         "tg-translate --checkpoint runs/copy/best.pt < inputs.txt > outputs.txt"])
    ap.add_argument("--checkpoint", required=True, metavar="PATH",
                    help="a checkpoint written by tg-train: RUN_DIR/best.pt, last.pt or averaged.pt (required)")
    ap.add_argument("--beam", type=int, help="beam size; 1 is greedy (default: the run's eval.beam)")
    ap.add_argument("--alpha", type=float,
                    help="length-penalty exponent of beam search (default: the run's eval.alpha)")
    ap.add_argument("--batch-size", type=int, default=64, metavar="N",
                    help="sentences decoded together; stdin is read and answered in chunks of 8 N lines")
    ap.add_argument("sentences", nargs="*", help="sentences to translate (default: read stdin)")
    add_threads_option(ap)
    return ap


@command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    apply_threads_option(args)
    # Scoped: an in-process caller gets its own warning display back afterwards.
    with readable_warnings():
        translator = Translator.from_checkpoint(args.checkpoint, beam=args.beam, alpha=args.alpha,
                                                batch_size=args.batch_size)
        if args.sentences:
            chunks: Iterable[list[str]] = [args.sentences]
        else:  # bytes, decoded strictly: binary data is an error, not '\ufffd's or escapes read as <unk>
            lines = read_text_lines(sys.stdin.buffer)
            # interactive: answer each line
            chunks = ([line] for line in lines) if sys.stdin.isatty() else _chunks(lines, 8 * args.batch_size)
        for chunk in chunks:
            for text in translator.translate(chunk):
                print(text)
            sys.stdout.flush()
    return 0


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of up to ``size`` items, so long inputs stream out chunk by chunk."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


if __name__ == "__main__":
    raise SystemExit(main())
