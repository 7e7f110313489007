"""Graph encoders for node classification: node graphs, the encoder, the SBM loss and metric.

Equality tests run in float64 on the torch engine (no DGL import: CPU is scarce); the model's
blocks are the sequence models' own, whose engines tests/test_engines.py already compares.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from transformer_graph.data.graph_tasks import ClusterParams, GraphSample, make_cluster
from transformer_graph.graphs.node_graphs import batch_graphs
from transformer_graph.message_passing.base import set_engine
from transformer_graph.message_passing.sage import SAGEBlock
from transformer_graph.nn.graph_encoder import GraphEncoder, GraphEncoderConfig, node_batch
from transformer_graph.nn.node_loss import (SBMAccuracy, class_weighted_accuracy, class_weights,
                                            weighted_cross_entropy)

# One thread, as the other test files: oversubscribed OpenMP threads on a busy 2-core machine made
# the overfitting tests 50x slower (150 s instead of 3 s each).
torch.set_num_threads(1)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def random_graph(n: int, p: float, seed: int, num_features: int = 3, num_classes: int = 2) -> GraphSample:
    """An undirected G(n, p) with a ring through every node (no isolated nodes), categorical x."""
    gen = torch.Generator().manual_seed(seed)
    upper = torch.triu(torch.rand(n, n, generator=gen) < p, diagonal=1)
    ring = torch.arange(n)
    upper[ring, (ring + 1) % n] = True
    adj = (upper | upper.t()) & ~torch.eye(n, dtype=torch.bool)
    dst, src = adj.nonzero(as_tuple=True)
    x = torch.randint(0, num_features, (n,), generator=gen)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    return GraphSample(n, torch.stack([src, dst]), x, y)


def permuted(s: GraphSample, perm: torch.Tensor) -> GraphSample:
    """The same graph with new node i = old node perm[i]."""
    inv = torch.argsort(perm)
    return GraphSample(s.num_nodes, inv[s.edge_index], s.x[perm], s.y[perm])


def model_for(double: bool = True, **kwargs) -> GraphEncoder:
    settings = dict(num_features=3, feature_kind="categorical", num_classes=2, d_model=16, layers=2, heads=4)
    model = GraphEncoder(GraphEncoderConfig(**{**settings, **kwargs}))
    set_engine(model, "torch")
    return model.double().eval() if double else model


GRAPHS = [random_graph(7, 0.3, 1), random_graph(5, 0.5, 2), random_graph(9, 0.2, 3)]


# --------------------------------------------------------------------------
# Node graphs
# --------------------------------------------------------------------------
def test_structures_edges():
    g = GRAPHS[1]
    e, n = g.num_edges, g.num_nodes
    assert batch_graphs([g], "sparse").graph.num_edges() == e + n
    assert batch_graphs([g], "sparse", self_loops=False).graph.num_edges() == e
    assert batch_graphs([g], "complete").graph.num_edges() == n * n
    b = batch_graphs([g, g], "global", global_nodes=2)
    assert (b.num_real, b.num_global, b.num_nodes) == (2 * n, 4, 2 * n + 4)
    # graph edges + self loops on every node + both directions between each real node and its 2 globals
    assert b.graph.num_edges() == 2 * e + (2 * n + 4) + 2 * (2 * n * 2)
    src, dst = b.graph.edges()
    assert torch.equal(b.graph_index[src], b.graph_index[dst]), "no edge crosses between graphs"
    assert b.global_slot().tolist() == [0, 1, 0, 1]
    assert b.graph_index.tolist() == [0] * n + [1] * n + [0, 0, 1, 1]


def test_complete_batch_is_block_diagonal_all_pairs():
    b = batch_graphs(GRAPHS, "complete")
    src, dst = b.graph.edges()
    dense = torch.zeros(b.num_nodes, b.num_nodes, dtype=torch.bool)
    dense[dst, src] = True
    assert torch.equal(dense, b.graph_index[:, None] == b.graph_index[None, :])


# --------------------------------------------------------------------------
# Full attention = dense softmax(QK^T / sqrt(d)) V per graph
# --------------------------------------------------------------------------
def dense_reference(model: GraphEncoder, batch):
    """The encoder computed densely: every layer's attention as masked softmax(QK^T/sqrt(d_k))V."""
    c = model.config
    h = model.embed.weight[batch.x] + F.linear(batch.pe.double(), model.pe_proj.weight, model.pe_proj.bias)
    same = batch.graph_index[:, None] == batch.graph_index[None, :]
    probs = []
    for layer in model.encoder.layers:
        a = layer.self_attn
        q, k, v = F.linear(layer.res_attn.norm(h), a.in_proj.weight, a.in_proj.bias).chunk(3, -1)
        q, k, v = (t.view(-1, c.heads, a.d_k).transpose(0, 1) for t in (q, k, v))      # (H, N, d_k)
        p = (q @ k.transpose(1, 2) / math.sqrt(a.d_k)).masked_fill(~same, float("-inf")).softmax(-1)
        probs.append(p)
        h = h + F.linear((p @ v).transpose(0, 1).reshape(-1, c.d_model), a.out_proj.weight, a.out_proj.bias)
        f = layer.ffn
        h = h + F.linear(F.relu(F.linear(layer.res_ffn.norm(h), f.linear1.weight, f.linear1.bias)),
                         f.linear2.weight, f.linear2.bias)
    return model.readout(model.encoder.norm(h)), probs


