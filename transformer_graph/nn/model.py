"""The encoder-decoder Transformer on attention graphs, and its factory."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transformer_graph.message_passing.aggregators import get_aggregator
from transformer_graph.data.batch import GraphBatch
from transformer_graph.nn.layers import Decoder, DecoderLayer, Encoder, EncoderLayer


class TokenEmbedding(nn.Module):
    """Token embedding scaled by sqrt(d_model), as in the paper."""

    def __init__(self, vocab_size: int, d_model: int, name: str = "tokens"):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.scale = math.sqrt(d_model)
        self.name = name

    @property
    def weight(self) -> nn.Parameter:
        return self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.embed.num_embeddings):
            bad = ids[(ids < 0) | (ids >= self.embed.num_embeddings)][0].item()
            raise ValueError(f"{self.name}: token id {bad} is outside the vocabulary "
                             f"[0, {self.embed.num_embeddings})")
        return self.embed(ids) * self.scale


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal encodings, looked up by each node's position in its sentence."""

    def __init__(self, d_model: int, max_len: int = 512):
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model, dtype=torch.float64)
        table[:, 0::2] = torch.sin(pos * div)
        table[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
        self.register_buffer("table", table.float(), persistent=False)
        self.max_len = max_len

    def forward(self, pos: torch.Tensor, name: str = "positions") -> torch.Tensor:
        if pos.numel() and int(pos.max()) >= self.max_len:
            raise ValueError(f"{name}: sequence length {int(pos.max()) + 1} exceeds the positional "
                             f"table (max_len={self.max_len}); build the model with a larger max_len")
        return self.table[pos]


def init_weights(model: nn.Module, embed_init_std: float | None = None) -> None:
    """Xavier for every matrix (as the reference); biases and norms keep their defaults.

    Xavier's scale for a (vocab x d) lookup table depends on the vocabulary size,
    which means nothing for a table. With a small vocabulary, sqrt(d) scaling and a
    tied generator it makes token vectors dwarf the positional encodings and gives
    the untrained model a strong "repeat the input token" bias (measured: initial
    loss 10 on the copy task instead of ln 30 = 3.4). ``embed_init_std`` instead
    draws the token embeddings from N(0, std^2), so positions are seen from the
    first step.
    """
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    if embed_init_std is not None:
        if not embed_init_std > 0:
            raise ValueError(f"embed_init_std: expected a positive number or None, got {embed_init_std!r}")
        for emb in {id(e): e for e in (model.src_embed, model.tgt_embed)}.values():
            nn.init.normal_(emb.weight, 0.0, embed_init_std)


def check_model_args(src_vocab: int, tgt_vocab: int, d_model: int, d_ff: int, heads: int, max_len: int,
                     dropout: float, share_embeddings: bool, **more_positive_ints) -> None:
    """The argument checks every encoder-decoder model here shares (clear ValueErrors)."""
    ints = dict(src_vocab=src_vocab, tgt_vocab=tgt_vocab, d_model=d_model, d_ff=d_ff, heads=heads,
                max_len=max_len, **more_positive_ints)
    for name, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if d_model % heads != 0:
        raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a value in [0, 1), got {dropout!r}")
    if share_embeddings and src_vocab != tgt_vocab:
        raise ValueError(f"share_embeddings needs one joint vocabulary, got src_vocab={src_vocab} "
                         f"and tgt_vocab={tgt_vocab}")


class EncoderDecoder(nn.Module):
    """What every encoder-decoder model here shares: encode the source graph, decode the
    target graph against the memory, generate log-probabilities.

    Subclasses provide ``embed_src``/``embed_tgt``, ``encoder``, ``decoder`` and
    ``generator``; ``_after_forward`` is a hook for per-batch bookkeeping.
    """

    def encode(self, batch: GraphBatch, need_weights: bool = False):
        return self.encoder(batch.graphs.enc, self.embed_src(batch.src, batch.src_pos), need_weights)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """The generator: linear map to the vocabulary, then log-softmax."""
        return F.log_softmax(self.generator(h), dim=-1)

    def _after_forward(self) -> None:
        """Called after each forward pass (the Universal Transformer collects ACT statistics)."""

    def forward(self, batch: GraphBatch, return_attention: bool = False):
        memory, w_enc = self.encode(batch, return_attention)
        h, w_dec, w_cross = self.decoder(batch.graphs.dec, batch.graphs.cross,
                                         self.embed_tgt(batch.tgt, batch.tgt_pos), memory,
                                         return_attention)
        self._after_forward()
        logp = self.log_probs(h)
        if return_attention:
            return logp, {"enc": w_enc, "dec": w_dec, "cross": w_cross}
        return logp


class GraphTransformer(EncoderDecoder):
    """Encoder-decoder Transformer whose attention is message passing on graphs.

    ``forward(batch)`` takes a :class:`~transformer_graph.data.batch.GraphBatch` and
    returns log-probabilities of shape (num_target_nodes, tgt_vocab).
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, layers: int = 6, d_model: int = 512,
                 d_ff: int = 2048, heads: int = 8, dropout: float = 0.1, norm_first: bool = True,
                 share_embeddings: bool = False, tie_generator: bool = False, max_len: int = 512,
                 attn_dropout: float | None = None, decoder_layers: int | None = None,
                 aggregator: str = "attention", embed_init_std: float | None = None):
        super().__init__()
        attention_cls = get_aggregator(aggregator)  # phi/□ of every attention block
        check_model_args(src_vocab, tgt_vocab, d_model, d_ff, heads, max_len, dropout, share_embeddings,
                         layers=layers)
        self.config = dict(src_vocab=src_vocab, tgt_vocab=tgt_vocab, layers=layers, d_model=d_model,
                           d_ff=d_ff, heads=heads, dropout=dropout, norm_first=norm_first,
                           share_embeddings=share_embeddings, tie_generator=tie_generator,
                           max_len=max_len, attn_dropout=attn_dropout, decoder_layers=decoder_layers,
                           aggregator=aggregator, embed_init_std=embed_init_std)
        self.d_model = d_model
        self.src_embed = TokenEmbedding(src_vocab, d_model, "src")
        self.tgt_embed = self.src_embed if share_embeddings else TokenEmbedding(tgt_vocab, d_model, "tgt")
        self.pos = PositionalEncoding(d_model, max_len)
        self.embed_dropout = nn.Dropout(dropout)
        args = (d_model, heads, d_ff, dropout, norm_first, attn_dropout, attention_cls)
        self.encoder = Encoder(lambda: EncoderLayer(*args), layers, d_model, final_norm=norm_first)
        self.decoder = Decoder(lambda: DecoderLayer(*args), decoder_layers or layers, d_model,
                               final_norm=norm_first)
        self.generator = nn.Linear(d_model, tgt_vocab)
        self._reset_parameters(embed_init_std)
        if tie_generator:
            self.generator.weight = self.tgt_embed.weight

    def _reset_parameters(self, embed_init_std: float | None = None) -> None:
        init_weights(self, embed_init_std)

    # -- pieces, also used by the incremental decoder -----------------------
    def embed_src(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.embed_dropout(self.src_embed(ids) + self.pos(pos, "src"))

    def embed_tgt(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.embed_dropout(self.tgt_embed(ids) + self.pos(pos, "tgt"))



def make_model(src_vocab: int, tgt_vocab: int, layers: int = 6, d_model: int = 512, d_ff: int = 2048,
               heads: int = 8, dropout: float = 0.1, norm_first: bool = True,
               share_embeddings: bool = False, tie_generator: bool | None = None, max_len: int = 512,
               **kwargs) -> GraphTransformer:
    """Build a :class:`GraphTransformer`; the generator is tied to the target
    embedding whenever embeddings are shared, unless ``tie_generator`` says otherwise."""
    if tie_generator is None:
        tie_generator = share_embeddings
    return GraphTransformer(src_vocab, tgt_vocab, layers, d_model, d_ff, heads, dropout, norm_first,
                            share_embeddings, tie_generator, max_len, **kwargs)
