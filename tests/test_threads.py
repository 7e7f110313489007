"""The default CPU thread count (transformer_graph.threads) and every command's --threads option."""
from __future__ import annotations

import re

import pytest
import torch

from transformer_graph import threads
from transformer_graph.cli import evaluate, plot_act, train, translate, visualize
from transformer_graph.threads import ThreadsError, apply_threads, check_threads, default_threads

COMMANDS = {"tg-train": train, "tg-evaluate": evaluate, "tg-translate": translate, "tg-visualize": visualize,
            "tg-plot-act": plot_act}


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: set ``affinity``, ``quota`` and ``idle`` on the returned dict."""
    state = {"affinity": {0, 1, 2, 3}, "quota": None, "idle": 4.0}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: state["affinity"])
    monkeypatch.setattr(threads, "quota_cpus", lambda: state["quota"])
    monkeypatch.setattr(threads, "idle_cpus", lambda cpus=None, seconds=0: state["idle"])
    return state


def test_default_is_the_smallest_of_affinity_quota_and_idle_cpus(machine, monkeypatch):
    assert default_threads() == 4
    machine["idle"] = 3.0          # another process keeps one core busy
    assert default_threads() == 3
    machine["idle"] = 2.6          # rounded to the nearest whole CPU
    assert default_threads() == 3
    machine["quota"] = 1.5         # docker --cpus=1.5: two threads may run, each part of the time
    assert default_threads() == 2
    machine["affinity"] = {2}      # taskset -c 2
    assert default_threads() == 1
    machine.update(affinity={0, 1, 2, 3}, quota=None, idle=0.2)
    assert default_threads() == 1  # every core busy: still one thread
    machine["idle"] = None         # no /proc/stat
    assert default_threads() == 4 and default_threads(processes=2) == 2 and default_threads(processes=8) == 1
    assert default_threads(sample=False) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")   # the user's explicit choice wins
    assert default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert default_threads() == 4


def test_cgroup_quota_v1_and_v2(tmp_path, monkeypatch):
    v2, v1, unlimited = tmp_path / "v2", tmp_path / "v1", tmp_path / "none"
    for d in (v2, v1, unlimited):
        d.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("250000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (unlimited / "cpu.max").write_text("max 100000\n")
    for dirs, expected in (([v2], 1.5), ([v1], 2.5), ([unlimited], None), ([unlimited, v1, v2], 1.5), ([], None)):
        monkeypatch.setattr(threads, "_cgroup_dirs", lambda dirs=dirs: dirs)
        assert threads.quota_cpus() == expected


def test_idle_cpus_samples_proc_stat(monkeypatch):
    samples = iter([(100, 400), (150, 600)])    # (idle ticks, all ticks) over two CPUs
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: next(samples))
    assert threads.idle_cpus({0, 1}, seconds=0) == pytest.approx(0.5)   # 50 of 200 ticks idle, 2 CPUs
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: None)         # no /proc/stat
    assert threads.idle_cpus({0, 1}, seconds=0) is None


def test_idle_cpus_of_this_machine_is_within_its_cpus():
    cpus = threads.affinity_cpus()
    idle = threads.idle_cpus(cpus, seconds=0.05)
    if idle is not None:   # Linux
        assert 0.0 <= idle <= len(cpus) + 1e-9
    assert default_threads() >= 1


def test_apply_threads_sets_torch_and_checks_the_value():
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # apply_threads caps the BLAS pools too: restored on exit
        try:
            assert apply_threads(1) == 1 and torch.get_num_threads() == 1
            assert apply_threads(None) == torch.get_num_threads() >= 1
        finally:
            torch.set_num_threads(before)
    for bad in (0, -2, True, 1.5, "2"):
        with pytest.raises(ThreadsError, match=r"--threads: expected a positive integer"):
            check_threads(bad)
    with pytest.raises(ThreadsError, match=r"train\.threads"):
        apply_threads(0, "train.threads")


def test_apply_threads_caps_the_blas_pools_of_numpy_and_scipy_too():
    # OpenBLAS's own pool (the Laplacian encodings' eigh) collapses beside a busy core like
    # torch's OpenMP one: the command's count applies to both.
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS, as the graph tasks do)
    from threadpoolctl import threadpool_info, threadpool_limits

    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas, "NumPy should bring a BLAS library threadpoolctl can see"
    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores every pool afterwards
        try:
            apply_threads(1)
            assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}
        finally:
            torch.set_num_threads(before)
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == \
        [p["num_threads"] for p in blas]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_takes_threads(name):
    module = COMMANDS[name]
    ap = module.parser()
    required = {"tg-train": ["--config", "c.yaml"], "tg-plot-act": ["--checkpoint", "x.pt", "--out", "a.png"]}
    assert ap.parse_args(required.get(name, ["--checkpoint", "x.pt"]) + ["--threads", "2"]).threads == 2
    assert ap.parse_args(required.get(name, ["--checkpoint", "x.pt"])).threads is None
    assert "--threads N" in ap.format_help()


def test_bad_threads_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--checkpoint", str(tmp_path / "none.pt"), "--threads", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"error: --threads: expected a positive integer \(CPU threads\), got 0", err), err
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {layers: 1, d_model: 16, d_ff: 32, heads: 2}\ndata: {task: copy}\n")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(config), "--threads", "0", "--run-dir", str(tmp_path / "run")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "train.threads" in err and len(err.splitlines()) == 1, err
