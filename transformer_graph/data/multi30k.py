"""Multi30k (WMT16 multimodal task 1): locate, fetch, verify, tokenise, cache.

Tokenisation is :func:`transformer_graph.data.text.moses_tokenize` (the
reference setup, Moses ``tokenizer.perl -a -no-escape`` with case kept).
Tokenising the 29k training pairs takes about a minute, so the tokenised
corpus is cached on disk, keyed by a hash of the input files' contents and the
tokenizer settings/version, and rebuilt when any of them changes. BLEU is
computed with sacreBLEU on *raw* references (:func:`load_raw`) against
detokenised output (:func:`detokenize`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Callable

from transformer_graph.data.datasets import DataError, TokenPair, check_parallel, read_lines
from transformer_graph.data.download import fetch_files
# tokenize/detokenize under the names this module always had (tokenize is looked up here at
# call time, so a test can count the calls by patching multi30k.tokenize).
from transformer_graph.data.text import MOSES_SETTINGS as TOKENIZER_SETTINGS
from transformer_graph.data.text import moses_detokenize as detokenize  # noqa: F401  (public name)
from transformer_graph.data.text import moses_tokenize as tokenize
from transformer_graph.data.text import moses_version as sacremoses_version
from transformer_graph.files import atomic_write_text

log = logging.getLogger(__name__)

# split name used in this package -> file prefix in the Multi30k repository
FILE_PREFIX = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
EXPECTED_LINES = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}
# The later official test sets, downloaded for users (tg-evaluate --src-file/--ref-file); training
# does not need them, so a directory without them is still complete.
EXTRA_LINES = {"test_2017_flickr": 1000, "test_2017_mscoco": 461}
LANGS = ("en", "de")
BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"

CACHE_FORMAT = 1  # bump when the cache file layout changes

# Where the data is when no path is given: $MULTI30K_DIR, else data/multi30k under the current
# directory (relative on purpose: an installed package has no checkout to look in, and the
# package's own location says nothing about where a user keeps data).
DATA_DIR_ENV = "MULTI30K_DIR"
DEFAULT_DIR = Path("data", "multi30k")


def expected_files() -> list[str]:
    """The six file names: ``{train,val,test_2016_flickr}.{en,de}.gz``."""
    return [f"{prefix}.{lang}.gz" for prefix in EXPECTED_LINES for lang in LANGS]


def extra_files() -> list[str]:
    """The four test-2017 file names: ``{test_2017_flickr,test_2017_mscoco}.{en,de}.gz``."""
    return [f"{prefix}.{lang}.gz" for prefix in EXTRA_LINES for lang in LANGS]


def _missing(path: Path) -> list[str]:
    return [name for name in expected_files() if not (path / name).is_file()]


def _not_found(where: str, path: Path, missing: list[str]) -> DataError:
    return DataError(
        f"Multi30k data not found: {where} {str(path)!r} lacks {', '.join(missing)}. "
        f"Run `tg-fetch-multi30k --dest {path}` (or `python scripts/fetch_multi30k.py --dest {path}`) "
        f"to download it there, or put the files {', '.join(expected_files())} (from {BASE_URL}) "
        f"in a directory and pass it as data.path or set ${DATA_DIR_ENV}."
    )


def _given_dir(path: str | os.PathLike | None) -> tuple[str, Path]:
    """(how it was chosen, directory): ``path``, else ``$MULTI30K_DIR``, else ``./data/multi30k``."""
    if path:
        return "data path", Path(path).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return f"${DATA_DIR_ENV}", Path(env).expanduser()
    return "default directory (relative to the current directory)", DEFAULT_DIR


def default_data_dir() -> Path:
    """Where Multi30k is read from and downloaded to when no path is given:
    ``$MULTI30K_DIR``, else ``data/multi30k`` under the current directory."""
    return _given_dir(None)[1]


def find_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The directory holding the six Multi30k files.

    The first of an explicit ``path``, ``$MULTI30K_DIR`` and ``./data/multi30k``
    that is given must have the files: a wrong setting is an error, not a reason
    to silently read other data.
    """
    where, p = _given_dir(path)
    missing = _missing(p)
    if missing:
        raise _not_found(where, p, missing)
    return p


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/transformer_graph/multi30k`` (``~/.cache`` by default).

    Not inside the data directory: the shared copy of the data is read-only.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer_graph" / "multi30k"


# --------------------------------------------------------------------------
# Loading with an on-disk cache
# --------------------------------------------------------------------------
def _split_prefix(split: str) -> str:
    if split in FILE_PREFIX:
        return FILE_PREFIX[split]
    if split in EXPECTED_LINES:
        return split
    raise DataError(f"unknown Multi30k split {split!r}; expected one of "
                    f"{sorted({*FILE_PREFIX, *EXPECTED_LINES})}")


def load_raw(path: str | os.PathLike | None = None, split: str = "test", lang: str = "en") -> list[str]:
    """Untokenised lines of one file, e.g. the test references for sacreBLEU."""
    if lang not in LANGS:
        raise DataError(f"unknown Multi30k language {lang!r}; expected one of {LANGS}")
    data_dir = find_data_dir(path)
    return read_lines(data_dir / f"{_split_prefix(split)}.{lang}.gz", f"Multi30k {split}.{lang} file")


