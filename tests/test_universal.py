"""The Universal Transformer with per-node ACT (transformer_graph.nn.universal / act).

1. Without halting it is exactly a standard stack whose layers share one layer's
   weights (and, with coordinates re-added every step, a reference loop over them).
2. With halting it equals a masked all-nodes reference of ACT, but runs only the
   active nodes and the edges into them; halted nodes freeze.
3. Gradients reach the halting units; the ponder loss is part of the trainer's loss.
4. Greedy/beam decoding work, and incremental decoding equals full recomputation.
5. Bad settings give clear errors; per-epoch ACT statistics and the step plot exist.
"""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from transformer_graph.nn.act import ACTStats
from transformer_graph.data.batch import make_batch
from transformer_graph.config import ConfigError, config_from_dict
from transformer_graph.data.datasets import collate
from transformer_graph.inference.decoding import _IncrementalState, _RecomputeState, _Source, beam_search, greedy
from transformer_graph.graphs.build import GraphSpec
from transformer_graph.message_passing import set_engine
from transformer_graph.nn.model import make_model
from transformer_graph.experiment import build_model
from transformer_graph.nn.universal import UniversalConfig, UniversalTransformer, make_universal_model

V = 19
SOS, EOS = 1, 2
SMALL = dict(d_model=32, d_ff=64, heads=4, dropout=0.0, max_len=64)


def random_batch(k: int = 5, lo: int = 1, hi: int = 9):
    lengths = [lo, hi] + [random.randint(lo, hi) for _ in range(k - 2)]
    src = [[random.randint(3, V - 1) for _ in range(n)] for n in lengths]
    tgt = [[random.randint(3, V - 1) for _ in range(random.randint(lo, hi))] for _ in src]
    return make_batch(src, tgt, sos=SOS, eos=EOS), src


