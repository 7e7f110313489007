"""The benchmark script, and the pieces its numbers rest on: FLOP counts, peak memory,
the dense decoding baseline, the sparse attention kernels, the allocator setting.

No test asserts on time: timings depend on the machine and its load.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from transformer_graph.message_passing import csr as sparse_attention
from transformer_graph.message_passing.attention import GraphAttention
from bench.benchmark import (ATTENTION_METHODS, BenchmarkError, BenchOptions, Window, categorize,
                                         evaluate_targets, main)
from transformer_graph.inference.decoding import beam_search
from transformer_graph.nn.dense import DenseTransformer, pad, unpad
from transformer_graph.inference.dense_decoding import dense_beam_search
from bench.flops import ModelShape, forward_flops, training_flops
from transformer_graph.graphs.build import batch_graph, bipartite, build_graphs
from transformer_graph.nn.model import make_model
from bench.profiling import graph_index_bytes, peak_memory

ROOT = Path(__file__).resolve().parents[1]
MB = 2 ** 20


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


# --------------------------------------------------------------------------
# The whole benchmark, tiny
# --------------------------------------------------------------------------
def test_quick_benchmark_writes_markdown_json_and_plots(tmp_path, capsys):
    assert main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    md = (tmp_path / "benchmark.md").read_text()
    assert md.strip() in stdout  # the tables are printed too
    for heading in ("## Machine", "## Targets", "## 1. Training step", "## 2. Decoding",
                    "## 3. Attention alone", "## 4. Machine ceiling", "## 5. Profile"):
        assert heading in md
    for name in ("training", "decoding", "attention"):
        assert_png(tmp_path / "figures" / f"benchmark_{name}.png")
        assert f"figures/benchmark_{name}.png" in md

    r = json.loads((tmp_path / "benchmark.json").read_text())
    assert {"machine", "options", "data", "training", "decoding", "attention", "ceiling", "profile",
            "targets", "command"} <= set(r)
    assert r["machine"]["threads"] == 1 and "avx512_bf16" in r["machine"]["cpu_flags"]
    assert r["options"]["quick"] is True and r["command"].startswith("python scripts/benchmark.py --quick")

    t = r["training"]
    assert set(t["sizes"]) == {"copy", "tiny"}
    assert t["tokens"] > 0 and 0 <= t["padding_fraction"] < 1
    for entry in t["sizes"].values():
        res = entry["results"]
        assert set(res) == {f"{m}_{p}" for m in ("graph", "dense", "ratio") for p in ("fp32", "bf16")}
        for key in ("graph_fp32", "dense_fp32", "graph_bf16", "dense_bf16"):
            assert res[key]["tokens_per_s"] > 0 and res[key]["peak_mb"] > 0
            assert len(res[key]["seconds"]) == 2   # quick: 2 repeats
        assert res["graph_fp32"]["graph_index_mb"] > 0 and res["dense_fp32"]["graph_index_mb"] == 0
        # same weights, eval mode: the two models compute the same loss; bf16 stays close
        assert entry["agreement"]["graph_vs_dense_fp32_rel"] < 1e-4
        assert entry["agreement"]["graph_bf16_vs_fp32_rel"] < 0.05
        # the dense model executes at least the useful FLOPs (padding adds more)
        assert entry["dense_executed_train_flops"] >= entry["useful_train_flops"] > 0

    d = r["decoding"]
    assert d["sentences"] == 4 and set(d["results"]) == {"greedy", "beam5"}
    for res in d["results"].values():
        for name in ("graph_recompute", "dense_recompute"):
            assert res[name]["same_output_as_incremental"] == 1.0   # all three decode the same
        assert res["graph_incremental"]["sentences_per_s"] > 0

    a = r["attention"]
    assert a["lengths"] == [16, 32, 64] and set(a["results"]) == set(ATTENTION_METHODS)
    window = {row["length"]: row for row in a["results"]["graph_window"]}
    complete = {row["length"]: row for row in a["results"]["graph_complete"]}
    for n in a["lengths"]:
        assert complete[n]["pairs"] == 128 * n                        # batch * n^2 edges
        assert window[n]["pairs"] == (128 // n) * (5 * n - 2 * 3)     # |i - j| <= 2 band
    assert a["summary"]["graph_window"]["memory_loglog_slope"] is not None

    c = r["ceiling"]
    assert c["matmul"]["fp32"]["gflops_per_s"] > 0 and c["matmul"]["bf16"]["gflops_per_s"] > 0
    assert len(c["model_flops"]) == 8 and all(0 < x["fraction_of_ceiling"] for x in c["model_flops"])

    p = r["profile"]
    assert set(p["runs"]) == {f"{m}_{x}" for m in ("graph", "graph_dgl_kernels", "dense") for x in ("fp32", "bf16")}
    for run in p["runs"].values():
        assert sum(run["categories"].values()) == pytest.approx(1.0, abs=1e-6)
        assert 0 < len(run["top_ops"]) <= 8
    assert p["runs"]["graph_fp32"]["categories"]["graph attention (phi, □)"] > 0
    assert {row["target"].split(" (")[0] for row in r["targets"]} >= {
        "training tokens/s graph / dense", "training peak memory graph / dense"}


def test_script_runs_one_section(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--quick", "--sections", "4",
                           "--threads", "1", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "benchmark.json").read_text())
    assert "ceiling" in r and "training" not in r and r["ceiling"]["model_flops"] == []
    assert "## 4. Machine ceiling" in proc.stdout
    assert not (tmp_path / "figures" / "benchmark_training.png").exists()


def test_bad_options_are_clear_errors(capsys):
    assert main(["--quick", "--sections", "7", "--out", "unused"]) == 2
    assert "sections" in capsys.readouterr().err
    with pytest.raises(BenchmarkError, match="attn_lengths"):
        BenchOptions.quick_options(attn_lengths=(0, 16)).validate()
    with pytest.raises(BenchmarkError, match="size 'huge'"):
        BenchOptions.quick_options(sizes=("huge",)).validate()
    with pytest.raises(BenchmarkError, match="checkpoint"):
        BenchOptions.quick_options(checkpoint="/nonexistent.pt").validate()


def test_targets_report_met_and_missed():
    results = {"training": {"sizes": {"multi30k_cpu": {"results": {
        "ratio_fp32": {"speed_graph_over_dense": 1.2, "memory_graph_over_dense": 1.1}}}}},
        "decoding": {"sentences": 1000, "results": {"beam5": {"speedup_incremental_over_recompute": 4.0}}}}
    rows = {row["target"]: row for row in evaluate_targets(results)}
    assert rows["training tokens/s graph / dense (multi30k_cpu, fp32)"]["met"] is True
    assert rows["training peak memory graph / dense (multi30k_cpu, fp32)"]["met"] is False
    beam = rows["incremental vs full-recompute beam5 (1000 sentences)"]
    assert beam["met"] is False and beam["value"] == 4.0 and beam["note"] == ""


def test_profile_categories_follow_enclosing_ops():
    assert categorize("aten::addmm", ["_WeightedSumBackward", "autograd::engine"]) == "graph attention (phi, □)"
    assert categorize("GSpMM") == "graph attention (phi, □)"
    assert categorize("aten::addmm", ["aten::linear"]) == "matrix products"
    assert categorize("aten::mul", ["Optimizer.step#Adam.step"]) == "optimizer"


# --------------------------------------------------------------------------
# What the numbers rest on
# --------------------------------------------------------------------------
def test_training_flops_are_six_times_weights_per_token_plus_attention_and_generator():
    model = make_model(50, 60, layers=2, d_model=16, d_ff=24, heads=4, decoder_layers=3)
    src_lens, tgt_lens = [3, 5], [4, 2]
    ns, nt = sum(src_lens), sum(tgt_lens)
    # 2 FLOPs per weight per token of the side the weight is applied to; cross-attention
    # keys/values (rows d: of in_proj) are computed from source tokens.
    expected = 0
    for name, p in model.named_parameters():
        if p.dim() != 2 or "embed" in name or "generator" in name:
            continue
        if name.startswith("encoder"):
            expected += 2 * p.numel() * ns
        elif "cross_attn.in_proj" in name:
            expected += 2 * (16 * 16) * nt + 2 * (2 * 16 * 16) * ns
        else:
            expected += 2 * p.numel() * nt
    f = forward_flops(ModelShape.of(model), src_lens, tgt_lens)
    assert f["linear"] == expected
    edges = 2 * (9 + 25) + 3 * ((10 + 3) + (12 + 10))   # enc n^2; dec m(m+1)/2 + cross n*m
    assert f["attention"] == 2 * 2 * 16 * edges
    assert f["generator"] == 2 * nt * 16 * 60
    assert training_flops(ModelShape.of(model), src_lens, tgt_lens) == 3 * f["total"]
    padded = forward_flops(ModelShape.of(model), src_lens, tgt_lens, padded=True)
    assert padded["linear"] > f["linear"] and padded["attention"] > f["attention"]
    assert padded["generator"] == f["generator"]
    with pytest.raises(ValueError, match="length pair"):
        forward_flops(ModelShape.of(model), [3], [4, 2])


def test_peak_memory_counts_temporary_and_kept_tensors():
    def temporary():
        x = torch.ones(2 ** 20)          # 4 MiB, freed before returning
        return float(x.sum())

    out, mem = peak_memory(temporary)
    assert out == 2 ** 20
    assert 4 * MB <= mem.peak_bytes < 4.5 * MB and abs(mem.end_bytes) < 0.1 * MB

    _, mem = peak_memory(lambda: torch.zeros(2 ** 18))   # 1 MiB, returned (kept alive)
    assert 1 * MB <= mem.end_bytes < 1.1 * MB


def test_graph_index_bytes_count_created_formats():
    g = build_graphs([3, 4], [2, 5]).enc
    e = g.num_edges()
    assert graph_index_bytes(g) == 2 * e * 4                   # COO only, int32
    g.adj_tensors("csc")
    assert graph_index_bytes(g) == 2 * e * 4 + (7 + 1 + 2 * e) * 4


def test_dense_pad_unpad_match_pad_sequence_and_carry_gradients():
    x = torch.randn(9, 3, requires_grad=True)
    padded, mask = pad(x, [2, 4, 3], value=-1.0)
    ref = torch.nn.utils.rnn.pad_sequence(torch.split(x, [2, 4, 3]), batch_first=True, padding_value=-1.0)
    assert torch.equal(padded, ref)
    assert mask.tolist() == [[False, False, True, True], [False] * 4, [False, False, False, True]]
    assert torch.equal(unpad(padded, [2, 4, 3]), x)
    (padded * torch.arange(4.0)[None, :, None]).sum().backward()
    assert torch.equal(x.grad[:, 0], torch.tensor([0., 1, 0, 1, 2, 3, 0, 1, 2]))


@pytest.mark.parametrize("beam", [1, 3])
def test_dense_recompute_decodes_what_the_graph_decodes(beam):
    model = make_model(24, 24, layers=2, d_model=32, d_ff=48, heads=4, dropout=0.0).eval()
    dense = DenseTransformer(model).eval()
    src = [[5, 6, 7, 8, 9], [10, 11], [4, 12, 13, 14, 15, 16, 17]]
    graph = beam_search(model, src, sos=2, eos=3, beam=beam)
    dense_h = dense_beam_search(dense, src, sos=2, eos=3, beam=beam)
    assert [h[0].tokens for h in graph] == [h[0].tokens for h in dense_h]
    assert [h[0].score for h in graph] == pytest.approx([h[0].score for h in dense_h], abs=1e-4)
    with pytest.raises(ValueError, match=r"src_seqs\[1\]"):
        dense_beam_search(dense, [[5], []], sos=2, eos=3, beam=beam)


# --------------------------------------------------------------------------
# Attention kernels and structures
# --------------------------------------------------------------------------
def _attend_both(graph, heads=4, d_k=8, dtype=torch.float64):
    """(out, weights, grads) from the sparse CSR kernels and from DGL's."""
    torch.manual_seed(1)
    attn = GraphAttention(heads * d_k, heads, dropout=0.0).to(dtype)
    nq, nk = graph.num_dst_nodes(), graph.num_src_nodes()
    q = torch.randn(nq, heads, d_k, dtype=dtype, requires_grad=True)
    k = torch.randn(nk, heads, d_k, dtype=dtype, requires_grad=True)
    v = torch.randn(nk, heads, d_k, dtype=dtype, requires_grad=True)
    probe = torch.randn(nq, heads * d_k, dtype=dtype)
    results = []
    for flag in (True, False):
        with sparse_attention.enabled(flag):
            out, w = attn.attend(graph, q, k, v, need_weights=True)
            results.append((out, w, *torch.autograd.grad((out * probe).sum(), (q, k, v))))
    return results


