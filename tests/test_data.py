"""Tests of transformer_graph.data.datasets and transformer_graph.data.multi30k (fast: tiny inputs only)."""
from __future__ import annotations

import gzip
import io
import json
import os
import warnings
from pathlib import Path

import pytest

from transformer_graph.data import multi30k
from transformer_graph.data.batch import GraphBatch
from transformer_graph.data.datasets import (
    SPECIALS, Batcher, DataError, DataWarning, Dataset, Vocab, build_vocabs, collate, filter_pairs,
    load_parallel_dir, load_task, make_copy_sort, read_parallel,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"


# --------------------------------------------------------------------------
# Vocab
# --------------------------------------------------------------------------
def test_vocab_special_ids_and_order():
    v = Vocab.build([["b", "a", "b"], ["c", "b", "a"], ["d"]])
    assert (v.pad, v.unk, v.sos, v.eos) == (0, 1, 2, 3)
    assert v.itos[:4] == list(SPECIALS)
    # frequency descending, then token: b(3) a(2) c(1) d(1)
    assert v.itos[4:] == ["b", "a", "c", "d"]
    assert len(v) == 8


def test_vocab_min_freq_max_size_and_unknown():
    v = Vocab.build([["x", "x", "y", "z"]], min_freq=2)
    assert v.itos[4:] == ["x"]
    assert v.encode(["x", "y"]) == [4, v.unk]
    assert len(Vocab.build([list("aabbbcdef")], max_size=6)) == 6


def test_vocab_decode_stops_at_eos():
    v = Vocab.build([["hello", "world"]])
    ids = [v.sos, *v.encode(["hello", "world"]), v.eos, *v.encode(["hello"]), v.pad]
    assert v.decode(ids) == ["hello", "world"]
    assert v.decode(ids, strip_special=False)[0] == "<sos>"
    assert v.decode(v.encode(["nope"])) == ["<unk>"]
    with pytest.raises(ValueError, match="out of range"):
        v.decode([len(v)])


def test_vocab_round_trip(tmp_path):
    v = Vocab.build([["ä", "b", "ä"]])
    assert Vocab.from_dict(v.to_dict()).itos == v.itos
    path = tmp_path / "sub" / "vocab.json"
    v.save(path)
    assert Vocab.load(path).itos == v.itos
    with pytest.raises(DataError, match="missing.json"):
        Vocab.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        Vocab.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"itos": ["a", "b"]}))
    with pytest.raises(DataError, match="wrong.json"):
        Vocab.load(wrong)


# --------------------------------------------------------------------------
# Synthetic tasks
# --------------------------------------------------------------------------
def test_copy_sort_properties_and_determinism():
    copy = make_copy_sort("copy", 2000, seed=1)
    assert len(copy) == 2000
    assert all(src == tgt for src, tgt in copy)
    assert all(len(src) >= 1 and set(src) <= set("abcdefghijklmnopqrstuvwxyz") for src, _ in copy)
    mean = sum(len(s) for s, _ in copy) / len(copy)
    assert abs(mean - 15.0) < 0.3
    assert make_copy_sort("copy", 2000, seed=1) == copy
    assert make_copy_sort("copy", 2000, seed=2) != copy

    sort = make_copy_sort("sort", 500, seed=1, length_mean=2.0, length_std=3.0, alphabet="xyz")
    assert all(tgt == sorted(src) and len(src) >= 1 for src, tgt in sort)
    assert min(len(s) for s, _ in sort) == 1  # clipping happened
    with pytest.raises(ValueError, match="reverse"):
        make_copy_sort("reverse", 1, seed=0)


def test_load_task_splits():
    kw = dict(seed=3, train_size=50, valid_size=20, test_size=10, length_mean=15.0, length_std=3.0,
              alphabet="abc")
    splits = load_task("sort", **kw)
    assert {k: len(v) for k, v in splits.items()} == {"train": 50, "valid": 20, "test": 10}
    assert splits == load_task("sort", **kw)
    assert splits["train"][:10] != splits["valid"][:10]  # each split has its own seed


# --------------------------------------------------------------------------
# Parallel text
# --------------------------------------------------------------------------
def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_read_parallel_plain_and_gz(tmp_path):
    src = _write(tmp_path / "a.de.gz", ["Ein Haus .", "Zwei  Katzen"], gz=True)
    tgt = _write(tmp_path / "a.en", ["A House .", "Two cats"])
    pairs = read_parallel(src, tgt)
    assert pairs == [(["Ein", "Haus", "."], ["A", "House", "."]), (["Zwei", "Katzen"], ["Two", "cats"])]
    assert read_parallel(src, tgt, lowercase=True)[0][1] == ["a", "house", "."]
    # CRLF and a missing final newline
    (tmp_path / "c.en").write_bytes(b"x y\r\nz")
    assert read_parallel(tmp_path / "c.en", tmp_path / "c.en")[1] == (["z"], ["z"])


