"""Encoder and decoder layers: attention (phi, □) followed by the update gamma.

gamma is what the node does with the aggregated message: a skip connection with
LayerNorm around the attention, then the same around a position-wise MLP.
Pre-norm (``norm_first=True``, as the DGL tutorial and The Annotated
Transformer) normalises each sublayer's input; post-norm (the original paper)
normalises after the residual sum.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from transformer_graph.message_passing.attention import GraphAttention

KVHook = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
# Builds a layer's attention blocks as cls(d_model, heads, attn_dropout): GraphAttention or
# any module with its interface (see transformer_graph.message_passing.aggregators).
AttentionFactory = Callable[[int, int, float], nn.Module]


class FeedForward(nn.Module):
    """Position-wise MLP: Linear -> ReLU -> dropout -> Linear, applied per node."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))


class Residual(nn.Module):
    """gamma's skip connection: ``x + dropout(f(norm(x)))`` or ``norm(x + dropout(f(x)))``."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def inp(self, x: torch.Tensor) -> torch.Tensor:
        """What the sublayer sees."""
        return self.norm(x) if self.norm_first else x

    def out(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Combine the node's state ``x`` with the sublayer's output ``y``."""
        return x + self.dropout(y) if self.norm_first else self.norm(x + self.dropout(y))


class EncoderLayer(nn.Module):
    """Self-attention on the complete source graph, then the MLP update."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float = 0.1,
                 norm_first: bool = True, attn_dropout: float | None = None,
                 attention_cls: AttentionFactory = GraphAttention):
        super().__init__()
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        self.self_attn = attention_cls(d_model, heads, attn_dropout)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.res_attn = Residual(d_model, dropout, norm_first)
        self.res_ffn = Residual(d_model, dropout, norm_first)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """gamma's MLP half (the attention half is applied in :meth:`forward`)."""
        return self.res_ffn.out(x, self.ffn(self.res_ffn.inp(x)))

    def forward(self, graph, x: torch.Tensor, need_weights: bool = False, self_kv: KVHook | None = None):
        """``self_kv`` (optional, as in :class:`DecoderLayer`) maps the keys/values of the
        nodes ``x`` to those of every key node of ``graph``: the Universal Transformer
        runs only its still-active nodes while halted ones keep serving as keys."""
        if self_kv is None:
            a, w = self.self_attn(graph, self.res_attn.inp(x), need_weights=need_weights)
        else:
            q, k, v = self.self_attn.project_qkv(self.res_attn.inp(x))
            a, w = self.self_attn.attend(graph, q, *self_kv(k, v), need_weights)
        return self.update(self.res_attn.out(x, a)), w


class DecoderLayer(nn.Module):
    """Causal self-attention, encoder-decoder attention, then the MLP update.

    ``self_kv`` (optional) receives the new nodes' keys and values and returns
    the keys and values of *all* key nodes of the self-attention graph; the
    incremental decoder uses it to append to its per-position cache.
    ``memory_kv`` (optional) are the cross-attention keys and values of the
    source nodes, precomputed once per sentence when decoding.
    """

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float = 0.1,
                 norm_first: bool = True, attn_dropout: float | None = None,
                 attention_cls: AttentionFactory = GraphAttention):
        super().__init__()
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        self.self_attn = attention_cls(d_model, heads, attn_dropout)
        self.cross_attn = attention_cls(d_model, heads, attn_dropout)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.res_self = Residual(d_model, dropout, norm_first)
        self.res_cross = Residual(d_model, dropout, norm_first)
        self.res_ffn = Residual(d_model, dropout, norm_first)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_ffn.out(x, self.ffn(self.res_ffn.inp(x)))

    def forward(self, dec_graph, cross_graph, x: torch.Tensor, memory: torch.Tensor | None = None,
                memory_kv=None, self_kv: KVHook | None = None, need_weights: bool = False):
        q, k, v = self.self_attn.project_qkv(self.res_self.inp(x))
        if self_kv is not None:
            k, v = self_kv(k, v)
        a, w_self = self.self_attn.attend(dec_graph, q, k, v, need_weights)
        x = self.res_self.out(x, a)

        if memory_kv is None:
            memory_kv = self.cross_attn.project_kv(memory)
        q = self.cross_attn.project_q(self.res_cross.inp(x))
        a, w_cross = self.cross_attn.attend(cross_graph, q, *memory_kv, need_weights)
        x = self.res_cross.out(x, a)
        return self.update(x), (w_self, w_cross)


class Encoder(nn.Module):
    """A stack of encoder layers (final LayerNorm for pre-norm stacks)."""

    def __init__(self, layer_fn: Callable[[], EncoderLayer], num_layers: int, d_model: int,
                 final_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(layer_fn() for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(self, graph, x: torch.Tensor, need_weights: bool = False):
        weights = []
        for layer in self.layers:
            x, w = layer(graph, x, need_weights)
            weights.append(w)
        return self.norm(x), weights


class Decoder(nn.Module):
    """A stack of decoder layers (final LayerNorm for pre-norm stacks)."""

    def __init__(self, layer_fn: Callable[[], DecoderLayer], num_layers: int, d_model: int,
                 final_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(layer_fn() for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()

    def forward(self, dec_graph, cross_graph, x: torch.Tensor, memory: torch.Tensor,
                need_weights: bool = False):
        w_self, w_cross = [], []
        for layer in self.layers:
            x, (ws, wc) = layer(dec_graph, cross_graph, x, memory, need_weights=need_weights)
            w_self.append(ws)
            w_cross.append(wc)
        return self.norm(x), w_self, w_cross

    def memory_kv(self, memory: torch.Tensor) -> list:
        """Cross-attention keys/values of the source nodes, once per layer (decoding)."""
        return [layer.cross_attn.project_kv(memory) for layer in self.layers]

    def step(self, dec_graph, cross_graph, x: torch.Tensor, memory_kv: list, self_kv: list):
        """Run only the new target nodes ``x``: ``self_kv[l]`` supplies layer l's keys and
        values of every node the new ones attend to (the cached prefix plus themselves)."""
        for layer, mkv, hook in zip(self.layers, memory_kv, self_kv):
            x, _ = layer(dec_graph, cross_graph, x, memory_kv=mkv, self_kv=hook)
        return self.norm(x)