@pytest.mark.parametrize("kind", ["enc", "dec", "cross"])
def test_sparse_kernels_equal_dgl_kernels(kind):
    graph = getattr(build_graphs([3, 7, 1, 5], [4, 2, 6, 1]), kind)
    with sparse_attention.enabled(True):
        assert sparse_attention.supports(graph, torch.zeros(1, 4, 8, dtype=torch.float64))
    fast, dgl_ = _attend_both(graph)
    for a, b in zip(fast, dgl_):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12)
    assert fast[1].shape == (graph.num_edges(), 4)


def test_sparse_kernels_fall_back_where_they_do_not_apply():
    # Edges not numbered in query order: DGL's kernels are used, with the same results.
    keys, queries = torch.tensor([2, 0, 1, 0, 1]), torch.tensor([1, 0, 1, 1, 0])
    graph = bipartite(keys, queries, 3, 2)
    with sparse_attention.enabled(True):
        assert not sparse_attention.supports(graph, torch.zeros(2, 4, 8))
    out = _attend_both(graph)
    assert torch.equal(out[0][0], out[1][0])
    # a disabled switch also uses DGL's kernels
    ordered = build_graphs([3], [2]).enc
    with sparse_attention.enabled(False):
        assert not sparse_attention.supports(ordered, torch.zeros(3, 4, 8))
    with sparse_attention.enabled(True):
        assert sparse_attention.supports(ordered, torch.zeros(3, 4, 8))