def test_complete_structure_is_full_attention():
    model = model_for(structure="complete", pe_dim=2)
    batch = node_batch(GRAPHS, model.config)
    with torch.no_grad():
        logits, attn = model(batch, return_attention=True)
        ref, probs = dense_reference(model, batch)
    assert logits.shape == (batch.num_real, 2)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-12)
    src, dst = batch.graph.edges()
    for w, p in zip(attn["enc"], probs):          # the returned edge weights are the dense probabilities
        torch.testing.assert_close(w, p[:, dst, src].t(), rtol=0, atol=1e-12)

    sparse = model_for(structure="sparse", pe_dim=2)
    sparse.load_state_dict(model.state_dict())     # same parameters, only the graph differs
    with torch.no_grad():
        assert (sparse(node_batch(GRAPHS, sparse.config)) - logits).abs().max() > 1e-3


# --------------------------------------------------------------------------
# Laplacian PE sign flips
# --------------------------------------------------------------------------
def test_pe_sign_flips_only_in_training():
    model = model_for(structure="global", pe_dim=2)
    batch = node_batch(GRAPHS, model.config)
    with torch.no_grad():
        model.pe_generator = torch.Generator().manual_seed(1)
        a = model(batch)
        model.pe_generator = torch.Generator().manual_seed(2)
        assert torch.equal(model(batch), a), "eval mode: no flips"
        plain = model.embed_nodes(batch) - model.pe_proj(batch.pe.double())       # the input without PE

        model.train()
        model.pe_generator = torch.Generator().manual_seed(1)
        h1 = model.embed_nodes(batch)
        model.pe_generator = torch.Generator().manual_seed(2)
        h2 = model.embed_nodes(batch)
    assert not torch.equal(h1, h2), "training mode: the input changes with the draw"
    signs = [torch.tensor(s, dtype=torch.float64) for s in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    for h in (h1, h2):          # each graph's PE columns got one sign each; global nodes have no PE
        for g in range(batch.num_graphs):
            rows = (batch.graph_index == g).nonzero().flatten()
            assert any(torch.allclose(h[rows], plain[rows] + model.pe_proj(batch.pe[rows].double() * s))
                       for s in signs)


# --------------------------------------------------------------------------
# Equivariance and batching
# --------------------------------------------------------------------------
@pytest.mark.parametrize("structure,aggregator", [("sparse", "attention"), ("global", "attention"),
                                                  ("complete", "attention"), ("sparse", "gat"),
                                                  ("sparse", SAGEBlock)])
def test_permutation_equivariance(structure, aggregator):
    model = model_for(structure=structure, aggregator=aggregator)
    g = GRAPHS[2]
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = model(node_batch([g], model.config))
        b = model(node_batch([permuted(g, perm)], model.config))
    torch.testing.assert_close(b, a[perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize("structure,aggregator", [("global", "attention"), ("sparse", "mean")])
def test_batch_equals_graphs_alone(structure, aggregator):
    model = model_for(structure=structure, aggregator=aggregator, pe_dim=3, global_nodes=2)
    with torch.no_grad():
        together = model(node_batch(GRAPHS, model.config))
        alone = torch.cat([model(node_batch([g], model.config)) for g in GRAPHS])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-12)


def test_dense_features_and_masks():
    g = GRAPHS[0]
    dense = GraphSample(g.num_nodes, g.edge_index, torch.randn(g.num_nodes, 5), g.y,
                        train_mask=torch.ones(g.num_nodes, dtype=torch.bool))
    model = model_for(feature_kind="dense", num_features=5)
    batch = node_batch([dense, dense], model.config)
    assert batch.masks is not None and set(batch.masks) == {"train"}
    assert batch.masks["train"].shape == (2 * g.num_nodes,)
    with torch.no_grad():
        assert model(batch).shape == (2 * g.num_nodes, 2)


# --------------------------------------------------------------------------
# GraphSAGE block
# --------------------------------------------------------------------------
def test_sage_block_is_w_of_self_and_mean():
    block = SAGEBlock(6, 2).double()
    set_engine(block, "torch")
    g = batch_graphs([GRAPHS[0]], "sparse", self_loops=False).graph
    x = torch.randn(g.num_dst_nodes(), 6, dtype=torch.float64)
    out, w = block(g, x, need_weights=True)
    src, dst = g.edges()
    mean = torch.zeros_like(x).index_add_(0, dst, x[src]) / g.in_degrees().double()[:, None]
    # MeanBlock's φ computes 1 / in-degree in float32, so float64 agrees to float32 rounding only
    torch.testing.assert_close(out, block.out_proj(torch.cat([x, mean], -1)), rtol=0, atol=1e-6)
    assert w.shape == (g.num_edges(), 2)


# --------------------------------------------------------------------------
# A tiny task overfits
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_task():
    """20 two-community SBM graphs of 10-20 nodes; one labelled node per community (CLUSTER-like)."""
    params = ClusterParams(num_communities=2, community_size_min=5, community_size_max=10, p=0.8, q=0.05)
    return make_cluster(0, train=20, valid=1, test=1, params=params, cache=False)


@pytest.mark.parametrize("aggregator", ["attention", "mean", "gat", SAGEBlock])
def test_tiny_task_overfits(tiny_task, aggregator):
    config = GraphEncoderConfig.for_dataset(tiny_task, d_model=24, layers=2, heads=4, aggregator=aggregator)
    model = GraphEncoder(config)
    set_engine(model, "torch")
    assert 7_000 < sum(p.numel() for p in model.parameters()) < 12_000
    batch = node_batch(tiny_task.splits["train"], config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = weighted_cross_entropy(model(batch), batch.y, config.num_classes)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(batch)
    assert weighted_cross_entropy(logits, batch.y, 2).item() < 0.2 * first
    assert (logits.argmax(1) == batch.y).double().mean().item() >= 0.95


# --------------------------------------------------------------------------
# The benchmark's loss and metric
# --------------------------------------------------------------------------
def test_weighted_cross_entropy_matches_the_benchmark_formula():
    logits = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 2, 2])
    w = class_weights(labels, 3)
    torch.testing.assert_close(w, torch.tensor([2 / 6, 0.0, 4 / 6]))     # (V - count) / V, 0 if absent
    nll = -logits.log_softmax(-1)[torch.arange(6), labels]
    expected = (w.double()[labels] * nll).sum() / w.double()[labels].sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, 3), expected)
    one_class = weighted_cross_entropy(logits, torch.zeros(6, dtype=torch.long), 3)
    assert torch.isfinite(one_class)          # the benchmark's 0/0 would be NaN


