"""``tg-fetch-multi30k``: download Multi30k (task 1: train, val, test_2016_flickr in en/de) and verify it.

Exit codes: 0 the directory is complete, 1 verification found problems (listed on stderr),
2 a user error (e.g. the download failed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformer_graph.cli.errors import command
from transformer_graph.cli.help import make_parser
from transformer_graph.data.multi30k import BASE_URL, DATA_DIR_ENV, DEFAULT_DIR, default_data_dir, fetch, verify_dir

EXIT_PROBLEMS = 1


def parser() -> argparse.ArgumentParser:
    ap = make_parser(
        "tg-fetch-multi30k",
        "Download the six Multi30k files ({train,val,test_2016_flickr}.{en,de}.gz) and the official "
        "test-2017 sets ({test_2017_flickr,test_2017_mscoco}.{en,de}.gz, for tg-evaluate "
        "--src-file/--ref-file) "
        "into a directory, skipping files already there, then verify them: every file present, "
        "29000/1014/1000 (and 1000/461) lines, the same number in en and de. Training finds the data "
        "through data.path, else "
        f"${DATA_DIR_ENV}, else ./{DEFAULT_DIR}.",
        ["tg-fetch-multi30k                                 # into ./data/multi30k (or $MULTI30K_DIR)",
         "tg-fetch-multi30k --dest ~/data/multi30k --force  # download again",
         "tg-fetch-multi30k --dest ../shared/data/multi30k --verify-only"])
    ap.add_argument("--dest", type=Path, metavar="DIR",
                    help=f"target directory (default: ${DATA_DIR_ENV} if set, else ./{DEFAULT_DIR} "
                         f"under the current directory)")
    ap.add_argument("--force", action="store_true", help="download every file again, even those present")
    ap.add_argument("--no-test-2017", action="store_true", help="skip the four test-2017 files")
    ap.add_argument("--verify-only", action="store_true", help="download nothing, only verify --dest")
    ap.add_argument("--base-url", default=BASE_URL, metavar="URL", help="where the .gz files live")
    return ap


@command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dest = args.dest if args.dest is not None else default_data_dir()
    if not args.verify_only:
        for name, action in fetch(dest, force=args.force, base_url=args.base_url,
                                    test_2017=not args.no_test_2017).items():
            print(f"{action:>10}  {dest / name}")
    problems = verify_dir(dest)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print(f"{dest}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return EXIT_PROBLEMS if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
