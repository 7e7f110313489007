"""transformer_graph: the Transformer of "Attention Is All You Need" as a graph neural network.

Self-attention is message passing: for each edge j -> i of an attention graph,
phi makes a message (score q_i . k_j / sqrt(d_k), value v_j), □ aggregates the
messages of each node (softmax-weighted sum) and gamma updates the node
(residual + LayerNorm + MLP). Encoder self-attention runs on a complete graph,
decoder self-attention on a causal graph and encoder-decoder attention on a
complete bipartite graph.

Two engines compute phi and □ with the same results: ``dgl`` (DGL's built-ins, the
reference, ``pip install 'transformer_graph[dgl]'``) and ``torch`` (PyTorch alone);
``auto`` takes DGL where it imports. The engine belongs to a model
(:func:`set_engine`, :func:`using_engine`), never to the process.

    >>> from transformer_graph import make_model, make_batch
    >>> model = make_model(src_vocab=100, tgt_vocab=100, layers=2, d_model=64, d_ff=128, heads=4)
    >>> batch = make_batch([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], sos=2, eos=3)
    >>> model(batch).shape  # log-probabilities, one row per target node
    torch.Size([7, 100])
"""
from transformer_graph.data.batch import GraphBatch, make_batch
from transformer_graph.graphs.build import AttentionGraphs, GraphSpec, build_graphs, register_structure
from transformer_graph.graphs.graph import AttentionGraph
from transformer_graph.inference.decoding import beam_search, greedy
from transformer_graph.message_passing import (GATBlock, GraphAttention, MeanBlock, MessagePassingBlock, set_engine,
                                               using_engine)
from transformer_graph.nn.layers import Decoder, DecoderLayer, Encoder, EncoderLayer, FeedForward, Residual
from transformer_graph.nn.model import (GraphTransformer, PositionalEncoding, TokenEmbedding, TransformerConfig,
                                        make_model)
from transformer_graph.nn.universal import UniversalConfig, UniversalTransformer

__all__ = [
    "AttentionGraph", "AttentionGraphs", "Decoder", "DecoderLayer", "Encoder", "EncoderLayer", "FeedForward",
    "GATBlock", "GraphAttention", "GraphBatch", "GraphSpec", "GraphTransformer", "MeanBlock",
    "MessagePassingBlock", "PositionalEncoding", "Residual", "TokenEmbedding", "TransformerConfig",
    "UniversalConfig", "UniversalTransformer", "beam_search", "build_graphs", "greedy", "make_batch",
    "make_model", "register_structure", "set_engine", "using_engine",
]
__version__ = "0.1.0"
