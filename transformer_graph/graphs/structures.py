"""Sparse attention structures: which key positions each query position receives from.

The complete graph is one choice among many: because the attention graph is
explicit, restricting it is just building fewer edges. This module adds the
local and sparse-Transformer families on top of :mod:`transformer_graph.graphs.build`'
``complete`` and ``causal``:

===================  ===============================================================
name                 edge j -> i (query position p, key position j)
===================  ===============================================================
``complete``         always
``causal``           j <= p
``window``           |p - j| <= w
``dilated``          |p - j| <= w * dilation and |p - j| divisible by dilation (self included)
``global_window``    window, or j < g, or p < g (g global tokens see and are seen by all)
===================  ===============================================================

Each has a *causal* variant (``j <= p`` added; used for decoder self-attention,
the global tokens of ``global_window`` then see only earlier positions like any
other token) and an *aligned* variant for encoder-decoder attention, where the
window is centred on the source position aligned with the target position.

Note that ``dilated`` self-attention on its own splits the positions into
``dilation`` classes (by position mod dilation) that never exchange messages, at
any depth; the sparse Transformer pairs it with a local window in alternate
layers. It is here as the strided building block, to measure, not as a
recommended encoder.

Alignment is the diagonal, ``a(i) = min(i, n - 1)`` for target position i and
source length n. Why not ``round(i * n / m)``: the target length m is unknown
while decoding (the decoder asks for the edges of position t of a t+1 long
prefix), so any alignment that uses m would give training and decoding
different graphs, and full recomputation and incremental decoding different
results. The diagonal is exact for copy/sort-like tasks (equal lengths) and a
reasonable prior for En-De translation, whose lengths are close; targets past
the source's end see the last ``w + 1`` source tokens.

Position convention (shared with :mod:`transformer_graph.graphs.build` and
:mod:`transformer_graph.inference.decoding`): with fewer queries than keys, the queries of
a *self*-attention structure are the last positions (query r sits at position
``n_keys - n_queries + r``): a cached prefix plus new tokens. Queries of an
*aligned* (cross) structure are target positions 0..n_queries-1 and there may
be more of them than source keys. Either way the edges into one position
depend only on that position, never on how many queries were asked for, which
is what makes incremental decoding equal full recomputation.

Structures are frozen dataclasses, so two with equal parameters are equal and
hash alike: :func:`~transformer_graph.graphs.build.pair_edges`' LRU cache (keyed by
the function object) shares their cached edges. :func:`make_structure` also
returns the very same object for the same parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from transformer_graph.config import ConfigError
from transformer_graph.graphs.build import (EdgeFn, GraphSpec, causal, complete, get_structure, pair_edges,
                                            register_structure)

FAMILIES = ("window", "dilated", "global_window")
CONFIG_NAMES = ("complete", "causal", *FAMILIES)
MODES = ("self", "causal", "aligned")


@dataclass(frozen=True, repr=False)
class Structure:
    """A parametrised edge function ``(n_keys, n_queries) -> (key_idx, query_idx)``.

    Args:
        family: ``window``, ``dilated`` or ``global_window``.
        window: w, neighbours on each side (``dilated``: steps of ``dilation`` on each side).
        dilation: distance between attended positions (``dilated`` only; 1 elsewhere).
        global_tokens: g, leading positions connected to everything (``global_window`` only).
        mode: ``self`` (symmetric self-attention), ``causal`` (decoder self-attention:
            no key after its query) or ``aligned`` (encoder-decoder: centred on the
            diagonal-aligned source position).
    """

    family: str
    window: int
    dilation: int = 1
    global_tokens: int = 0
    mode: str = "self"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"structure family: expected one of {FAMILIES}, got {self.family!r}")
        if self.mode not in MODES:
            raise ValueError(f"structure mode: expected one of {MODES}, got {self.mode!r}")
        for name, value, lo in (("window", self.window, 0), ("dilation", self.dilation, 1),
                                ("global_tokens", self.global_tokens, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ValueError(f"{self.family} structure: {name} must be an integer >= {lo}, got {value!r}")

    @property
    def __name__(self) -> str:  # what pair_edges' error messages call the structure
        return repr(self)

    def __repr__(self) -> str:
        params = [f"w={self.window}"]
        if self.family == "dilated":
            params.append(f"dilation={self.dilation}")
        if self.family == "global_window":
            params.append(f"global={self.global_tokens}")
        if self.mode != "self":
            params.append(self.mode)
        return f"{self.family}({', '.join(params)})"

    def positions(self, n_keys: int, n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(position, centre) of each query: where it sits and which key position its
        window is centred on (the same for self-attention, the aligned source position
        for encoder-decoder attention)."""
        rows = torch.arange(n_queries)
        if self.mode == "aligned":
            return rows, rows.clamp(max=n_keys - 1)
        if n_queries > n_keys:
            raise ValueError(f"{self!r}: n_queries={n_queries} must not exceed n_keys={n_keys} for "
                             "self-attention (the queries are the last key positions)")
        rows = rows + (n_keys - n_queries)
        return rows, rows

    def mask(self, n_keys: int, n_queries: int) -> torch.Tensor:
        """(n_queries, n_keys) bool: True where key j sends to query r."""
        pos, centre = (t[:, None] for t in self.positions(n_keys, n_queries))
        j = torch.arange(n_keys)[None, :]
        dist = (centre - j).abs()
        if self.family == "dilated":
            keep = (dist <= self.window * self.dilation) & (dist % self.dilation == 0)
        else:
            keep = dist <= self.window
        if self.family == "global_window":
            # The first g key positions send to every query and the first g query
            # positions receive from every key (the sparse Transformer's global tokens).
            g = self.global_tokens
            keep = keep | (j < g) | (pos < g)
        if self.mode == "causal":
            keep = keep & (j <= pos)
        return keep

    def __call__(self, n_keys: int, n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        # nonzero() walks the mask row by row: edges come grouped by query, keys ascending,
        # the same order as graphs.complete.
        queries, keys = self.mask(n_keys, n_queries).nonzero(as_tuple=True)
        return keys, queries


@cache
def make_structure(family: str, window: int, dilation: int = 1, global_tokens: int = 0,
                   mode: str = "self") -> Structure:
    """The (one, shared) :class:`Structure` with these parameters."""
    return Structure(family, window, dilation if family == "dilated" else 1,
                     global_tokens if family == "global_window" else 0, mode)


# Registered under fixed names with the config defaults (w=8, dilation=2, 1 global token),
# so GraphSpec(enc="window", dec="causal_window", cross="aligned_window") works directly.
# Configs go through spec_from_config, which applies model.structure's parameters.
_DEFAULTS = dict(window=8, dilation=2, global_tokens=1)
VARIANT_NAMES = tuple(prefix + family for family in FAMILIES for prefix in ("", "causal_", "aligned_"))
for _family in FAMILIES:
    for _mode, _prefix in (("self", ""), ("causal", "causal_"), ("aligned", "aligned_")):
        register_structure(_prefix + _family, make_structure(_family, mode=_mode, **_DEFAULTS))


# --------------------------------------------------------------------------
# Config names -> edge functions
# --------------------------------------------------------------------------
_KIND_MODE = {"enc": "self", "dec": "causal", "cross": "aligned"}
_KIND_NAMES = {
    "enc": CONFIG_NAMES,
    "dec": ("causal", *FAMILIES),
    "cross": ("complete", *FAMILIES),
}
_WHY_NOT = {
    ("dec", "complete"): "it would let a target position see later positions; the decoder needs a "
                         "causal structure",
    ("cross", "causal"): "'causal' is a self-attention structure (target positions and source "
                         "positions are different sequences)",
}


def resolve(kind: str, name: str, window: int = 8, dilation: int = 2, global_tokens: int = 1,
            key: str | None = None) -> str | EdgeFn:
    """The edge function a config name means for attention ``kind`` (enc/dec/cross).

    ``window``/``dilated``/``global_window`` become their causal variant for the decoder
    and their aligned variant for encoder-decoder attention. Any other name registered
    with :func:`~transformer_graph.graphs.build.register_structure` (a user-supplied function)
    is passed through unchanged; :func:`~transformer_graph.graphs.build.pair_edges` validates
    its edges. Raises ConfigError (a ValueError) naming ``key`` for unknown or unsuitable names.
    """
    key = key or f"model.structure.{kind}"
    if kind not in _KIND_MODE:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {tuple(_KIND_MODE)}")
    if name in FAMILIES:
        return make_structure(name, window, dilation, global_tokens, _KIND_MODE[kind])
    if name in _KIND_NAMES[kind]:
        return name  # complete / causal: the registry's own functions
    allowed = ", ".join(_KIND_NAMES[kind])
    if (kind, name) in _WHY_NOT:
        raise ConfigError(f"{key}: {name!r} is not allowed here: {_WHY_NOT[kind, name]}; "
                         f"expected one of {allowed}")
    if name in VARIANT_NAMES:
        # Registered with fixed default parameters for direct GraphSpec use; in a config
        # they would silently ignore model.structure.window etc.
        family = next(f for f in FAMILIES if name.endswith(f))
        raise ConfigError(f"{key}: {name!r} is chosen automatically; write {family!r} (the "
                         f"{kind} variant and model.structure's parameters are applied)")
    try:
        get_structure(name)
    except ValueError:
        raise ConfigError(f"{key}: unknown attention structure {name!r}; expected one of {allowed} "
                         "(or a name registered with transformer_graph.graphs.build.register_structure)") from None
    return name  # a user-supplied function registered by name; pair_edges validates its edges


def spec_from_config(structure) -> GraphSpec:
    """A :class:`GraphSpec` from a ``model.structure`` config section (StructureConfig)."""
    s = structure
    fns = {kind: resolve(kind, getattr(s, kind), s.window, s.dilation, s.global_tokens)
           for kind in ("enc", "dec", "cross")}
    return GraphSpec(**fns)


def edges_per_token(spec: GraphSpec, lengths) -> dict[str, float]:
    """Mean incoming edges per token node for (source, target-with-<sos>) length pairs.

    ``lengths`` are ``(n, m)`` node counts per pair. Returns per-kind edge counts divided
    by all token nodes (so the kinds add up to ``total``), the figure that decides the
    cost of message passing.
    """
    counts = {"enc": 0, "dec": 0, "cross": 0}
    nodes = 0
    for n, m in lengths:
        counts["enc"] += pair_edges(spec.fn("enc"), n, n, False)[0].numel()
        counts["dec"] += pair_edges(spec.fn("dec"), m, m, True)[0].numel()
        counts["cross"] += pair_edges(spec.fn("cross"), n, m, False)[0].numel()
        nodes += n + m
    nodes = max(nodes, 1)
    out = {k: v / nodes for k, v in counts.items()}
    out["total"] = sum(counts.values()) / nodes
    return out


__all__ = ["Structure", "make_structure", "resolve", "spec_from_config", "edges_per_token",
           "FAMILIES", "CONFIG_NAMES", "VARIANT_NAMES", "complete", "causal"]
