"""Decoding with the dense baseline (``nn.Transformer``'s weights), two ways.

Both are driven by :func:`transformer_graph.inference.decoding.beam_search` itself, so the
search, the length limits and the scoring are exactly those of the graph decoders and
only the model evaluation differs.

* :class:`DenseRecomputeState`: ``nn.TransformerDecoder`` keeps no key/value cache, so it
  reruns the whole decoder over every prefix each step (all live hypotheses have the same
  prefix length in lockstep, so the target side needs no padding), against its sentence's
  encoder memory (padded to the batch's longest source, with a key padding mask).
* :class:`DenseKVState`: what ``nn.Transformer``-style code with its own key/value cache
  does (a generation library's incremental decoder): the decoder layers' own weights and
  norms run on the new token only; per layer a preallocated self-attention cache
  (hypotheses, heads, positions, d_k) receives the new keys/values and is reordered with
  ``index_select`` into a second buffer when the search reorders its hypotheses; the
  encoder memory's cross-attention keys/values are projected once per sentence, and the
  beams of a sentence attend to them together (its beams are the query rows of one
  ``scaled_dot_product_attention`` call: no per-beam copy of the memory). It is the fair
  competitor of the graph's incremental decoder.

Neither supports other attention structures than ``nn.Transformer``'s (causal decoder,
complete cross-attention).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from transformer_graph.data.batch import positions
from transformer_graph.inference.decoding import Hypothesis, beam_search
from transformer_graph.nn.dense import DenseTransformer, pad


def _encode(dense: DenseTransformer, src_seqs: Sequence[Sequence[int]], device):
    """(padded encoder memory (B, S, d), key padding mask (B, S): True = padding)."""
    lens = [len(s) for s in src_seqs]
    for i, n in enumerate(lens):
        if n == 0:
            raise ValueError(f"src_seqs[{i}]: expected a non-empty source sequence, got length 0")
    model = dense.graph_model
    src = torch.as_tensor([t for s in src_seqs for t in s], dtype=torch.int64, device=device)
    x, src_mask = pad(model.embed_src(src, positions(lens).to(device)), lens)
    return dense.transformer.encoder(x, src_key_padding_mask=src_mask), src_mask


class DenseRecomputeState:
    """Decoder state for :func:`beam_search`: padded encoder memory plus the token history."""

    def __init__(self, dense: DenseTransformer, src_seqs: Sequence[Sequence[int]], device):
        self.dense, self.model = dense, dense.graph_model
        self.memory, self.src_mask = _encode(dense, src_seqs, device)
        self.history: torch.Tensor | None = None  # (hyps, t) tokens fed so far

    def step(self, tokens: torch.Tensor, t: int, sent: torch.Tensor) -> torch.Tensor:
        hist = tokens[:, None] if self.history is None else torch.cat([self.history, tokens[:, None]], 1)
        self.history = hist
        n_hyp, device = hist.shape[0], hist.device
        pos = torch.arange(t + 1, device=device).repeat(n_hyp)
        x = self.model.embed_tgt(hist.reshape(-1), pos).view(n_hyp, t + 1, -1)
        causal = torch.ones(t + 1, t + 1, dtype=torch.bool, device=device).triu(1)
        h = self.dense.transformer.decoder(x, self.memory[sent], tgt_mask=causal, tgt_is_causal=True,
                                           memory_key_padding_mask=self.src_mask[sent])
        return self.model.log_probs(h[:, -1])

    def reorder(self, parents: torch.Tensor) -> None:
        self.history = self.history[parents]


class DenseKVState:
    """Decoder state for :func:`beam_search`: ``nn.TransformerDecoder``'s layers stepped one
    token at a time with per-layer self-attention key/value caches (see the module doc).

    ``max_hyps`` and ``max_positions`` size the caches (sentences x beam, the longest length
    limit); they grow when exceeded.
    """

    def __init__(self, dense: DenseTransformer, src_seqs: Sequence[Sequence[int]], device,
                 max_hyps: int | None = None, max_positions: int | None = None):
        self.dense, self.model = dense, dense.graph_model
        decoder = dense.transformer.decoder
        self.layers, self.final_norm = list(decoder.layers), decoder.norm
        first = self.layers[0].self_attn
        self.d_model, self.heads = first.embed_dim, first.num_heads
        self.d_k = self.d_model // self.heads
        memory, src_mask = _encode(dense, src_seqs, device)
        d = self.d_model
        # Cross-attention keys/values of every sentence, once per layer: (B, heads, S, d_k).
        self.memory_kv = [tuple(self._heads(kv) for kv in
                                F.linear(memory, layer.multihead_attn.in_proj_weight[d:],
                                         layer.multihead_attn.in_proj_bias[d:]).chunk(2, dim=-1))
                          for layer in self.layers]
        self.attend_mask = ~src_mask[:, None, None, :]          # (B, 1, 1, S): True = attend
        self.slots = max(1, max_hyps or len(src_seqs))
        self.positions = max(1, max_positions or self.model.pos.max_len)
        self.cache: list[list[torch.Tensor] | None] = [None] * len(self.layers)    # [k, v, spare k, spare v]
        self.t, self.n = -1, 0
        self._groups = None                                      # (sent, live sentences, beams, cross k/v)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, d) -> (B, heads, S, d_k)."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_k).transpose(1, 2)

    def _grow(self, n: int, t: int) -> None:
        slots = self.slots if n <= self.slots else max(n, 2 * self.slots)
        positions = self.positions if t < self.positions else max(t + 1, 2 * self.positions)
        if (slots, positions) == (self.slots, self.positions):
            return
        for i, bufs in enumerate(self.cache):
            if bufs is not None:
                grown = [b.new_empty(slots, self.heads, positions, self.d_k) for b in bufs]
                for g, b in zip(grown, bufs):
                    g[:self.slots, :, :self.positions] = b
                self.cache[i] = grown
        self.slots, self.positions = slots, positions

    def _cross_groups(self, sent: torch.Tensor):
        """The live sentences, beams per sentence, and their cross keys/values/mask; rebuilt
        only when the live sentences change (a sentence finished), not every step."""
        if self._groups is not None and self._groups[0].shape == sent.shape and torch.equal(self._groups[0], sent):
            return self._groups
        sents, counts = torch.unique_consecutive(sent, return_counts=True)
        beams = int(counts[0]) if bool((counts == counts[0]).all()) else None
        idx = sents if beams is not None else sent     # unequal beams (tiny vocabularies): per hypothesis
        kv = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in self.memory_kv]
        self._groups = (sent, sents, beams, kv, self.attend_mask.index_select(0, idx))
        return self._groups

    def _self_block(self, i: int, layer, a: torch.Tensor, t: int, n: int) -> torch.Tensor:
        attn = layer.self_attn
        q, k, v = F.linear(a, attn.in_proj_weight, attn.in_proj_bias).view(n, 3, self.heads, self.d_k).unbind(1)
        if self.cache[i] is None:
            self.cache[i] = [a.new_empty(self.slots, self.heads, self.positions, self.d_k) for _ in range(4)]
        kb, vb = self.cache[i][0], self.cache[i][1]
        kb[:n, :, t] = k
        vb[:n, :, t] = v
        out = F.scaled_dot_product_attention(q[:, :, None], kb[:n, :, :t + 1], vb[:n, :, :t + 1])
        return attn.out_proj(out.reshape(n, self.d_model))

    def _cross_block(self, i: int, layer, a: torch.Tensor, groups, n: int) -> torch.Tensor:
        attn, (_, _, beams, kv, mask) = layer.multihead_attn, groups
        d = self.d_model
        q = F.linear(a, attn.in_proj_weight[:d], attn.in_proj_bias[:d])
        if beams is not None:   # a sentence's beams are the query rows of one attention
            q = q.view(n // beams, beams, self.heads, self.d_k).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, *kv[i], attn_mask=mask).transpose(1, 2)
        else:
            q = q.view(n, self.heads, 1, self.d_k)
            out = F.scaled_dot_product_attention(q, *kv[i], attn_mask=mask)
        return attn.out_proj(out.reshape(n, d))

    def step(self, tokens: torch.Tensor, t: int, sent: torch.Tensor) -> torch.Tensor:
        n = tokens.numel()
        self._grow(n, t)
        x = self.model.embed_tgt(tokens, torch.full_like(tokens, t))
        groups = self._cross_groups(sent)
        for i, layer in enumerate(self.layers):   # nn.TransformerDecoderLayer.forward, one token
            if layer.norm_first:
                x = x + layer.dropout1(self._self_block(i, layer, layer.norm1(x), t, n))
                x = x + layer.dropout2(self._cross_block(i, layer, layer.norm2(x), groups, n))
                x = x + layer._ff_block(layer.norm3(x))
            else:
                x = layer.norm1(x + layer.dropout1(self._self_block(i, layer, x, t, n)))
                x = layer.norm2(x + layer.dropout2(self._cross_block(i, layer, x, groups, n)))
                x = layer.norm3(x + layer._ff_block(x))
        if self.final_norm is not None:
            x = self.final_norm(x)
        self.t, self.n = t, n
        return self.model.log_probs(x)

    def reorder(self, parents: torch.Tensor) -> None:
        m, t = parents.numel(), self.t
        self._grow(m, t)
        for bufs in self.cache:
            if bufs is None:
                continue
            for j in (0, 1):   # into the spare buffer, then swap: no allocation per step
                torch.index_select(bufs[j][:self.n, :, :t + 1], 0, parents, out=bufs[j + 2][:m, :, :t + 1])
                bufs[j], bufs[j + 2] = bufs[j + 2], bufs[j]
        self.n = m


@torch.no_grad()
def dense_beam_search(dense: DenseTransformer, src_seqs: Sequence[Sequence[int]], *, sos: int, eos: int,
                      beam: int = 5, kv_cache: bool = False, **kwargs) -> list[list[Hypothesis]]:
    """:func:`~transformer_graph.inference.decoding.beam_search` with the dense model: full
    recomputation, or with ``kv_cache=True`` :class:`DenseKVState`'s key/value caches."""
    def factory(model, seqs, spec, device):
        if kv_cache:
            return DenseKVState(dense, seqs, device, max_hyps=len(seqs) * beam)
        return DenseRecomputeState(dense, seqs, device)

    return beam_search(dense.graph_model, src_seqs, sos=sos, eos=eos, beam=beam,
                       state_factory=factory, **kwargs)
