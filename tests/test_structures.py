"""Pluggable attention structures (window, dilated, global+window, user functions) and
aggregators (attention, mean = fully connected GCN, gat).

1. A window wider than every sentence is the complete graph: whole-model outputs equal.
2. mean weighs each in-edge exactly 1/in-degree; gat weights are GAT's formula and sum to 1.
3. Causal structures never connect j -> i with j > i; edge counts match closed formulas;
   the edges into a position do not depend on how many queries were asked for.
4. User-supplied structures with invalid edges get clear errors; bad config names name the key.
5. Incremental greedy/beam decoding equals full recomputation for every structure/aggregator.
6. Training works (and learns) with every aggregator; the standard model's weights keep their names.
"""
from __future__ import annotations

import math
import random
import sys

import pytest
import torch
from torch import nn

from transformer_graph.message_passing.aggregators import GATAggregation, MeanAggregation, get_aggregator
from transformer_graph.message_passing import set_engine
from transformer_graph.message_passing.attention import GraphAttention
from transformer_graph.data.batch import make_batch
from transformer_graph.config import ConfigError, config_from_dict
from transformer_graph.inference.decoding import beam_search
from transformer_graph.experiment import build_model, graph_spec
from transformer_graph.graphs.build import (GraphSpec, batch_graph, build_graphs, get_structure, pair_edges,
                                      register_structure)
from transformer_graph.nn.model import make_model
from transformer_graph.graphs.structures import (FAMILIES, Structure, edges_per_token, make_structure, resolve,
                                          spec_from_config)
from transformer_graph.train.trainer import Trainer

torch.set_num_threads(1)

SRC_VOCAB, TGT_VOCAB = 23, 29
SOS, EOS = 1, 2
SMALL = dict(layers=2, d_model=32, d_ff=64, heads=4, dropout=0.0, max_len=64)
AGGREGATORS = ("attention", "mean", "gat", "sage")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def random_pairs(k: int = 5, max_src: int = 12, max_tgt: int = 11):
    src = [[random.randrange(3, SRC_VOCAB) for _ in range(random.randint(1, max_src))] for _ in range(k)]
    tgt = [[random.randrange(3, TGT_VOCAB) for _ in range(random.randint(0, max_tgt))] for _ in range(k)]
    src[0], tgt[0] = src[0][:1], []          # the shortest possible pair is always there
    return src, tgt


def small_model(aggregator: str = "attention", engine: str = "auto", **kw):
    model = set_engine(make_model(SRC_VOCAB, TGT_VOCAB, aggregator=aggregator, **{**SMALL, **kw}), engine)
    for name, p in model.named_parameters():   # non-zero biases so every path matters
        if p.dim() == 1 and "norm" not in name:
            nn.init.normal_(p, std=0.1)
    return model.eval()


def structure_cfg(**kw):
    return config_from_dict({"model": {"structure": kw}}).model.structure


def raises_clean(fn, match: str) -> ValueError:
    """``fn()`` raises a ValueError matching ``match`` and no DGL error is inside it."""
    with pytest.raises(ValueError, match=match) as info:
        fn()
    err = info.value
    dgl = sys.modules.get("dgl")
    for e in (err, err.__cause__, err.__context__):
        assert dgl is None or not isinstance(e, dgl.DGLError), f"raw DGL error leaked: {e!r}"
    return err


def dst_of(graph) -> torch.Tensor:
    return graph.edges()[1].long()


