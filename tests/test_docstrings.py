"""Every docstring example in the public modules runs and prints what it says."""

import doctest
import importlib

import pytest

MODULES = [
    "tfequivariant.irreps",
    "tfequivariant.spherical_harmonics",
    "tfequivariant.graph",
    "tfequivariant.datasets.nbody",
    "tfequivariant.datasets.tetris",
    "tfequivariant.layers.attentive_self_interaction",
    "tfequivariant.layers.edge_geometry",
    "tfequivariant.layers.gate",
    "tfequivariant.layers.graph_pooling",
    "tfequivariant.layers.norm_nonlinearity",
    "tfequivariant.layers.point_convolution",
    "tfequivariant.layers.radial_basis",
    "tfequivariant.layers.ragged_to_edges",
    "tfequivariant.layers.se3_attention",
    "tfequivariant.layers.se3_norm_nonlinearity",
    "tfequivariant.layers.self_interaction",
    "tfequivariant.layers.spherical_harmonics",
    "tfequivariant.layers.tensor_product",
    "tfequivariant.models.se3_transformer",
    "tfequivariant.models.tensor_field_network",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
