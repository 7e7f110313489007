"""The encoder-decoder Transformer on attention graphs, built from one config object.

:class:`EncoderDecoder` holds what every model kind shares (embeddings, positions,
generator, tying, initialisation) and :class:`EncoderDecoderConfig` the settings
they share; :class:`TransformerConfig` / :class:`GraphTransformer` add the standard
stack of distinct layers (the Universal Transformer, :mod:`transformer_graph.nn.universal`,
its recurrent one).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from transformer_graph.linear import Linear
from transformer_graph.data.batch import GraphBatch
from transformer_graph.message_passing.aggregators import get_aggregator
from transformer_graph.message_passing.base import check_heads
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
    first step (validated with the rest of the config, :class:`EncoderDecoderConfig`).
    """
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    if embed_init_std is not None:
        for emb in {id(e): e for e in (model.src_embed, model.tgt_embed)}.values():
            nn.init.normal_(emb.weight, 0.0, embed_init_std)


# --------------------------------------------------------------------------
# The config a model is built from
# --------------------------------------------------------------------------
def _check_positive_int(name: str, value, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer{what}, got {value!r}")


@dataclass(frozen=True)
class EncoderDecoderConfig(Mapping):
    """What every encoder-decoder model here is built from (nanoGPT's ``GPTConfig``);
    each model kind adds its own fields in a subclass next to its model.

    Validated once, when it is made. Frozen, because a model is built from it once.
    It also reads as a mapping (``model.config["d_model"]``, ``dict(model.config)``),
    as ``model.config``, a dict of the constructor arguments, always did.
    """

    kind: ClassVar[str]
    # The order in which the model constructors take positional arguments, kept as it was.
    POSITIONAL: ClassVar[tuple[str, ...]]

    src_vocab: int
    tgt_vocab: int
    d_model: int = 512
    d_ff: int = 2048
    heads: int = 8
    dropout: float = 0.1
    norm_first: bool = True
    share_embeddings: bool = False
    # None: tie exactly when embeddings are shared (what make_model and the YAML default mean).
    tie_generator: bool | None = False
    max_len: int = 512
    attn_dropout: float | None = None
    aggregator: str = "attention"
    embed_init_std: float | None = None

    def __post_init__(self) -> None:
        if self.tie_generator is None:
            object.__setattr__(self, "tie_generator", bool(self.share_embeddings))
        self.validate()

    def validate(self) -> None:
        """Clear ValueErrors for settings no model can be built with (subclasses add theirs)."""
        get_aggregator(self.aggregator)  # raises for an unknown name
        for name in ("src_vocab", "tgt_vocab", "d_model", "d_ff", "heads", "max_len"):
            _check_positive_int(name, getattr(self, name))
        check_heads(self.d_model, self.heads)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a value in [0, 1), got {self.dropout!r}")
        if self.share_embeddings and self.src_vocab != self.tgt_vocab:
            raise ValueError(f"share_embeddings needs one joint vocabulary, got src_vocab={self.src_vocab} "
                             f"and tgt_vocab={self.tgt_vocab}")
        if self.embed_init_std is not None and not self.embed_init_std > 0:
            raise ValueError(f"embed_init_std: expected a positive number or None, got {self.embed_init_std!r}")

    @classmethod
    def of(cls, *args, defaults: dict | None = None, **kwargs):
        """The config a model constructor is called with: a config itself, or the config's
        fields as arguments (positional ones in the order ``POSITIONAL``). ``defaults``
        replace field defaults (``make_model`` ties the generator when embeddings are shared)."""
        if len(args) == 1 and not kwargs and isinstance(args[0], cls):
            return args[0]
        if len(args) > len(cls.POSITIONAL):
            raise TypeError(f"{cls.__name__}: expected at most {len(cls.POSITIONAL)} positional arguments "
                            f"({', '.join(cls.POSITIONAL)}), got {len(args)}")
        named = dict(zip(cls.POSITIONAL, args))
        twice = sorted(named.keys() & kwargs.keys())
        if twice:
            raise TypeError(f"{cls.__name__}: got more than one value for {', '.join(twice)}")
        return cls(**{**(defaults or {}), **named, **kwargs})

    @classmethod
    def from_options(cls, options, src_vocab: int, tgt_vocab: int):
        """The config for vocabularies of these sizes with every other field taken, by name,
        from ``options`` where it has one (the YAML model section,
        :class:`~transformer_graph.config.ModelConfig`); fields it lacks keep their defaults,
        and options that are not fields of this kind are not this model's business."""
        given = {f.name: getattr(options, f.name) for f in fields(cls)
                 if f.name not in ("src_vocab", "tgt_vocab") and hasattr(options, f.name)}
        return cls(src_vocab=src_vocab, tgt_vocab=tgt_vocab, **given)

    # -- read as a mapping: "kind", then the fields -----------------------------
    def __iter__(self) -> Iterator[str]:
        yield "kind"
        yield from (f.name for f in fields(self))

    def __len__(self) -> int:
        return 1 + len(fields(self))

    def __getitem__(self, key: str):
        if key == "kind" or key in {f.name for f in fields(self)}:
            return getattr(self, key)
        raise KeyError(key)


def constructor_signature(config_cls: type[EncoderDecoderConfig], method: bool = True,
                          **defaults) -> inspect.Signature:
    """The signature a model constructor (``method``) or factory taking
    ``config_cls.of(*args, **kwargs)`` has always had, for ``help()`` and editors: the
    fields in ``POSITIONAL`` order with their defaults (or ``defaults``)."""
    field_defaults = {f.name: f.default for f in fields(config_cls)}
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)] if method else []
    for name in config_cls.POSITIONAL:
        default = defaults.get(name, field_defaults[name])
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=inspect.Parameter.empty if default is MISSING else default))
    return inspect.Signature(params)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
