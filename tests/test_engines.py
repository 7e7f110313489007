"""The two engines compute the same thing, the graph type is the project's own, DGL is optional.

1. With DGL installed, every block (attention, mean, gat) on every structure, the whole
   model forward and backward (standard and Universal + ACT), beam search, ACT statistics
   and attention weights agree between ``dgl`` and ``torch`` in float64 to 1e-10 relative.
2. The torch engine's primitives equal their definitions (gather, per-query softmax, sums).
3. The engine is a property of each model (``set_engine``, ``using_engine``, the config's
   ``train.engine``), never process-wide; ``train.kernels`` still works, with a warning.
4. Without DGL (``sys.modules['dgl'] = None``) the package imports, trains and decodes on the
   torch engine, ``auto`` means torch and asking for ``dgl`` says how to install it; with
   DGL installed, the torch engine never imports it.
5. Blocks accept a user's DGL graph (homogeneous or bipartite) and a PyG-style edge index,
   in any edge order; bad graphs are ValueErrors that name the argument and the fix.
6. AttentionGraph: query-ordered edges, CSR row pointers, subgraphs of active queries.
"""
from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from transformer_graph.config import ConfigDeprecationWarning, ConfigError, config_from_dict
from transformer_graph.data.batch import make_batch
from transformer_graph.graphs import _dgl
from transformer_graph.graphs.build import KINDS, GraphSpec, batch_graph, bipartite, build_graphs, get_structure
from transformer_graph.graphs.graph import AttentionGraph
from transformer_graph.graphs.structures import make_structure, spec_from_config
from transformer_graph.inference.decoding import beam_search
from transformer_graph.message_passing import (GATBlock, GraphAttention, MeanBlock, engines_of, get_aggregator,
                                               set_engine, using_engine)
from transformer_graph.message_passing.aggregators import GATAggregation, MeanAggregation
from transformer_graph.message_passing import torch_engine
from transformer_graph.message_passing.engines import resolve_engine
from transformer_graph.message_passing.torch_engine import TorchEngine
from transformer_graph.nn.act import active_subgraph
from transformer_graph.nn.model import make_model
from transformer_graph.nn.universal import make_universal_model

ROOT = Path(__file__).resolve().parents[1]
V, SOS, EOS = 23, 1, 2
SMALL = dict(d_model=32, d_ff=64, heads=4, dropout=0.0, max_len=64)
TOL = 1e-10          # float64, relative: what "identical semantics" means here
BLOCKS = {"attention": GraphAttention, "mean": MeanBlock, "gat": GATBlock}

torch.set_num_threads(1)
needs_dgl = pytest.mark.needs_dgl


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm()
    return float((a - b).norm() / denom) if denom > 0 else float(a.norm())


def random_pairs(k: int = 5, max_src: int = 10, max_tgt: int = 9):
    src = [[random.randrange(3, V) for _ in range(random.randint(1, max_src))] for _ in range(k)]
    tgt = [[random.randrange(3, V) for _ in range(random.randint(0, max_tgt))] for _ in range(k)]
    return src, tgt


