"""Pin the public names: adding, removing or renaming one is a decision, made here."""

import importlib
import types

import keras
import pytest

import tfequivariant

#: Classes and functions re-exported by ``tfequivariant``.
EXPECTED_TOP_LEVEL = {
    "Irrep",
    "Irreps",
    "spherical_harmonics",
    "wigner_3j",
    "wigner_D",
    "rand_matrix",
    "rand_angles",
    "angles_to_matrix",
    "matrix_to_angles",
}

#: Subpackages listed in ``tfequivariant.__all__`` (loaded on first attribute access).
EXPECTED_SUBPACKAGES = {"so3", "layers", "graph", "models", "export", "datasets", "testing", "distribute"}

#: Subpackages that must already import; add the others as they land.
REACHABLE_SUBPACKAGES = {"so3", "layers", "testing", "graph", "models", "datasets", "export", "distribute"}

#: ``tfequivariant.layers.__all__``.
EXPECTED_LAYERS = {
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
}


def test_top_level_all():
    assert set(tfequivariant.__all__) == EXPECTED_TOP_LEVEL | EXPECTED_SUBPACKAGES
    assert len(tfequivariant.__all__) == len(set(tfequivariant.__all__))


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP_LEVEL))
def test_top_level_names_resolve(name):
    obj = getattr(tfequivariant, name)
    assert callable(obj)
    assert name in dir(tfequivariant)
    # Re-exported from the module that defines it, not a copy.
    home = importlib.import_module(obj.__module__)
    assert getattr(home, name) is obj


@pytest.mark.parametrize("name", sorted(REACHABLE_SUBPACKAGES))
def test_subpackages_reachable(name):
    module = getattr(tfequivariant, name)
    assert isinstance(module, types.ModuleType)
    assert module is importlib.import_module(f"tfequivariant.{name}")
    assert name in dir(tfequivariant)


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        tfequivariant.no_such_name  # noqa: B018
    assert not hasattr(tfequivariant, "no_such_name")


def test_version():
    assert isinstance(tfequivariant.__version__, str) and tfequivariant.__version__


def test_layers_all():
    from tfequivariant import layers

    assert set(layers.__all__) == EXPECTED_LAYERS
    assert len(layers.__all__) == len(set(layers.__all__))


@pytest.mark.parametrize("name", sorted(EXPECTED_LAYERS))
def test_layers_are_registered_keras_layers(name):
    from tfequivariant import layers

    cls = getattr(layers, name)
    assert issubclass(cls, keras.layers.Layer)
    # Registered under the class's own name (aliases such as Linear share it).
    assert keras.saving.get_registered_name(cls) == f"tfequivariant>{cls.__name__}"
    assert keras.saving.get_registered_object(f"tfequivariant>{cls.__name__}") is cls
    assert cls.__doc__ and "Args:" in cls.__doc__


#: ``tfequivariant.models.__all__``.
EXPECTED_MODELS = {
    "SE3Transformer",
    "TensorFieldNetwork",
    "build_se3_transformer",
    "build_tensor_field_network",
    "gate_for",
    "graph_inputs",
    "hidden_irreps",
}


def test_models_all():
    from tfequivariant import models

    assert set(models.__all__) == EXPECTED_MODELS