def test_class_weighted_accuracy_is_accuracy_sbm():
    labels = torch.tensor([0, 0, 0, 1])
    assert class_weighted_accuracy(torch.tensor([0, 0, 1, 1]), labels, 2) == pytest.approx(100 * (2 / 3 + 1) / 2)
    scores = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert class_weighted_accuracy(scores, labels, 2) == pytest.approx(100 * (2 / 3 + 1) / 2)
    # a class only predicted counts in the denominator (confusion_matrix's classes), with recall 0
    assert class_weighted_accuracy(torch.tensor([0, 1]), torch.tensor([0, 0]), 3) == pytest.approx(25.0)
    meter = SBMAccuracy(2)
    meter.update(torch.tensor([0, 0, 1, 1]), labels)          # 83.33
    meter.update(torch.tensor([1, 1]), torch.tensor([1, 0]))  # (0 + 1) / 2 = 50
    assert meter.batch_mean() == pytest.approx((100 * (2 / 3 + 1) / 2 + 50) / 2)
    assert meter.pooled() == pytest.approx(100 * (2 / 4 + 2 / 2) / 2)


# --------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors():
    logits = torch.randn(4, 2)
    with pytest.raises(ValueError, match="class 2 is outside"):
        weighted_cross_entropy(logits, torch.tensor([0, 1, 2, 0]), 2)
    with pytest.raises(ValueError, match="int64"):
        weighted_cross_entropy(logits, torch.tensor([0.0, 1.0, 1.0, 0.0]), 2)
    with pytest.raises(ValueError, match="one label per"):
        weighted_cross_entropy(logits, torch.tensor([0, 1]), 2)

    g = GRAPHS[0]
    model = model_for()
    as_float = GraphSample(g.num_nodes, g.edge_index, g.x.double(), g.y)
    with pytest.raises(ValueError, match="categorical features must be int64.*feature_kind='dense'"):
        model(node_batch([as_float], model.config))
    with pytest.raises(ValueError, match="feature id 7 is outside"):
        model(node_batch([GraphSample(g.num_nodes, g.edge_index, torch.full_like(g.x, 7), g.y)], model.config))
    dense = model_for(feature_kind="dense", num_features=5)
    wide = GraphSample(g.num_nodes, g.edge_index, torch.randn(g.num_nodes, 4), g.y)
    with pytest.raises(ValueError, match=r"num_features=5\), got torch.float32 \(7, 4\)"):
        dense(node_batch([wide], dense.config))
    with pytest.raises(ValueError, match="built with structure 'complete'"):
        model(batch_graphs([g], "complete"))

    zeros = torch.zeros(3, dtype=torch.long)
    isolated = GraphSample(3, torch.tensor([[0], [1]]), zeros, zeros)
    with pytest.raises(ValueError, match="graph 1: node 0 .*no in-edge.*self_loops=True.*global"):
        batch_graphs([GRAPHS[1], isolated], "sparse", self_loops=False)
    assert batch_graphs([isolated], "global", self_loops=False).graph.in_degrees().min() >= 1
    with pytest.raises(ValueError, match="unknown node-graph structure"):
        GraphEncoderConfig(3, "categorical", 2, structure="window")
    with pytest.raises(ValueError, match="unknown aggregator"):
        GraphEncoderConfig(3, "categorical", 2, aggregator="sum")
    with pytest.raises(ValueError, match="pe_fn"):
        batch_graphs([g], "sparse", pe_dim=2)


# --------------------------------------------------------------------------
# The benchmark's parameter budget (PATTERN: 3 feature values, 2 classes)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("d_model,layers", [(64, 3), (56, 4), (48, 5)])
@pytest.mark.parametrize("pe_dim", [2, 8])
def test_about_100k_parameters_for_pattern(d_model, layers, pe_dim):
    config = GraphEncoderConfig(3, "categorical", 2, d_model=d_model, layers=layers, heads=8, pe_dim=pe_dim)
    assert 95_000 <= sum(p.numel() for p in GraphEncoder(config).parameters()) <= 106_000