def perturbed(model: nn.Module) -> nn.Module:
    """Non-default biases and norms, so that every path carries signal."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def mixed_halting(model):
    """Halting probabilities spread widely: nodes halt after different numbers of steps."""
    for stack in (model.encoder, model.decoder):
        nn.init.normal_(stack.halt.linear.weight, std=1.0)
        nn.init.constant_(stack.halt.linear.bias, 0.0)
    return model


def on_both(model: nn.Module) -> dict[str, nn.Module]:
    """Two copies of one float64 model, one per engine."""
    model = model.double()
    return {name: set_engine(copy.deepcopy(model), name) for name in ("dgl", "torch")}


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = TOL) -> None:
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    err = rel_err(a, b)
    assert err <= tol, f"{what}: relative difference {err:.2e} > {tol:.0e}"


STRUCTURES = {
    "complete": GraphSpec(),
    "window": spec_from_config(config_from_dict({"model": {"structure": dict(
        enc="window", dec="window", cross="window", window=2)}}).model.structure),
    "dilated_global": spec_from_config(config_from_dict({"model": {"structure": dict(
        enc="dilated", dec="global_window", cross="global_window", window=1, dilation=2,
        global_tokens=2)}}).model.structure),
}


# --------------------------------------------------------------------------
# 1. dgl == torch
# --------------------------------------------------------------------------
@needs_dgl
@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block", list(BLOCKS))
def test_every_block_agrees_between_engines(block, kind, structure):
    """out, weights and every gradient of one block (forward/attend path) on one graph."""
    src_lens, tgt_lens = [1, 7, 4, 10], [3, 1, 8, 6]
    graph = getattr(build_graphs(src_lens, tgt_lens, STRUCTURES[structure]), kind)
    attn = perturbed(BLOCKS[block](16, 4).double())
    x_q = torch.randn(graph.num_dst_nodes(), 16, dtype=torch.float64, requires_grad=True)
    x_k = x_q if kind != "cross" else torch.randn(graph.num_src_nodes(), 16, dtype=torch.float64,
                                                  requires_grad=True)
    probe = torch.randn(graph.num_dst_nodes(), 16, dtype=torch.float64)
    wrt = [x_q, *attn.parameters()] + ([x_k] if kind == "cross" else [])
    results = {}
    for name in ("dgl", "torch"):
        with using_engine(attn, name):
            out, w = attn(graph, x_q, None if kind != "cross" else x_k, need_weights=True)
        grads = torch.autograd.grad((out * probe).sum(), wrt, allow_unused=True)
        results[name] = (out, w, grads)
    (out_d, w_d, g_d), (out_t, w_t, g_t) = results["dgl"], results["torch"]
    assert w_t.shape == (graph.num_edges(), 4)
    assert_close(out_t, out_d, "output")
    assert_close(w_t, w_d, "attention weights")
    for i, (a, b) in enumerate(zip(g_t, g_d)):
        assert (a is None) == (b is None), f"gradient {i}"
        if a is not None:
            assert_close(a, b, f"gradient {i}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block", list(BLOCKS))
def test_torch_engines_gather_segment_path_equals_its_csr_path(block, kind, monkeypatch):
    """The torch engine off CPU (CUDA) runs gather / segment softmax / index_add instead of
    the CSR kernels: forced here on CPU, it gives the CSR path's results and gradients."""
    graph = getattr(build_graphs([1, 7, 4, 10], [3, 1, 8, 6], STRUCTURES["dilated_global"]), kind)
    attn = set_engine(perturbed(BLOCKS[block](16, 4).double()), "torch")
    x_q = torch.randn(graph.num_dst_nodes(), 16, dtype=torch.float64, requires_grad=True)
    x_k = torch.randn(graph.num_src_nodes(), 16, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(graph.num_dst_nodes(), 16, dtype=torch.float64)
    results = []
    for csr_ok in (True, False):
        if not csr_ok:
            monkeypatch.setattr(torch_engine.csr, "supports", lambda graph, q: False)
        out, w = attn(graph, x_q, x_k, need_weights=True)
        grads = torch.autograd.grad((out * probe).sum(), [x_q, x_k, *attn.parameters()], allow_unused=True)
        results.append((out, w, *grads))
    for i, (a, b) in enumerate(zip(*results)):
        assert (a is None) == (b is None), f"result {i}"
        if a is not None:
            assert_close(b, a, f"result {i}")


@needs_dgl
@pytest.mark.parametrize("block", list(BLOCKS))
def test_engines_agree_under_bf16_autocast(block):
    """Low precision: both run φ/□ in float32 on CPU; bf16 gradients come back as bf16."""
    graph = build_graphs([5, 3], [4, 6]).cross
    attn = BLOCKS[block](16, 4)
    x_q, x_k = torch.randn(graph.num_dst_nodes(), 16), torch.randn(graph.num_src_nodes(), 16)
    outs = {}
    for name in ("dgl", "torch"):
        with using_engine(attn, name), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[name], _ = attn(graph, x_q, x_k)
    assert outs["torch"].dtype == outs["dgl"].dtype
    assert rel_err(outs["torch"], outs["dgl"]) < 1e-2


def _loss(model, batch):
    logp = model(batch)
    loss = -logp.gather(1, batch.labels[:, None]).sum()
    aux = getattr(model, "aux_loss", None)
    return logp, loss if aux is None else loss + aux


MODELS = {
    "attention": lambda: make_model(V, V, layers=2, **SMALL),
    "mean": lambda: make_model(V, V, layers=2, aggregator="mean", **SMALL),
    "gat": lambda: make_model(V, V, layers=2, aggregator="gat", **SMALL),
    "universal-act": lambda: mixed_halting(make_universal_model(V, V, max_depth=5, **SMALL)),
    "universal-gat": lambda: mixed_halting(make_universal_model(V, V, max_depth=4, aggregator="gat", **SMALL)),
    "post-norm": lambda: make_model(V, V, layers=2, norm_first=False, **SMALL),
}


@needs_dgl
@pytest.mark.parametrize("structure", ["complete", "dilated_global"])
@pytest.mark.parametrize("which", list(MODELS))
def test_whole_model_forward_and_backward_agree_between_engines(which, structure):
    models = on_both(perturbed(MODELS[which]()).train())
    batch = make_batch(*random_pairs(6), sos=SOS, eos=EOS, spec=STRUCTURES[structure])
    out = {}
    for name, model in models.items():
        logp, loss = _loss(model, batch)
        loss.backward()
        out[name] = logp
    assert_close(out["torch"], out["dgl"], "log-probabilities")
    params = dict(models["dgl"].named_parameters())
    compared = 0
    for name, p in models["torch"].named_parameters():
        q = params[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert_close(p.grad, q.grad, f"grad of {name}")
            compared += 1
    assert compared > 0.9 * len(params)


@needs_dgl
@pytest.mark.parametrize("which", ["attention", "universal-act", "gat"])
def test_attention_weights_and_act_statistics_agree_between_engines(which):
    models = {n: m.eval() for n, m in on_both(perturbed(MODELS[which]())).items()}
    batch = make_batch(*random_pairs(6), sos=SOS, eos=EOS, spec=STRUCTURES["window"])
    att, stats = {}, {}
    with torch.no_grad():
        for name, model in models.items():
            _, att[name] = model(batch, return_attention=True)
            stats[name] = getattr(model, "act_stats", None)
    for kind in KINDS:
        assert len(att["torch"][kind]) == len(att["dgl"][kind])
        for layer, (a, b) in enumerate(zip(att["torch"][kind], att["dgl"][kind])):
            assert_close(a, b, f"{kind} weights of layer/step {layer}")
    if which.startswith("universal"):
        for side in ("enc", "dec"):
            s_t, s_d = stats["torch"][side], stats["dgl"][side]
            assert torch.equal(s_t.steps, s_d.steps), side
            assert s_t.nodes == s_d.nodes and s_t.edges == s_d.edges, side
            assert len(set(s_t.steps.tolist())) >= 2, "the test needs nodes halting at different steps"
            assert_close(s_t.remainder, s_d.remainder, f"{side} remainders")
            assert_close(s_t.ponder, s_d.ponder, f"{side} ponder cost")
        assert_close(models["torch"].ponder, models["dgl"].ponder, "mean ponder cost")


@needs_dgl
@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("which", ["attention", "mean", "gat", "universal-act"])
def test_beam_search_agrees_between_engines(which, incremental):
    models = {n: m.eval() for n, m in on_both(perturbed(MODELS[which]())).items()}
    src, _ = random_pairs(5)
    spec = STRUCTURES["dilated_global"]
    hyps = {name: beam_search(model, src, sos=SOS, eos=EOS, beam=3, n_best=3, max_len_b=4, spec=spec,
                              incremental=incremental)
            for name, model in models.items()}
    for h_t, h_d in zip(hyps["torch"], hyps["dgl"]):
        assert [h.tokens for h in h_t] == [h.tokens for h in h_d]
        assert [h.finished for h in h_t] == [h.finished for h in h_d]
        for a, b in zip(h_t, h_d):
            assert abs(a.logprob - b.logprob) <= TOL * abs(b.logprob)
            assert abs(a.score - b.score) <= TOL * abs(b.score)


# --------------------------------------------------------------------------
# 2. the torch engine's primitives, from their definitions
# --------------------------------------------------------------------------
def _unsorted_graph():
    keys, queries = torch.tensor([2, 0, 1, 0, 1, 3, 3]), torch.tensor([1, 0, 1, 1, 0, 2, 0])
    return bipartite(keys, queries, 4, 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_primitives_equal_their_definitions(dtype):
    graph = batch_graph(make_structure("global_window", 1, global_tokens=1), [6, 1, 4], [6, 1, 4])
    ops, src, dst = TorchEngine(), *(t.long() for t in graph.edges())
    n, e, h = graph.num_src_nodes(), graph.num_edges(), 3
    q, k, v = (torch.randn(n, h, 5, dtype=dtype) for _ in range(3))
    scores = torch.randn(e, h, 1, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ops.u_dot_v(graph, k, q), (k[src] * q[dst]).sum(-1, keepdim=True))
    torch.testing.assert_close(ops.u_add_v(graph, k[..., :1], q[..., :1]), k[src, :, :1] + q[dst, :, :1])
    w = ops.edge_softmax(graph, scores)
    for i in range(graph.num_dst_nodes()):
        torch.testing.assert_close(w[dst == i], torch.softmax(scores[dst == i], 0), rtol=tol, atol=tol)
    # the weighted sum: CSR on CPU for per-head and for one-per-edge weights
    ref = torch.zeros(n, h, 5, dtype=dtype).index_add_(0, dst, w * v[src])
    torch.testing.assert_close(ops.u_mul_e_sum(graph, v, w), ref, rtol=tol, atol=tol)
    w1, v2 = scores[:, 0], v.reshape(n, -1)
    ref2 = torch.zeros(n, h * 5, dtype=dtype).index_add_(0, dst, w1 * v2[src])
    torch.testing.assert_close(ops.u_mul_e_sum(graph, v2, w1), ref2, rtol=tol, atol=tol)


def test_torch_weighted_sum_gradients_equal_the_index_add_reference():
    graph = build_graphs([5, 2], [3, 4]).cross
    ops, (src, dst) = TorchEngine(), graph.edges()
    v = torch.randn(graph.num_src_nodes(), 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(graph.num_edges(), 2, 1, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(graph.num_dst_nodes(), 2, 3, dtype=torch.float64)
    fast = torch.autograd.grad((ops.u_mul_e_sum(graph, v, w) * probe).sum(), (v, w))
    slow = torch.autograd.grad((torch.zeros_like(probe).index_add(0, dst, w * v[src]) * probe).sum(), (v, w))
    for a, b in zip(fast, slow):
        assert_close(a, b, "gradient", 1e-12)


def test_a_subclass_redefining_phi_runs_its_own_phi_on_the_torch_engine():
    """GraphAttention declares the fused dot-product kernel; a subclass changing φ loses it."""
    class Uniform(GraphAttention):
        def message(self, graph, q, k):   # every edge scores 0: softmax gives a plain mean
            return super().message(graph, q, k) * 0.0

    assert GraphAttention.fused == "dot_product" and Uniform.fused is None
    graph = build_graphs([4, 3], [2, 2]).enc
    attn = set_engine(Uniform(8, 2), "torch")
    q, k, v = (torch.randn(7, 2, 4) for _ in range(3))
    _, weights = attn.attend(graph, q, k, v, need_weights=True)
    assert torch.allclose(weights[:16], torch.full((16, 2), 0.25))
    assert torch.allclose(weights[16:], torch.full((9, 2), 1 / 3))


# --------------------------------------------------------------------------
# 3. the engine belongs to the model
# --------------------------------------------------------------------------
def test_set_engine_changes_only_the_given_model():
    a, b = make_model(V, V, layers=1, **SMALL), make_model(V, V, layers=1, aggregator="gat", **SMALL)
    assert engines_of(a) == engines_of(b) == {"auto"}
    assert set_engine(a, "torch") is a
    assert engines_of(a) == {"torch"} and engines_of(b) == {"auto"}
    assert a.encoder.layers[0].self_attn.engine == "torch"
    with using_engine(b, "torch"):
        assert engines_of(b) == {"torch"}
    assert engines_of(b) == {"auto"}
    assert "engine='torch'" in repr(a.encoder.layers[0].self_attn)
    # not part of the weights: the checkpoint format is unchanged
    assert set(a.state_dict()) == set(make_model(V, V, layers=1, **SMALL).state_dict())


def test_unknown_engine_names_are_clear_errors():
    with pytest.raises(ValueError, match=r"engine: unknown engine 'cuda'; expected one of auto, dgl, torch"):
        set_engine(make_model(V, V, layers=1, **SMALL), "cuda")
    with pytest.raises(ValueError, match=r"train\.engine: unknown engine 'sparse'"):
        resolve_engine("sparse", "train.engine")
    with pytest.raises(ValueError, match="unknown engine"):
        GraphAttention(8, 2).engine = "fast"
    with pytest.raises(ConfigError, match=r"train\.engine: expected one of 'auto', 'dgl', 'torch'"):
        config_from_dict({"train": {"engine": "sparse"}})


def test_auto_means_dgl_exactly_where_dgl_imports():
    assert resolve_engine("auto") == ("dgl" if _dgl.available() else "torch")
    assert resolve_engine("torch") == "torch"


def test_train_kernels_still_works_with_a_deprecation_warning():
    with pytest.warns(ConfigDeprecationWarning, match=r"x\.yaml: train\.kernels is deprecated; write "
                                                      r"train\.engine: 'torch'"):
        cfg = config_from_dict({"train": {"kernels": "sparse"}}, "x.yaml")
    assert cfg.train.engine == "torch" and cfg.train.kernels is None
    # 'dgl' was the default, written into every config saved before train.engine
    with pytest.warns(ConfigDeprecationWarning, match="'dgl' was the default"):
        cfg = config_from_dict({"train": {"kernels": "dgl"}})
    assert cfg.train.engine == "auto" and resolve_engine(cfg.train.engine) == resolve_engine("auto")
    with pytest.warns(ConfigDeprecationWarning, match=r"train\.engine: 'torch' is set and wins"):
        cfg = config_from_dict({"train": {"kernels": "dgl", "engine": "torch"}})
    assert cfg.train.engine == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_from_dict({"train": {"engine": "torch"}}).train.engine == "torch"


def _tiny_config(engine: str, **train):
    return config_from_dict({
        "model": dict(layers=1, d_model=16, d_ff=32, heads=2, dropout=0.0, share_embeddings=True, max_len=32),
        "data": dict(task="copy", train_size=16, valid_size=4, test_size=4, batch_size=8, length_mean=4.0,
                     length_std=1.0, alphabet="abcd"),
        "optim": dict(warmup=4), "train": dict(max_epochs=1, seed=3, threads=1, engine=engine, **train),
        "eval": dict(max_len_b=2),
    })


def test_trainer_and_load_trained_set_the_engine_on_their_model_only(tmp_path):
    from transformer_graph.experiment import load_trained
    from transformer_graph.train.trainer import Trainer

    bystander = make_model(V, V, layers=1, **SMALL)
    trainer = Trainer(_tiny_config("torch"), tmp_path / "run", quiet=True)
    assert engines_of(trainer.model) == {"torch"}
    trainer.fit()
    model, cfg, _, _ = load_trained(tmp_path / "run" / "last.pt")
    assert cfg.train.engine == "torch" and engines_of(model) == {"torch"}
    assert engines_of(load_trained(tmp_path / "run" / "last.pt", engine="auto")[0]) == {"auto"}
    assert engines_of(bystander) == {"auto"}, "loading a checkpoint changed another model"


# --------------------------------------------------------------------------
# 4. without DGL
# --------------------------------------------------------------------------
def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_everything_runs_without_dgl_on_the_torch_engine():
    proc = _python("""
        import sys, warnings
        sys.modules["dgl"] = None          # as on a machine where DGL cannot be imported
        import torch
        import transformer_graph as tg
        from transformer_graph.message_passing import set_engine
        from transformer_graph.message_passing.engines import resolve_engine
        from transformer_graph.nn.universal import make_universal_model
        assert resolve_engine("auto") == "torch"
        batch = tg.make_batch([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], sos=2, eos=3)
        assert batch.graphs.num_edges() == {"enc": 13, "dec": 16, "cross": 17}
        for agg in ("attention", "mean", "gat"):
            m = tg.make_model(20, 20, layers=2, d_model=16, d_ff=32, heads=2, aggregator=agg)
            m(batch).sum().backward()
            assert m.encoder.layers[0].self_attn.in_proj.weight.grad is not None if agg == "attention" else True
            m.eval()
            out = tg.beam_search(m, [[5, 6, 7], [8, 9]], sos=2, eos=3, beam=3)
            assert len(out) == 2 and out[0][0].tokens is not None
        u = make_universal_model(20, 20, d_model=16, d_ff=32, heads=2, max_depth=3)
        logp = u(batch)
        (logp.sum() + u.aux_loss).backward()
        tg.greedy(u.eval(), [[5, 6]], sos=2, eos=3)
        try:
            set_engine(m, "dgl", "train.engine")
        except ValueError as err:
            print("ERROR", err)
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert ("ERROR train.engine: 'dgl' needs DGL, which cannot be imported here" in proc.stdout
            and "pip install 'transformer_graph[dgl]'" in proc.stdout), proc.stdout


def test_a_trainer_asked_for_dgl_without_dgl_fails_before_loading_data(tmp_path):
    proc = _python(f"""
        import sys
        sys.modules["dgl"] = None
        from transformer_graph.config import config_from_dict
        from transformer_graph.train.trainer import Trainer
        cfg = config_from_dict({{"train": {{"engine": "dgl"}}, "data": {{"task": "multi30k",
                                "path": {str(tmp_path / 'nowhere')!r}}}}})
        try:
            Trainer(cfg, {str(tmp_path / 'run')!r}, quiet=True)
        except ValueError as err:
            print("ERROR", err)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR train.engine: 'dgl' needs DGL" in proc.stdout, proc.stdout


@needs_dgl
def test_the_torch_engine_never_imports_dgl():
    proc = _python("""
        import sys
        import transformer_graph as tg
        from transformer_graph.message_passing import set_engine
        assert "dgl" not in sys.modules, "importing the package imported DGL"
        m = set_engine(tg.make_model(20, 20, layers=1, d_model=16, d_ff=32, heads=2), "torch")
        batch = tg.make_batch([[5, 6, 7]], [[10, 11]], sos=2, eos=3)
        m(batch).sum().backward()
        tg.beam_search(m.eval(), [[5, 6, 7]], sos=2, eos=3, beam=2)
        assert "dgl" not in sys.modules, "the torch engine imported DGL"
        m.encoder.layers[0].self_attn.engine = "dgl"
        m(batch)
        assert "dgl" in sys.modules
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


# --------------------------------------------------------------------------
# 5. a user's graphs: DGL graphs and edge indices
# --------------------------------------------------------------------------
def _shuffled_edge_index(graph: AttentionGraph):
    perm = torch.randperm(graph.num_edges())
    src, dst = graph.edges()
    return torch.stack([src[perm], dst[perm]]), perm


@pytest.mark.parametrize("kind", ["enc", "cross"])
@pytest.mark.parametrize("block", list(BLOCKS))
def test_an_edge_index_in_any_order_gives_the_same_attention(block, kind, engine):
    graph = getattr(build_graphs([4, 6], [3, 5]), kind)
    attn = set_engine(BLOCKS[block](16, 4).double(), engine)
    x_q = torch.randn(graph.num_dst_nodes(), 16, dtype=torch.float64)
    x_k = None if kind == "enc" else torch.randn(graph.num_src_nodes(), 16, dtype=torch.float64)
    edge_index, perm = _shuffled_edge_index(graph)
    ref, w_ref = attn(graph, x_q, x_k, need_weights=True)
    out, w = attn(edge_index, x_q, x_k, need_weights=True)
    assert_close(out, ref, "output")
    assert_close(w, w_ref[perm], "weights, in the edge index's own order")


@needs_dgl
@pytest.mark.parametrize("block", list(BLOCKS))
def test_a_users_dgl_graph_homogeneous_or_bipartite_gives_the_same_attention(block, engine):
    dgl = _dgl.load()[0]
    attn = set_engine(BLOCKS[block](16, 4).double(), engine)
    # homogeneous, edges in a random order (a self-attention graph of 9 nodes)
    own = build_graphs([4, 5], [1, 1]).enc
    edge_index, perm = _shuffled_edge_index(own)
    g = dgl.graph((edge_index[0], edge_index[1]), num_nodes=own.num_dst_nodes())
    x = torch.randn(own.num_dst_nodes(), 16, dtype=torch.float64)
    ref, w_ref = attn(own, x, need_weights=True)
    out, w = attn(g, x, need_weights=True)
    assert_close(out, ref, "output (homogeneous)")
    assert_close(w, w_ref[perm], "weights (homogeneous), in the DGL graph's edge order")
    # bipartite: source tokens -> target tokens
    own = build_graphs([4, 5], [3, 2]).cross
    edge_index, perm = _shuffled_edge_index(own)
    g = dgl.heterograph({("word", "to", "slot"): (edge_index[0], edge_index[1])},
                        num_nodes_dict={"word": own.num_src_nodes(), "slot": own.num_dst_nodes()})
    x_q = torch.randn(own.num_dst_nodes(), 16, dtype=torch.float64)
    x_k = torch.randn(own.num_src_nodes(), 16, dtype=torch.float64)
    ref, w_ref = attn(own, x_q, x_k, need_weights=True)
    out, w = attn(g, x_q, x_k, need_weights=True)
    assert_close(out, ref, "output (bipartite)")
    assert_close(w, w_ref[perm], "weights (bipartite)")


@needs_dgl
def test_a_users_dgl_graph_with_a_query_node_without_in_edges_is_a_clear_error():
    dgl = _dgl.load()[0]
    attn = GraphAttention(8, 2)
    g = dgl.graph((torch.tensor([0, 1]), torch.tensor([1, 1])), num_nodes=3)  # nodes 0 and 2 receive nothing
    with pytest.raises(ValueError, match=r"graph: 2 query node\(s\) have no incoming edge \(first: node 0\).*"
                                         r"dgl\.add_self_loop"):
        attn(g, torch.randn(3, 8))
    assert attn(dgl.add_self_loop(g), torch.randn(3, 8))[0].shape == (3, 8)
    with pytest.raises(ValueError, match=r"graph: the homogeneous DGL graph has 3 key .* but the features have "
                                         r"4 key rows"):
        attn(dgl.add_self_loop(g), torch.randn(4, 8))
    two = dgl.heterograph({("a", "x", "b"): ([0], [0]), ("b", "y", "a"): ([0], [0])})
    with pytest.raises(ValueError, match=r"graph: a DGL graph with 2 relations.*pass one relation"):
        attn(two, torch.randn(1, 8))


@pytest.mark.parametrize("edge_index,match", [
    (torch.tensor([[0.0, 1.0], [0.0, 1.0]]), r"graph: an edge index must be an integer tensor \(torch\.int64.*"
                                             r"got dtype torch\.float32; convert it with graph\.long\(\)"),
    (torch.tensor([[True], [True]]), r"integer tensor .*torch\.bool"),
    (torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]]), r"graph: an edge index must have shape \(2, num_edges\).*"
                                                      r"got \(3, 3\)"),
    (torch.tensor([[0, 0], [1, 1], [2, 2]]), r"shape \(2, num_edges\).*got \(3, 2\); transpose it with \.t\(\)"),
    (torch.tensor([0, 1, 2]), r"shape \(2, num_edges\).*got \(3,\)"),
    (torch.tensor([[0, 1, 3], [0, 1, 2]]), r"graph: edge index row 0 \(key nodes\) holds 3, outside \[0, 3\)"),
    (torch.tensor([[0, 1, 2], [0, -1, 2]]), r"graph: edge index row 1 \(query nodes\) holds -1, outside \[0, 3\)"),
    (torch.tensor([[0, 1], [0, 1]]), r"graph: 1 query node\(s\) have no incoming edge \(first: node 2\).*"
                                     r"self-loops"),
])
def test_bad_edge_indices_are_clear_errors(edge_index, match):
    with pytest.raises(ValueError, match=match):
        GraphAttention(8, 2)(edge_index, torch.randn(3, 8))


def test_a_graph_on_another_device_than_the_features_is_a_clear_error():
    attn = GraphAttention(8, 2)
    graph = build_graphs([3], [2]).enc
    other = torch.device("meta")  # any device the features are not on
    with pytest.raises(ValueError, match=r"graph: the graph is on meta but the node features are on cpu; "
                                         r"move one to the other \(e\.g\. graph\.to\('cpu'\)\)"):
        attn(graph.to(other), torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"graph: the graph is on meta but the node features are on cpu"):
        attn(torch.tensor([[0, 1, 2], [0, 1, 2]], device=other), torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"graph: the graph has 3 key .* but the features have 4 key rows"):
        attn(graph, torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"graph: expected an AttentionGraph .*got list"):
        attn([[0, 1], [0, 1]], torch.randn(2, 8))


# --------------------------------------------------------------------------
# 6. the graph type
# --------------------------------------------------------------------------
def test_attention_graph_keeps_edges_in_query_order_with_csr_row_pointers():
    graph = _unsorted_graph()
    src, dst = graph.edges()
    assert src.dtype == dst.dtype == torch.int64 and graph.idtype == torch.int64
    assert dst.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert src.tolist() == [0, 1, 3, 2, 1, 0, 3]            # stable: given order within a query
    assert graph.indptr.tolist() == [0, 3, 6, 7]
    assert graph.in_degrees().tolist() == [3, 3, 1]
    assert (graph.num_src_nodes(), graph.num_dst_nodes(), graph.num_edges()) == (4, 3, 7)
    assert graph.num_nodes("key") == 4 and graph.num_nodes("query") == 3 and graph.num_nodes() == 7
    assert graph.to("cpu") is graph
    assert "num_edges=7" in repr(graph)
    with pytest.raises(ValueError, match=r"ntype: expected one of"):
        graph.num_nodes("token")


def test_graphs_of_a_batch_are_attention_graphs_with_the_readme_edge_counts():
    batch = make_batch([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], sos=2, eos=3)
    assert all(isinstance(getattr(batch.graphs, k), AttentionGraph) for k in KINDS)
    assert batch.graphs.num_edges() == {"enc": 13, "dec": 16, "cross": 17}
    assert batch.to("cpu").graphs.enc is batch.graphs.enc


def test_in_subgraph_keeps_the_edges_into_the_active_queries():
    graph = batch_graph(get_structure("causal"), [4, 3], [4, 3])
    active = torch.tensor([1, 3, 4, 6])
    sub, eids = active_subgraph(graph, active)
    src, dst = graph.edges()
    assert sub.num_src_nodes() == graph.num_src_nodes() and sub.num_dst_nodes() == 4
    assert torch.equal(sub.edges()[0], src[eids]) and torch.equal(active[sub.edges()[1]], dst[eids])
    assert sub.num_edges() == int(graph.in_degrees()[active].sum())
    assert torch.equal(sub.in_degrees(), graph.in_degrees()[active])
    assert active_subgraph(graph, None) == (graph, None)
    assert active_subgraph(graph, torch.arange(7)) == (graph, None)


@needs_dgl
def test_the_dgl_view_is_derived_cached_and_numbers_edges_alike():
    graph = _unsorted_graph()
    assert "dgl" not in graph.derived
    view = graph.dgl()
    assert graph.dgl() is view
    src, dst = view.edges()
    assert torch.equal(src.long(), graph.src) and torch.equal(dst.long(), graph.dst)
    assert (view.num_src_nodes(), view.num_dst_nodes()) == (4, 3)


def test_old_block_names_remain_importable():
    assert MeanAggregation is MeanBlock and GATAggregation is GATBlock
    assert get_aggregator("mean") is MeanBlock and get_aggregator("gat") is GATBlock
    with pytest.raises(ValueError, match=r"d_model=10 must be divisible by heads=3"):
        MeanBlock(10, 3)
    with pytest.raises(ValueError, match=r"d_model=8 must be divisible by heads=0"):
        GATBlock(8, 0)
