"""A dense, padded reference: PyTorch's own ``nn.Transformer`` with this model's weights.

Used by the tests (the graph model must compute exactly what it computes) and by
the benchmarks (an identically sized baseline fed the very same batches).
"""
from __future__ import annotations

import torch
from torch import nn

from transformer_graph.data.batch import GraphBatch, positions
from transformer_graph.nn.model import GraphTransformer


def _copy_attn(dst: nn.MultiheadAttention, src) -> None:
    dst.in_proj_weight.data.copy_(src.in_proj.weight)
    dst.in_proj_bias.data.copy_(src.in_proj.bias)
    dst.out_proj.weight.data.copy_(src.out_proj.weight)
    dst.out_proj.bias.data.copy_(src.out_proj.bias)


def _copy_ffn(dst, src) -> None:
    for name in ("linear1", "linear2"):
        getattr(dst, name).load_state_dict(getattr(src.ffn, name).state_dict())


def torch_transformer_from(model: GraphTransformer) -> nn.Transformer:
    """An ``nn.Transformer`` (batch_first) holding ``model``'s encoder/decoder weights.

    ``nn.Transformer`` always ends each stack with a LayerNorm; for post-norm
    models (which have none) the stacks are built without it.
    """
    c = model.config
    layer_args = dict(d_model=c.d_model, nhead=c.heads, dim_feedforward=c.d_ff,
                      dropout=c.dropout, batch_first=True, norm_first=c.norm_first)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_args), c.layers,
                                norm=nn.LayerNorm(c.d_model) if c.norm_first else None,
                                enable_nested_tensor=False)
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args), c.decoder_layers or c.layers,
                                norm=nn.LayerNorm(c.d_model) if c.norm_first else None)
    dense = nn.Transformer(d_model=c.d_model, nhead=c.heads, dim_feedforward=c.d_ff,
                           dropout=c.dropout, batch_first=True, norm_first=c.norm_first,
                           custom_encoder=enc, custom_decoder=dec)
    for d, g in zip(dense.encoder.layers, model.encoder.layers):
        _copy_attn(d.self_attn, g.self_attn)
        _copy_ffn(d, g)
        d.norm1.load_state_dict(g.res_attn.norm.state_dict())
        d.norm2.load_state_dict(g.res_ffn.norm.state_dict())
    for d, g in zip(dense.decoder.layers, model.decoder.layers):
        _copy_attn(d.self_attn, g.self_attn)
        _copy_attn(d.multihead_attn, g.cross_attn)
        _copy_ffn(d, g)
        d.norm1.load_state_dict(g.res_self.norm.state_dict())
        d.norm2.load_state_dict(g.res_cross.norm.state_dict())
        d.norm3.load_state_dict(g.res_ffn.norm.state_dict())
    if c["norm_first"]:
        dense.encoder.norm.load_state_dict(model.encoder.norm.state_dict())
        dense.decoder.norm.load_state_dict(model.decoder.norm.state_dict())
    return dense.to(next(model.parameters()).dtype)


def _padded_rows(lengths: list[int], width: int, device) -> torch.Tensor:
    """Row of each real token in the flattened (B * width) padded layout."""
    lens = torch.as_tensor(lengths, device=device)
    sentence = torch.arange(len(lengths), device=device).repeat_interleave(lens)
    return sentence * width + positions(lengths).to(device)


def pad(flat: torch.Tensor, lengths: list[int], value=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split node rows by sentence and pad: returns (padded (B, L, ...), key padding mask (B, L)).

    One scatter (and one gather in the backward pass), not a copy per sentence: the
    dense baseline should not pay Python-loop costs the graph model does not.
    """
    width = max(lengths)
    rows = _padded_rows(lengths, width, flat.device)
    padded = flat.new_full((len(lengths) * width, *flat.shape[1:]), value).index_copy(0, rows, flat)
    mask = torch.arange(width, device=flat.device)[None, :] >= torch.as_tensor(
        lengths, device=flat.device)[:, None]
    return padded.view(len(lengths), width, *flat.shape[1:]), mask


def unpad(padded: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Inverse of :func:`pad`: the real rows, concatenated sentence by sentence."""
    return padded.flatten(0, 1)[_padded_rows(lengths, padded.shape[1], padded.device)]


class DenseTransformer(nn.Module):
    """The graph model's embeddings and generator around a padded ``nn.Transformer``.

    ``forward(batch)`` takes the same :class:`GraphBatch` as the graph model and
    returns log-probabilities for the same target nodes, so both models can be
    compared or timed on identical inputs.
    """

    def __init__(self, model: GraphTransformer):
        super().__init__()
        self.graph_model = model  # embeddings, positional table and generator are shared
        self.transformer = torch_transformer_from(model)

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        m = self.graph_model
        src, src_mask = pad(m.embed_src(batch.src, batch.src_pos), batch.src_lens)
        tgt, tgt_mask = pad(m.embed_tgt(batch.tgt, batch.tgt_pos), batch.tgt_lens)
        # Boolean masks throughout (True = may not attend), as torch prefers.
        causal = torch.ones(tgt.shape[1], tgt.shape[1], dtype=torch.bool, device=tgt.device).triu(1)
        h = self.transformer(src, tgt, tgt_mask=causal, src_key_padding_mask=src_mask,
                             tgt_key_padding_mask=tgt_mask, memory_key_padding_mask=src_mask,
                             tgt_is_causal=True)
        return m.log_probs(unpad(h, batch.tgt_lens))