def mixed_halting(model: UniversalTransformer, bias: float = 0.0, std: float = 1.0) -> UniversalTransformer:
    """Spread halting probabilities widely so nodes halt after different numbers of steps."""
    for stack in (model.encoder, model.decoder):
        torch.nn.init.normal_(stack.halt.linear.weight, std=std)
        torch.nn.init.constant_(stack.halt.linear.bias, bias)
    return model


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def timestep_table(depth: int, d: int) -> torch.Tensor:
    """Sinusoids over the step index, written out independently of the model."""
    t = torch.arange(depth, dtype=torch.float64)[:, None]
    i = torch.arange(0, d, 2, dtype=torch.float64)[None, :]
    angle = t / torch.pow(10000.0, i / d)
    table = torch.zeros(depth, d, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return table.float()


def shared_standard(uni: UniversalTransformer):
    """A standard GraphTransformer with max_depth layers, every one a copy of the shared layer."""
    std = make_model(V, V, layers=uni.max_depth, **SMALL)
    state = {}
    for key, value in uni.state_dict().items():
        for stack in ("encoder", "decoder"):
            if key.startswith(f"{stack}.layer."):
                rest = key[len(f"{stack}.layer."):]
                state.update({f"{stack}.layers.{i}.{rest}": value for i in range(uni.max_depth)})
                break
        else:
            state[key] = value
    std.load_state_dict(state, strict=True)
    return std.eval()


# --------------------------------------------------------------------------
# 1. No halting: a weight-shared standard stack
# --------------------------------------------------------------------------
def test_without_halting_equals_standard_model_with_shared_layers():
    uni = make_universal_model(V, V, max_depth=3, halting=False, timestep_encoding=False,
                               position_every_step=False, **SMALL).eval()
    assert uni.encoder.halt is None and not any("halt" in k for k in uni.state_dict())
    std = shared_standard(uni)
    batch, _ = random_batch()
    logp_u, att_u = uni(batch, return_attention=True)
    logp_s, att_s = std(batch, return_attention=True)
    assert rel_err(logp_u, logp_s) < 1e-5
    for kind in ("enc", "dec", "cross"):
        assert len(att_u[kind]) == 3
        for wu, ws in zip(att_u[kind], att_s[kind]):
            assert rel_err(wu, ws) < 1e-5
    assert uni.aux_loss is None and uni.ponder is None
    assert uni.act_stats["enc"].nodes == [len(batch.src)] * 3
    assert uni.act_stats["dec"].steps.tolist() == [3] * len(batch.tgt)


def test_without_halting_equals_reference_loop_with_position_and_timestep_every_step():
    uni = make_universal_model(V, V, max_depth=4, halting=False, **SMALL).eval()
    std = shared_standard(uni)
    batch, _ = random_batch()
    g = batch.graphs
    T = timestep_table(4, SMALL["d_model"])
    with torch.no_grad():
        x, p = std.src_embed(batch.src), std.pos(batch.src_pos)
        for t, layer in enumerate(std.encoder.layers):
            x, _ = layer(g.enc, x + p + T[t])
        memory = std.encoder.norm(x)
        y, p = std.tgt_embed(batch.tgt), std.pos(batch.tgt_pos)
        for t, layer in enumerate(std.decoder.layers):
            y, _ = layer(g.dec, g.cross, y + p + T[t], memory)
        expected = std.log_probs(std.decoder.norm(y))
        assert rel_err(uni(batch), expected) < 1e-5


# --------------------------------------------------------------------------
# 2. ACT: semantics, frozen halted nodes, sparser graphs
# --------------------------------------------------------------------------
def masked_act_encoder(model: UniversalTransformer, batch):
    """Reference ACT on the full graph with masks: every node computes every step;
    halted nodes' states, keys and values are frozen with torch.where."""
    enc = model.encoder
    layer, g = enc.layer, batch.graphs.enc
    attn = layer.self_attn
    x = model.src_embed(batch.src)
    p_enc = model.pos(batch.src_pos)
    n = x.shape[0]
    active = torch.ones(n, dtype=torch.bool)
    sum_p, rem = torch.zeros(n), torch.ones(n)
    out = torch.zeros_like(x)
    k_old = v_old = None
    steps = torch.zeros(n, dtype=torch.long)
    T = timestep_table(enc.max_depth, x.shape[1])
    for t in range(enc.max_depth):
        h = x + p_enc + T[t]
        q, k, v = attn.project_qkv(layer.res_attn.inp(h))
        if k_old is not None:
            k = torch.where(active[:, None, None], k, k_old)
            v = torch.where(active[:, None, None], v, v_old)
        k_old, v_old = k, v
        a, _ = attn.attend(g, q, k, v)
        y = layer.update(layer.res_attn.out(h, a))
        p = enc.halt(y)
        new_sum = sum_p + p
        go_on = active & (new_sum < enc.threshold) & (t + 1 < enc.max_depth)
        halting_now = active & ~go_on
        weight = torch.where(go_on, p, torch.where(halting_now, rem, torch.zeros(())))
        out = out + weight[:, None] * y
        rem = torch.where(go_on, 1 - new_sum, rem)
        sum_p = torch.where(active, new_sum, sum_p)
        steps = steps + active.long()
        x = torch.where(active[:, None], y, x)
        active = go_on
        if not active.any():
            break
    return enc.norm(out), steps, rem


def test_act_equals_masked_full_graph_reference(engine):
    model = set_engine(mixed_halting(make_universal_model(V, V, max_depth=6, **SMALL)).eval(), engine)
    batch, _ = random_batch(k=6)
    with torch.no_grad():
        memory, _ = model.encode(batch)
        ref, steps, rem = masked_act_encoder(model, batch)
    stats = model.encoder.last_stats
    assert len(set(stats.steps.tolist())) >= 3, "the test needs nodes halting at different steps"
    assert torch.equal(stats.steps, steps)
    assert rel_err(stats.remainder, rem) < 1e-5
    assert rel_err(memory, ref) < 1e-5


def test_halted_nodes_accumulated_state_is_frozen():
    model = mixed_halting(make_universal_model(V, V, max_depth=6, **SMALL)).eval()
    model.encoder.record_states = model.decoder.record_states = True
    batch, _ = random_batch(k=6)
    with torch.no_grad():
        model(batch)
    for side in ("enc", "dec"):
        stats: ACTStats = model.act_stats[side]
        states = stats.states
        assert len(states) == len(stats.nodes) >= 2
        for node, s in enumerate(stats.steps.tolist()):
            for t in range(s, len(states)):  # after its last step (index s - 1) nothing changes
                assert torch.equal(states[t][node], states[s - 1][node]), (side, node, s, t)
            for t in range(1, s):  # while active, every step adds p_t * y_t
                assert not torch.equal(states[t][node], states[t - 1][node])


def halve_at_step_one(model: UniversalTransformer, batch) -> None:
    """Set each halting bias so that about half of the nodes reach the threshold at step 1."""
    first = {}

    def keep_first(name):
        def hook(mod, inp, out):
            first.setdefault(name, out.detach().squeeze(-1) - mod.bias)
        return hook

    hooks = [stack.halt.linear.register_forward_hook(keep_first(name))
             for name, stack in (("enc", model.encoder), ("dec", model.decoder))]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    for name, stack in (("enc", model.encoder), ("dec", model.decoder)):
        logit_needed = math.log(stack.threshold / (1 - stack.threshold))
        torch.nn.init.constant_(stack.halt.linear.bias, logit_needed - float(first[name].median()))


def test_halted_nodes_take_no_part_in_later_message_passing():
    model = mixed_halting(make_universal_model(V, V, max_depth=5, **SMALL)).eval()
    batch, _ = random_batch(k=8)
    halve_at_step_one(model, batch)
    seen = []
    handle = model.encoder.layer.register_forward_hook(lambda mod, inp, out: seen.append(inp[1].shape[0]))
    with torch.no_grad():
        model(batch)
    handle.remove()
    g = batch.graphs
    for side, kinds in (("enc", ("enc",)), ("dec", ("dec", "cross"))):
        stats = model.act_stats[side]
        n = stats.steps.numel()
        halted_at_1 = int((stats.steps == 1).sum())
        assert 0 < halted_at_1 < n, f"{side}: the test needs some but not all nodes halting at step 1"
        for t, entering in enumerate(stats.nodes):
            active = stats.steps > t
            assert entering == int(active.sum())
            for kind in kinds:
                in_deg = getattr(g, kind).in_degrees().long()
                assert stats.edges[kind][t] == int(in_deg[active].sum())
        for kind in kinds:
            assert stats.edges[kind][0] == getattr(g, kind).num_edges()
            assert stats.edges[kind][1] < getattr(g, kind).num_edges()
    # The shared layer only ever sees the active nodes' rows.
    assert seen == model.act_stats["enc"].nodes


def test_attention_weights_line_up_with_full_graph_edges():
    model = mixed_halting(make_universal_model(V, V, max_depth=5, **SMALL)).eval()
    batch, _ = random_batch(k=6)
    with torch.no_grad():
        _, att = model(batch, return_attention=True)
    for side, kind in (("enc", "enc"), ("dec", "dec"), ("dec", "cross")):
        graph = getattr(batch.graphs, kind)
        _, queries = (e.long() for e in graph.edges())
        steps = model.act_stats[side].steps
        assert len(att[kind]) == len(model.act_stats[side].nodes)
        for t, w in enumerate(att[kind]):
            assert w.shape == (graph.num_edges(), SMALL["heads"])
            per_query = torch.zeros(graph.num_nodes("query"), SMALL["heads"]).index_add_(0, queries, w)
            active = steps > t
            assert torch.allclose(per_query[active], torch.ones(()), atol=1e-5)
            assert torch.all(per_query[~active] == 0)


# --------------------------------------------------------------------------
# 3. Gradients and the ponder loss
# --------------------------------------------------------------------------
def test_gradients_reach_the_halting_units_from_task_and_ponder_losses():
    model = make_universal_model(V, V, max_depth=4, **SMALL)
    batch, _ = random_batch()
    logp = model(batch)
    nll = -logp.gather(1, batch.labels[:, None]).mean()
    assert model.ponder is not None and model.ponder.requires_grad
    assert torch.allclose(model.aux_loss, 0.01 * model.ponder)
    # Ponder cost = mean over all nodes of N + R.
    per_node = torch.cat([model.act_stats[s].steps + model.act_stats[s].remainder for s in ("enc", "dec")])
    assert torch.allclose(model.ponder, per_node.mean())
    for loss in (nll, model.ponder):
        model.zero_grad()
        loss.backward(retain_graph=True)
        for stack in (model.encoder, model.decoder):
            for p in stack.halt.parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def tiny_config(tmp_path, **model):
    return config_from_dict({
        "model": {"kind": "universal", "d_model": 16, "d_ff": 32, "heads": 2, "dropout": 0.0,
                  "max_depth": 4, "share_embeddings": True, **model},
        "data": {"task": "sort", "train_size": 48, "valid_size": 8, "test_size": 8, "batch_size": 16,
                 "length_mean": 5.0, "length_std": 1.0, "alphabet": "abcdef"},
        "optim": {"warmup": 10},
        "train": {"max_epochs": 1, "threads": 1, "log_every": 1},
        "eval": {"max_len_b": 2},
    })


def test_ponder_loss_is_part_of_the_trainer_loss(tmp_path):
    from transformer_graph.train.trainer import Trainer

    tr = Trainer(tiny_config(tmp_path, ponder_weight=0.5), tmp_path / "run", quiet=True)
    tr.optimizer.step = lambda *a, **k: None  # keep the weights: compare gradients only
    tr.scheduler.step = lambda *a, **k: None
    model, train, pad = tr.model, tr.exp.splits["train"], tr.exp.tgt_vocab.pad
    assert isinstance(model, UniversalTransformer) and model.ponder_weight == 0.5
    group = [list(range(16))]
    halt_params = dict(model.encoder.halt.named_parameters(prefix="enc")) | \
        dict(model.decoder.halt.named_parameters(prefix="dec"))

    def grads(weight):
        model.ponder_weight = weight
        tr.train_step(train, group, pad, {k: 0 for k in ("loss", "nll", "correct", "tokens", "nodes")})
        return {k: p.grad.clone() for k, p in halt_params.items()}

    with_ponder, without = grads(0.5), grads(0.0)
    model.zero_grad()
    model(collate(train, group[0], tr.exp.spec))
    (0.5 * model.ponder).backward()
    for k, p in halt_params.items():
        assert p.grad.abs().sum() > 0
        assert torch.allclose(with_ponder[k] - without[k], p.grad, atol=1e-6, rtol=1e-4), k


# --------------------------------------------------------------------------
# 4. Decoding
# --------------------------------------------------------------------------
@pytest.mark.parametrize("halting", [True, False])
def test_incremental_decoding_equals_recompute_and_teacher_forcing(halting, engine):
    model = set_engine(make_universal_model(V, V, max_depth=5, halting=halting, **SMALL), engine)
    batch, src = random_batch(k=4)
    if halting:
        halve_at_step_one(mixed_halting(model), batch)
    model.eval()
    spec = GraphSpec()
    with torch.no_grad():
        full = model(batch)
        source = _Source(model, src, spec, "cpu")
        inc, rec = _IncrementalState(model, source, spec), _RecomputeState(model, source, spec)
        assert len(inc.cache) == 5  # one key/value cache per depth step
        sent = torch.arange(len(src))
        # Feed every sentence the same forced prefix; compare with a teacher-forced batch.
        prefix = [SOS] + [random.randint(3, V - 1) for _ in range(5)]
        forced = make_batch(src, [prefix[1:]] * len(src), sos=SOS, eos=EOS)
        teacher = model(forced).view(len(src), len(prefix), -1)
        depth_seen = set()
        for t, tok in enumerate(prefix):
            tokens = torch.full((len(src),), tok, dtype=torch.int64)
            a, b = inc.step(tokens, t, sent), rec.step(tokens, t, sent)
            depth_seen.update(model.decoder.last_stats.steps.tolist())
            assert rel_err(a, b) < 1e-5 and rel_err(a, teacher[:, t]) < 1e-5, t
            assert all(c[0].shape[1] == t + 1 for c in inc.cache)
        if halting:
            assert len(depth_seen) >= 2
    assert full.shape[0] == batch.tgt.numel()
    for beam in (1, 3):
        a = beam_search(model, src, sos=SOS, eos=EOS, beam=beam, n_best=beam, max_len_b=4)
        b = beam_search(model, src, sos=SOS, eos=EOS, beam=beam, n_best=beam, max_len_b=4, incremental=False)
        assert [[h.tokens for h in hs] for hs in a] == [[h.tokens for h in hs] for hs in b]
        for hs_a, hs_b in zip(a, b):
            for ha, hb in zip(hs_a, hs_b):
                assert math.isclose(ha.logprob, hb.logprob, rel_tol=1e-5, abs_tol=1e-5)
    assert greedy(model, src, sos=SOS, eos=EOS, max_len_b=4) == [hs[0].tokens for hs in
                                                                  beam_search(model, src, sos=SOS, eos=EOS,
                                                                              beam=1, alpha=0.0, max_len_b=4)]


# --------------------------------------------------------------------------
# 5. Errors, config, statistics, plot
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, key", [
    ({"max_depth": 0}, "max_depth"), ({"max_depth": 2.5}, "max_depth"),
    ({"act_threshold": 0.0}, "act_threshold"), ({"act_threshold": 1.01}, "act_threshold"),
    ({"act_threshold": -0.5}, "act_threshold"), ({"ponder_weight": -1.0}, "ponder_weight"),
])
def test_bad_act_settings_raise_clear_errors(kwargs, key):
    with pytest.raises(ValueError, match=key):
        make_universal_model(V, V, **SMALL, **kwargs)