def test_read_parallel_errors(tmp_path):
    ok = _write(tmp_path / "ok.en", ["a", "b", "c"])
    with pytest.raises(DataError, match=r"nothere\.de.*does not exist.*one sentence per line"):
        read_parallel(tmp_path / "nothere.de", ok)
    empty = tmp_path / "empty.de"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.de.*is empty"):
        read_parallel(empty, ok)
    short = _write(tmp_path / "short.de.gz", ["a", "b"], gz=True)
    with pytest.raises(DataError) as info:
        read_parallel(short, ok)
    msg = str(info.value)
    assert "short.de.gz" in msg and "ok.en" in msg and "2 lines" in msg and "has 3" in msg
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"fine\n\xff broken\n")
    with pytest.raises(DataError, match=r"bad\.en.*line 2.*UTF-8"):
        read_parallel(bad, bad)


def test_load_parallel_dir(tmp_path):
    for prefix in ("train", "val", "test"):
        _write(tmp_path / f"{prefix}.de", ["a b"])
        _write(tmp_path / f"{prefix}.en.gz", ["c"], gz=True)
    prefixes = {"train": "train", "valid": "val", "test": "test"}
    splits = load_parallel_dir(tmp_path, "de", "en", prefixes=prefixes)
    assert splits["valid"] == [(["a", "b"], ["c"])]
    with pytest.raises(DataError, match=r"train\.fr"):
        load_parallel_dir(tmp_path, "fr", "en")


def test_filter_pairs_skip_and_truncate():
    pairs = [(["a"] * 3, ["b"] * 3), ([], ["b"]), (["a"], []), (["a"] * 9, ["b"]), (["a"], ["b"] * 9)]
    with pytest.warns(DataWarning) as rec:
        kept = filter_pairs(pairs, max_src_len=5, max_tgt_len=5, name="train")
    assert len(rec) == 1
    assert "skipped 2 empty and 2 over-long pairs of 5 in train" in str(rec[0].message)
    assert kept == [pairs[0]]

    with pytest.warns(DataWarning, match="skipped 2 empty and truncated 2 over-long pairs of 5"):
        kept = filter_pairs(pairs, max_src_len=5, max_tgt_len=5, mode="truncate")
    assert [(len(s), len(t)) for s, t in kept] == [(3, 3), (5, 1), (1, 5)]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing filtered: no warning
        assert filter_pairs(pairs[:1], max_src_len=5) == pairs[:1]
    with pytest.raises(ValueError, match="mode"):
        filter_pairs(pairs, mode="cut")


# --------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------
def _lengths(n=1000, seed=0):
    return [(len(s), len(t)) for s, t in make_copy_sort("copy", n, seed=seed, length_std=6.0)]


@pytest.mark.parametrize("kw", [dict(batch_size=32), dict(batch_size=None, max_tokens=500),
                                dict(batch_size=16, max_tokens=300, bucket=False),
                                dict(batch_size=10, shuffle=False)])
def test_batcher_covers_every_index_once(kw):
    lengths = _lengths()
    b = Batcher(lengths, **kw)
    for epoch in (0, 1):
        batches = b.batches(epoch)
        flat = sorted(i for batch in batches for i in batch)
        assert flat == list(range(len(lengths)))
        if kw.get("batch_size"):
            assert max(len(x) for x in batches) <= kw["batch_size"]
        if kw.get("max_tokens"):
            assert max(sum(lengths[i][0] + lengths[i][1] + 1 for i in x) for x in batches) <= kw["max_tokens"]


def test_batcher_oversized_example_gets_own_batch():
    b = Batcher([(3, 3), (50, 50), (3, 3)], batch_size=None, max_tokens=20, shuffle=False)
    assert sorted(b.batches(0)) == [[0, 2], [1]]


def test_batcher_determinism_epochs_and_bucketing():
    lengths = _lengths()
    a, b = Batcher(lengths, batch_size=32, seed=5), Batcher(lengths, batch_size=32, seed=5)
    assert a.batches(0) == b.batches(0) and a.batches(3) == b.batches(3)
    assert a.batches(0) != a.batches(1)
    assert Batcher(lengths, batch_size=32, seed=6).batches(0) != a.batches(0)
    a.set_epoch(3)
    assert list(a) == b.batches(3) and len(a) == len(b.batches(3))
    # bucketing: within-batch source lengths spread far less than across random batches
    def spread(batches):
        return sum(max(lengths[i][0] for i in x) - min(lengths[i][0] for i in x) for x in batches)
    assert spread(a.batches(0)) < 0.2 * spread(Batcher(lengths, batch_size=32, bucket=False).batches(0))


