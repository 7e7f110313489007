"""Decoding with the dense baseline: ``nn.Transformer`` rerun over every whole prefix.

``nn.TransformerDecoder`` keeps no key/value cache, so the dense baseline
recomputes: each step pads nothing on the target side (all live hypotheses
have the same prefix length in lockstep) and reruns the whole decoder over the
prefixes, against its sentence's encoder memory (padded to the batch's longest
source, with a key padding mask). It is driven by
:func:`transformer_graph.inference.decoding.beam_search` itself, so the search, the
length limits and the scoring are exactly those of the graph decoders and only
the model evaluation differs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from transformer_graph.data.batch import positions
from transformer_graph.inference.decoding import Hypothesis, beam_search
from transformer_graph.nn.dense import DenseTransformer, pad


class DenseRecomputeState:
    """Decoder state for :func:`beam_search`: padded encoder memory plus the token history."""

    def __init__(self, dense: DenseTransformer, src_seqs: Sequence[Sequence[int]], device):
        lens = [len(s) for s in src_seqs]
        for i, n in enumerate(lens):
            if n == 0:
                raise ValueError(f"src_seqs[{i}]: expected a non-empty source sequence, got length 0")
        self.dense, self.model = dense, dense.graph_model
        src = torch.as_tensor([t for s in src_seqs for t in s], dtype=torch.int64, device=device)
        x, self.src_mask = pad(self.model.embed_src(src, positions(lens).to(device)), lens)
        self.memory = dense.transformer.encoder(x, src_key_padding_mask=self.src_mask)
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


@torch.no_grad()
def dense_beam_search(dense: DenseTransformer, src_seqs: Sequence[Sequence[int]], *, sos: int, eos: int,
                      beam: int = 5, **kwargs) -> list[list[Hypothesis]]:
    """:func:`~transformer_graph.inference.decoding.beam_search` with the dense model (full recomputation)."""
    def factory(model, seqs, spec, device):
        return DenseRecomputeState(dense, seqs, device)

    return beam_search(dense.graph_model, src_seqs, sos=sos, eos=eos, beam=beam,
                       state_factory=factory, **kwargs)
