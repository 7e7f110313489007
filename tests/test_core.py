"""The graph Transformer computes exactly what the dense, padded Transformer computes.

1. GraphAttention == masked scaled-dot-product attention (forward and gradients).
2. The whole model == torch.nn.Transformer with the same weights (pre- and post-norm).
3. Causality: a target token never influences earlier positions (or other pairs).
4. Batch independence: a pair's outputs ignore which pairs share its batch.
5. Edge counts n^2, n*m, m(m+1)/2 per pair, and no edge crosses pairs.
6. Bad input raises ValueError naming the argument, never a raw DGL error.
7. Nothing is left on the graphs; returned attention weights are proper softmaxes.
8. float64 models work.

The dense references run on both engines (the ``engine`` fixture, tests/conftest.py): the
torch engine alone equals torch.nn.Transformer, and DGL's where DGL is installed.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import random
import re
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_graph.message_passing import set_engine
from transformer_graph.message_passing.attention import GraphAttention
from transformer_graph.data.batch import make_batch
from transformer_graph.nn.dense import DenseTransformer, torch_transformer_from
from transformer_graph.graphs.build import KINDS, GraphSpec, build_graphs
from transformer_graph.config import config_from_dict
from transformer_graph.experiment import build_model
from transformer_graph.nn.loss import label_smoothed_loss, label_smoothed_loss_from_logits
from transformer_graph.nn.model import GraphTransformer, TransformerConfig, make_model

SRC_VOCAB, TGT_VOCAB = 23, 29
SOS, EOS = 1, 2
SMALL = dict(layers=2, d_model=32, d_ff=64, heads=4, dropout=0.0, max_len=64)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (absolute error when b is exactly zero)."""
    a, b = a.detach().double(), b.detach().double()
    denom = b.norm()
    return float((a - b).norm() / denom) if denom > 0 else float(a.norm())


