"""Keras 3 layers of tfequivariant (TensorFlow backend).

Feature tensors are ``[num_nodes, irreps.dim]`` in e3nn's layout; graph layers
are called as ``layer(features, graph)`` with the graph dict of DESIGN.md
section 3 (``positions``, ``senders``, ``receivers``, ...).
"""

from tfequivariant.layers.attentive_self_interaction import AttentiveSelfInteraction
from tfequivariant.layers.edge_geometry import EdgeGeometry
from tfequivariant.layers.gate import Gate
from tfequivariant.layers.graph_pooling import GraphPooling
from tfequivariant.layers.norm_nonlinearity import NormNonlinearity
from tfequivariant.layers.point_convolution import PointConvolution
from tfequivariant.layers.radial_basis import RadialBasis
from tfequivariant.layers.ragged_to_edges import RaggedToEdges
from tfequivariant.layers.se3_attention import SE3Attention
from tfequivariant.layers.se3_norm_nonlinearity import SE3NormNonlinearity
from tfequivariant.layers.self_interaction import Linear, SelfInteraction
from tfequivariant.layers.spherical_harmonics import SphericalHarmonics
from tfequivariant.layers.tensor_product import FullyConnectedTensorProduct, TensorProduct

__all__ = [
    "AttentiveSelfInteraction",
    "EdgeGeometry",
    "FullyConnectedTensorProduct",
    "Gate",
    "GraphPooling",
    "Linear",
    "NormNonlinearity",
    "PointConvolution",
    "RadialBasis",
    "RaggedToEdges",
    "SE3Attention",
    "SE3NormNonlinearity",
    "SelfInteraction",
    "SphericalHarmonics",
    "TensorProduct",
]