@pytest.mark.parametrize("world_size", [1, 3, 4])
def test_batcher_shards(world_size):
    b = Batcher(_lengths(), batch_size=None, max_tokens=700, seed=1)
    shards = [b.shard(r, world_size) for r in range(world_size)]
    for epoch in (0, 1):
        per_rank = [s.batches(epoch) for s in shards]
        assert len({len(p) for p in per_rank}) == 1  # equal counts: no rank hangs
        seen = [i for p in per_rank for batch in p for i in batch]
        assert len(seen) == len(set(seen))  # disjoint
        assert len(per_rank[0]) == len(b.batches(epoch)) // world_size
        assert per_rank == [b.shard(r, world_size).batches(epoch) for r in range(world_size)]
    wrapped = [len(b.shard(r, 4, remainder="wrap").batches(0)) for r in range(4)]
    assert len(set(wrapped)) == 1 and wrapped[0] * 4 >= len(b.batches(0))
    with pytest.raises(ValueError, match="rank"):
        b.shard(4, 4)


def test_collate_node_counts():
    pairs = [(list("abc"), list("ab")), (list("a"), list("cab"))]
    src_v, tgt_v = build_vocabs(pairs, joint=True)
    assert src_v is tgt_v
    ds = Dataset.from_tokens(pairs, src_v, tgt_v)
    assert ds.lengths == [(3, 2), (1, 3)]
    batch = collate(ds, [1, 0])
    assert isinstance(batch, GraphBatch)
    assert batch.src_lens == [1, 3] and batch.tgt_lens == [4, 3]
    assert batch.src.numel() == 4 and batch.tgt.numel() == 7
    assert batch.graphs.enc.num_nodes("key") == 4 and batch.graphs.dec.num_nodes("query") == 7
    assert int(batch.tgt[0]) == tgt_v.sos and int(batch.labels[3]) == tgt_v.eos


# --------------------------------------------------------------------------
# Multi30k
# --------------------------------------------------------------------------
def test_moses_tokenize_detokenize():
    toks = multi30k.tokenize(["A man in a blue-green shirt."], "en")[0]
    assert toks == ["A", "man", "in", "a", "blue", "@-@", "green", "shirt", "."]
    assert multi30k.detokenize(toks, "en") == "A man in a blue-green shirt."
    de = multi30k.tokenize(['Ein Mann sagt "Hallo" & geht.'], "de")[0]
    assert "&" in de and "&amp;" not in de  # -no-escape
    assert multi30k.detokenize(de, "de") == 'Ein Mann sagt "Hallo" & geht.'
    assert multi30k.detokenize(["@-@", "x"], "en") == "-x"


