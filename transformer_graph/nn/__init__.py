"""gamma and the models: layers, stacks, the standard and the Universal Transformer, ACT, loss."""
from transformer_graph.nn.model import GraphTransformer
from transformer_graph.nn.universal import UniversalTransformer

# model.kind -> the class built for it; each class takes, from the YAML model section, the
# options that are fields of its config (EncoderDecoder.from_options).
MODELS = {"standard": GraphTransformer, "universal": UniversalTransformer}