class EncoderDecoder(nn.Module):
    """What every encoder-decoder model here shares, built from one config object:
    token embeddings (shared when asked), the positional table, the generator (tied
    when asked) and the initialisation around the kind's own encoder and decoder;
    encode the source graph, decode the target graph against the memory, generate
    log-probabilities.

    Subclasses set ``config_class`` and provide ``build_stacks`` (the encoder and the
    decoder) and ``embed_src``/``embed_tgt``; ``_after_forward`` is a hook for
    per-batch bookkeeping.
    """

    config_class: ClassVar[type[EncoderDecoderConfig]]

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        # Built in this order: it fixes the random initialisation and the parameter order
        # (which optimizer states in checkpoints are indexed by).
        self.src_embed = TokenEmbedding(config.src_vocab, config.d_model, "src")
        self.tgt_embed = (self.src_embed if config.share_embeddings
                          else TokenEmbedding(config.tgt_vocab, config.d_model, "tgt"))
        self.pos = PositionalEncoding(config.d_model, config.max_len)
        self.encoder, self.decoder = self.build_stacks(config)
        self.generator = Linear(config.d_model, config.tgt_vocab)
        init_weights(self, config.embed_init_std)
        if config.tie_generator:
            self.generator.weight = self.tgt_embed.weight

    @classmethod
    def from_options(cls, options, src_vocab: int, tgt_vocab: int):
        """The model ``options`` (e.g. the YAML model section) describe; see
        :meth:`EncoderDecoderConfig.from_options`."""
        return cls(cls.config_class.from_options(options, src_vocab, tgt_vocab))

    def build_stacks(self, config) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def make_layer(self, layer_cls: type[nn.Module]) -> nn.Module:
        """An :class:`EncoderLayer` or :class:`DecoderLayer` as the config describes it."""
        c = self.config
        return layer_cls(c.d_model, c.heads, c.d_ff, c.dropout, c.norm_first, c.attn_dropout,
                         get_aggregator(c.aggregator))

    def encode(self, batch: GraphBatch, need_weights: bool = False):
        return self.encoder(batch.graphs.enc, self.embed_src(batch.src, batch.src_pos), need_weights)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """The generator: linear map to the vocabulary, then log-softmax."""
        return F.log_softmax(self.generator(h), dim=-1)

    def _after_forward(self) -> None:
        """Called after each forward pass (the Universal Transformer collects ACT statistics)."""

    def forward(self, batch: GraphBatch, return_attention: bool = False, logits: bool = False):
        """Log-probabilities (num_target_nodes, tgt_vocab), with the attention weights when
        ``return_attention``. ``logits=True`` returns the generator's output before the
        log-softmax instead, for :func:`~transformer_graph.nn.loss.label_smoothed_loss_from_logits`
        (training: one (nodes x vocabulary) tensor fewer, no log-softmax pass of its own)."""
        memory, w_enc = self.encode(batch, return_attention)
        h, w_dec, w_cross = self.decoder(batch.graphs.dec, batch.graphs.cross,
                                         self.embed_tgt(batch.tgt, batch.tgt_pos), memory,
                                         return_attention)
        self._after_forward()
        out = self.generator(h) if logits else self.log_probs(h)
        if return_attention:
            return out, {"enc": w_enc, "dec": w_dec, "cross": w_cross}
        return out


