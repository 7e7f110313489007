"""Greedy and beam-search decoding on the graph, incremental by default.

Every decoding step adds one target node per live hypothesis and runs message
passing only *into the new nodes*:

* self-attention: the new node of hypothesis h receives from h's cached prefix
  nodes and from itself (keys/values of earlier positions are kept per layer in
  preallocated buffers, written once and never recomputed, copied or reordered:
  the graph's edges follow each hypothesis's ancestry, see :class:`_IncrementalState`);
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
maximum length, and decoding stops as soon as every sentence has stopped. Each
step ranks the candidates of all sentences at once (:func:`_top_candidates`), with
no Python loop over sentences or hypotheses.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from transformer_graph.data.datasets import Vocab
from transformer_graph.data.batch import positions
from transformer_graph.graphs.build import GraphSpec, batch_graph, join, pair_edges
from transformer_graph.graphs.graph import AttentionGraph


@runtime_checkable
class DecoderState(Protocol):
    """What :func:`beam_search` drives (fairseq's incremental-decoder contract): the state of
    every live hypothesis of every sentence, in lockstep.

    ``step(tokens, t, sent)`` feeds position ``t``'s token of each live hypothesis
    (``tokens``: (hyps,), ``sent``: (hyps,) the sentence each belongs to) and returns the
    log-probabilities of the next token, (hyps, vocab), as a tensor of its own that the search
    may modify (it masks forbidden ids in place). ``reorder(parents)`` keeps, in the
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
        self._rows: dict = {}          # (source length, position) -> that row's local key nodes
        self._interned: dict = {}      # (source length, key nodes) -> one tensor per distinct row
        self._step_graph = None        # (key, graph) of the last step's cross graph

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

    def _row(self, n: int, t: int) -> torch.Tensor:
        """Source nodes (local) that target position ``t`` receives from; one tensor object per
        distinct row, so that equal rows of successive steps are recognised by identity."""
        key = (n, t)
        row = self._rows.get(key)
        if row is None:
            keys = _row_edges(self.cross_fn, n, t + 1, t)
            row = self._interned.setdefault((n, tuple(keys.tolist())), keys)
            self._rows[key] = row
        return row

    def step_graph(self, sent: torch.Tensor, t: int) -> AttentionGraph:
        """:meth:`cross_graph` for one new query node per hypothesis at position ``t``, built
        without a Python loop over hypotheses, and the last step's graph itself (with its
        cached CSR pattern) whenever nothing changed: the same live hypotheses' sentences and
        the same source rows (always, for the complete cross-attention structure)."""
        uniq, counts = torch.unique_consecutive(sent.cpu(), return_counts=True)
        uniq_l, counts_l = uniq.tolist(), counts.tolist()
        rows = [self._row(self.lens[s], t) for s in uniq_l]
        key = (tuple(uniq_l), tuple(counts_l), tuple(map(id, rows)))
        if self._step_graph is not None and self._step_graph[0] == key:
            return self._step_graph[1]
        # Sentence by sentence (not hypothesis by hypothesis): its row, shifted to its source
        # nodes, repeated once per live hypothesis of the sentence.
        src = torch.cat([(row + int(self.offsets[s])).repeat(c) for s, row, c in zip(uniq_l, rows, counts_l)])
        degree = torch.cat([torch.full((c,), row.numel(), dtype=torch.int64) for row, c in zip(rows, counts_l)])
        indptr = torch.cat([degree.new_zeros(1), degree.cumsum(0)])
        dst = torch.arange(sent.numel()).repeat_interleave(degree, output_size=src.numel())
        d = self.device
        graph = AttentionGraph(src.to(d), dst.to(d), sum(self.lens), sent.numel(), indptr.to(d))
        self._step_graph = (key, graph)
        return graph


class _IncrementalState:
    """Per-layer key/value caches, preallocated, never reordered.

    Layer l's keys (values alike) live in one buffer of shape (positions, slots, heads,
    d_k): the key of position j of the hypothesis in row h at step j is slot
    ``j * slots + h``, written once, when position j is decoded. A hypothesis's prefix is
    then a path through the rows of earlier steps, held in a small table ``ancestor``
    (positions, slots): ``ancestor[j, h]`` is the row, at step j, of the ancestor of the
    live hypothesis h. The growing self-attention graph simply has edges from those slots
    to the new query node, so :meth:`reorder` permutes the integer table instead of
    copying every layer's cache (O(t) floats per hypothesis and layer per step), and no
    step concatenates onto a cache. Capacities are what :func:`beam_search` knows
    (sentences x beam hypotheses, the longest length limit); they grow if exceeded.
    """

    def __init__(self, model, source: _Source, spec: GraphSpec, max_hyps: int | None = None,
                 max_positions: int | None = None):
        self.model, self.source, self.dec_fn = model, source, spec.fn("dec")
        self.n_layers = len(model.decoder.layers)
        self.slots = max(1, max_hyps or len(source.lens))
        self.positions = max(1, max_positions or model.pos.max_len)
        self.keys: list[torch.Tensor | None] = [None] * self.n_layers
        self.values: list[torch.Tensor | None] = [None] * self.n_layers
        self.ancestor = torch.zeros(self.positions, self.slots, dtype=torch.int64, device=source.device)
        self.t = -1                   # the last position fed
        self.n = 0                    # live hypotheses after the last step / reorder
        self._rows: dict = {}

    @property
    def cache(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Every layer's keys and values of each live hypothesis's prefix, (hyps, t + 1, heads,
        d_k), gathered from the buffers (for tests and inspection; decoding never forms them)."""
        if self.t < 0:
            return [None] * self.n_layers
        j = torch.arange(self.t + 1, device=self.ancestor.device)[:, None]
        slots = j * self.slots + self.ancestor[:self.t + 1, :self.n]             # (t + 1, hyps)
        return [(k.flatten(0, 1)[slots].transpose(0, 1), v.flatten(0, 1)[slots].transpose(0, 1))
                for k, v in zip(self.keys, self.values)]

    def _grow(self, n: int, t: int) -> None:
        """Make room for ``n`` hypotheses at position ``t`` (only when a caller exceeds the
        capacities it was built with)."""
        slots = max(self.slots, n if n <= self.slots else max(n, 2 * self.slots))
        positions = max(self.positions, t + 1 if t < self.positions else max(t + 1, 2 * self.positions))
        if (slots, positions) == (self.slots, self.positions):
            return
        def grown(buf):
            if buf is None:
                return None
            new = buf.new_empty((positions, slots) + tuple(buf.shape[2:]))
            new[:self.positions, :self.slots] = buf
            return new
        self.keys = [grown(b) for b in self.keys]
        self.values = [grown(b) for b in self.values]
        self.ancestor = grown(self.ancestor)
        self.slots, self.positions = slots, positions

    def _local(self, t: int) -> torch.Tensor:
        """Prefix positions the decoder structure lets position ``t`` receive from (cached)."""
        local = self._rows.get(t)
        if local is None:
            local = self._rows[t] = _row_edges(self.dec_fn, t + 1, t + 1, t).to(self.ancestor.device)
        return local

    def step(self, tokens: torch.Tensor, t: int, sent: torch.Tensor) -> torch.Tensor:
        n, device = tokens.numel(), tokens.device
        self._grow(n, t)
        x = self.model.embed_tgt(tokens, torch.full_like(tokens, t))
        self.ancestor[t, :n] = torch.arange(n, device=device)
        # The growing graph: query node h (hypothesis h's new token) receives from the slots
        # of its ancestors at the prefix positions j the structure allows (all j <= t for the
        # causal graph), its own new slot included; key nodes are the buffers' slots 0..(t+1)*S.
        local = self._local(t)
        src = (local[:, None] * self.slots + self.ancestor.index_select(0, local)[:, :n]).t().reshape(-1)
        deg = local.numel()
        indptr = torch.arange(0, (n + 1) * deg, deg, device=device)
        dst = torch.arange(n, device=device).repeat_interleave(deg, output_size=n * deg)
        self_graph = AttentionGraph(src, dst, (t + 1) * self.slots, n, indptr)
        cross_graph = self.source.step_graph(sent, t)

        def hook(layer_idx):
            def extend(k, v):
                if self.keys[layer_idx] is None:  # shapes are the block's (the mean block has no keys)
                    self.keys[layer_idx] = k.new_empty((self.positions, self.slots) + tuple(k.shape[1:]))
                    self.values[layer_idx] = v.new_empty((self.positions, self.slots) + tuple(v.shape[1:]))
                kb, vb = self.keys[layer_idx], self.values[layer_idx]
                kb[t, :n] = k
                vb[t, :n] = v
                return kb[:t + 1].flatten(0, 1), vb[:t + 1].flatten(0, 1)
            return extend

        hooks = [hook(i) for i in range(self.n_layers)]
        h = self.model.decoder.step(self_graph, cross_graph, x, self.source.memory_kv, hooks)
        self.t, self.n = t, n
        return self.model.log_probs(h)

    def reorder(self, parents: torch.Tensor) -> None:
        # Row h' continues row parents[h']: its ancestors are its parent's. Only the table moves.
        t = self.t
        self._grow(parents.numel(), t)
        self.ancestor[:t + 1, :parents.numel()] = self.ancestor[:t + 1, :self.n].index_select(1, parents)
        self.n = parents.numel()


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


_BLOCK = 64   # vocabulary entries per block of _row_topk (fastest measured for 14.5k words, 1 thread)


def _row_topk(x: torch.Tensor, k: int):
    """``x.topk(k, dim=1)`` (values, indices; best first), computed on a few blocks of each row.

    A row's k largest entries lie in the k blocks of ``_BLOCK`` entries with the largest
    maxima (an entry outside them has at least k larger block maxima above it), so the
    top-k runs on those blocks only: one max per block, then ``k * _BLOCK`` entries per
    row instead of the vocabulary (about 3x faster than ``topk`` over 14.5k words; the
    same entries, up to the order of exact ties, which ``topk`` leaves open too).
    """
    n, width = x.shape
    blocks = width // _BLOCK
    if blocks <= 2 * k:
        return x.topk(k, dim=1)
    main = x[:, :blocks * _BLOCK].view(n, blocks, _BLOCK)
    best = main.amax(dim=2).topk(k, dim=1).indices                          # (n, k) blocks
    cols = (best[:, :, None] * _BLOCK + torch.arange(_BLOCK, device=x.device)).reshape(n, -1)
    if blocks * _BLOCK < width:                                             # the ragged tail: always a candidate
        tail = torch.arange(blocks * _BLOCK, width, device=x.device).expand(n, -1)
        cols = torch.cat([cols, tail], 1)
    values, idx = x.gather(1, cols).topk(k, dim=1)
    return values, cols.gather(1, idx)


def _top_candidates(logp: torch.Tensor, scores: torch.Tensor, counts: list[int], k: int):
    """The ``k`` best continuations of every sentence, over all its live hypotheses at once.

    ``logp`` (hyps, vocab) are the live hypotheses' next-token log-probabilities, sentence
    by sentence (``counts`` hypotheses each), ``scores`` (hyps,) float64 their sums so far.
    Returns (scores (sents, k) float64 best first, parent row (sents, k), token (sents, k),
    valid (sents, k)): a sentence with fewer than ``k`` candidates has invalid tail entries.

    Two batched top-k's instead of one per sentence over (hypotheses x vocabulary) float64
    sums: a sentence's k best candidates are among the k best tokens of each of its
    hypotheses (adding a hypothesis's own score preserves the order within its row), so
    only (hyps, k) candidates are widened to float64 and ranked; the sums are those the
    full ranking would compute.
    """
    n, vocab = logp.shape
    k1 = min(k, vocab)
    top_lp, top_tok = _row_topk(logp, k1)                                     # (hyps, k1), on the device
    cand = scores[:, None] + top_lp.double().cpu()                            # the float64 sums
    top_tok = top_tok.cpu()
    row = torch.arange(n)[:, None].expand(n, k1)
    c = counts[0]
    if all(x == c for x in counts):                                           # every sentence alike
        width = min(k, c * vocab)
        sc, idx = cand.reshape(len(counts), c * k1).topk(width, dim=1)
        parent = row.reshape(len(counts), c * k1).gather(1, idx)
        tok = top_tok.reshape(len(counts), c * k1).gather(1, idx)
        valid = torch.ones_like(sc, dtype=torch.bool)
    else:                                                                     # (only when vocab <= beam)
        width = min(k, max(counts) * vocab)
        sc = torch.full((len(counts), width), -torch.inf, dtype=torch.float64)
        parent = torch.zeros(len(counts), width, dtype=torch.int64)
        tok, valid = torch.zeros_like(parent), torch.zeros(len(counts), width, dtype=torch.bool)
        start = 0
        for i, c in enumerate(counts):
            s_sc, s_idx = cand[start:start + c].reshape(-1).topk(min(k, c * vocab))
            m = s_sc.numel()
            sc[i, :m], valid[i, :m] = s_sc, True
            parent[i, :m] = row[start:start + c].reshape(-1)[s_idx]
            tok[i, :m] = top_tok[start:start + c].reshape(-1)[s_idx]
            start += c
    return sc, parent, tok, valid


@torch.no_grad()
def beam_search(model, src_seqs: Sequence[Sequence[int]], *, sos: int, eos: int, beam: int = 5,
                alpha: float = 0.6, max_len_a: float = 1.0, max_len_b: int = 10,
                spec: GraphSpec | None = None, incremental: bool = True,
                n_best: int = 1, state_factory=None,
                forbid: Sequence[int] | None = None) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``n_best`` hypotheses of each sentence, best first.

    The ids in ``forbid`` are never generated (their log-probabilities are set to -inf before
    ranking); by default <pad>, <unk> and ``sos``, the vocabulary's fixed special ids: a
    translation never contains them (pass ``forbid=()`` to rank every id).

    With ``beam=1`` this is exactly greedy decoding. ``state_factory(model, src_seqs,
    spec, device)``, when given, builds the decoder state instead of the graph's (any
    :class:`DecoderState`): the benchmarks run a dense baseline through this very search
    that way.

    Every step ranks the candidates of all sentences at once (:func:`_top_candidates`) and
    applies the rules below with tensor operations; only a hypothesis that finishes
    becomes a Python object.
    """
    if beam < 1:
        raise ValueError(f"beam: expected a positive integer, got {beam!r}")
    if not src_seqs:
        return []
    spec = spec or GraphSpec()
    device = next(model.parameters()).device
    n_sent = len(src_seqs)
    max_lens = _max_lengths([len(s) for s in src_seqs], max_len_a, max_len_b, model.pos.max_len)
    if state_factory is None:
        source = _Source(model, src_seqs, spec, device)
        state = (_IncrementalState(model, source, spec, max_hyps=n_sent * beam, max_positions=max(max_lens))
                 if incremental else _RecomputeState(model, source, spec))
    else:
        state = state_factory(model, src_seqs, spec, device)
        if not isinstance(state, DecoderState):
            raise TypeError(f"state_factory: returned {type(state).__name__}, which lacks step(tokens, t, sent) "
                            "and reorder(parents) (see transformer_graph.inference.decoding.DecoderState)")
    banned = torch.tensor(sorted({int(i) for i in (default_forbidden(sos) if forbid is None else forbid)}
                                 - {int(eos)}), dtype=torch.int64, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(n_sent)]
    n_finished = torch.zeros(n_sent, dtype=torch.int64)
    limit = torch.tensor(max_lens)
    ranks = torch.arange(2 * beam)[None, :]

    # Live hypotheses, flat and sentence by sentence; each sentence starts with a single <sos>.
    sent = torch.arange(n_sent)                        # sentence of each live hypothesis
    tokens = torch.full((n_sent,), sos, dtype=torch.int64)
    scores = torch.zeros(n_sent, dtype=torch.float64)  # raw log-prob sums
    history = torch.zeros(n_sent, 0, dtype=torch.int64)  # the tokens generated so far
    counts = [1] * n_sent                              # live hypotheses per live sentence
    t = 0
    while sent.numel():
        logp = state.step(tokens.to(device), t, sent.to(device))
        if banned.numel():   # in place: step() returns a fresh tensor (DecoderState), no (hyps x vocab) copy
            logp.index_fill_(1, banned, -torch.inf)
        sc, parent, tok, valid = _top_candidates(logp, scores, counts, 2 * beam)
        valid &= sc > -torch.inf  # a forbidden id is no candidate, even where few ids are left
        sents = sent[torch.tensor(counts).cumsum(0) - 1]                      # the live sentences
        rank = ranks[:, :sc.shape[1]]
        at_limit = (t + 1 >= limit[sents])[:, None]
        # <eos> within the top `beam` ranks finishes a hypothesis (while its sentence has fewer
        # than `beam` finished ones); at the length limit the best live continuations are
        # finished as they are. Other candidates continue, the best `beam` of them.
        ending = valid & ((tok == eos) | at_limit)
        candidate = ending & (rank < beam)
        take = candidate & (n_finished[sents][:, None] + candidate.cumsum(1) <= beam)
        going = valid & ~ending
        keep = going & (going.cumsum(1) <= beam)
        for i, r in take.nonzero().tolist():
            s, p, tk, score = int(sents[i]), int(parent[i, r]), int(tok[i, r]), float(sc[i, r])
            toks = history[p].tolist() + ([] if tk == eos else [tk])
            finished[s].append(Hypothesis(toks, score / length_penalty(len(toks) + 1, alpha), score,
                                          finished=tk == eos))
        n_finished[sents] += take.sum(1)
        # A sentence with `beam` finished hypotheses, or at its limit, is done: its live ones go.
        keep &= ~((n_finished[sents] >= beam)[:, None] | at_limit)
        if not bool(keep.any()):
            break
        counts = [c for c in keep.sum(1).tolist() if c]
        parents = parent[keep]
        sent = sents[:, None].expand_as(keep)[keep]
        tokens, scores = tok[keep], sc[keep]
        history = torch.cat([history[parents], tokens[:, None]], 1)
        state.reorder(parents.to(device))
        t += 1
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]


def default_forbidden(sos: int) -> tuple[int, ...]:
    """The ids a decoder never generates by default: <pad>, <unk> (fixed ids of every
    :class:`~transformer_graph.data.datasets.Vocab`) and the start symbol."""
    return (Vocab.pad, Vocab.unk, sos)


def greedy(model, src_seqs: Sequence[Sequence[int]], *, sos: int, eos: int, max_len_a: float = 1.0,
           max_len_b: int = 10, spec: GraphSpec | None = None, incremental: bool = True,
           forbid: Sequence[int] | None = None) -> list[list[int]]:
    """Greedy decoding (arg-max at each step over the ids not in ``forbid``), batched; returns
    token ids per sentence."""
    hyps = beam_search(model, src_seqs, sos=sos, eos=eos, beam=1, alpha=0.0, max_len_a=max_len_a,
                       max_len_b=max_len_b, spec=spec, incremental=incremental, forbid=forbid)
    return [h[0].tokens for h in hyps]
