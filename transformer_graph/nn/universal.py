"""The Universal Transformer (Dehghani et al. 2018) with per-node ACT, on attention graphs.

Encoder and decoder each hold ONE layer (the standard model's
:class:`~transformer_graph.nn.layers.EncoderLayer` / ``DecoderLayer``: same phi, □,
gamma) applied up to ``max_depth`` times. Before every step the node's position
encoding and a sinusoidal encoding of the step index are added to its state:
``h_t = dropout(x_t + P(pos) + T(t))``, ``x_{t+1} = layer(h_t)``.

With ``halting`` (ACT, :mod:`transformer_graph.nn.act`) each node stops on its
own; step t then runs message passing only into the nodes still active, over
the edges into them (:func:`~transformer_graph.nn.act.active_subgraph`). A halted
node keeps serving as a key/value node with the keys and values of its last
active step (frozen, as in the DGL tutorial): it costs nothing more. The
stack's output is the halting-weighted sum of each node's states, then the
final LayerNorm (pre-norm stacks).

Node inputs carry their position: ``embed_src``/``embed_tgt`` return
``[token embedding | position encoding]`` of width ``2 * d_model``, because the
position is needed again at every step while the decoding code
(:mod:`transformer_graph.inference.decoding`) hands the embedding to ``encoder``,
``decoder`` and ``decoder.step`` as one tensor.

Incremental decoding: the decoder exposes one view per depth step in
``decoder.layers``, so the decoding code keeps one key/value cache per depth
step; a position that halted before depth t contributes its frozen keys/values
there, exactly what the full (teacher-forced) pass uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from transformer_graph.nn.act import ACTAccumulator, ACTStats, HaltingUnit, active_subgraph, scatter_edges
from transformer_graph.nn.layers import DecoderLayer, EncoderLayer, KVHook, memory_keys_values, stack_norm
from transformer_graph.nn.model import (FACTORY_DEFAULTS, EncoderDecoder, EncoderDecoderConfig, PositionalEncoding,
                                        constructor_signature)


@dataclass(frozen=True)
class UniversalConfig(EncoderDecoderConfig):
    """The Universal Transformer: one shared layer per side, applied up to ``max_depth``
    times, each node halting on its own (ACT) unless ``halting`` is off."""

    kind: ClassVar[str] = "universal"
    POSITIONAL: ClassVar[tuple[str, ...]] = (
        "src_vocab", "tgt_vocab", "d_model", "d_ff", "heads", "dropout", "norm_first", "share_embeddings",
        "tie_generator", "max_len", "attn_dropout", "max_depth", "act_threshold", "ponder_weight", "halting",
        "halt_bias", "timestep_encoding", "position_every_step", "aggregator", "embed_init_std")

    max_depth: int = 8
    act_threshold: float = 0.99
    ponder_weight: float = 0.01
    halting: bool = True
    halt_bias: float = 1.0
    # h_t = dropout(x_t + P(pos) + T(t)): which terms are added (both off and no halting
    # reproduce a standard stack whose layers share weights).
    timestep_encoding: bool = True
    position_every_step: bool = True

    def validate(self) -> None:
        """The shared checks, then clear errors for the recurrence and halting settings."""
        super().validate()
        max_depth, act_threshold, ponder_weight = self.max_depth, self.act_threshold, self.ponder_weight
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
            raise ValueError(f"max_depth: expected a positive integer (the most steps per node), got {max_depth!r}")
        if isinstance(act_threshold, bool) or not isinstance(act_threshold, (int, float)) \
                or not 0.0 < act_threshold <= 1.0:
            raise ValueError(f"act_threshold: expected a number in (0, 1] (halt once the summed halting "
                             f"probability reaches it), got {act_threshold!r}")
        if isinstance(ponder_weight, bool) or not isinstance(ponder_weight, (int, float)) \
                or not math.isfinite(ponder_weight) or ponder_weight < 0:
            raise ValueError(f"ponder_weight: expected a non-negative number, got {ponder_weight!r}")


class _KVStore:
    """Keys/values of every node at its latest active step (halted nodes: frozen)."""

    def __init__(self):
        self.k = self.v = None

    def hook(self, active: torch.Tensor | None, outer: KVHook | None) -> KVHook:
        """The layer's ``self_kv`` hook for one step: store the active nodes' new keys and
        values, then hand on all of them (through ``outer``, the decoding cache, if given)."""
        def fn(k, v):
            if active is None or self.k is None:
                self.k, self.v = k, v
            else:
                self.k, self.v = self.k.index_copy(0, active, k), self.v.index_copy(0, active, v)
            return (self.k, self.v) if outer is None else outer(self.k, self.v)
        return fn


class _Recurrent(nn.Module):
    """One shared layer applied up to ``config.max_depth`` times, with ACT per node."""

    kinds: tuple[str, ...] = ()

    def __init__(self, layer: nn.Module, config: UniversalConfig):
        super().__init__()
        d_model = config.d_model
        self.layer = layer
        self.norm = stack_norm(d_model, config.norm_first)
        self.halt = HaltingUnit(d_model, config.halt_bias) if config.halting else None
        self.time = PositionalEncoding(d_model, config.max_depth)
        self.dropout = nn.Dropout(config.dropout)
        self.d_model, self.max_depth, self.threshold = d_model, config.max_depth, float(config.act_threshold)
        self.timestep_encoding, self.position_every_step = config.timestep_encoding, config.position_every_step
        self.record_states = False     # keep the accumulated output after every step (tests, pictures)
        self.last_stats: ACTStats | None = None

    @property
    def halting(self) -> bool:
        return self.halt is not None

    @property
    def layers(self) -> tuple:
        """The shared layer once per depth step: what the incremental decoder sizes its
        per-layer caches by. Not registered as submodules (the weights exist once)."""
        return (self.layer,) * self.max_depth

    def unpack(self, x: torch.Tensor):
        d = self.d_model
        if x.dim() != 2 or x.shape[-1] != 2 * d:
            raise ValueError(f"universal {type(self).__name__}: expected node inputs of shape (nodes, "
                             f"{2 * d}) from UniversalTransformer.embed_src/embed_tgt (token embedding "
                             f"and position encoding), got {tuple(x.shape)}")
        return x[:, :d], x[:, d:]

    def step_input(self, x: torch.Tensor, coord: torch.Tensor, t: int) -> torch.Tensor:
        """h_t = dropout(x_t + P + T(t)); which terms are added is configurable so that the
        stack can reproduce a standard weight-shared stack exactly."""
        add = coord if (t == 0 or self.position_every_step) else None
        if self.timestep_encoding:
            tt = self.time.table[t]
            add = tt if add is None else add + tt
        return x if add is None else self.dropout(x + add)

    def recur(self, x: torch.Tensor, run_layer, outer_hooks=None, need_weights: bool = False):
        """Run the recurrence over the nodes of ``x`` (packed inputs).

        ``run_layer(active, h, kv_hook, need_weights)`` applies the shared layer to the
        active nodes' inputs ``h`` (all nodes when ``active`` is None) and returns
        ``(new states, weights, {attention kind: edges processed})``. ``outer_hooks[t]``
        (incremental decoding) receives the keys/values of all nodes at step t and is
        called at every step, even after every node halted, so that each depth's cache
        covers every position.
        """
        tok, coord = self.unpack(x)
        n = tok.shape[0]
        state = tok
        acc = ACTAccumulator(n, tok, self.threshold, self.max_depth) if self.halting else None
        kv = _KVStore()
        stats = ACTStats(steps=torch.zeros(n, dtype=torch.int64, device=tok.device), remainder=None,
                         edges={k: [] for k in self.kinds}, states=[] if self.record_states else None)
        weights = []
        active = None                      # None: every node
        for t in range(self.max_depth):
            if active is not None and active.numel() == 0:
                if outer_hooks is None:
                    break
                outer_hooks[t](kv.k, kv.v)  # every position halted: keep the cache rectangular
                continue
            stats.nodes.append(n if active is None else int(active.numel()))
            h = self.step_input(state if active is None else state[active],
                                coord if active is None else coord[active], t)
            hook = kv.hook(active, None if outer_hooks is None else outer_hooks[t])
            y, w, edges = run_layer(active, h, hook, need_weights)
            weights.append(w)
            for kind, count in edges.items():
                stats.edges[kind].append(count)
            if active is None:
                state = y
            else:
                state = state.index_copy(0, active, y.to(state.dtype))
            if acc is not None:
                ids = torch.arange(n, device=tok.device) if active is None else active
                active = acc.update(ids, y, self.halt(y), t)
                if stats.states is not None:
                    stats.states.append(acc.output.detach().clone())
            elif stats.states is not None:
                stats.states.append(state.detach().clone())
        if acc is not None:
            stats.steps, stats.remainder, out = acc.steps, acc.remainder, acc.output
        else:
            stats.steps = torch.full((n,), len(stats.nodes), dtype=torch.int64, device=tok.device)
            out = state
        self.last_stats = stats
        return self.norm(out), weights


class UniversalEncoder(_Recurrent):
    """Encoder: the shared :class:`EncoderLayer` on the source graph, recurrently."""

    kinds = ("enc",)

    def forward(self, graph, x: torch.Tensor, need_weights: bool = False):
        """``x``: packed source inputs; returns ``(memory, weights per step)``."""
        n_edges = graph.num_edges()

        def run(active, h, hook, need):
            sub, eids = active_subgraph(graph, active)
            y, w = self.layer(sub, h, need, self_kv=hook)
            return y, scatter_edges(w, eids, n_edges), {"enc": sub.num_edges()}

        return self.recur(x, run, need_weights=need_weights)


class UniversalDecoder(_Recurrent):
    """Decoder: the shared :class:`DecoderLayer` (causal self-attention, then
    encoder-decoder attention), recurrently."""

    kinds = ("dec", "cross")

    def _runner(self, dec_graph, cross_graph, memory_kv):
        n_self, n_cross = dec_graph.num_edges(), cross_graph.num_edges()

        def run(active, h, hook, need):
            sub_self, e_self = active_subgraph(dec_graph, active)
            sub_cross, e_cross = active_subgraph(cross_graph, active)
            y, (ws, wc) = self.layer(sub_self, sub_cross, h, memory_kv=memory_kv, self_kv=hook,
                                     need_weights=need)
            return (y, (scatter_edges(ws, e_self, n_self), scatter_edges(wc, e_cross, n_cross)),
                    {"dec": sub_self.num_edges(), "cross": sub_cross.num_edges()})
        return run

    def forward(self, dec_graph, cross_graph, x: torch.Tensor, memory: torch.Tensor,
                need_weights: bool = False):
        """Teacher-forced pass; returns ``(states, self weights, cross weights)`` per step."""
        mkv = self.layer.cross_attn.project_kv(memory)  # the layer is shared: once for all steps
        h, w = self.recur(x, self._runner(dec_graph, cross_graph, mkv), need_weights=need_weights)
        return h, [a for a, _ in w], [b for _, b in w]

    def memory_kv(self, memory: torch.Tensor) -> list:
        """Cross-attention keys/values of the source nodes, one entry per depth step (the
        same tensors: the layer is shared)."""
        kv = memory_keys_values(self.layer.cross_attn, memory)
        return [kv] * self.max_depth

    def step(self, dec_graph, cross_graph, x: torch.Tensor, memory_kv: list, self_kv: list):
        """Run only the new target nodes ``x`` through every depth step (incremental
        decoding); ``self_kv[t]`` is depth t's cache hook (see ``decoder.layers``)."""
        if len(self_kv) != self.max_depth:
            raise ValueError(f"universal decoder step: expected {self.max_depth} key/value hooks (one "
                             f"per depth step), got {len(self_kv)}")
        h, _ = self.recur(x, self._runner(dec_graph, cross_graph, memory_kv[0]), outer_hooks=self_kv)
        return h