@dataclass(frozen=True)
class TransformerConfig(EncoderDecoderConfig):
    """The standard model: ``layers`` distinct encoder layers and as many decoder layers
    (or ``decoder_layers``)."""

    kind: ClassVar[str] = "standard"
    POSITIONAL: ClassVar[tuple[str, ...]] = (
        "src_vocab", "tgt_vocab", "layers", "d_model", "d_ff", "heads", "dropout", "norm_first",
        "share_embeddings", "tie_generator", "max_len", "attn_dropout", "decoder_layers", "aggregator",
        "embed_init_std")

    layers: int = 6
    decoder_layers: int | None = None  # None: as many as layers

    def validate(self) -> None:
        super().validate()
        _check_positive_int("layers", self.layers)


class GraphTransformer(EncoderDecoder):
    """Encoder-decoder Transformer whose attention is message passing on graphs.

    Built from a :class:`TransformerConfig` (``GraphTransformer(config)``) or from its
    fields, as always: ``GraphTransformer(src_vocab, tgt_vocab, layers=6, d_model=512, ...)``.
    ``forward(batch)`` takes a :class:`~transformer_graph.data.batch.GraphBatch` and
    returns log-probabilities of shape (num_target_nodes, tgt_vocab).
    """

    config_class = TransformerConfig

    def __init__(self, *args, **kwargs):
        super().__init__(TransformerConfig.of(*args, **kwargs))

    __init__.__signature__ = constructor_signature(TransformerConfig)

    def build_stacks(self, config: TransformerConfig):
        self.embed_dropout = nn.Dropout(config.dropout)
        encoder = Encoder(lambda: self.make_layer(EncoderLayer), config.layers, config.d_model,
                          final_norm=config.norm_first)
        decoder = Decoder(lambda: self.make_layer(DecoderLayer), config.decoder_layers or config.layers,
                          config.d_model, final_norm=config.norm_first)
        return encoder, decoder

    # -- pieces, also used by the incremental decoder -----------------------
    def embed_src(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.embed_dropout(self.src_embed(ids) + self.pos(pos, "src"))

    def embed_tgt(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.embed_dropout(self.tgt_embed(ids) + self.pos(pos, "tgt"))


# Factories tie the generator to the target embedding whenever embeddings are shared,
# unless tie_generator says otherwise (the classes default to untied).
FACTORY_DEFAULTS = {"tie_generator": None}


def make_model(*args, **kwargs) -> GraphTransformer:
    """Build a :class:`GraphTransformer` from :class:`TransformerConfig`'s fields, e.g.
    ``make_model(src_vocab=100, tgt_vocab=100, layers=2, d_model=64, d_ff=128, heads=4)``;
    the generator is tied to the target embedding whenever embeddings are shared, unless
    ``tie_generator`` says otherwise."""
    return GraphTransformer(TransformerConfig.of(*args, defaults=FACTORY_DEFAULTS, **kwargs))


make_model.__signature__ = constructor_signature(TransformerConfig, method=False, **FACTORY_DEFAULTS)