def _fake_corpus(path: Path, n: int | None = None, counts: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for prefix, expected in multi30k.EXPECTED_LINES.items():
        for lang in multi30k.LANGS:
            k = (counts or {}).get(f"{prefix}.{lang}", n or expected)
            _write(path / f"{prefix}.{lang}.gz", [f"{prefix} {lang} line-{i}." for i in range(k)], gz=True)
    return path


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared Multi30k copy not present")
def test_verify_dir_real_files():
    assert multi30k.verify_dir(SHARED) == []
    assert multi30k.load_raw(SHARED, "test", "en")[0]  # raw references readable


def test_verify_dir_reports_problems(tmp_path):
    d = _fake_corpus(tmp_path / "m30k", counts={"val.de": 1000})
    (d / "test_2016_flickr.en.gz").unlink()
    problems = multi30k.verify_dir(d)
    text = "\n".join(problems)
    assert "val.de.gz' has 1000 lines, expected 1014" in text
    assert "val.en.gz has 1014 lines but val.de.gz has 1000" in text
    assert "missing file" in text and "test_2016_flickr.en.gz" in text
    assert len(problems) == 3
    assert multi30k.verify_dir(tmp_path / "nowhere") != []


def test_fetch_with_fake_opener(tmp_path):
    requested = []

    def opener(url):
        requested.append(url)
        return io.BytesIO(gzip.compress(b"line\n"))

    dest = tmp_path / "dl"
    done = multi30k.fetch(dest, opener=opener)
    assert set(done.values()) == {"downloaded"} and len(done) == 10  # six + the four test-2017 files
    assert all(u.startswith(multi30k.BASE_URL + "/") for u in requested)
    assert {p.name for p in dest.iterdir()} == {*multi30k.expected_files(), *multi30k.extra_files()}  # no temp
    assert "test_2017_mscoco.de.gz" in done and "test_2017_flickr.en.gz" in done
    assert set(multi30k.fetch(dest, opener=opener).values()) == {"exists"} and len(requested) == 10
    multi30k.fetch(dest, opener=opener, force=True)
    assert len(requested) == 20
    assert len(multi30k.fetch(tmp_path / "six", opener=opener, test_2017=False)) == 6
    # the wrong line counts are found by the verification the script runs afterwards
    assert any("has 1 lines, expected 29000" in p for p in multi30k.verify_dir(dest))

    with pytest.raises(DataError, match="returned no gzip data"):
        multi30k.fetch(tmp_path / "html", opener=lambda url: io.BytesIO(b"<html>"))
    assert not any((tmp_path / "html").iterdir())

    def offline(url):
        raise OSError("no network")
    with pytest.raises(DataError, match="train.en.gz failed.*no network"):
        multi30k.fetch(tmp_path / "off", opener=offline)


def test_find_data_dir(tmp_path, monkeypatch):
    d = _fake_corpus(tmp_path / "here", n=2)
    assert multi30k.find_data_dir(d) == d
    monkeypatch.setenv("MULTI30K_DIR", str(d))
    assert multi30k.find_data_dir() == d
    monkeypatch.setenv("MULTI30K_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"fetch_multi30k\.py.*train\.en\.gz"):
        multi30k.find_data_dir()
    with pytest.raises(DataError, match="elsewhere"):
        multi30k.find_data_dir(tmp_path / "elsewhere")


def test_default_data_dir_is_the_current_directorys_not_the_packages(tmp_path, monkeypatch):
    """Without a path or $MULTI30K_DIR the data is ./data/multi30k, wherever the package lives;
    the fetch command downloads to the same place."""
    monkeypatch.delenv("MULTI30K_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert multi30k.default_data_dir() == Path("data", "multi30k")
    with pytest.raises(DataError, match=r"default directory .*'data/multi30k' lacks train\.en\.gz"):
        multi30k.find_data_dir()
    local = _fake_corpus(tmp_path / "data" / "multi30k", n=2)
    assert multi30k.find_data_dir().resolve() == local
    monkeypatch.setenv("MULTI30K_DIR", str(tmp_path / "env"))
    assert multi30k.default_data_dir() == tmp_path / "env"
    fetched = multi30k.fetch(opener=lambda url: io.BytesIO(gzip.compress(b"x\n")))
    assert set(fetched.values()) == {"downloaded"} and len(list((tmp_path / "env").iterdir())) == 10


def test_load_multi30k_cache_rebuilt_on_change(tmp_path, monkeypatch):
    d = _fake_corpus(tmp_path / "m30k", n=3)
    cache = tmp_path / "cache"
    calls = []
    real = multi30k.tokenize
    monkeypatch.setattr(multi30k, "tokenize", lambda lines, lang: calls.append(lang) or real(lines, lang))

    data = multi30k.load_multi30k(d, cache, src_lang="de", tgt_lang="en")
    assert len(calls) == 6 and len(list(cache.glob("tok-*.json"))) == 1
    assert data["valid"][0] == (["val", "de", "line", "@-@", "0", "."], ["val", "en", "line", "@-@", "0", "."])
    assert {k: len(v) for k, v in data.items()} == {"train": 3, "valid": 3, "test": 3}

    again = multi30k.load_multi30k(d, cache, src_lang="de", tgt_lang="en")
    assert again == data and len(calls) == 6  # served from the cache
    assert multi30k.load_multi30k(d, cache)["train"][0][0][1] == "en"  # other direction, same cache
    assert len(calls) == 6

    _write(d / "train.en.gz", ["changed text", "b", "c"], gz=True)
    changed = multi30k.load_multi30k(d, cache, src_lang="de", tgt_lang="en")
    assert len(calls) == 12 and changed["train"][0][1] == ["changed", "text"]
    assert len(list(cache.glob("tok-*.json"))) == 2
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]

    _write(d / "val.en.gz", ["only one"], gz=True)
    with pytest.raises(DataError, match=r"val\.de\.gz.*3 lines.*val\.en\.gz.*has 1"):
        multi30k.load_multi30k(d, cache, src_lang="de", tgt_lang="en")


def test_load_multi30k_default_cache_dir_is_writable_location(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert multi30k.default_cache_dir() == tmp_path / "xdg" / "transformer_graph" / "multi30k"
    assert os.access(tmp_path, os.W_OK)


def test_fetch_script_verify_only(tmp_path, capsys):
    import importlib.util
    script = Path(__file__).resolve().parents[1] / "scripts" / "fetch_multi30k.py"
    spec = importlib.util.spec_from_file_location("fetch_multi30k", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--verify-only", "--dest", str(_fake_corpus(tmp_path / "ok"))]) == 0
    assert "OK" in capsys.readouterr().out
    assert mod.main(["--verify-only", "--dest", str(tmp_path / "none")]) == 1