@dataclass
class ACTCounter:
    """ACT statistics summed over the training batches of an epoch."""

    max_depth: int
    entering: dict = field(default_factory=dict)   # side -> nodes entering each step
    steps: dict = field(default_factory=dict)      # side -> summed steps
    ponder: float = 0.0
    batches: int = 0

    def add(self, side: str, stats: ACTStats) -> None:
        row = self.entering.setdefault(side, [0] * self.max_depth)
        for t, c in enumerate(stats.nodes):
            row[t] += c
        self.steps[side] = self.steps.get(side, 0) + int(stats.steps.sum())

    def summary(self) -> dict:
        """Flat scalars: ``{side}_enter_{k}`` (fraction of nodes entering step k, from 1),
        ``{side}_mean_steps`` and the mean ``ponder`` cost per node."""
        out: dict = {}
        for side, row in self.entering.items():
            total = max(row[0], 1)
            out.update({f"{side}_enter_{t + 1}": c / total for t, c in enumerate(row)})
            out[f"{side}_mean_steps"] = self.steps[side] / total
        if self.batches:
            out["ponder"] = self.ponder / self.batches
        return out


class UniversalTransformer(EncoderDecoder):
    """Encoder-decoder Universal Transformer with ACT on attention graphs.

    Built from a :class:`UniversalConfig` (``UniversalTransformer(config)``) or from its
    fields, as always: ``UniversalTransformer(src_vocab, tgt_vocab, d_model=512, ...,
    max_depth=8, ...)``. Same outer interface as
    :class:`~transformer_graph.nn.model.GraphTransformer` (``embed_src``, ``embed_tgt``,
    ``pos``, ``encoder``, ``decoder``, ``log_probs``, ``forward(batch, return_attention)``),
    so training, evaluation and greedy/beam decoding work unchanged. After each forward pass:

    * ``act_stats``: ``{"enc": ACTStats, "dec": ACTStats}`` (steps per node, nodes and
      edges processed per step);
    * ``ponder``: mean ponder cost N + R over all source and target nodes;
    * ``aux_loss``: ``ponder_weight * ponder``, which the trainer adds to the loss
      (None without halting).
    """

    config_class = UniversalConfig

    def __init__(self, *args, **kwargs):
        super().__init__(UniversalConfig.of(*args, **kwargs))
        self.max_depth = self.config.max_depth
        self.ponder_weight = float(self.config.ponder_weight)
        self.act_stats: dict[str, ACTStats] = {}
        self.ponder: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None
        self.epoch_act = ACTCounter(self.max_depth)

    __init__.__signature__ = constructor_signature(UniversalConfig)

    def build_stacks(self, config: UniversalConfig):
        encoder = UniversalEncoder(self.make_layer(EncoderLayer), config)
        decoder = UniversalDecoder(self.make_layer(DecoderLayer), config)
        return encoder, decoder

    @property
    def halting(self) -> bool:
        return self.encoder.halting

    # -- pieces, also used by the incremental decoder -----------------------
    def embed_src(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``[token embedding | position encoding]`` (nodes, 2 * d_model); see the module doc."""
        return torch.cat([self.src_embed(ids), self.pos(pos, "src")], dim=-1)

    def embed_tgt(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tgt_embed(ids), self.pos(pos, "tgt")], dim=-1)

    def _after_forward(self) -> None:
        enc, dec = self.encoder.last_stats, self.decoder.last_stats
        self.act_stats = {"enc": enc, "dec": dec}
        if self.halting:
            n = enc.steps.numel() + dec.steps.numel()
            self.ponder = (enc.ponder.sum() + dec.ponder.sum()) / n
            self.aux_loss = self.ponder_weight * self.ponder
        else:
            self.ponder = self.aux_loss = None
        if self.training:
            self.epoch_act.add("enc", enc)
            self.epoch_act.add("dec", dec)
            if self.ponder is not None:
                self.epoch_act.ponder += float(self.ponder.detach())
                self.epoch_act.batches += 1

    def pop_act_stats(self) -> dict:
        """ACT statistics of the training batches since the last call (the trainer logs
        them once per epoch), then start counting afresh."""
        out = self.epoch_act.summary()
        self.epoch_act = ACTCounter(self.max_depth)
        return out


def make_universal_model(*args, **kwargs) -> UniversalTransformer:
    """Build a :class:`UniversalTransformer` from :class:`UniversalConfig`'s fields; like
    :func:`~transformer_graph.nn.model.make_model`, the generator is tied to the target
    embedding whenever embeddings are shared, unless ``tie_generator`` says otherwise."""
    return UniversalTransformer(UniversalConfig.of(*args, defaults=FACTORY_DEFAULTS, **kwargs))


make_universal_model.__signature__ = constructor_signature(UniversalConfig, method=False, **FACTORY_DEFAULTS)