def cache_key(data_dir: Path) -> str:
    """Hash of everything the tokenised corpus depends on.

    The file *contents* are hashed (about 1.3 MB, milliseconds), not their
    mtimes, because copying the data keeps or changes mtimes unpredictably.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "sacremoses": sacremoses_version(),
                         "settings": TOKENIZER_SETTINGS}, sort_keys=True).encode())
    for name in expected_files():
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256((data_dir / name).read_bytes()).digest())
    return h.hexdigest()


def _tokenize_all(data_dir: Path) -> dict[str, dict[str, list[list[str]]]]:
    out: dict[str, dict[str, list[list[str]]]] = {}
    for split, prefix in FILE_PREFIX.items():
        out[split] = {}
        for lang in LANGS:
            lines = read_lines(data_dir / f"{prefix}.{lang}.gz", f"Multi30k {split}.{lang} file")
            log.info("tokenising %s.%s (%d lines)", prefix, lang, len(lines))
            out[split][lang] = tokenize(lines, lang)
    return out


def _read_cache(cache_file: Path, key: str):
    try:
        blob = json.loads(cache_file.read_text(encoding="utf-8"))
        if blob.get("key") == key:
            return blob["splits"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, AttributeError) as err:  # corrupt: rebuild it
        warnings.warn(f"ignoring unreadable Multi30k cache {str(cache_file)!r} ({err}); rebuilding it")
    return None


def load_tokenized(path: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> dict[str, dict[str, list[list[str]]]]:
    """``split -> lang -> token lists`` for all splits and both languages, via the cache."""
    data_dir = find_data_dir(path)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(data_dir)
    cache_file = cache_dir / f"tok-{key[:16]}.json"
    cached = _read_cache(cache_file, key)
    if cached is not None:
        return cached
    splits = _tokenize_all(data_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file, json.dumps({"key": key, "data_dir": str(data_dir), "splits": splits},
                                                 ensure_ascii=False))
    except OSError as err:  # a read-only home should not stop training
        warnings.warn(f"could not write the Multi30k token cache {str(cache_file)!r} ({err}); "
                      f"the corpus will be tokenised again next time")
    return splits


def load_multi30k(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, *,
                  src_lang: str = "en", tgt_lang: str = "de") -> dict[str, list[TokenPair]]:
    """``{"train", "valid", "test"} -> [(source tokens, target tokens)]``, Moses-tokenised."""
    for lang in (src_lang, tgt_lang):
        if lang not in LANGS:
            raise DataError(f"unknown Multi30k language {lang!r}; expected one of {LANGS}")
    if src_lang == tgt_lang:
        raise DataError(f"source and target language are both {src_lang!r}")
    tokens = load_tokenized(path, cache_dir)
    data_dir = find_data_dir(path)
    out = {}
    for split, prefix in FILE_PREFIX.items():
        src, tgt = tokens[split][src_lang], tokens[split][tgt_lang]
        check_parallel(data_dir / f"{prefix}.{src_lang}.gz", data_dir / f"{prefix}.{tgt_lang}.gz",
                       len(src), len(tgt))
        out[split] = list(zip(src, tgt))
    return out


# --------------------------------------------------------------------------
# Verification and download
# --------------------------------------------------------------------------
def verify_dir(path: str | os.PathLike) -> list[str]:
    """Problems with a Multi30k directory (missing files, wrong or mismatched line counts); [] when OK.

    The test-2017 files (:data:`EXTRA_LINES`) are checked when present; missing they are no
    problem (training does not read them)."""
    path = Path(path)
    if not path.is_dir():
        return [f"directory {str(path)!r} does not exist"]
    problems = []
    for prefix, expected in {**EXPECTED_LINES, **EXTRA_LINES}.items():
        counts = {}
        if prefix in EXTRA_LINES and not any((path / f"{prefix}.{lang}.gz").is_file() for lang in LANGS):
            continue
        for lang in LANGS:
            f = path / f"{prefix}.{lang}.gz"
            if not f.is_file():
                problems.append(f"missing file {str(f)!r}")
                continue
            try:
                counts[lang] = len(read_lines(f, "Multi30k file"))
            except DataError as err:
                problems.append(str(err))
                continue
            if counts[lang] != expected:
                problems.append(f"{str(f)!r} has {counts[lang]} lines, expected {expected}")
        if len(counts) == 2 and counts["en"] != counts["de"]:
            problems.append(f"{prefix}.en.gz has {counts['en']} lines but {prefix}.de.gz has "
                            f"{counts['de']}; expected the same number (one translation per line)")
    return problems


def fetch(dest: str | os.PathLike | None = None, force: bool = False,
          opener: Callable[[str], object] | None = None, base_url: str = BASE_URL,
          test_2017: bool = True) -> dict[str, str]:
    """Download the six files, and with ``test_2017`` the four test-2017 files (flickr and
    mscoco), into ``dest`` (default :func:`default_data_dir`).

    Existing files are kept unless ``force``. ``opener(url)`` returns a
    readable context manager (``urllib.request.urlopen`` by default; tests
    pass a fake). Each file is written to a temporary name and renamed, so an
    interrupted download never leaves a truncated file behind. Returns
    ``file name -> "downloaded" | "exists"``.
    """
    dest = Path(dest) if dest is not None else default_data_dir()
    names = expected_files() + (extra_files() if test_2017 else [])
    # a proxy's HTML error page is not gzip data
    return fetch_files(names, dest, base_url, opener=opener, force=force,
                       check=lambda name, data: None if data[:2] == b"\x1f\x8b" else "no gzip data",
                       hint=f" (the files are {', '.join(names)} from {base_url})")
