"""The benchmark tool (python -m bench.benchmark), and the pieces its numbers rest on: FLOP counts,
peak memory, the dense decoding baseline, the sparse attention kernels, the allocator setting.

No test asserts on time: timings depend on the machine and its load.
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench import compile_check
from bench.benchmark import categorize, evaluate_targets, main
from bench.flops import ModelShape, forward_flops, training_flops
from bench.options import BenchmarkError, BenchOptions, validated
from bench.peer import PeerError, check_peer_dir
from bench.peer import main as peer_main
from bench.profiling import graph_index_bytes, peak_memory
from bench.sections import ATTENTION_METHODS
from transformer_graph.config import ConfigError, config_from_dict
from transformer_graph.data.datasets import make_copy_sort
from transformer_graph.graphs import _dgl
from transformer_graph.graphs.build import batch_graph, bipartite, build_graphs
from transformer_graph.graphs.structures import make_structure
from transformer_graph.inference.decoding import beam_search
from transformer_graph.inference.dense_decoding import dense_beam_search
from transformer_graph.message_passing import csr as sparse_attention
from transformer_graph.message_passing import get_engine, using_engine
from transformer_graph.message_passing.attention import GraphAttention
from transformer_graph.nn.dense import DenseTransformer, pad, unpad
from transformer_graph.nn.model import make_model
from transformer_graph.train import trainer as trainer_module

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
def test_quick_benchmark_writes_markdown_json_and_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)   # configs/ are read from the checkout
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
    assert r["options"]["quick"] is True and r["command"].startswith("python -m bench.benchmark --quick")

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
        for name in ("graph_recompute", "dense_recompute", "dense_kv"):
            assert res[name]["same_output_as_incremental"] == 1.0   # all four decode the same
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
    # The machine's ceiling is the fastest kernel measured (torch.mm, oneDNN's linear where built in).
    for prec in ("fp32", "bf16"):
        assert c["fastest_gflops_per_s"][prec] >= c["matmul"][prec]["gflops_per_s"]
    assert all(0 < x["fraction_of_fastest"] <= x["fraction_of_ceiling"] for x in c["model_flops"])

    p = r["profile"]
    models = ("graph", "graph_dgl_kernels", "dense") if _dgl.available() else ("graph", "dense")
    assert set(p["runs"]) == {f"{m}_{x}" for m in models for x in ("fp32", "bf16")}
    for run in p["runs"].values():
        assert sum(run["categories"].values()) == pytest.approx(1.0, abs=1e-6)
        assert 0 < len(run["top_ops"]) <= 8
    assert p["runs"]["graph_fp32"]["categories"]["graph attention (phi, □)"] > 0
    assert {row["target"].split(" (")[0] for row in r["targets"]} >= {
        "training tokens/s graph / dense", "training peak memory graph / dense"}


def test_script_runs_one_section(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "bench.benchmark", "--quick", "--sections", "4",
                           "--threads", "1", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "benchmark.json").read_text())
    assert "ceiling" in r and "training" not in r and r["ceiling"]["model_flops"] == []
    assert "## 4. Machine ceiling" in proc.stdout
    assert not (tmp_path / "figures" / "benchmark_training.png").exists()


def test_bad_options_are_clear_errors(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
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
    assert "incremental vs dense with key/value cache beam5" not in rows   # a run without the dense_kv row
    results["decoding"]["results"]["beam5"]["speedup_incremental_over_dense_kv"] = 1.1
    assert {row["target"]: row for row in evaluate_targets(results)}[
        "incremental vs dense with key/value cache beam5"]["met"] is True


@pytest.mark.needs_dgl
def test_training_section_measures_each_engine_beside_the_same_dense_baseline(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["--quick", "--sections", "1", "--sizes", "tiny", "--precisions", "fp32", "--engines", "dgl,torch",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "benchmark.json").read_text())
    entry = r["training"]["sizes"]["tiny"]
    res = entry["results"]
    assert set(res) == {"graph_fp32", "graph_dgl_fp32", "dense_fp32", "ratio_fp32"}
    assert (res["graph_fp32"]["engine"], res["graph_dgl_fp32"]["engine"], res["dense_fp32"]["engine"]) == (
        "torch", "dgl", None)
    for key in ("graph_fp32", "graph_dgl_fp32", "dense_fp32"):
        assert res[key]["tokens_per_s"] > 0 and len(res[key]["seconds"]) == 2
    assert res["graph_dgl_fp32"]["graph_index_mb"] > res["graph_fp32"]["graph_index_mb"] > 0  # + DGL's formats
    ratio = res["ratio_fp32"]
    assert set(ratio) == {f"{what}_{m}_over_dense" for what in ("speed", "memory") for m in ("graph", "graph_dgl")}
    assert ratio["speed_graph_dgl_over_dense"] == pytest.approx(
        res["graph_dgl_fp32"]["tokens_per_s"] / res["dense_fp32"]["tokens_per_s"])
    assert entry["agreement"]["graph_dgl_vs_graph_fp32_rel"] < 1e-6   # the same model on either engine
    md = (tmp_path / "benchmark.md").read_text()
    assert "| graph tok/s | graph_dgl tok/s | dense tok/s | graph / dense | graph_dgl / dense |" in md
    assert "graph_dgl vs graph (fp32)" in md
    assert_png(tmp_path / "figures" / "benchmark_training.png")
    # the targets stay the torch engine's (the "graph" rows)
    assert {row["target"] for row in r["targets"]} == {"training tokens/s graph / dense (tiny, fp32)",
                                                       "training peak memory graph / dense (tiny, fp32)"}


def test_engines_option_is_checked(checkout, capsys, monkeypatch):
    assert main(["--quick", "--sections", "1", "--engines", "torch,torch", "--out", "unused"]) == 2
    assert capsys.readouterr().err == "error: --engines: engines: expected each engine once, got torch,torch\n"
    assert main(["--quick", "--sections", "1", "--engines", "cuda", "--out", "unused"]) == 2
    assert capsys.readouterr().err == "error: --engines: engines[0]: expected one of 'torch', 'dgl', got 'cuda'\n"
    # Where DGL cannot be imported (the modern stack), asking for its rows is an error before any work,
    # saying how to install it; other sections still run there with the option left as it is.
    monkeypatch.setattr(_dgl, "_import", lambda: (None, None, "ModuleNotFoundError: No module named 'dgl'"))
    assert main(["--quick", "--sections", "1", "--engines", "dgl,torch", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --engines: engines: 'dgl' needs DGL, which cannot be imported here "
                          "(ModuleNotFoundError: No module named 'dgl'); install it with pip install "
                          "'transformer_graph[dgl]'") and err.count("\n") == 1
    assert main([*CEILING_ONLY, "--engines", "dgl"]) == 0
    assert not (checkout / "unused").exists()
    # without the torch engine's rows there are no graph-vs-dense targets, and no error
    assert evaluate_targets({"training": {"sizes": {"multi30k_cpu": {"results": {
        "ratio_fp32": {"speed_graph_dgl_over_dense": 0.9, "memory_graph_dgl_over_dense": 0.9}}}}}}) == []


def test_compile_check_options_and_table(capsys):
    args = compile_check.parser().parse_args(["--variants", "ffn,model", "--precisions", "bf16"])
    assert (args.variants, args.precisions, args.threads, args.size) == (["ffn", "model"], ["bf16"], 1,
                                                                         "multi30k_cpu")
    for argv, what in ((["--variants", "everything"], "--variants: expected a comma-separated list from model, "
                                                      "model_eager_attention, layers, ffn, got 'everything'"),
                       (["--repeats", "0"], "--repeats: expected a positive integer, got '0'")):
        with pytest.raises(SystemExit):
            compile_check.parser().parse_args(argv)
        assert what in capsys.readouterr().err
    table = compile_check.markdown([
        {"variant": "model", "precision": "fp32", "error": "IndexError: tuple index out of range"},
        {"variant": "ffn", "precision": "bf16", "eager_tokens_per_s": 5399.2, "compiled_tokens_per_s": 3980.4,
         "speedup": 0.737, "compile_warmup_s": 2.2, "loss_rel": 0.0, "grad_rel": 1.4e-8}]).splitlines()
    assert table[2] == "| model | fp32 | fails: IndexError: tuple index out of range | | | | | |"
    assert table[3] == "| ffn | bf16 | 5399 | 3980 | 0.74x | 2 | 0.0e+00 | 1.4e-08 |"


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


@pytest.mark.needs_dgl  # compares with the dgl engine / DGL's own formats
def test_graph_index_bytes_count_created_formats():
    g = build_graphs([3, 4], [2, 5]).enc
    e = g.num_edges()
    assert graph_index_bytes(g) == 2 * e * 8                   # the graph's COO only, int64
    assert g.indptr.numel() == g.num_dst_nodes() + 1          # + its CSR row pointers, once asked for
    own = 2 * e * 8 + (g.num_dst_nodes() + 1) * 8
    assert graph_index_bytes(g) == own
    view = g.dgl()                                             # the dgl engine's view: DGL's COO, int32
    assert graph_index_bytes(g) == own + 2 * e * 4
    view.adj_tensors("csc")
    assert graph_index_bytes(g) == own + 2 * e * 4 + (7 + 1 + 2 * e) * 4
    sparse_attention.pattern_of(g, 2)                          # CSR patterns: tensors, seen by peak_memory
    assert graph_index_bytes(g) == own + 2 * e * 4 + (7 + 1 + 2 * e) * 4


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
    """(out, weights, grads) from the torch engine (sparse CSR kernels) and from the dgl engine."""
    torch.manual_seed(1)
    attn = GraphAttention(heads * d_k, heads, dropout=0.0).to(dtype)
    nq, nk = graph.num_dst_nodes(), graph.num_src_nodes()
    q = torch.randn(nq, heads, d_k, dtype=dtype, requires_grad=True)
    k = torch.randn(nk, heads, d_k, dtype=dtype, requires_grad=True)
    v = torch.randn(nk, heads, d_k, dtype=dtype, requires_grad=True)
    probe = torch.randn(nq, heads * d_k, dtype=dtype)
    results = []
    for engine in ("torch", "dgl"):
        with using_engine(attn, engine):
            out, w = attn.attend(graph, q, k, v, need_weights=True)
            results.append((out, w, *torch.autograd.grad((out * probe).sum(), (q, k, v))))
    return results


@pytest.mark.needs_dgl
@pytest.mark.parametrize("kind", ["enc", "dec", "cross"])
def test_sparse_kernels_equal_dgl_kernels(kind):
    graph = getattr(build_graphs([3, 7, 1, 5], [4, 2, 6, 1]), kind)
    assert get_engine("torch").fused("dot_product", graph, torch.zeros(1, 4, 8, dtype=torch.float64))
    fast, dgl_ = _attend_both(graph)
    for a, b in zip(fast, dgl_):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-12)
    assert fast[1].shape == (graph.num_edges(), 4)


@pytest.mark.needs_dgl  # compares with the dgl engine / DGL's own formats
def test_sparse_kernels_fall_back_where_they_do_not_apply():
    # Edges given out of query order: the graph puts them in query order, both engines agree,
    # and the weights come back in the order the edges were given.
    keys, queries = torch.tensor([2, 0, 1, 0, 1]), torch.tensor([1, 0, 1, 1, 0])
    graph = bipartite(keys, queries, 3, 2)
    out = _attend_both(graph)
    assert torch.allclose(out[0][0], out[1][0], atol=1e-12) and torch.allclose(out[0][1], out[1][1], atol=1e-12)
    # where the CSR kernels do not apply (integer features, a graph without edges) the torch
    # engine has no fused kernel; a block on the dgl engine never uses them
    ordered = build_graphs([3], [2]).enc
    assert not get_engine("torch").fused("dot_product", ordered, torch.zeros(3, 4, 8, dtype=torch.int64))
    assert not get_engine("torch").fused("dot_product", bipartite(torch.tensor([], dtype=torch.int64),
                                                                  torch.tensor([], dtype=torch.int64), 3, 2),
                                         torch.zeros(2, 4, 8))
    assert not get_engine("dgl").fused("dot_product", ordered, torch.zeros(3, 4, 8))
    assert get_engine("torch").fused("dot_product", ordered, torch.zeros(3, 4, 8))


@pytest.mark.needs_dgl  # compares with the dgl engine / DGL's own formats
def test_sparse_kernels_take_bf16_features_and_return_bf16_gradients():
    """Under bf16 autocast q, k, v arrive in bf16: computed in float32 (as DGL's path
    does after casting), saved in bf16, gradients back in bf16."""
    graph = build_graphs([4, 6], [3, 5]).cross
    attn = GraphAttention(32, 4, dropout=0.0)
    q = torch.randn(8, 4, 8).bfloat16().requires_grad_()
    k = torch.randn(10, 4, 8).bfloat16().requires_grad_()
    v = torch.randn(10, 4, 8).bfloat16().requires_grad_()
    results = []
    for engine in ("torch", "dgl"):
        with using_engine(attn, engine):
            assert (get_engine(engine).fused("dot_product", graph, q) is not None) is (engine == "torch")
            out, _ = attn.attend(graph, q, k, v)
            results.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
    (out, *grads), (ref, *ref_grads) = results
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16 and torch.allclose(g.float(), r.float(), atol=1e-2, rtol=1e-2)


def test_window_graph_attention_equals_banded_dense_attention(engine):
    w, lens, heads, d_k = 2, [9, 6], 2, 4
    graph = batch_graph(make_structure("window", w), lens, lens)
    assert graph.num_edges() == sum(n * (2 * w + 1) - w * (w + 1) for n in lens)
    attn = GraphAttention(heads * d_k, heads, dropout=0.0).double()
    x = [torch.randn(sum(lens), heads, d_k, dtype=torch.float64) for _ in range(3)]
    with using_engine(attn, engine):
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


def test_subclass_redefining_phi_is_not_bypassed_by_the_sparse_kernels(engine):
    class Uniform(GraphAttention):
        def message(self, graph, q, k):   # every edge scores 0: softmax gives a plain mean
            return super().message(graph, q, k) * 0.0

    graph = build_graphs([4, 3], [2, 2]).enc
    attn = Uniform(8, 2, dropout=0.0)
    q, k, v = (torch.randn(7, 2, 4) for _ in range(3))
    with using_engine(attn, engine):   # the torch engine's fused kernel would compute the parent's phi
        out, weights = attn.attend(graph, q, k, v, need_weights=True)
    assert torch.allclose(weights[:16], torch.full((16, 2), 0.25))        # 4 x 4 edges of pair 0
    assert torch.allclose(weights[16:], torch.full((9, 2), 1 / 3))         # 3 x 3 edges of pair 1
    mean = torch.cat([v[:4].mean(0, keepdim=True).expand(4, -1, -1),
                      v[4:].mean(0, keepdim=True).expand(3, -1, -1)])
    assert torch.allclose(out, attn.out_proj(mean.reshape(7, 8)), atol=1e-6)


# --------------------------------------------------------------------------
# Where the tool writes, and how its options are checked
# --------------------------------------------------------------------------
@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A scratch copy of the checkout's layout as the current directory: configs/ and a tracked docs/."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "docs" / "benchmark.md").write_text("the tracked report\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _docs_files(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in (root / "docs").rglob("*") if p.is_file()}


CEILING_ONLY = ["--quick", "--sections", "4", "--threads", "1"]


def test_default_output_is_scratch_and_docs_stay_untouched(checkout, capsys):
    docs = _docs_files(checkout)
    assert main(CEILING_ONLY) == 0
    assert "ceiling" in json.loads((checkout / "runs" / "bench" / "benchmark.json").read_text())
    assert (checkout / "runs" / "bench" / "benchmark.md").is_file()
    assert _docs_files(checkout) == docs
    # --quick never writes into docs/, even when asked, and says so before any work
    capsys.readouterr()
    for out in ("docs", "docs/figures", str(checkout / "docs" / "quick")):
        assert main([*CEILING_ONLY, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}: --quick results") and "never go into docs/" in err
    assert _docs_files(checkout) == docs and not (checkout / "docs" / "quick").exists()


def test_existing_results_are_replaced_only_with_force(checkout, capsys):
    out = checkout / "mine"
    assert main([*CEILING_ONLY, "--out", str(out)]) == 0
    first = (out / "benchmark.json").read_bytes()
    (out / "notes.txt").write_text("the user's own file")
    (out / "figures").mkdir()
    (out / "figures" / "benchmark_training.png").write_bytes(b"an earlier run's figure")
    capsys.readouterr()
    assert main([*CEILING_ONLY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out}: would replace {out / 'benchmark.json'}, ")
    assert "pass --force to replace them, or choose another --out" in err
    assert (out / "benchmark.json").read_bytes() == first           # refused before any work
    assert main([*CEILING_ONLY, "--out", str(out), "--force"]) == 0
    r = json.loads((out / "benchmark.json").read_text())
    assert r["options"]["force"] is True and (out / "benchmark.json").read_bytes() != first
    assert (out / "notes.txt").read_text() == "the user's own file"   # not one of the tool's files
    assert not (out / "figures" / "benchmark_training.png").exists()  # the earlier run's, not this one's
    # an output path that cannot be a directory is refused before any work too
    (checkout / "a_file").write_text("x")
    assert main([*CEILING_ONLY, "--out", "a_file"]) == 2
    assert "error: --out a_file: is an existing file; expected a directory" in capsys.readouterr().err


def test_bad_option_is_reported_by_the_config_engine(checkout, capsys):
    # The benchmark's options go through the config engine: the same checks and the same message
    # shape as a config key, named by the flag that set them.
    with pytest.raises(ConfigError) as cfg_err:
        config_from_dict({"train": {"log_every": 0}})
    assert str(cfg_err.value) == "<dict>: train.log_every: expected a positive integer, got 0"
    assert main([*CEILING_ONLY, "--threads", "0"]) == 2
    assert capsys.readouterr().err == "error: --threads: threads: expected a positive integer, got 0\n"
    assert main([*CEILING_ONLY, "--repeats", "two"]) == 2
    assert capsys.readouterr().err == "error: --repeats: repeats: expected an integer, got 'two'\n"
    assert main([*CEILING_ONLY, "--precisions", "fp32,fp8"]) == 2
    assert capsys.readouterr().err == "error: --precisions: precisions[1]: expected one of 'fp32', 'bf16', got 'fp8'\n"
    assert main([*CEILING_ONLY, "--attn-heads", "3"]) == 2
    assert "error: --attn-heads: attn_heads: expected a divisor of attn_d_model (256), got 3" in capsys.readouterr().err
    with pytest.raises(BenchmarkError, match=r"^benchmark options: threads: expected a positive integer, got 0$"):
        BenchOptions.quick_options(threads=0).validate()
    with pytest.raises(BenchmarkError, match=r"^benchmark options: thread: unknown key; did you mean 'threads'\?$"):
        validated({"thread": 1}, lambda *keys: "benchmark options")
    assert not (checkout / "runs").exists()   # nothing was written by any of them


def test_help_lists_every_option(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(BenchOptions):
        assert "--" + f.name.replace("_", "-") in text
    assert "runs/bench" in text and "--quick sets:" in text


def test_tune_malloc_is_a_validated_train_key_applied_by_the_trainer(tmp_path, monkeypatch):
    assert config_from_dict({}).train.tune_malloc is True       # on by default (glibc: measured to help)
    assert config_from_dict({}, overrides=["train.tune_malloc=false"]).train.tune_malloc is False
    with pytest.raises(ConfigError, match=r"^--set train.tune_malloc=yes please: train.tune_malloc: expected a "
                                          r"boolean \(true/false\), got 'yes please'$"):
        config_from_dict({}, overrides=["train.tune_malloc=yes please"])
    with pytest.raises(ConfigError, match=r"^<dict>: train.tune_malloc: expected a boolean \(true/false\), got 1$"):
        config_from_dict({"train": {"tune_malloc": 1}})
    calls = []
    monkeypatch.setattr(trainer_module, "tune_malloc", lambda: calls.append(True) or True)
    tiny = ["model.layers=1", "model.d_model=16", "model.d_ff=16", "model.heads=2", "data.train_size=8",
            "data.valid_size=2", "data.test_size=2", "viz.example=null"]
    for flag_value, expected in (("true", [True]), ("false", [])):
        calls.clear()
        trainer_module.Trainer(config_from_dict({}, overrides=[*tiny, f"train.tune_malloc={flag_value}"]),
                               tmp_path / flag_value, quiet=True)
        assert calls == expected


# --------------------------------------------------------------------------
# Section 6: the peer (DGL's Transformer example), here a stand-in with its interface
# --------------------------------------------------------------------------
FAKE_PEER = {
    "modules/__init__.py": '''
import torch
from torch import nn

class _Lut(nn.Module):
    def __init__(self, vocab, d):
        super().__init__()
        self.lut = nn.Embedding(vocab, d)

class _Model(nn.Module):
    def __init__(self, vocab, d):
        super().__init__()
        self.src_embed, self.tgt_embed = _Lut(vocab, d), _Lut(vocab, d)
        self.generator = nn.Module()
        self.generator.proj = nn.Linear(d, vocab)
    def forward(self, g):
        h = self.tgt_embed.lut(g.tgt) + self.src_embed.lut(g.src).mean(0)
        return torch.log_softmax(self.generator.proj(h), -1)

def make_model(src_vocab, tgt_vocab, N=6, dim_model=512, dim_ff=2048, h=8, dropout=0.1):
    return _Model(tgt_vocab, dim_model)
''',
    "loss/__init__.py": '''
import torch.nn.functional as F

class LabelSmoothing:
    def __init__(self, size, padding_idx, smoothing=0.0):
        self.padding_idx = padding_idx
    def __call__(self, x, y):
        return F.nll_loss(x, y, reduction="sum")

class SimpleLossCompute:
    def __init__(self, criterion, grad_accum, opt=None):
        self.criterion, self.opt = criterion, opt
    def __call__(self, y_pred, y, norm):
        loss = self.criterion(y_pred, y) / norm
        loss.backward()
        self.opt.step()
        self.opt.optimizer.zero_grad()
        return loss.item() * norm
''',
    "optims/__init__.py": '''
class NoamOpt:
    def __init__(self, model_size, factor, warmup, optimizer):
        self.optimizer = optimizer
    def step(self):
        self.optimizer.step()
''',
    "dataset/__init__.py": "",
    "dataset/graph.py": '''
from types import SimpleNamespace
import torch

class GraphPool:
    def __call__(self, src_buf, tgt_buf, device="cpu"):
        tgt = [t[:-1] for t in tgt_buf]
        return SimpleNamespace(src=torch.tensor([x for s in src_buf for x in s]),
                               tgt=torch.tensor([x for t in tgt for x in t]),
                               tgt_y=torch.tensor([x for t in tgt_buf for x in t[1:]]),
                               n_tokens=sum(len(t) for t in tgt))
''',
}


def fake_peer(root: Path) -> Path:
    for name, text in FAKE_PEER.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_peer_section_is_skipped_without_its_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["--quick", "--sections", "6", "--threads", "1", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "benchmark.json").read_text())
    assert "no --peer-dir" in r["peer"]["skipped"] and r["targets"] == []
    assert "## 6. Peer" in (tmp_path / "benchmark.md").read_text()


def test_peer_section_times_the_example_and_the_graph_model_on_the_same_batches(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    peer = fake_peer(tmp_path / "example")
    assert main(["--quick", "--sections", "6", "--threads", "1", "--peer-dir", str(peer), "--peer-batches", "1",
                 "--repeats", "1", "--out", str(tmp_path / "out")]) == 0
    r = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    p = r["peer"]
    assert set(p["rows"]) == {"peer", "graph_tutorial", "graph_copy_yaml"} and p["threads"] == 1
    assert p["omp_num_threads_env"] == "1"        # the child's DGL threads are fixed too
    assert p["tokens"] == sum(len(s) + len(t) + 1 for s, t in make_copy_sort("copy", 128, 0))
    for row in p["rows"].values():
        assert len(row["passes"]) == 1 and row["tokens_per_s"] > 0 and row["step_tokens_per_s"] >= row["tokens_per_s"]
    (target,) = r["targets"]
    assert target["goal"] == ">= 2.5" and target["value"] == pytest.approx(p["speedup_graph_tutorial_over_peer"])
    assert "| DGL example |" in (tmp_path / "out" / "benchmark.md").read_text()
    assert not list(ROOT.glob("modules")) and "modules" not in sys.modules   # the example ran in a child process


def test_peer_directory_errors_name_the_option(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["--quick", "--sections", "6", "--peer-dir", str(tmp_path / "nowhere"), "--out", "unused"]) == 2
    assert "peer_dir" in capsys.readouterr().err
    with pytest.raises(PeerError, match=r"--peer-dir .*: not the DGL Transformer example .*missing modules/"):
        check_peer_dir(tmp_path)
    assert peer_main(["--peer-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --peer-dir ")
