"""Encoder and decoder layers: attention (phi, □) followed by the update gamma.

gamma is what the node does with the aggregated message: a skip connection with
LayerNorm around the attention, then the same around a position-wise MLP.
Pre-norm (``norm_first=True``, as the DGL tutorial and The Annotated
Transformer) normalises each sublayer's input; post-norm (the original paper)
normalises after the residual sum.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from transformer_graph.linear import Linear
from transformer_graph.message_passing.attention import GraphAttention

KVHook = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
# Builds a layer's attention blocks as cls(d_model, heads, attn_dropout): GraphAttention or
# any module with its interface (see transformer_graph.message_passing.aggregators).
AttentionFactory = Callable[[int, int, float], nn.Module]


def memory_keys_values(block: nn.Module, memory: torch.Tensor) -> tuple:
    """A cross-attention block's keys and values of the source nodes, for every step of decoding.

    Made contiguous once here: ``project_kv`` returns strided halves of one fused projection,
    and the attention kernels need dense rows, so otherwise every decoding step would copy the
    whole source memory again for each layer (6% of a greedy decode of test2016)."""
    return tuple(t.contiguous() if isinstance(t, torch.Tensor) else t for t in block.project_kv(memory))


class FeedForward(nn.Module):
    """Position-wise MLP: Linear -> ReLU -> dropout -> Linear, applied per node."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = Linear(d_model, d_ff)
        self.linear2 = Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))


class Residual(nn.Module):
    """gamma's skip connection around one sublayer (The Annotated Transformer's
    ``SublayerConnection``): ``x + dropout(f(norm(x)))`` or ``norm(x + dropout(f(x)))``.

    ``residual(x, f)`` applies it to a sublayer ``f``. Attention sublayers use the two
    halves instead, because they also return weights and the incremental decoder
    splices cached keys/values in between: ``y = attend(residual.inp(x)); residual.out(x, y)``.
    """

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

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return self.out(x, sublayer(self.inp(x)))


class _Layer(nn.Module):
    """What encoder and decoder layers share: attention blocks (phi, □), each inside a
    :class:`Residual`, then gamma's MLP update.

    ``blocks`` maps the attribute name of each attention block to the name of its
    residual, in order. Modules are registered blocks, MLP, residuals: the parameter
    order that optimizer states in existing checkpoints are indexed by.
    """

    def __init__(self, blocks: dict[str, str], d_model: int, heads: int, d_ff: int, dropout: float,
                 norm_first: bool, attn_dropout: float | None, attention_cls: AttentionFactory):
        super().__init__()
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        for block in blocks:
            self.add_module(block, attention_cls(d_model, heads, attn_dropout))
        self.ffn = FeedForward(d_model, d_ff, dropout)
        for residual in blocks.values():
            self.add_module(residual, Residual(d_model, dropout, norm_first))
        self.res_ffn = Residual(d_model, dropout, norm_first)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """gamma's MLP half (the attention halves are applied in ``forward``)."""
        return self.res_ffn(x, self.ffn)


class EncoderLayer(_Layer):
    """Self-attention on the complete source graph, then the MLP update."""

    self_attn: nn.Module
    res_attn: Residual

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float = 0.1,
                 norm_first: bool = True, attn_dropout: float | None = None,
                 attention_cls: AttentionFactory = GraphAttention):
        super().__init__({"self_attn": "res_attn"}, d_model, heads, d_ff, dropout, norm_first,
                         attn_dropout, attention_cls)

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


class DecoderLayer(_Layer):
    """Causal self-attention, encoder-decoder attention, then the MLP update.

    ``self_kv`` (optional) receives the new nodes' keys and values and returns
    the keys and values of *all* key nodes of the self-attention graph; the
    incremental decoder uses it to append to its per-position cache.
    ``memory_kv`` (optional) are the cross-attention keys and values of the
    source nodes, precomputed once per sentence when decoding.
    """

    self_attn: nn.Module
    cross_attn: nn.Module
    res_self: Residual
    res_cross: Residual

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float = 0.1,
                 norm_first: bool = True, attn_dropout: float | None = None,
                 attention_cls: AttentionFactory = GraphAttention):
        super().__init__({"self_attn": "res_self", "cross_attn": "res_cross"}, d_model, heads, d_ff,
                         dropout, norm_first, attn_dropout, attention_cls)

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


def stack_norm(d_model: int, enabled: bool) -> nn.Module:
    """The LayerNorm that ends a pre-norm stack (its residual sums were never normalised);
    a post-norm stack already ends normalised: identity."""
    return nn.LayerNorm(d_model) if enabled else nn.Identity()


class _Stack(nn.Module):
    """``num_layers`` layers made by ``layer_fn``, then the final norm (pre-norm stacks)."""

    def __init__(self, layer_fn: Callable[[], nn.Module], num_layers: int, d_model: int, final_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(layer_fn() for _ in range(num_layers))
        self.norm = stack_norm(d_model, final_norm)


class Encoder(_Stack):
    """A stack of encoder layers (final LayerNorm for pre-norm stacks):
    ``Encoder(layer_fn, num_layers, d_model, final_norm)``."""

    def forward(self, graph, x: torch.Tensor, need_weights: bool = False):
        weights = []
        for layer in self.layers:
            x, w = layer(graph, x, need_weights)
            weights.append(w)
        return self.norm(x), weights


class Decoder(_Stack):
    """A stack of decoder layers (final LayerNorm for pre-norm stacks):
    ``Decoder(layer_fn, num_layers, d_model, final_norm)``."""

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
        return [memory_keys_values(layer.cross_attn, memory) for layer in self.layers]

    def step(self, dec_graph, cross_graph, x: torch.Tensor, memory_kv: list, self_kv: list):
        """Run only the new target nodes ``x``: ``self_kv[l]`` supplies layer l's keys and
        values of every node the new ones attend to (the cached prefix plus themselves)."""
        for layer, mkv, hook in zip(self.layers, memory_kv, self_kv):
            x, _ = layer(dec_graph, cross_graph, x, memory_kv=mkv, self_kv=hook)
        return self.norm(x)
