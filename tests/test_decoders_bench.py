"""bench.decoders: decoders of one checkpoint side by side, on the pre-house copy-task run."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import decoders

RUN = Path(__file__).resolve().parent / "fixtures" / "pre_house" / "standard"


def test_every_decoder_writes_the_same_outputs_and_is_timed(capsys):
    result = decoders.main(["--checkpoint", str(RUN / "last.pt"), "--decoders", "new,new_small_batches,dense_kv,"
                            "recompute", "--limit", "6", "--repeats", "2"])
    assert list(result) == ["new", "new_small_batches", "dense_kv", "recompute"]
    for r in result.values():
        assert r["same_output"] == 1.0 and len(r["passes_s"]) == 2 and r["seconds"] > 0
    assert result["new"]["ratio_to_first"] == 1.0
    assert "recompute" in capsys.readouterr().out


def test_an_older_decoding_module_runs_beside_the_new_one(tmp_path):
    old = tmp_path / "old_decoding.py"   # any decoding.py with beam_search(model, seqs, ...): today's itself
    old.write_text((Path(decoders.__file__).parents[1] / "transformer_graph" / "inference" / "decoding.py").read_text())
    result = decoders.main(["--checkpoint", str(RUN / "last.pt"), "--decoders", "new,old", "--old-decoder",
                            str(old), "--limit", "4", "--repeats", "1"])
    assert result["old"]["same_output"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (["--decoders", "new,fast"], "--decoders 'new,fast': expected a comma-separated list"),
    (["--decoders", "old"], "'old' needs --old-decoder FILE"),
    (["--decoders", "old", "--old-decoder", "missing.py"], "--old-decoder missing.py: no such file"),
    (["--beam", "0"], "--beam: expected a positive integer, got 0"),
])
def test_bad_options_are_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        decoders.main(["--checkpoint", str(RUN / "last.pt"), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
