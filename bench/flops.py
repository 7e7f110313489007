"""Analytic floating-point operation counts of the encoder-decoder Transformer.

Counted are the multiply-adds of matrix products (2 FLOPs each), which is what a
machine's matrix-product ceiling can be compared with; layer norms, softmax,
dropout and the optimizer are memory-bound and left out, as is usual for
"model FLOP/s". Per token (d = d_model, f = d_ff, V = target vocabulary):

===========================  ===================================================
encoder layer, source token  q, k, v, out projections 4*d*d, MLP 2*d*f
decoder layer, target token  self q, k, v, out 4*d*d; cross q, out 2*d*d; MLP 2*d*f
decoder layer, source token  cross k, v 2*d*d (computed once per source token)
attention, per edge          score q.k (d) + weighted value sum (d), all heads
generator, target token      d*V
===========================  ===================================================

each times 2 FLOPs per multiply-add. That is 2 x (non-embedding parameters) per
token, plus the attention edges, plus the generator. A training step costs three
forward passes (the backward pass computes gradients for both the inputs and the
weights of every product): ``6 x parameters x tokens`` plus 3 x the attention and
generator terms.

The graph model computes exactly one score per edge of its graphs: the complete
encoder graph has n^2 edges, the causal decoder graph m(m+1)/2 and the cross graph
n*m. A padded dense model computes every cell of its padded rectangles
(``padded=True``): B*L^2 scores per self-attention, the causal mask applied after
computing them, and projections of padding rows. The *useful* count (no padding)
is the one model FLOP/s are reported in, for both models, so wasted work shows as
a lower rate.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """The sizes that determine a model's FLOPs."""

    layers: int
    decoder_layers: int
    d_model: int
    d_ff: int
    tgt_vocab: int

    @classmethod
    def of(cls, model) -> ModelShape:
        """From a :class:`~transformer_graph.nn.model.GraphTransformer` (its ``config``)."""
        c = model.config
        return cls(c["layers"], c["decoder_layers"] or c["layers"], c["d_model"], c["d_ff"], c["tgt_vocab"])


def forward_flops(shape: ModelShape, src_lens: Sequence[int], tgt_lens: Sequence[int],
                  padded: bool = False) -> dict[str, int]:
    """FLOPs of one forward pass over a batch, split into ``linear``, ``attention``,
    ``generator`` and ``total``. ``tgt_lens`` count decoder nodes (target + 1)."""
    src_lens, tgt_lens = [int(n) for n in src_lens], [int(m) for m in tgt_lens]
    if len(src_lens) != len(tgt_lens) or not src_lens:
        raise ValueError(f"forward_flops: expected one (source, target) length pair per sentence, got "
                         f"{len(src_lens)} source and {len(tgt_lens)} target lengths")
    d, f = shape.d_model, shape.d_ff
    if padded:
        b, ls, lt = len(src_lens), max(src_lens), max(tgt_lens)
        n_src, n_tgt = b * ls, b * lt
        enc_edges, dec_edges, cross_edges = b * ls * ls, b * lt * lt, b * lt * ls
    else:
        n_src, n_tgt = sum(src_lens), sum(tgt_lens)
        enc_edges = sum(n * n for n in src_lens)
        dec_edges = sum(m * (m + 1) // 2 for m in tgt_lens)
        cross_edges = sum(n * m for n, m in zip(src_lens, tgt_lens))
    linear = 2 * (shape.layers * n_src * (4 * d * d + 2 * d * f)
                  + shape.decoder_layers * (n_tgt * (6 * d * d + 2 * d * f) + n_src * 2 * d * d))
    attention = 2 * 2 * d * (shape.layers * enc_edges + shape.decoder_layers * (dec_edges + cross_edges))
    # Both models apply the generator to real target tokens only (the dense one unpads first).
    generator = 2 * sum(tgt_lens) * d * shape.tgt_vocab
    return {"linear": linear, "attention": attention, "generator": generator,
            "total": linear + attention + generator}


def training_flops(shape: ModelShape, src_lens: Sequence[int], tgt_lens: Sequence[int],
                   padded: bool = False) -> int:
    """FLOPs of one training step (forward + backward = 3 forward passes)."""
    return 3 * forward_flops(shape, src_lens, tgt_lens, padded)["total"]


def attention_flops(num_edges: int, d_model: int, backward: bool = True) -> int:
    """FLOPs of attention alone over ``num_edges`` (query, key) pairs, all heads."""
    return (3 if backward else 1) * 2 * 2 * d_model * num_edges