def test_sparse_kernels_take_bf16_features_and_return_bf16_gradients():
    """Under bf16 autocast q, k, v arrive in bf16: computed in float32 (as DGL's path
    does after casting), saved in bf16, gradients back in bf16."""
    graph = build_graphs([4, 6], [3, 5]).cross
    attn = GraphAttention(32, 4, dropout=0.0)
    q = torch.randn(8, 4, 8).bfloat16().requires_grad_()
    k = torch.randn(10, 4, 8).bfloat16().requires_grad_()
    v = torch.randn(10, 4, 8).bfloat16().requires_grad_()
    results = []
    for flag in (True, False):
        with sparse_attention.enabled(flag):
            assert sparse_attention.supports(graph, q) is flag
            out, _ = attn.attend(graph, q, k, v)
            results.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
    (out, *grads), (ref, *ref_grads) = results
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16 and torch.allclose(g.float(), r.float(), atol=1e-2, rtol=1e-2)


def test_window_graph_attention_equals_banded_dense_attention():
    w, lens, heads, d_k = 2, [9, 6], 2, 4
    graph = batch_graph(Window(w), lens, lens)
    assert graph.num_edges() == sum(n * (2 * w + 1) - w * (w + 1) for n in lens)
    attn = GraphAttention(heads * d_k, heads, dropout=0.0).double()
    x = [torch.randn(sum(lens), heads, d_k, dtype=torch.float64) for _ in range(3)]
    for flag in (True, False):
        with sparse_attention.enabled(flag):
            out, _ = attn.attend(graph, *x)
        at = 0
        for n in lens:
            q, k, v = (t[at:at + n].transpose(0, 1) for t in x)        # (heads, n, d_k)
            pos = torch.arange(n)
            band = (pos[:, None] - pos[None, :]).abs() <= w
            ref = F.scaled_dot_product_attention(q, k, v, attn_mask=band).transpose(0, 1).reshape(n, -1)
            assert torch.allclose(out[at:at + n], attn.out_proj(ref), atol=1e-10)
            at += n