@pytest.mark.parametrize("override, key", [
    ("model.max_depth=0", "model.max_depth"), ("model.act_threshold=0", "model.act_threshold"),
    ("model.act_threshold=1.5", "model.act_threshold"),
])
def test_bad_act_config_raises_config_error(override, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"model": {"kind": "universal"}}, overrides=[override])


def test_threshold_one_is_allowed_and_wrong_inputs_are_explained():
    model = make_universal_model(V, V, act_threshold=1.0, max_depth=3, **SMALL)
    batch, _ = random_batch()
    model(batch)
    assert model.act_stats["enc"].steps.max() <= 3
    with pytest.raises(ValueError, match="embed_src/embed_tgt"):
        model.encoder(batch.graphs.enc, torch.zeros(batch.src.numel(), SMALL["d_model"]))


def test_training_logs_act_statistics_and_plot_shows_steps(tmp_path):
    from transformer_graph.cli.plot_act import run as plot_main
    from transformer_graph.viz.act import act_history
    from transformer_graph.train.trainer import Trainer

    run = tmp_path / "run"
    summary = Trainer(tiny_config(tmp_path), run, quiet=True).fit()
    assert summary["epochs"] == 1
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    act = [e for e in events if e["event"] == "act"]
    assert len(act) == 1 and act == act_history(run / "metrics.jsonl")
    a = act[0]
    for side in ("enc", "dec"):
        fractions = [a[f"{side}_enter_{k}"] for k in range(1, 5)]
        assert fractions[0] == 1.0
        assert all(0.0 <= y <= x for x, y in zip(fractions, fractions[1:]))
        assert 1.0 <= a[f"{side}_mean_steps"] <= 4.0
        assert math.isclose(a[f"{side}_mean_steps"], sum(fractions), rel_tol=1e-9)
    assert a["ponder"] > 1.0
    out = tmp_path / "act.png"
    result = plot_main(["--checkpoint", str(run / "best.pt"), "--out", str(out), "--limit", "8"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["mean_steps"]) == {"enc", "dec"} and result["epochs_in_history"] == 1
    assert all(1.0 <= m <= 4.0 for m in result["mean_steps"].values())


def test_history_legend_names_every_step_once_whichever_side_reaches_it():
    import numpy as np

    from transformer_graph.viz.act import step_figure

    tables = {"enc": np.array([[5, 0, 0, 0]]), "dec": np.array([[1, 2, 2, 0]])}
    # The encoder stops at step 2; only the decoder reaches step 3 (the sort run's shape).
    history = [{"epoch": 0, "enc_enter_2": 0.5, "enc_enter_3": 0.0, "enc_enter_4": 0.0,
                "dec_enter_2": 0.8, "dec_enter_3": 0.4, "dec_enter_4": 0.0}]
    fig = step_figure(tables, history)
    (ax,) = [a for a in fig.axes if a.get_title().startswith("computation during training")]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["step 2", "step 3"]


def test_universal_model_from_its_config_takes_only_universal_options():
    config = UniversalConfig(V, V, max_depth=3, halting=False, **SMALL)
    torch.manual_seed(2)
    a = UniversalTransformer(config)
    torch.manual_seed(2)
    b = make_universal_model(V, V, max_depth=3, halting=False, **SMALL)
    assert a.config is config and b.config == config and b.config["kind"] == "universal"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert list(a.state_dict()) == list(b.state_dict())
    assert not hasattr(config, "layers")
    cfg = config_from_dict({"model": {"kind": "universal", "layers": 4, "max_depth": 3, "d_model": 32,
                                      "d_ff": 64, "heads": 4}})
    model = build_model(cfg.model, V, V)
    assert isinstance(model, UniversalTransformer) and model.max_depth == 3 and model.encoder.halting
    with pytest.raises(TypeError):
        UniversalConfig(V, V, layers=2, **SMALL)  # layers are the standard model's
