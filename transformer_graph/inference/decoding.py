"""Greedy and beam-search decoding on the graph, incremental by default.

Every decoding step adds one target node per live hypothesis and runs message
passing only *into the new nodes*:

* self-attention: the new node of hypothesis h receives from h's cached prefix
  nodes and from itself (keys/values of earlier positions are kept per layer and
  never recomputed);
* encoder-decoder attention: the new node receives straight from the source
  nodes of its sentence. The k hypotheses of a sentence share those source
  nodes: the graph has edges to each of them, nothing is copied per beam.

``incremental=False`` instead rebuilds every prefix and reruns the whole decoder
each step (what the DGL reference did); it exists as the correctness and speed
baseline. Both give the same tokens and scores.

Beam search keeps k live hypotheses per sentence in lockstep, batched over all
sentences; a hypothesis that emits <eos> among the top k candidates is finished
(scored with the GNMT length penalty ((5 + len) / 6) ** alpha) and never
extended; a sentence stops once it has k finished hypotheses or reaches its
maximum length, and decoding stops as soon as every sentence has stopped.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from transformer_graph.data.batch import positions
from transformer_graph.graphs.build import GraphSpec, batch_graph, join, pair_edges


@runtime_checkable
class DecoderState(Protocol):
    """What :func:`beam_search` drives (fairseq's incremental-decoder contract): the state of
    every live hypothesis of every sentence, in lockstep.

    ``step(tokens, t, sent)`` feeds position ``t``'s token of each live hypothesis
    (``tokens``: (hyps,), ``sent``: (hyps,) the sentence each belongs to) and returns the
    log-probabilities of the next token, (hyps, vocab). ``reorder(parents)`` keeps, in the
    given order, the hypotheses the search continues (``parents``: (hyps',) indices into
    the previous step's rows), so the next ``step`` sees the survivors' own history.
    The graph's incremental and recompute states and the dense baseline all satisfy it.
    """

    def step(self, tokens: torch.Tensor, t: int, sent: torch.Tensor) -> torch.Tensor: ...

    def reorder(self, parents: torch.Tensor) -> None: ...


@dataclass
class Hypothesis:
    tokens: list[int]           # generated ids, without <sos>/<eos>
    score: float                # length-normalised log-probability (what beam search ranks by)
    logprob: float              # raw sum of log-probabilities, <eos> included when emitted
    finished: bool = True       # False when cut off by the length limit


def length_penalty(length: torch.Tensor | int, alpha: float):
    """GNMT length penalty ((5 + |Y|) / 6) ** alpha (1 when alpha = 0)."""
    return ((5.0 + length) / 6.0) ** alpha


def _row_edges(fn, n_keys: int, n_queries: int, row: int):
    """Edges into query ``row`` only, from the pair-level structure (cached)."""
    keys, queries = pair_edges(fn, n_keys, n_queries, False)
    return keys[queries == row]


class _Source:
    """Encoded sources: memory, per-layer cross keys/values, node offsets."""

    def __init__(self, model, src_seqs: Sequence[Sequence[int]], spec: GraphSpec, device):
        self.lens = [len(s) for s in src_seqs]
        for i, n in enumerate(self.lens):
            if n == 0:
                raise ValueError(f"src_seqs[{i}]: expected a non-empty source sequence, got length 0")
        src = torch.as_tensor([t for s in src_seqs for t in s], dtype=torch.int64, device=device)
        enc_graph = batch_graph(spec.fn("enc"), self.lens, self.lens, device)
        x = model.embed_src(src, positions(self.lens).to(device))
        self.memory, _ = model.encoder(enc_graph, x)
        self.memory_kv = model.decoder.memory_kv(self.memory)
        self.offsets = torch.tensor([0] + self.lens[:-1]).cumsum(0)
        self.cross_fn = spec.fn("cross")
        self.device = device
        self._cache: dict = {}

    def cross_graph(self, sent: torch.Tensor, n_queries: int, rows: Sequence[int]):
        """Edges from each hypothesis's sentence's source nodes into its query nodes.

        Hypothesis h has ``len(rows)`` query nodes at target positions ``rows`` (of
        ``n_queries`` total positions), numbered h*len(rows) + r. No source node is
        copied: the k hypotheses of a sentence all receive from the same nodes.
        """
        rows = tuple(rows)
        sent_l = sent.tolist()
        parts = [self._local(self.lens[s], n_queries, rows) for s in sent_l]
        return join(parts, self.offsets[sent_l], torch.arange(len(sent_l)) * len(rows), sum(self.lens),
                    len(sent_l) * len(rows), self.device)

    def _local(self, n: int, n_queries: int, rows: tuple):
        key = (n, n_queries, rows)
        if key not in self._cache:
            keys, queries = pair_edges(self.cross_fn, n, n_queries, False)
            parts = [(keys[queries == r], torch.full(((queries == r).sum(),), i, dtype=torch.int64))
                     for i, r in enumerate(rows)]
            self._cache[key] = (torch.cat([k for k, _ in parts]), torch.cat([q for _, q in parts]))
        return self._cache[key]


class _IncrementalState:
    """Per-layer key/value cache of every live hypothesis: (hyps, t, heads, d_k)."""

    def __init__(self, model, source: _Source, spec: GraphSpec):
        self.model, self.source, self.dec_fn = model, source, spec.fn("dec")
        self.cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.decoder.layers)

    def step(self, tokens: torch.Tensor, t: int, sent: torch.Tensor) -> torch.Tensor:
        n_hyp, device = tokens.numel(), tokens.device
        x = self.model.embed_tgt(tokens, torch.full_like(tokens, t))
        # The growing graph: query node h (hypothesis h's new token) receives from key nodes
        # h*(t+1) + j for the prefix positions j the decoder structure allows at position t
        # (all j <= t for the causal graph); keys are the cached prefix plus the new nodes.
        local = _row_edges(self.dec_fn, t + 1, t + 1, t)
        self_graph = join([(local, torch.zeros_like(local))] * n_hyp, torch.arange(n_hyp) * (t + 1),
                          torch.arange(n_hyp), n_hyp * (t + 1), n_hyp, device)
        cross_graph = self.source.cross_graph(sent, t + 1, [t])

        def hook(layer_idx):
            def extend(k, v):
                old = self.cache[layer_idx]
                k_all = k[:, None] if old is None else torch.cat([old[0], k[:, None]], 1)
                v_all = v[:, None] if old is None else torch.cat([old[1], v[:, None]], 1)
                self.cache[layer_idx] = (k_all, v_all)
                return k_all.flatten(0, 1), v_all.flatten(0, 1)
            return extend

        hooks = [hook(i) for i in range(len(self.cache))]
        h = self.model.decoder.step(self_graph, cross_graph, x, self.source.memory_kv, hooks)
        return self.model.log_probs(h)

    def reorder(self, parents: torch.Tensor) -> None:
        self.cache = [None if c is None else (c[0][parents], c[1][parents]) for c in self.cache]


class _RecomputeState:
    """The reference's way: rerun the decoder over every whole prefix at each step."""

    def __init__(self, model, source: _Source, spec: GraphSpec):
        self.model, self.source, self.dec_fn = model, source, spec.fn("dec")
        self.history: torch.Tensor | None = None  # (hyps, t) tokens fed so far

    def step(self, tokens: torch.Tensor, t: int, sent: torch.Tensor) -> torch.Tensor:
        hist = tokens[:, None] if self.history is None else torch.cat([self.history, tokens[:, None]], 1)
        self.history = hist
        n_hyp, device = hist.shape[0], hist.device
        lens = [t + 1] * n_hyp
        pos = torch.arange(t + 1, device=device).repeat(n_hyp)
        x = self.model.embed_tgt(hist.reshape(-1), pos)
        dec_graph = batch_graph(self.dec_fn, lens, lens, device)
        cross_graph = self.source.cross_graph(sent, t + 1, list(range(t + 1)))
        h, _, _ = self.model.decoder(dec_graph, cross_graph, x, self.source.memory)
        return self.model.log_probs(h.view(n_hyp, t + 1, -1)[:, -1])

    def reorder(self, parents: torch.Tensor) -> None:
        self.history = self.history[parents]


def _max_lengths(src_lens, max_len_a: float, max_len_b: int, limit: int) -> list[int]:
    # The target needs one position per generated token plus <sos>; keep within the table.
    return [max(1, min(int(max_len_a * n + max_len_b), limit - 1)) for n in src_lens]


@torch.no_grad()
def beam_search(model, src_seqs: Sequence[Sequence[int]], *, sos: int, eos: int, beam: int = 5,
                alpha: float = 0.6, max_len_a: float = 1.0, max_len_b: int = 10,
                spec: GraphSpec | None = None, incremental: bool = True,
                n_best: int = 1, state_factory=None) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``n_best`` hypotheses of each sentence, best first.

    With ``beam=1`` this is exactly greedy decoding. ``state_factory(model, src_seqs,
    spec, device)``, when given, builds the decoder state instead of the graph's (any
    :class:`DecoderState`): the benchmarks run a dense baseline through this very search
    that way.
    """
    if beam < 1:
        raise ValueError(f"beam: expected a positive integer, got {beam!r}")
    if not src_seqs:
        return []
    spec = spec or GraphSpec()
    device = next(model.parameters()).device
    if state_factory is None:
        source = _Source(model, src_seqs, spec, device)
        state = (_IncrementalState if incremental else _RecomputeState)(model, source, spec)
    else:
        state = state_factory(model, src_seqs, spec, device)
        if not isinstance(state, DecoderState):
            raise TypeError(f"state_factory: returned {type(state).__name__}, which lacks step(tokens, t, sent) "
                            "and reorder(parents) (see transformer_graph.inference.decoding.DecoderState)")
    n_sent = len(src_seqs)
    max_lens = _max_lengths([len(s) for s in src_seqs], max_len_a, max_len_b, model.pos.max_len)
    finished: list[list[Hypothesis]] = [[] for _ in range(n_sent)]

    # Live hypotheses, flat; each sentence starts with a single <sos> hypothesis.
    sent = torch.arange(n_sent)                       # sentence of each live hypothesis
    tokens = torch.full((n_sent,), sos, dtype=torch.int64)
    scores = torch.zeros(n_sent, dtype=torch.float64)  # raw log-prob sums
    seqs: list[list[int]] = [[] for _ in range(n_sent)]
    t = 0
    while sent.numel():
        logp = state.step(tokens.to(device), t, sent.to(device)).double().cpu()
        vocab = logp.shape[-1]
        new_sent, new_parent, new_tok, new_score = [], [], [], []
        # Group live hypotheses by sentence (they are stored sentence by sentence).
        sent_list = sent.tolist()
        start = 0
        while start < len(sent_list):
            s = sent_list[start]
            end = start
            while end < len(sent_list) and sent_list[end] == s:
                end += 1
            cand = (scores[start:end, None] + logp[start:end]).reshape(-1)
            top_scores, top_idx = cand.topk(min(2 * beam, cand.numel()))
            at_limit = t + 1 >= max_lens[s]
            kept = 0
            for rank, (sc, idx) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
                parent, tok = start + idx // vocab, idx % vocab
                if tok == eos or at_limit:
                    # eos within the top `beam` ranks finishes a hypothesis; at the length
                    # limit the best live continuations are finished as they are.
                    if rank < beam and len(finished[s]) < beam:
                        toks = seqs[parent] + ([] if tok == eos else [tok])
                        finished[s].append(Hypothesis(toks, sc / length_penalty(len(toks) + 1, alpha),
                                                      sc, finished=tok == eos))
                    continue
                if kept < beam:
                    new_sent.append(s)
                    new_parent.append(parent)
                    new_tok.append(tok)
                    new_score.append(sc)
                    kept += 1
            if len(finished[s]) >= beam or at_limit:
                # Sentence done: drop its live hypotheses.
                while new_sent and new_sent[-1] == s:
                    new_sent.pop(), new_parent.pop(), new_tok.pop(), new_score.pop()
            start = end
        if not new_sent:
            break
        parents = torch.tensor(new_parent)
        seqs = [seqs[p] + [tok] for p, tok in zip(new_parent, new_tok)]
        sent, tokens = torch.tensor(new_sent), torch.tensor(new_tok)
        scores = torch.tensor(new_score, dtype=torch.float64)
        state.reorder(parents.to(device))
        t += 1
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]


def greedy(model, src_seqs: Sequence[Sequence[int]], *, sos: int, eos: int, max_len_a: float = 1.0,
           max_len_b: int = 10, spec: GraphSpec | None = None, incremental: bool = True) -> list[list[int]]:
    """Greedy decoding (arg-max at each step), batched; returns token ids per sentence."""
    hyps = beam_search(model, src_seqs, sos=sos, eos=eos, beam=1, alpha=0.0, max_len_a=max_len_a,
                       max_len_b=max_len_b, spec=spec, incremental=incremental)
    return [h[0].tokens for h in hyps]