def test_sparse_attention_with_dropout_trains():
    """Dropout on the edge weights under the sparse kernels: outputs change, gradients flow."""
    graph = build_graphs([6, 4], [3, 5]).enc
    attn = GraphAttention(16, 4, dropout=0.5).train()
    x = torch.randn(10, 16, requires_grad=True)
    a, _ = attn(graph, x)
    b, _ = attn(graph, x)
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_sparse_pattern_is_cached_per_graph_and_heads():
    graph = build_graphs([5, 3], [2, 2]).cross
    p4 = sparse_attention.pattern_of(graph, 4)
    assert sparse_attention.pattern_of(graph, 4) is p4
    assert sparse_attention.pattern_of(graph, 2).nnz == 2 * graph.num_edges()
    assert sparse_attention.pattern_bytes(graph) > 0


def test_tune_malloc_stops_refaulting_freed_memory():
    # A "step" allocating and freeing large tensors of a few sizes, as training does;
    # page faults per repeated step, with glibc's default settings and tuned.
    code = (
        "import sys, torch; from transformer_graph.train.malloc import tune_malloc, minor_page_faults\n"
        "tuned = tune_malloc() if sys.argv[1] == 'tuned' else False\n"
        "def step():\n"
        "    xs = [torch.ones(2 ** 22 + 4096 * i) for i in range(6)]\n"
        "    y = torch.ones(2 ** 24)\n"
        "    return sum(float(x[0]) for x in xs) + float(y[0])\n"
        "step(); before = minor_page_faults()\n"
        "for _ in range(3): step()\n"
        "print(tuned, (minor_page_faults() - before) // 3)\n")
    faults = {}
    for mode in ("default", "tuned"):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=60)
        assert proc.returncode == 0, proc.stderr
        tuned, n = proc.stdout.split()
        faults[mode] = (tuned == "True", int(n))
    if not faults["tuned"][0]:
        pytest.skip("glibc refused mallopt (or this is not glibc)")
    assert faults["default"][1] > 4000            # ~40k pages of 4 KiB allocated per step
    assert faults["tuned"][1] < faults["default"][1] / 2


def test_subclass_redefining_phi_is_not_bypassed_by_the_sparse_kernels():
    class Uniform(GraphAttention):
        def message(self, graph, q, k):   # every edge scores 0: softmax gives a plain mean
            return super().message(graph, q, k) * 0.0

    graph = build_graphs([4, 3], [2, 2]).enc
    attn = Uniform(8, 2, dropout=0.0)
    q, k, v = (torch.randn(7, 2, 4) for _ in range(3))
    out, weights = attn.attend(graph, q, k, v, need_weights=True)
    assert torch.allclose(weights[:16], torch.full((16, 2), 0.25))        # 4 x 4 edges of pair 0
    assert torch.allclose(weights[16:], torch.full((9, 2), 1 / 3))         # 3 x 3 edges of pair 1
    mean = torch.cat([v[:4].mean(0, keepdim=True).expand(4, -1, -1), v[4:].mean(0, keepdim=True).expand(3, -1, -1)])
    assert torch.allclose(out, attn.out_proj(mean.reshape(7, 8)), atol=1e-6)
