"""A graph encoder for node classification, built from the sequence models' blocks.

The same γ(x_i, □ φ(x_i, x_j)) as the Transformer's encoder, on the data's own graphs: node
features are embedded (an ``nn.Embedding`` for categorical ids, the project's ``Linear`` for dense
features), optionally plus a linear map of the Laplacian positional encoding (Dwivedi et al.), then
``layers`` :class:`~transformer_graph.nn.layers.EncoderLayer` (any φ/□ block:
attention, mean, gat, or a block class) on the attention graph of
:func:`~transformer_graph.graphs.node_graphs.batch_graphs` in an
:class:`~transformer_graph.nn.layers.Encoder` stack (final LayerNorm when pre-norm), and a classifier
on the real nodes. The graph's structure (``sparse`` / ``complete`` / ``global``) is the only thing
that separates a graph transformer on the graph's edges from full attention over its nodes.

The classifier is the benchmark's ``MLPReadout`` (``layers/mlp_readout_layer.py`` of
benchmarking-gnns: d -> d/2 -> d/4 -> classes, ReLU between), or one Linear (``readout="linear"``).

Build a batch for a model with :func:`node_batch` (it passes the config's structure and the
Laplacian PE to ``batch_graphs``). Eigenvector signs are arbitrary, so in training mode each graph's
PE columns get random signs (``pe_sign_flip``; drawn from ``model.pe_generator`` when set, else
torch's default generator, like dropout); in eval mode never. The benchmark draws one sign vector
per batch (``train/train_SBMs_node_classification.py``); here each graph draws its own.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from transformer_graph.data.laplacian import laplacian_pe
from transformer_graph.graphs.node_graphs import NODE_STRUCTURES, NodeBatch, batch_graphs, check_structure
from transformer_graph.linear import Linear
from transformer_graph.message_passing.aggregators import get_aggregator
from transformer_graph.message_passing.base import check_heads
from transformer_graph.nn.layers import Encoder, EncoderLayer
from transformer_graph.nn.model import init_weights

FEATURE_KINDS = ("categorical", "dense")
READOUTS = ("mlp", "linear")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


@dataclass(frozen=True)
class GraphEncoderConfig:
    """What a :class:`GraphEncoder` is built from; validated when made.

    ``num_features``: the vocabulary size of categorical ids, or the width of dense features.
    ``d_ff`` None: 2 * d_model (the Graph Transformer's FFN). ``attn_dropout`` None: ``dropout``.
    ``aggregator``: a registry name (``transformer_graph.message_passing.aggregators``) or a block
    class called as ``cls(d_model, heads, attn_dropout)``. ``global_nodes`` counts per graph and
    applies to structure ``global`` only; ``self_loops`` to ``sparse``/``global``.
    """

    num_features: int
    feature_kind: str
    num_classes: int
    d_model: int = 64
    layers: int = 4
    heads: int = 8
    d_ff: int | None = None
    dropout: float = 0.0
    attn_dropout: float | None = None
    norm_first: bool = True
    aggregator: str | Callable[..., nn.Module] = "attention"
    structure: str = "sparse"
    self_loops: bool = True
    global_nodes: int = 1
    pe_dim: int = 0
    pe_sign_flip: bool = True
    readout: str = "mlp"

    def __post_init__(self) -> None:
        for name in ("num_features", "num_classes", "d_model", "layers", "heads"):
            _positive_int(name, getattr(self, name))
        if self.d_ff is not None:
            _positive_int("d_ff", self.d_ff)
        check_heads(self.d_model, self.heads)
        if self.feature_kind not in FEATURE_KINDS:
            raise ValueError(f"feature_kind: expected one of {', '.join(FEATURE_KINDS)}, got {self.feature_kind!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout: expected one of {', '.join(READOUTS)}, got {self.readout!r}")
        if self.readout == "mlp" and self.d_model < 4:
            raise ValueError(f"readout 'mlp' halves d_model twice; d_model={self.d_model} is too small "
                             "(use d_model >= 4 or readout 'linear')")
        check_structure(self.structure, self.self_loops, self.global_nodes)
        for name in ("dropout", "attn_dropout"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p < 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1), got {p!r}")
        if isinstance(self.pe_dim, bool) or not isinstance(self.pe_dim, int) or self.pe_dim < 0:
            raise ValueError(f"pe_dim: expected a non-negative int (0 = no Laplacian PE), got {self.pe_dim!r}")
        self.block_class()   # an unknown aggregator name fails here, not at the first forward

    def block_class(self) -> Callable[..., nn.Module]:
        return self.aggregator if callable(self.aggregator) else get_aggregator(self.aggregator)

    @property
    def global_per_graph(self) -> int:
        return self.global_nodes if self.structure == "global" else 0

    @classmethod
    def for_dataset(cls, dataset, **kwargs) -> GraphEncoderConfig:
        """The config for a ``GraphDataset`` (its feature kind and width, its classes) and ``kwargs``."""
        return cls(num_features=dataset.num_features, feature_kind=dataset.feature_kind,
                   num_classes=dataset.num_classes, **kwargs)


def node_batch(samples: Sequence, config: GraphEncoderConfig, device=None) -> NodeBatch:
    """:func:`batch_graphs` of ``samples`` as ``config``'s model expects them (structure, self loops,
    global nodes, Laplacian PE of width ``pe_dim``). The PE is recomputed per call (about a
    millisecond per PATTERN graph); cache the batches, or pass a caching ``pe_fn`` to
    ``batch_graphs``, when that matters."""
    return batch_graphs(samples, config.structure, self_loops=config.self_loops, global_nodes=config.global_nodes,
                        pe_dim=config.pe_dim, pe_fn=laplacian_pe, device=device)


class MLPReadout(nn.Module):
    """The benchmark's node classifier: d -> d/2 -> d/4 -> num_classes, ReLU between."""

    def __init__(self, d_model: int, num_classes: int):
        super().__init__()
        self.layers = nn.ModuleList([Linear(d_model, d_model // 2), Linear(d_model // 2, d_model // 4),
                                     Linear(d_model // 4, num_classes)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


class GraphEncoder(nn.Module):
    """Node classifier: embeddings (+ Laplacian PE), encoder layers on the batch's attention graph,
    readout. ``forward(batch)`` -> logits (num_real_nodes, num_classes); with ``return_attention``
    also ``{"enc": [per layer (num_edges, heads) edge weights]}`` (the sequence models' layout)."""

    def __init__(self, config: GraphEncoderConfig, pe_generator: torch.Generator | None = None):
        super().__init__()
        self.config = c = config
        self.embed = (nn.Embedding(c.num_features, c.d_model) if c.feature_kind == "categorical"
                      else Linear(c.num_features, c.d_model))
        # Global nodes have no features: each of a graph's global nodes has its own learned vector.
        self.global_embed = nn.Embedding(c.global_per_graph, c.d_model) if c.global_per_graph else None
        self.pe_proj = Linear(c.pe_dim, c.d_model) if c.pe_dim else None
        self.embed_dropout = nn.Dropout(c.dropout)
        block = c.block_class()
        d_ff = c.d_ff or 2 * c.d_model
        self.encoder = Encoder(lambda: EncoderLayer(c.d_model, c.heads, d_ff, c.dropout, c.norm_first,
                                                    c.attn_dropout, block),
                               c.layers, c.d_model, final_norm=c.norm_first)
        self.readout = MLPReadout(c.d_model, c.num_classes) if c.readout == "mlp" else Linear(c.d_model, c.num_classes)
        init_weights(self)
        self.pe_generator = pe_generator

    # -- checks: a wrong batch fails here, by name, not as a shape error inside a layer ----------
    def _check_batch(self, batch: NodeBatch) -> None:
        c = self.config
        if batch.structure != c.structure or batch.global_nodes != c.global_per_graph:
            raise ValueError(f"batch: built with structure {batch.structure!r} and {batch.global_nodes} global "
                             f"node(s) per graph, but the model expects {c.structure!r} and {c.global_per_graph}; "
                             f"build it with transformer_graph.nn.graph_encoder.node_batch(samples, model.config)")
        width = 0 if batch.pe is None else batch.pe.shape[1]
        if width != c.pe_dim:
            raise ValueError(f"batch: positional encodings of width {width}, but the model has pe_dim={c.pe_dim}; "
                             f"build the batch with node_batch(samples, model.config)")
        x = batch.x
        if c.feature_kind == "categorical":
            if x.dtype != torch.int64 or x.dim() != 1:
                raise ValueError(f"x: categorical features must be int64 ids of shape (num_nodes,), got {x.dtype} "
                                 f"{tuple(x.shape)}; fix: x.long(), or feature_kind='dense' for float features")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= c.num_features):
                bad = int(x[(x < 0) | (x >= c.num_features)][0])
                raise ValueError(f"x: feature id {bad} is outside the embedding's vocabulary [0, num_features="
                                 f"{c.num_features}); map the ids to 0..{c.num_features - 1} or raise num_features")
        elif not x.is_floating_point() or x.dim() != 2 or x.shape[1] != c.num_features:
            raise ValueError(f"x: dense features must be floating point of shape (num_nodes, num_features="
                             f"{c.num_features}), got {x.dtype} {tuple(x.shape)}; fix: x.float(), one row of "
                             f"{c.num_features} per node (or build the model with num_features={x.shape[-1]})")

    # -- the input -------------------------------------------------------------------------
    def embed_nodes(self, batch: NodeBatch) -> torch.Tensor:
        """Every node's input state (num_nodes, d_model): real nodes, then global nodes."""
        self._check_batch(batch)
        dtype = self.embed.weight.dtype   # the model's (float64 in the equality tests)
        h = self.embed(batch.x) if self.config.feature_kind == "categorical" else self.embed(batch.x.to(dtype))
        if self.global_embed is not None:
            h = torch.cat([h, self.global_embed(batch.global_slot())])
        if self.pe_proj is not None:
            pe = batch.pe.to(dtype)
            if self.training and self.config.pe_sign_flip:
                signs = torch.randint(0, 2, (batch.num_graphs, pe.shape[1]), generator=self.pe_generator)
                pe = pe * (signs * 2 - 1).to(device=pe.device, dtype=dtype)[batch.graph_index]
            h = h + self.pe_proj(pe)
        return self.embed_dropout(h)

    def forward(self, batch: NodeBatch, return_attention: bool = False):
        h, weights = self.encoder(batch.graph, self.embed_nodes(batch), return_attention)
        logits = self.readout(h[:batch.num_real])   # global nodes are dropped before the classifier
        return (logits, {"enc": weights}) if return_attention else logits


__all__ = ["FEATURE_KINDS", "NODE_STRUCTURES", "READOUTS", "GraphEncoder", "GraphEncoderConfig", "MLPReadout",
           "node_batch"]
