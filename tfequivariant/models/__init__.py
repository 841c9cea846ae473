"""Ready models: Tensor Field Network and SE(3)-Transformer.

Each is a ``keras.Model`` called on a graph dict, plus a builder returning a
functional model over named inputs (``positions``, ``node_features``,
``senders``, ``receivers``, ...) for export.
"""

from tfequivariant.models._common import gate_for, graph_inputs, hidden_irreps
from tfequivariant.models.se3_transformer import SE3Transformer, build_se3_transformer
from tfequivariant.models.tensor_field_network import TensorFieldNetwork, build_tensor_field_network

__all__ = [
    "SE3Transformer",
    "TensorFieldNetwork",
    "build_se3_transformer",
    "build_tensor_field_network",
    "gate_for",
    "graph_inputs",
    "hidden_irreps",
]