def pad_rows(flat: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent of dense.pad: (B, L, ...) zero-padded rows and a (B, L) bool 'is real' mask."""
    rows = torch.split(flat, lengths)
    padded = nn.utils.rnn.pad_sequence(rows, batch_first=True)
    real = torch.arange(padded.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    return padded, real


def unpad_rows(padded: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    return torch.cat([padded[i, :n] for i, n in enumerate(lengths)])


def random_lengths(k: int, lo: int = 1, hi: int = 12) -> list[int]:
    """k lengths in [lo, hi], always including both extremes."""
    lens = [lo, hi] + [random.randint(lo, hi) for _ in range(k - 2)]
    random.shuffle(lens)
    return lens


def random_pairs(k: int = 5, max_src: int = 12, max_tgt: int = 11):
    """k (source, target) pairs; sources of length 1..max_src, targets 0..max_tgt (ids >= 3)."""
    src_lens = random_lengths(k, 1, max_src)
    tgt_lens = random_lengths(k, 0, max_tgt)
    src = [[random.randrange(3, SRC_VOCAB) for _ in range(n)] for n in src_lens]
    tgt = [[random.randrange(3, TGT_VOCAB) for _ in range(n)] for n in tgt_lens]
    return src, tgt


def batch_of(src, tgt, **kw):
    return make_batch(src, tgt, sos=SOS, eos=EOS, **kw)


def small_model(norm_first: bool = True, engine: str = "auto", **kw):
    return set_engine(make_model(SRC_VOCAB, TGT_VOCAB, norm_first=norm_first, **{**SMALL, **kw}), engine)


def dgl_error_types() -> tuple:
    """DGL's own error class, where DGL was imported (nothing can raise it otherwise)."""
    dgl = sys.modules.get("dgl")
    return (dgl.DGLError,) if dgl is not None else ()


def pair_slices(lengths: list[int]) -> list[slice]:
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    return [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]


def pair_ids(lengths: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def local_pos(lengths: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in lengths])


# --------------------------------------------------------------------------
# 1. GraphAttention == dense masked attention
# --------------------------------------------------------------------------
def dense_attention(attn: GraphAttention, q, k, v, q_lens, k_lens, causal: bool):
    """scaled_dot_product_attention on padded (B, H, L, d_k) tensors, then out_proj."""
    qp, q_real = pad_rows(q, q_lens)
    kp, k_real = pad_rows(k, k_lens)
    vp, _ = pad_rows(v, k_lens)
    allowed = k_real[:, None, None, :]                          # (B, 1, 1, Lk): True = may attend
    if causal:
        allowed = allowed & torch.ones(qp.shape[1], kp.shape[1], dtype=torch.bool).tril()
    out = F.scaled_dot_product_attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2),
                                         attn_mask=allowed)
    out = out.transpose(1, 2).reshape(qp.shape[0], qp.shape[1], attn.d_model)
    return attn.out_proj(unpad_rows(out, q_lens))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("heads", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", KINDS)
def test_graph_attention_equals_dense_masked_attention(kind, heads, dtype, tol, engine):
    d_model = 16
    src_lens, tgt_lens = random_lengths(5), random_lengths(5)
    graphs = build_graphs(src_lens, tgt_lens)
    graph = getattr(graphs, kind)
    k_lens = tgt_lens if kind == "dec" else src_lens
    q_lens = src_lens if kind == "enc" else tgt_lens
    assert graph.num_src_nodes() == sum(k_lens) and graph.num_dst_nodes() == sum(q_lens)

    attn = GraphAttention(d_model, heads).to(dtype)
    attn.engine = engine
    for p in attn.parameters():   # non-zero biases so their paths are tested too
        nn.init.normal_(p, std=0.3)
    x_q = torch.randn(sum(q_lens), d_model, dtype=dtype, requires_grad=True)
    x_k = x_q if kind != "cross" else torch.randn(sum(k_lens), d_model, dtype=dtype, requires_grad=True)

    def run(dense: bool):
        if kind == "cross":
            q = attn.project_q(x_q)
            k, v = attn.project_kv(x_k)
        else:
            q, k, v = attn.project_qkv(x_q)
        if dense:
            return dense_attention(attn, q, k, v, q_lens, k_lens, causal=(kind == "dec"))
        out, weights = attn.attend(graph, q, k, v)
        assert weights is None
        return out

    wrt = [x_q, attn.in_proj.weight, attn.in_proj.bias, attn.out_proj.weight, attn.out_proj.bias]
    if kind == "cross":
        wrt.append(x_k)
    probe = torch.randn(sum(q_lens), d_model, dtype=dtype)
    results = {}
    for dense in (False, True):
        out = run(dense)
        assert out.shape == (sum(q_lens), d_model) and out.dtype == dtype
        grads = torch.autograd.grad((out * probe).sum(), wrt)
        results[dense] = (out, grads)

    (g_out, g_grads), (d_out, d_grads) = results[False], results[True]
    assert rel_err(g_out, d_out) <= tol
    names = ["x_query", "in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias", "x_key"]
    for name, gg, dg in zip(names, g_grads, d_grads):
        assert dg.norm() > 0, name
        assert rel_err(gg, dg) <= tol, f"grad of {name}: {rel_err(gg, dg):.2e}"


def test_graph_attention_forward_matches_attend():
    """The module's forward (self and cross) is the projections followed by attend."""
    attn = GraphAttention(16, 4)
    graphs = build_graphs([3, 5], [2, 4])
    xs, xt = torch.randn(8, 16), torch.randn(6, 16)
    out, w = attn(graphs.enc, xs, need_weights=True)
    assert torch.allclose(out, attn.attend(graphs.enc, *attn.project_qkv(xs))[0])
    assert w.shape == (graphs.enc.num_edges(), 4)
    out = attn(graphs.cross, xt, xs)[0]
    ref = attn.attend(graphs.cross, attn.project_q(xt), *attn.project_kv(xs))[0]
    assert torch.allclose(out, ref)
    assert out.shape == (6, 16)


# --------------------------------------------------------------------------
# 2. whole model == torch.nn.Transformer
# --------------------------------------------------------------------------
_LAYER_NAMES = {
    "encoder": {"res_attn.norm": "norm1", "res_ffn.norm": "norm2"},
    "decoder": {"res_self.norm": "norm1", "res_cross.norm": "norm2", "res_ffn.norm": "norm3"},
}


def dense_param_name(name: str) -> str | None:
    """The nn.Transformer parameter holding graph-model parameter ``name`` (None: not in it)."""
    if re.fullmatch(r"(encoder|decoder)\.norm\.(weight|bias)", name):
        return name
    m = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m is None:
        return None  # embeddings, generator
    stack, i, module, kind = m.groups()
    if module in _LAYER_NAMES[stack]:
        module = _LAYER_NAMES[stack][module]
    elif module.startswith("ffn."):
        module = module[len("ffn."):]
    elif module.startswith("cross_attn."):
        module = "multihead_attn." + module[len("cross_attn."):]
    if module.endswith("attn.in_proj"):
        return f"{stack}.layers.{i}.{module}_{kind}"
    return f"{stack}.layers.{i}.{module}.{kind}"


def copy_by_name(model, dense: nn.Module) -> dict[str, str]:
    """Copy every encoder/decoder weight of ``model`` into ``dense``; the mapping must be 1:1."""
    dense_params = dict(dense.named_parameters())
    mapping = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            dn = dense_param_name(name)
            if dn is None:
                continue
            assert dn in dense_params, f"{name} -> {dn} missing from nn.Transformer"
            assert dense_params[dn].shape == p.shape, (name, dn)
            dense_params[dn].copy_(p)
            mapping[name] = dn
    assert sorted(mapping.values()) == sorted(dense_params), "every nn.Transformer weight copied once"
    return mapping


def plain_transformer(model) -> nn.Transformer:
    """A plain nn.Transformer (its own final norms), built here and filled by name."""
    c = model.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "enable_nested_tensor is True, but ... norm_first"
        dense = nn.Transformer(d_model=c["d_model"], nhead=c["heads"], num_encoder_layers=c["layers"],
                               num_decoder_layers=c["layers"], dim_feedforward=c["d_ff"], dropout=0.0,
                               batch_first=True, norm_first=c["norm_first"])
    for p in dense.parameters():   # so that a missed copy cannot pass by accident
        nn.init.normal_(p)
    copy_by_name(model, dense)
    return dense.to(next(model.parameters()).dtype)


def dense_decoder_states(emb_model, dense: nn.Transformer, batch) -> torch.Tensor:
    """Decoder output (before the generator) of ``dense`` for the real target nodes."""
    src, src_real = pad_rows(emb_model.embed_src(batch.src, batch.src_pos), batch.src_lens)
    tgt, tgt_real = pad_rows(emb_model.embed_tgt(batch.tgt, batch.tgt_pos), batch.tgt_lens)
    future = torch.ones(tgt.shape[1], tgt.shape[1], dtype=torch.bool).triu(1)
    h = dense(src, tgt, tgt_mask=future, src_key_padding_mask=~src_real,
              tgt_key_padding_mask=~tgt_real, memory_key_padding_mask=~src_real)
    return unpad_rows(h, batch.tgt_lens)


def graph_decoder_states(model, batch) -> torch.Tensor:
    memory, _ = model.encode(batch)
    h, _, _ = model.decoder(batch.graphs.dec, batch.graphs.cross,
                            model.embed_tgt(batch.tgt, batch.tgt_pos), memory)
    return h


def summed_label_logprob(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logp.gather(1, labels[:, None]).sum()


def randomise_norms_and_biases(model):
    """Default LayerNorm (1, 0) and zero-ish biases hide mapping mistakes; perturb them."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))


def test_dense_param_name_mapping_is_a_bijection():
    for norm_first in (True, False):
        model = small_model(norm_first)
        names = [n for n, _ in model.named_parameters()]
        dense_names = [dense_param_name(n) for n in names]
        kept = [d for d in dense_names if d is not None]
        assert len(kept) == len(set(kept))
        unmapped = {n for n, d in zip(names, dense_names) if d is None}
        assert unmapped == {"src_embed.embed.weight", "tgt_embed.embed.weight",
                            "generator.weight", "generator.bias"}
        assert sorted(kept) == sorted(n for n, _ in torch_transformer_from(model).named_parameters())


def test_prenorm_decoder_states_equal_plain_nn_transformer(engine):
    model = small_model(norm_first=True, engine=engine).eval()
    randomise_norms_and_biases(model)
    dense = plain_transformer(model).eval()
    batch = batch_of(*random_pairs(5))
    with torch.no_grad():
        h_graph = graph_decoder_states(model, batch)
        h_dense = dense_decoder_states(model, dense, batch)
    assert h_graph.shape == (sum(batch.tgt_lens), SMALL["d_model"])
    assert rel_err(h_graph, h_dense) <= 1e-4


@pytest.mark.parametrize("norm_first,extra", [(True, {}), (False, {}), (True, {"decoder_layers": 1})],
                         ids=["pre-norm", "post-norm", "pre-norm-1-decoder-layer"])
def test_model_log_probs_equal_torch_transformer_from(norm_first, extra, engine):
    model = small_model(norm_first, engine, **extra).eval()
    randomise_norms_and_biases(model)
    batch = batch_of(*random_pairs(5))
    dense = DenseTransformer(model).eval()
    with torch.no_grad():
        logp = model(batch)
        ref = dense(batch)
        h_ref = dense_decoder_states(model, dense.transformer, batch)
        h_graph = graph_decoder_states(model, batch)
    assert logp.shape == (sum(batch.tgt_lens), TGT_VOCAB)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(len(logp)), atol=1e-5)
    assert rel_err(logp, ref) <= 1e-4
    assert rel_err(h_graph, h_ref) <= 1e-4


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_gradients_equal_dense_model_sharing_no_parameters(norm_first, engine):
    """d(sum of label log-probs)/d(parameters): graph model vs an independent dense copy."""
    model = small_model(norm_first, engine).train()   # dropout is 0: training mode, no fast paths
    randomise_norms_and_biases(model)
    emb = copy.deepcopy(model)                # embeddings + generator for the dense model
    if norm_first:
        dense = plain_transformer(model).train()
    else:
        dense = torch_transformer_from(copy.deepcopy(model)).train()
        mapping_check = copy_by_name(model, dense)   # same names, values already equal
        assert mapping_check
    graph_params = dict(model.named_parameters())
    dense_params = dict(dense.named_parameters())
    emb_params = dict(emb.named_parameters())
    assert not {id(p) for p in graph_params.values()} & (
        {id(p) for p in dense_params.values()} | {id(p) for p in emb_params.values()})

    batch = batch_of(*random_pairs(5))
    summed_label_logprob(model(batch), batch.labels).backward()
    h = dense_decoder_states(emb, dense, batch)
    summed_label_logprob(emb.log_probs(h), batch.labels).backward()

    compared = 0
    for name, p in graph_params.items():
        dn = dense_param_name(name)
        q = emb_params[name] if dn is None else dense_params[dn]
        assert p.grad is not None and q.grad is not None, name
        assert rel_err(p.grad, q.grad) <= 1e-4, f"{name}: {rel_err(p.grad, q.grad):.2e}"
        compared += 1
    assert compared == len(graph_params)
    # a few specific ones really have signal
    for name in ("encoder.layers.0.self_attn.in_proj.weight", "decoder.layers.1.cross_attn.in_proj.weight",
                 "src_embed.embed.weight", "decoder.layers.0.res_self.norm.weight"):
        assert graph_params[name].grad.norm() > 0, name


# --------------------------------------------------------------------------
# 3. causality
# --------------------------------------------------------------------------
def test_target_token_changes_no_earlier_position_nor_other_pairs():
    model = small_model().eval()
    src, tgt = random_pairs(4, max_tgt=8)
    p = max(range(len(tgt)), key=lambda i: len(tgt[i]))   # the pair with the longest target
    batch = batch_of(src, tgt)
    slices = pair_slices(batch.tgt_lens)
    with torch.no_grad():
        base = model(batch)
        for t in range(batch.tgt_lens[p]):   # decoder input position t (0 is <sos>)
            ids = batch.tgt.clone()
            node = slices[p].start + t
            ids[node] = (int(ids[node]) + 5) % TGT_VOCAB
            changed = model(type(batch)(**{**batch.__dict__, "tgt": ids}))
            diff = (changed - base).abs().amax(-1)
            own = diff[slices[p]]
            assert t == 0 or float(own[:t].max()) <= 1e-6, f"position <{t} changed"
            assert float(own[t]) > 1e-4, f"position {t} ignores its own token"
            others = torch.cat([diff[s] for i, s in enumerate(slices) if i != p])
            assert float(others.max()) <= 1e-6, "another pair changed"


def test_decoder_jacobian_is_lower_triangular(engine):
    """Gradient form of causality: d out_i / d tgt_embedding_j == 0 for j > i."""
    model = small_model(engine=engine).double().eval()
    batch = batch_of([[3, 4, 5]], [[6, 7, 8, 9]])
    memory, _ = model.encode(batch)
    x = model.embed_tgt(batch.tgt, batch.tgt_pos).detach().requires_grad_(True)

    probe = torch.randn(model.d_model, dtype=torch.float64)   # not sum(): LayerNorm output sums are constant

    def f(x):
        return model.decoder(batch.graphs.dec, batch.graphs.cross, x, memory.detach())[0] @ probe

    jac = torch.autograd.functional.jacobian(f, x).abs().sum(-1)   # (m, m)
    m = batch.tgt_lens[0]
    above = torch.ones(m, m, dtype=torch.bool).triu(1)
    assert torch.all(jac[above] == 0), "a later target token influences an earlier position"
    assert torch.all(jac[~above] > 0), "a position ignores itself or an earlier token"


# --------------------------------------------------------------------------
# 4. batch independence
# --------------------------------------------------------------------------
def test_pair_outputs_do_not_depend_on_batch_mates_or_order():
    model = small_model().eval()
    src, tgt = random_pairs(6)
    with torch.no_grad():
        full = model(batch_of(src, tgt))
        ref = [full[s] for s in pair_slices([len(t) + 1 for t in tgt])]

        def check(order):
            out = model(batch_of([src[i] for i in order], [tgt[i] for i in order]))
            parts = [out[s] for s in pair_slices([len(tgt[i]) + 1 for i in order])]
            for i, part in zip(order, parts):
                torch.testing.assert_close(part, ref[i], rtol=1e-5, atol=1e-5)

        perm = list(range(len(src)))
        random.shuffle(perm)
        check(perm)
        check(list(reversed(range(len(src)))))
        for i in range(len(src)):
            check([i])
        check([4, 1])
        check([5, 0, 3])
        check([2, 2, 2])     # the same pair several times


# --------------------------------------------------------------------------
# 5. edge counts, no edges across pairs
# --------------------------------------------------------------------------
def check_graphs(graphs, src_lens, tgt_lens):
    expect = {
        "enc": [n * n for n in src_lens],
        "dec": [m * (m + 1) // 2 for m in tgt_lens],
        "cross": [n * m for n, m in zip(src_lens, tgt_lens)],
    }
    sides = {"enc": (src_lens, src_lens), "dec": (tgt_lens, tgt_lens), "cross": (src_lens, tgt_lens)}
    assert graphs.num_edges() == {k: sum(v) for k, v in expect.items()}
    for kind in KINDS:
        g = getattr(graphs, kind)
        k_lens, q_lens = sides[kind]
        assert g.num_src_nodes() == sum(k_lens) and g.num_dst_nodes() == sum(q_lens)
        keys, queries = (t.long() for t in g.edges())
        k_pair, q_pair = pair_ids(k_lens)[keys], pair_ids(q_lens)[queries]
        assert torch.equal(k_pair, q_pair), f"{kind}: an edge crosses pairs"
        per_pair = torch.bincount(q_pair, minlength=len(q_lens)).tolist()
        assert per_pair == expect[kind], kind
        # No duplicate edges, so the count means the exact edge set.
        pairs = set(zip(keys.tolist(), queries.tolist()))
        assert len(pairs) == len(keys), f"{kind}: duplicate edges"
        if kind == "dec":
            pos = local_pos(tgt_lens)
            assert bool((pos[keys] <= pos[queries]).all()), "decoder edge from the future"


@pytest.mark.parametrize("src_lens,tgt_lens", [
    ([1], [1]),
    ([3], [5]),
    ([1, 12, 4, 7, 2], [6, 1, 12, 3, 9]),
    ([5, 5, 5], [2, 2, 2]),
])
def test_build_graphs_edge_counts(src_lens, tgt_lens):
    check_graphs(build_graphs(src_lens, tgt_lens), src_lens, tgt_lens)
    check_graphs(build_graphs(src_lens, tgt_lens, GraphSpec()), src_lens, tgt_lens)


def test_make_batch_edge_counts():
    src, tgt = random_pairs(7)
    batch = batch_of(src, tgt)
    assert batch.src_lens == [len(s) for s in src]
    assert batch.tgt_lens == [len(t) + 1 for t in tgt]
    check_graphs(batch.graphs, batch.src_lens, batch.tgt_lens)
    assert torch.equal(batch.tgt_pos, local_pos(batch.tgt_lens))
    assert torch.equal(batch.src_pos, local_pos(batch.src_lens))
    for (s, t), ss, ts in zip(zip(src, tgt), pair_slices(batch.src_lens), pair_slices(batch.tgt_lens)):
        assert batch.src[ss].tolist() == s
        assert batch.tgt[ts].tolist() == [SOS, *t]
        assert batch.labels[ts].tolist() == [*t, EOS]


# --------------------------------------------------------------------------
# 6. bad input
# --------------------------------------------------------------------------
def raises_clean(fn, match: str) -> ValueError:
    """``fn()`` raises a ValueError matching ``match``, with no DGL error inside it."""
    with pytest.raises(ValueError, match=match) as info:
        fn()
    err = info.value
    assert not isinstance(err, dgl_error_types())
    for inner in (err.__cause__, err.__context__):
        assert not isinstance(inner, dgl_error_types()), f"raw DGL error leaked: {inner!r}"
    assert "DGLError" not in str(err) and "Check failed" not in str(err)
    return err


def test_empty_source_sequence():
    raises_clean(lambda: batch_of([[3, 4], []], [[5], [6]]), r"src_seqs\[1\].*non-empty")
    raises_clean(lambda: build_graphs([2, 0], [1, 1]), r"src_lens\[1\].*length 0")
    raises_clean(lambda: build_graphs([2, 2], [1, 0]), r"tgt_lens\[1\].*length 0")
    raises_clean(lambda: build_graphs([2, -1], [1, 1]), r"src_lens\[1\].*length -1")


def test_empty_batch():
    raises_clean(lambda: batch_of([], []), r"src_seqs.*empty batch")
    raises_clean(lambda: build_graphs([], []), r"src_lens.*empty batch")
    raises_clean(lambda: build_graphs([1], []), r"tgt_lens.*empty batch")


def test_positions_beyond_max_len():
    model = small_model(max_len=8).eval()
    ok = batch_of([[3] * 8], [[4] * 7])           # 8 source nodes, 8 target nodes: fits exactly
    assert model(ok).shape == (8, TGT_VOCAB)
    raises_clean(lambda: model(batch_of([[3] * 9], [[4]])), r"src: sequence length 9 .*max_len=8")
    raises_clean(lambda: model(batch_of([[3]], [[4] * 8])), r"tgt: sequence length 9 .*max_len=8")


@pytest.mark.parametrize("side,bad", [("src", -1), ("src", SRC_VOCAB), ("tgt", -3), ("tgt", TGT_VOCAB + 7)])
def test_token_ids_outside_vocabulary(side, bad):
    model = small_model().eval()
    src, tgt = [[3, 4, 5], [6]], [[7, 8], [9]]
    (src if side == "src" else tgt)[1][0] = bad
    vocab = SRC_VOCAB if side == "src" else TGT_VOCAB
    raises_clean(lambda: model(batch_of(src, tgt)),
                 rf"{side}: token id {bad} is outside the vocabulary \[0, {vocab}\)")


def test_d_model_not_divisible_by_heads():
    raises_clean(lambda: GraphAttention(10, 3), r"d_model=10.*heads=3")
    raises_clean(lambda: GraphAttention(8, 0), r"d_model=8.*heads=0")
    raises_clean(lambda: make_model(SRC_VOCAB, TGT_VOCAB, layers=1, d_model=10, heads=3), r"d_model=10.*heads=3")
    raises_clean(lambda: make_model(SRC_VOCAB, TGT_VOCAB, layers=1, d_model=8, heads=0), r"heads")


def test_mismatched_batch_lists():
    raises_clean(lambda: batch_of([[3], [4]], [[5]]), r"src_seqs has 2 .*tgt_seqs has 1")
    raises_clean(lambda: batch_of([[3]], [[5], [6]]), r"src_seqs has 1 .*tgt_seqs has 2")
    raises_clean(lambda: build_graphs([1, 2], [1]), r"src_lens has 2 .*tgt_lens has 1")


def test_bad_structures_and_tokens_never_reach_dgl():
    """Inputs that DGL itself would choke on are caught first, with a ValueError."""
    raises_clean(lambda: build_graphs([2], [2], GraphSpec(enc="bogus")), r"unknown attention structure 'bogus'")
    raises_clean(lambda: build_graphs([2], [3], GraphSpec(dec="complete")), r"future target position")

    def out_of_range(n_keys, n_queries):
        return torch.tensor([n_keys]), torch.tensor([0])

    raises_clean(lambda: build_graphs([2], [2], GraphSpec(cross=out_of_range)), r"key index out of range")

    def starves_a_query(n_keys, n_queries):
        return torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)

    raises_clean(lambda: build_graphs([2], [2], GraphSpec(enc=starves_a_query)), r"no incoming edge")
    raises_clean(lambda: batch_of([["a", "b"]], [[3]]), r"src_seqs")
    raises_clean(lambda: batch_of([[3]], [["x"]]), r"tgt_seqs")


# --------------------------------------------------------------------------
# 7. graphs stay clean; attention weights
# --------------------------------------------------------------------------
def assert_graph_empty(g):
    """An AttentionGraph caches only index structures (CSR patterns, the DGL view): nothing
    that depends on features, and no data on its DGL view."""
    for key, value in g.derived.items():
        if key == "dgl":
            for nt in value.ntypes:
                assert len(value.nodes[nt].data) == 0, f"node features left on {nt}: {list(value.nodes[nt].data)}"
            for et in value.canonical_etypes:
                assert len(value.edges[et].data) == 0, f"edge features left on {et}: {list(value.edges[et].data)}"
        else:
            floats = [n for n, t in vars(value).items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
            assert not floats, f"feature-like tensors cached on the graph under {key!r}: {floats}"


def test_forward_leaves_no_features_on_the_graphs(engine):
    model = small_model(engine=engine).train()
    batch = batch_of(*random_pairs(4))
    logp, _ = model(batch, return_attention=True)
    summed_label_logprob(logp, batch.labels).backward()
    model.eval()
    with torch.no_grad():
        model(batch)
    for kind in KINDS:
        g = getattr(batch.graphs, kind)
        assert_graph_empty(g)
        assert ("dgl" in g.derived) == (engine == "dgl"), "the DGL view is built exactly when DGL runs"


def test_returned_attention_weights_are_softmaxes_over_in_edges(engine):
    model = small_model(engine=engine).eval()
    batch = batch_of(*random_pairs(5))
    with torch.no_grad():
        logp, attn = model(batch, return_attention=True)
        plain = model(batch)
    assert torch.equal(logp, plain)
    assert set(attn) == set(KINDS)
    heads = SMALL["heads"]
    for kind in KINDS:
        g = getattr(batch.graphs, kind)
        keys, queries = (t.long() for t in g.edges())
        assert len(attn[kind]) == SMALL["layers"]
        for w in attn[kind]:
            assert w.shape == (g.num_edges(), heads)
            assert not w.requires_grad
            assert bool((w >= 0).all())
            sums = torch.zeros(g.num_dst_nodes(), heads).index_add_(0, queries, w)
            torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)

    # Scattered into dense (B, H, L, L) matrices the decoder weights are lower triangular.
    pos, pair = local_pos(batch.tgt_lens), pair_ids(batch.tgt_lens)
    keys, queries = (t.long() for t in batch.graphs.dec.edges())
    L = max(batch.tgt_lens)
    for w in attn["dec"]:
        dense = torch.zeros(len(batch), heads, L, L)
        dense[pair[queries], :, pos[queries], pos[keys]] = w
        assert torch.all(dense.triu(1) == 0)
        rows = dense.sum(-1)
        real = (torch.arange(L)[None, :] < torch.tensor(batch.tgt_lens)[:, None])[:, None, :]
        torch.testing.assert_close(rows[real.expand_as(rows)], torch.ones(int(real.sum()) * heads))
    # First query of every pair sees only itself.
    first = pos[queries] == 0
    assert bool((pos[keys][first] == 0).all())
    assert torch.allclose(attn["dec"][0][first], torch.ones(int(first.sum()), heads))


def test_attention_weights_equal_dense_softmax(engine):
    """Layer-0 encoder weights equal softmax(q k^T / sqrt(d_k)) over the real keys."""
    model = small_model(engine=engine).eval()
    batch = batch_of(*random_pairs(4))
    layer = model.encoder.layers[0]
    with torch.no_grad():
        _, attn = model(batch, return_attention=True)
        x = layer.res_attn.inp(model.embed_src(batch.src, batch.src_pos))
        q, k, _ = layer.self_attn.project_qkv(x)
        qp, real = pad_rows(q, batch.src_lens)
        kp, _ = pad_rows(k, batch.src_lens)
        scores = torch.einsum("bihd,bjhd->bhij", qp, kp) / layer.self_attn.d_k ** 0.5
        probs = scores.masked_fill(~real[:, None, None, :], float("-inf")).softmax(-1)
    keys, queries = (t.long() for t in batch.graphs.enc.edges())
    pos, pair = local_pos(batch.src_lens), pair_ids(batch.src_lens)
    expected = probs[pair[queries], :, pos[queries], pos[keys]]
    torch.testing.assert_close(attn["enc"][0], expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# 8. float64
# --------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_float64_model(norm_first, engine):
    model = small_model(norm_first, engine).eval()
    randomise_norms_and_biases(model)
    model64 = copy.deepcopy(model).double()
    assert all(p.dtype == torch.float64 for p in model64.parameters())
    batch = batch_of(*random_pairs(5))
    logp64 = model64(batch)
    assert logp64.dtype == torch.float64
    torch.testing.assert_close(logp64.exp().sum(-1), torch.ones(len(logp64), dtype=torch.float64))
    with torch.no_grad():
        assert rel_err(model(batch), logp64) <= 1e-4
        assert rel_err(logp64, DenseTransformer(model64).eval()(batch)) <= 1e-9
    summed_label_logprob(logp64, batch.labels).backward()
    for name, p in model64.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float64, name
        assert torch.isfinite(p.grad).all(), name
    _, attn = model64(batch, return_attention=True)
    assert all(w.dtype == torch.float64 for ws in attn.values() for w in ws)


@pytest.mark.parametrize("kind", ["standard", "universal"])
def test_training_path_from_logits_equals_log_probs_path(kind, engine):
    """What training computes (forward(batch, logits=True) + the fused loss) is the public
    forward's log-probabilities + label_smoothed_loss: the same loss and parameter gradients
    (float64, both model kinds), and the log-softmax of the logits is the public output."""
    extra = {"max_depth": 3} if kind == "universal" else {"layers": 2}
    cfg = config_from_dict({"model": dict(kind=kind, d_model=32, d_ff=64, heads=4, dropout=0.0, max_len=64,
                                          share_embeddings=True, **extra)})
    torch.manual_seed(5)
    model = set_engine(build_model(cfg.model, TGT_VOCAB, TGT_VOCAB), engine).double()
    randomise_norms_and_biases(model)
    batch = batch_of(*random_pairs(5))
    grads, losses = [], []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        if fused:
            loss, nll = label_smoothed_loss_from_logits(model(batch, logits=True), batch.labels, 0.1, 0)
        else:
            loss, nll = label_smoothed_loss(model(batch), batch.labels, 0.1, 0)
        (loss / batch.labels.numel()).backward()
        losses.append((float(loss.detach()), float(nll)))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        logits, attn = model(batch, return_attention=True, logits=True)
        torch.testing.assert_close(torch.log_softmax(logits, -1), model(batch), rtol=1e-12, atol=1e-12)
    assert set(attn) == {"enc", "dec", "cross"}


# --------------------------------------------------------------------------
# 9. built from one config object
# --------------------------------------------------------------------------
def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_model_from_config_object_equals_keyword_and_positional_forms():
    config = TransformerConfig(SRC_VOCAB, TGT_VOCAB, layers=2, d_model=32, d_ff=64, heads=4, max_len=64)
    torch.manual_seed(3)
    a = GraphTransformer(config)
    torch.manual_seed(3)
    b = GraphTransformer(SRC_VOCAB, TGT_VOCAB, layers=2, d_model=32, d_ff=64, heads=4, max_len=64)
    torch.manual_seed(3)
    c = GraphTransformer(SRC_VOCAB, TGT_VOCAB, 2, 32, 64, 4, 0.1, True, False, False, 64)  # the old positional order
    torch.manual_seed(3)
    d = make_model(SRC_VOCAB, TGT_VOCAB, 2, 32, 64, 4, max_len=64)
    assert a.config is config and b.config == config == c.config == d.config
    assert _same_state(a, b) and _same_state(a, c) and _same_state(a, d)
    assert list(inspect.signature(make_model).parameters)[:4] == ["src_vocab", "tgt_vocab", "layers", "d_model"]
    assert list(inspect.signature(GraphTransformer).parameters) == list(TransformerConfig.POSITIONAL)
    with pytest.raises(TypeError, match="layers"):
        GraphTransformer(SRC_VOCAB, TGT_VOCAB, 2, layers=3)


def test_config_reads_as_the_mapping_it_always_was():
    model = make_model(SRC_VOCAB, TGT_VOCAB, **SMALL)
    c = model.config
    assert c["d_model"] == c.d_model == 32 and c["layers"] == 2 and c["kind"] == "standard"
    assert dict(c)["aggregator"] == "attention" and set(c) >= {"src_vocab", "tgt_vocab", "decoder_layers"}
    with pytest.raises(KeyError):
        c["max_depth"]  # a universal option is not the standard model's business
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 64


def test_make_model_ties_the_generator_exactly_when_embeddings_are_shared():
    shared = dict(SMALL, share_embeddings=True)
    m = make_model(SRC_VOCAB, SRC_VOCAB, **shared)
    assert m.generator.weight is m.tgt_embed.weight and m.config.tie_generator is True
    m = make_model(SRC_VOCAB, SRC_VOCAB, tie_generator=False, **shared)
    assert m.generator.weight is not m.tgt_embed.weight
    m = GraphTransformer(SRC_VOCAB, SRC_VOCAB, **shared)  # the class itself defaults to untied, as always
    assert m.generator.weight is not m.tgt_embed.weight and m.config.tie_generator is False
    raises_clean(lambda: make_model(SRC_VOCAB, TGT_VOCAB, **shared), r"share_embeddings needs one joint vocabulary")


def test_build_model_takes_only_the_options_of_its_kind():
    cfg = config_from_dict({"model": dict(layers=3, decoder_layers=2, d_model=32, d_ff=64, heads=4,
                                          max_depth=5, tie_generator=None, share_embeddings=True)})
    model = build_model(cfg.model, SRC_VOCAB, SRC_VOCAB)
    assert isinstance(model, GraphTransformer) and not hasattr(model.config, "max_depth")
    assert (len(model.encoder.layers), len(model.decoder.layers)) == (3, 2)
    assert model.generator.weight is model.tgt_embed.weight  # null: tie because embeddings are shared
    torch.manual_seed(0)
    a = build_model(cfg.model, SRC_VOCAB, SRC_VOCAB)
    torch.manual_seed(0)
    b = make_model(SRC_VOCAB, SRC_VOCAB, layers=3, decoder_layers=2, d_model=32, d_ff=64, heads=4,
                   share_embeddings=True)
    assert a.config == b.config and _same_state(a, b)