# Closed-form edge counts of one pair with n positions (self-attention structures).
def n_window(n, w):
    k = min(w, n - 1)
    return n + 2 * (k * n - k * (k + 1) // 2)


def n_causal_window(n, w):
    k = min(w, n - 1)
    return n + k * n - k * (k + 1) // 2


def n_dilated(n, w, d):
    k = min(w, (n - 1) // d)
    return n + 2 * (k * n - d * k * (k + 1) // 2)


def n_causal_dilated(n, w, d):
    k = min(w, (n - 1) // d)
    return n + k * n - d * k * (k + 1) // 2


def n_global_window(n, w, g):
    g = min(g, n)
    return n * n - (n - g) ** 2 + (n_window(n - g, w) if n > g else 0)


def n_causal_global_window(n, w, g):
    g = min(g, n)
    return g * (g + 1) // 2 + (n - g) * g + (n_causal_window(n - g, w) if n > g else 0)


def n_aligned_window(n, m, w):
    """Target i sees source positions within w of a(i) = min(i, n-1), clipped to [0, n)."""
    return sum(min(min(i, n - 1) + w, n - 1) - max(min(i, n - 1) - w, 0) + 1 for i in range(m))


# --------------------------------------------------------------------------
# 1. a window wider than every sentence is the complete graph
# --------------------------------------------------------------------------
@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize("family,params", [("window", {}), ("dilated", {"dilation": 1}),
                                           ("global_window", {"global_tokens": 2})])
def test_window_wider_than_any_sentence_equals_complete(family, params, aggregator):
    model = small_model(aggregator)
    src, tgt = random_pairs(6)                                   # sentences of at most 12 tokens
    wide = spec_from_config(structure_cfg(enc=family, dec=family, cross=family, window=40, **params))
    full = make_batch(src, tgt, sos=SOS, eos=EOS)                # complete / causal / complete
    sparse = make_batch(src, tgt, sos=SOS, eos=EOS, spec=wide)
    assert sparse.graphs.num_edges() == full.graphs.num_edges()
    with torch.no_grad():
        a, b = model(full), model(sparse)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_a_window_that_is_too_narrow_changes_the_outputs():
    """The counterpart of the test above: the structure really reaches the model."""
    model = small_model()
    src, tgt = [[5, 6, 7, 8, 9, 10, 11]], [[4, 5, 6, 7, 8, 9]]
    narrow = spec_from_config(structure_cfg(enc="window", dec="window", cross="window", window=1))
    with torch.no_grad():
        a = model(make_batch(src, tgt, sos=SOS, eos=EOS))
        b = model(make_batch(src, tgt, sos=SOS, eos=EOS, spec=narrow))
    assert (a - b).abs().max() > 1e-3
    # Position 0 of the decoder sees only itself in both (causal), but its cross-attention
    # differs (source 0..1 instead of 0..6), so even the first row changes.
    assert (a[0] - b[0]).abs().max() > 1e-4


# --------------------------------------------------------------------------
# 2. mean and gat edge weights
# --------------------------------------------------------------------------
SPARSE_GRAPHS = [
    ("complete", lambda: batch_graph(get_structure("complete"), [5, 1, 9], [5, 1, 9])),
    ("causal_window", lambda: batch_graph(make_structure("window", 2, mode="causal"), [7, 3], [7, 3])),
    ("global_window", lambda: batch_graph(make_structure("global_window", 1, global_tokens=2), [8, 4], [8, 4])),
    ("aligned_dilated", lambda: batch_graph(make_structure("dilated", 2, 2, mode="aligned"), [6, 2], [9, 5])),
]


@pytest.mark.parametrize("name,graph_fn", SPARSE_GRAPHS, ids=[n for n, _ in SPARSE_GRAPHS])
def test_mean_gives_each_in_edge_exactly_one_over_in_degree(name, graph_fn, engine):
    graph = graph_fn()
    agg = set_engine(MeanAggregation(16, heads=4, dropout=0.5).eval(), engine)
    x_k = torch.randn(graph.num_src_nodes(), 16)
    x_q = torch.randn(graph.num_dst_nodes(), 16)
    out, w = agg(graph, x_q, x_k, need_weights=True)
    dst = dst_of(graph)
    deg = torch.bincount(dst, minlength=graph.num_dst_nodes())
    assert w.shape == (graph.num_edges(), 4)
    assert torch.equal(w, (1.0 / deg.float())[dst][:, None].expand(-1, 4))
    # The output is the out-projected plain mean of the in-neighbours' values.
    src = graph.edges()[0].long()
    v = agg.v_proj(x_k)
    mean = torch.zeros(graph.num_dst_nodes(), 16).index_add_(0, dst, v[src]) / deg[:, None]
    torch.testing.assert_close(out, agg.out_proj(mean), rtol=1e-5, atol=1e-6)


def test_mean_ignores_the_query_side():
    """A GCN has no queries: what the receiving node holds never changes its weights."""
    graph = SPARSE_GRAPHS[2][1]()
    agg = MeanAggregation(16, heads=2).eval()
    x_k = torch.randn(graph.num_src_nodes(), 16)
    a, _ = agg(graph, torch.randn(graph.num_dst_nodes(), 16), x_k)
    b, _ = agg(graph, torch.randn(graph.num_dst_nodes(), 16), x_k)
    assert torch.equal(a, b)


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("name,graph_fn", SPARSE_GRAPHS, ids=[n for n, _ in SPARSE_GRAPHS])
def test_gat_weights_are_the_gat_formula_and_sum_to_one(name, graph_fn, heads, engine):
    graph = graph_fn()
    agg = set_engine(GATAggregation(16, heads=heads, dropout=0.3).eval(), engine)
    nn.init.normal_(agg.proj.bias, std=0.5)
    x_k = torch.randn(graph.num_src_nodes(), 16)
    x_q = torch.randn(graph.num_dst_nodes(), 16)
    out, w = agg(graph, x_q, x_k, need_weights=True)
    src, dst = graph.edges()[0].long(), dst_of(graph)
    assert w.shape == (graph.num_edges(), heads)
    sums = torch.zeros(graph.num_dst_nodes(), heads).index_add_(0, dst, w)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    # Straight from the definition: e_ij = LeakyReLU(a^T [W h_i || W h_j]), softmax over j.
    d_k = 16 // heads
    wh_q = agg.proj(x_q).view(-1, heads, d_k)
    wh_k = agg.proj(x_k).view(-1, heads, d_k)
    a = torch.cat([agg.attn_query, agg.attn_key], -1)                       # (heads, 2 d_k)
    e = torch.nn.functional.leaky_relu(
        (torch.cat([wh_q[dst], wh_k[src]], -1) * a).sum(-1), 0.2)            # (E, heads)
    expect = torch.empty_like(e)
    for i in range(graph.num_dst_nodes()):
        rows = dst == i
        expect[rows] = torch.softmax(e[rows], 0)
    torch.testing.assert_close(w, expect, rtol=1e-5, atol=1e-6)
    msg = torch.zeros(graph.num_dst_nodes(), heads, d_k).index_add_(0, dst, expect[..., None] * wh_k[src])
    torch.testing.assert_close(out, agg.out_proj(msg.reshape(-1, 16)), rtol=1e-5, atol=1e-5)


def test_gat_query_projection_folds_the_attention_vector_exactly():
    agg = GATAggregation(24, heads=3).double()
    nn.init.normal_(agg.proj.bias, std=0.5)
    x = torch.randn(7, 24, dtype=torch.float64)
    q, k, _ = agg.project_qkv(x)
    torch.testing.assert_close(agg.project_q(x), q)
    torch.testing.assert_close(agg.project_kv(x)[0], k)


def test_attention_dropout_applies_to_mean_and_gat_in_training_only(engine):
    graph = SPARSE_GRAPHS[0][1]()
    x = torch.randn(graph.num_src_nodes(), 16)
    for agg in (MeanAggregation(16, 2, dropout=0.5), GATAggregation(16, 2, dropout=0.5)):
        agg.engine = engine
        torch.manual_seed(1)
        a, _ = agg.train()(graph, x)
        b, _ = agg.eval()(graph, x)
        c, _ = agg(graph, x)
        assert not torch.allclose(a, b) and torch.equal(b, c)


def test_parameter_counts_per_block():
    d, h = 32, 4
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(GraphAttention(d, h)) == 4 * d * d + 4 * d          # q, k, v, out
    assert count(MeanAggregation(d, h)) == 2 * d * d + 2 * d         # v, out: no query/key
    assert count(GATAggregation(d, h)) == 2 * d * d + 2 * d + 2 * d  # W, out, a = [a_q; a_k]


# --------------------------------------------------------------------------
# 3. causality, edge counts, consistency across query counts
# --------------------------------------------------------------------------
DEC_STRUCTURES = [get_structure("causal")] + [
    make_structure(f, w, d, g, "causal")
    for f in FAMILIES for w in (0, 1, 3) for d in (1, 2, 3) for g in (0, 1, 3)
]


@pytest.mark.parametrize("fn", DEC_STRUCTURES, ids=repr)
def test_causal_structures_never_connect_a_later_key_to_an_earlier_query(fn):
    for n_keys in (1, 2, 5, 13):
        for n_queries in sorted({1, (n_keys + 1) // 2, n_keys}):
            keys, queries = pair_edges(fn, n_keys, n_queries, True)   # the builder's own check passes
            pos = queries + (n_keys - n_queries)                       # queries are the last positions
            assert bool((keys <= pos).all()), f"{fn!r} has an edge from the future for {n_keys, n_queries}"


@pytest.mark.parametrize("name", ["causal", "window", "dilated", "global_window"])
def test_every_decoder_config_name_is_causal(name):
    for window, dilation, g in [(0, 1, 0), (2, 2, 1), (5, 3, 4)]:
        fn = get_structure(resolve("dec", name, window, dilation, g))
        for n in (1, 4, 11):
            keys, queries = fn(n, n)
            assert bool((keys <= queries).all())
            batch_graph(fn, [n, 3], [n, 3], causal_check=True)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 25])
@pytest.mark.parametrize("w", [0, 1, 3, 8])
def test_edge_counts_match_their_formulas(n, w):
    def count(fn, n_keys, n_queries):
        return pair_edges(fn, n_keys, n_queries, False)[0].numel()

    assert count(get_structure("complete"), n, n) == n * n
    assert count(get_structure("causal"), n, n) == n * (n + 1) // 2
    assert count(make_structure("window", w), n, n) == n_window(n, w)
    assert count(make_structure("window", w, mode="causal"), n, n) == n_causal_window(n, w)
    for d in (1, 2, 3):
        assert count(make_structure("dilated", w, d), n, n) == n_dilated(n, w, d)
        assert count(make_structure("dilated", w, d, mode="causal"), n, n) == n_causal_dilated(n, w, d)
    for g in (0, 1, 2, 30):
        assert count(make_structure("global_window", w, global_tokens=g), n, n) == n_global_window(n, w, g)
        assert count(make_structure("global_window", w, global_tokens=g, mode="causal"), n, n) == \
            n_causal_global_window(n, w, g)
    for m in (1, n, 2 * n + 1):
        assert count(make_structure("window", w, mode="aligned"), n, m) == n_aligned_window(n, m, w)
        assert count(get_structure("complete"), n, m) == n * m


def test_edge_counts_of_a_whole_batch_add_up():
    spec = spec_from_config(structure_cfg(enc="window", dec="dilated", cross="window", window=2, dilation=2))
    src_lens, tgt_lens = [3, 9, 1], [4, 2, 10]
    graphs = build_graphs(src_lens, tgt_lens, spec)
    assert graphs.num_edges() == {
        "enc": sum(n_window(n, 2) for n in src_lens),
        "dec": sum(n_causal_dilated(m, 2, 2) for m in tgt_lens),
        "cross": sum(n_aligned_window(n, m, 2) for n, m in zip(src_lens, tgt_lens)),
    }
    per_token = edges_per_token(spec, zip(src_lens, tgt_lens))
    assert per_token["total"] == pytest.approx(sum(graphs.num_edges().values()) / (13 + 16))


@pytest.mark.parametrize("mode", ["self", "causal"])
@pytest.mark.parametrize("family", FAMILIES)
def test_self_structures_give_the_last_positions_the_same_edges_for_fewer_queries(family, mode):
    """What the incremental decoder relies on: queries = the last positions of the keys."""
    fn = make_structure(family, 2, 2, 1, mode)
    for n in (1, 5, 9):
        full_k, full_q = fn(n, n)
        for n_q in range(1, n + 1):
            k, q = fn(n, n_q)
            rows = full_q >= n - n_q
            assert torch.equal(k, full_k[rows]) and torch.equal(q, full_q[rows] - (n - n_q))


@pytest.mark.parametrize("family", FAMILIES)
def test_aligned_structures_give_target_positions_the_same_edges_whatever_the_target_length(family):
    """Decoding asks for (source n, prefix t+1): position t's edges must not depend on t+1."""
    fn = make_structure(family, 1, 2, 1, "aligned")
    for n in (1, 4, 9):
        full_k, full_q = fn(n, 20)
        for m in (1, 3, 20):
            k, q = fn(n, m)
            assert torch.equal(k, full_k[full_q < m]) and torch.equal(q, full_q[full_q < m])


def test_equal_parameters_give_one_shared_edge_function():
    assert make_structure("window", 3) is make_structure("window", 3)
    assert make_structure("window", 3) == Structure("window", 3)        # so pair_edges' cache is shared
    a, b = spec_from_config(structure_cfg(enc="window")), spec_from_config(structure_cfg(enc="window"))
    assert a.fn("enc") is b.fn("enc") and a.fn("dec") is b.fn("dec")
    assert make_structure("window", 3) != make_structure("window", 4)


def test_registered_names_work_in_graph_specs():
    spec = GraphSpec(enc="window", dec="causal_global_window", cross="aligned_dilated")
    graphs = build_graphs([5, 2], [3, 6], spec)
    assert graphs.num_edges()["enc"] == n_window(5, 8) + n_window(2, 8)


# --------------------------------------------------------------------------
# 4. user-supplied structures and config errors
# --------------------------------------------------------------------------
def key_too_far(n_keys, n_queries):
    keys, queries = get_structure("causal")(n_keys, n_queries)
    return keys + 1, queries                       # key n_keys appears on the last row


def query_negative(n_keys, n_queries):
    return torch.arange(n_keys), torch.arange(n_keys) - 1


def peeks_ahead(n_keys, n_queries):
    keys, queries = get_structure("causal")(n_keys, n_queries)
    return torch.cat([keys, torch.tensor([n_keys - 1])]), torch.cat([queries, torch.tensor([0])])


def test_user_structures_with_invalid_edges_get_clear_errors():
    raises_clean(lambda: build_graphs([3], [3], GraphSpec(enc=key_too_far)),
                 r"'key_too_far' returned key index out of range \[0, 3\) \(got key 3\)")
    raises_clean(lambda: build_graphs([3], [3], GraphSpec(cross=query_negative)),
                 r"'query_negative' returned query index out of range \[0, 3\) \(got query -1\)")
    err = raises_clean(lambda: build_graphs([2], [4], GraphSpec(dec=peeks_ahead)),
                       r"'peeks_ahead' connects a future target position")
    assert "edge 3 -> 0" in str(err) and "decoder" in str(err)
    # The same function is fine where looking ahead is allowed (encoder self-attention).
    assert build_graphs([4], [2], GraphSpec(enc=peeks_ahead)).num_edges()["enc"] == 11
    raises_clean(lambda: build_graphs([2], [2], GraphSpec(enc=lambda n, m: "edges")),
                 r"must return two index sequences")


def test_user_structures_work_end_to_end_through_the_config():
    def previous_and_self(n_keys, n_queries):
        """A bigram decoder: each position sees itself and the one before."""
        pos = torch.arange(n_keys - n_queries, n_keys)
        keys = torch.stack([(pos - 1).clamp(min=0), pos], 1).reshape(-1)
        queries = torch.arange(n_queries).repeat_interleave(2)
        return keys, queries

    register_structure("test_bigram", previous_and_self)
    cfg = config_from_dict({"model": dict(layers=1, d_model=16, d_ff=32, heads=2, dropout=0.0,
                                          structure={"dec": "test_bigram"})})
    spec = graph_spec(cfg.model)
    assert spec.fn("dec") is previous_and_self
    model = build_model(cfg.model, SRC_VOCAB, TGT_VOCAB).eval()
    src = [[3, 4, 5, 6], [7]]
    inc = beam_search(model, src, sos=SOS, eos=EOS, beam=2, spec=spec)
    ref = beam_search(model, src, sos=SOS, eos=EOS, beam=2, spec=spec, incremental=False)
    assert [h[0].tokens for h in inc] == [h[0].tokens for h in ref]

    register_structure("test_peeks_ahead", peeks_ahead)
    bad = config_from_dict({"model": {"structure": {"dec": "test_peeks_ahead"}}})
    raises_clean(lambda: build_graphs([2], [3], graph_spec(bad.model)), r"future target position")


@pytest.mark.parametrize("kind,name,match", [
    ("enc", "windw", r"model\.structure\.enc: unknown attention structure 'windw'; expected one of "
                     r"complete, causal, window, dilated, global_window"),
    ("dec", "sparse", r"model\.structure\.dec: unknown attention structure 'sparse'"),
    ("cross", "", r"model\.structure\.cross: unknown attention structure ''"),
    ("dec", "complete", r"model\.structure\.dec: 'complete' is not allowed here: .*causal"),
    ("cross", "causal", r"model\.structure\.cross: 'causal' is not allowed here"),
    ("dec", "causal_window", r"model\.structure\.dec: 'causal_window' is chosen automatically; write 'window'"),
])
def test_bad_structure_names_in_a_config_name_the_key(kind, name, match):
    cfg = config_from_dict({"model": {"structure": {kind: name}}})
    err = raises_clean(lambda: graph_spec(cfg.model), match)
    assert isinstance(err, ConfigError)


def test_a_trainer_with_an_unknown_structure_fails_before_loading_data(tmp_path):
    cfg = config_from_dict({"model": {"structure": {"cross": "diagonal"}},
                            "data": {"task": "multi30k", "path": str(tmp_path / "nowhere")}})
    raises_clean(lambda: Trainer(cfg, tmp_path / "run", quiet=True), r"model\.structure\.cross: unknown")


def test_unknown_aggregator():
    raises_clean(lambda: get_aggregator("sum"), r"aggregator: unknown aggregator 'sum'; expected one of "
                                                r"attention, mean, gat")
    raises_clean(lambda: make_model(SRC_VOCAB, TGT_VOCAB, aggregator="gcn", **SMALL), r"'gcn'")
    with pytest.raises(ConfigError, match=r"model\.aggregator"):
        config_from_dict({"model": {"aggregator": "gcn"}})


# --------------------------------------------------------------------------
# 5. decoding: incremental == full recomputation
# --------------------------------------------------------------------------
DECODE_CASES = [
    ("attention", dict(enc="window", dec="window", cross="window", window=1)),
    ("attention", dict(enc="dilated", dec="dilated", cross="dilated", window=2, dilation=2)),
    ("attention", dict(enc="global_window", dec="global_window", cross="global_window", window=1,
                       global_tokens=2)),
    ("mean", {}),
    ("gat", {}),
    ("mean", dict(enc="window", dec="global_window", cross="window", window=1)),
    ("gat", dict(enc="global_window", dec="dilated", cross="complete", window=2, dilation=3)),
]


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("aggregator,structure", DECODE_CASES,
                         ids=[f"{a}-{s.get('dec', 'causal')}" for a, s in DECODE_CASES])
def test_incremental_decoding_equals_full_recomputation(aggregator, structure, beam, engine):
    model = small_model(aggregator, engine)
    spec = spec_from_config(structure_cfg(**structure))
    src, _ = random_pairs(4)
    kw = dict(sos=SOS, eos=EOS, beam=beam, spec=spec, max_len_b=4, n_best=beam)
    inc = beam_search(model, src, **kw)
    ref = beam_search(model, src, **kw, incremental=False)
    assert [[h.tokens for h in hs] for hs in inc] == [[h.tokens for h in hs] for hs in ref]
    for hs_i, hs_r in zip(inc, ref):
        for a, b in zip(hs_i, hs_r):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    # And the decoder really runs the sparse graph: teacher-forcing the greedy output
    # through the training graphs reproduces the decoder's own log-probabilities.
    if beam == 1:
        hyps = [hs[0] for hs in inc]
        batch = make_batch(src, [h.tokens for h in hyps], sos=SOS, eos=EOS, spec=spec)
        with torch.no_grad():
            logp = model(batch)
        lens, start = batch.tgt_lens, 0
        for h, m in zip(hyps, lens):
            labels = batch.labels[start:start + m]
            total = float(logp[start:start + m].gather(1, labels[:, None]).sum())
            if not h.finished:  # cut at the length limit: no <eos> was scored
                total -= float(logp[start + m - 1, EOS])
            assert total == pytest.approx(h.logprob, abs=1e-4)
            start += m


# --------------------------------------------------------------------------
# 6. training, attention pictures, the standard model's weights
# --------------------------------------------------------------------------
@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_every_aggregator_learns_a_fixed_batch(aggregator):
    torch.manual_seed(0)
    model = make_model(SRC_VOCAB, TGT_VOCAB, aggregator=aggregator, layers=1, d_model=32, d_ff=64,
                       heads=4, dropout=0.0)
    spec = spec_from_config(structure_cfg(enc="window", dec="window", cross="global_window", window=2))
    src, tgt = random_pairs(6)
    batch = make_batch(src, tgt, sos=SOS, eos=EOS, spec=spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(model(batch), batch.labels)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0]
    # mean has no queries: the cross-attention's query-side LayerNorm feeds nothing.
    unused = {"decoder.layers.0.res_cross.norm.weight", "decoder.layers.0.res_cross.norm.bias"}
    for name, p in model.named_parameters():
        if aggregator == "mean" and name in unused:
            assert p.grad is None
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_trainer_runs_with_each_aggregator_and_structure(aggregator, tmp_path):
    cfg = config_from_dict({
        "model": dict(layers=1, d_model=32, d_ff=64, heads=2, dropout=0.1, share_embeddings=True, max_len=48,
                      aggregator=aggregator, structure=dict(enc="global_window", dec="window", window=2)),
        "data": dict(task="copy", train_size=48, valid_size=8, test_size=8, batch_size=16,
                     length_mean=6.0, length_std=2.0, alphabet="abcdefgh"),
        "optim": dict(warmup=10), "train": dict(max_epochs=1, seed=3, threads=1),
        "eval": dict(max_len_a=1.0, max_len_b=2),
    })
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    assert trainer.model.config["aggregator"] == aggregator
    assert isinstance(trainer.model.encoder.layers[0].self_attn, get_aggregator(aggregator))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.fit()
    assert summary["steps"] == 3 and summary["epochs"] == 1
    last = summary["last"]
    assert math.isfinite(last["train_loss"]) and 0 <= last["valid_exact_match"] <= 1
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("self_attn" in k for k in changed) and any("cross_attn" in k for k in changed)


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_attention_weights_for_pictures_have_one_row_per_edge(aggregator):
    model = small_model(aggregator)
    spec = spec_from_config(structure_cfg(enc="dilated", dec="global_window", cross="window", window=1))
    batch = make_batch(*random_pairs(3), sos=SOS, eos=EOS, spec=spec)
    with torch.no_grad():
        _, weights = model(batch, return_attention=True)
    edges = batch.graphs.num_edges()
    for kind in ("enc", "dec", "cross"):
        graph = getattr(batch.graphs, kind)
        for w in weights[kind]:
            assert w.shape == (edges[kind], SMALL["heads"])
            sums = torch.zeros(graph.num_dst_nodes(), SMALL["heads"]).index_add_(0, dst_of(graph), w)
            torch.testing.assert_close(sums, torch.ones_like(sums))


def test_the_standard_models_weights_keep_their_names():
    keys = set(make_model(SRC_VOCAB, TGT_VOCAB, **SMALL).state_dict())
    assert "encoder.layers.0.self_attn.in_proj.weight" in keys
    assert "decoder.layers.1.cross_attn.out_proj.bias" in keys
    assert keys == set(make_model(SRC_VOCAB, TGT_VOCAB, aggregator="attention", **SMALL).state_dict())
    assert make_model(SRC_VOCAB, TGT_VOCAB, **SMALL).config["aggregator"] == "attention"


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_attention_pictures_show_exactly_the_structures_edges(aggregator):
    from transformer_graph.viz.attention import extract_attention

    model = small_model(aggregator)
    structure = structure_cfg(enc="global_window", dec="dilated", cross="window", window=1, dilation=2)
    spec = spec_from_config(structure)
    src, tgt = [3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14]
    maps = extract_attention(model, src, tgt, spec)
    n, m = len(src), len(tgt) + 1
    expect = {"enc": spec.enc.mask(n, n), "dec": spec.dec.mask(m, m), "cross": spec.cross.mask(n, m)}
    for kind, mask in expect.items():
        assert torch.equal(maps.edges[kind], mask)
        assert maps.num_heads(kind) == SMALL["heads"] and maps.num_layers(kind) == SMALL["layers"]
        w = maps.weights[kind]                                   # (layers, heads, queries, keys)
        assert bool((w[..., ~mask] == 0).all())
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
