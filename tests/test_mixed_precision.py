"""Every layer and model under the mixed_float16 policy: float16 features, float32 geometry."""

import keras
import numpy as np
import pytest

import tfequivariant as tfe
from tfequivariant import layers as L
from tfequivariant.testing import CARTESIAN_POINTS, equivariance_error

IRREPS = "4x0e+2x1o+2x2e"


@pytest.fixture
def mixed_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


def _graph(n=8, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(n, 3)).astype("float32")
    r, s = np.nonzero(~np.eye(n, dtype=bool))
    return {"positions": pos, "senders": s.astype("int32"), "receivers": r.astype("int32"),
            "node_graph_index": np.zeros(n, "int32"), "graph_sizes": np.array([n], "int32")}


def _features(n=8, seed=1):
    return np.random.default_rng(seed).normal(size=(n, tfe.Irreps(IRREPS).dim)).astype("float32")


FILTERS = dict(num_radial_basis=6, radial_hidden=(8,), cutoff=4.0)
CASES = {
    "SelfInteraction": (lambda: L.SelfInteraction(IRREPS, IRREPS), False),
    "NormNonlinearity": (lambda: L.NormNonlinearity(IRREPS), False),
    "Gate": (lambda: L.Gate("2x0e", "silu", "2x0e", "sigmoid", "2x2e"), False),
    "SE3NormNonlinearity": (lambda: L.SE3NormNonlinearity(IRREPS), False),
    "AttentiveSelfInteraction": (lambda: L.AttentiveSelfInteraction(IRREPS, IRREPS), False),
    "FullyConnectedTensorProduct": (lambda: L.FullyConnectedTensorProduct(IRREPS, "1x0e+1x1o", IRREPS), "tp"),
    "PointConvolution": (lambda: L.PointConvolution(IRREPS, IRREPS, **FILTERS), True),
    "PointConvolution-so2": (lambda: L.PointConvolution(IRREPS, IRREPS, implementation="so2", **FILTERS), True),
    "SE3Attention": (lambda: L.SE3Attention(IRREPS, IRREPS, num_heads=2, **FILTERS), True),
    "GraphPooling": (lambda: L.GraphPooling(IRREPS, mode="mean"), True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_runs_in_float16_with_float32_variables(name, mixed_policy):
    make, kind = CASES[name]
    layer = make()
    x, g = _features(), _graph()
    if name == "Gate":
        x = x[:, : layer.irreps_in.dim]
    if kind is True:
        out = layer(x, g)
    elif kind == "tp":
        out = layer(x, x[:, :4])
    else:
        out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in layer.weights)


def test_edge_geometry_stays_float32(mixed_policy):
    out = L.EdgeGeometry(2, num_radial_basis=6, cutoff=4.0)(_graph())
    for key in ("edge_vectors", "edge_lengths", "edge_sh", "edge_radial"):
        assert keras.backend.standardize_dtype(out[key].dtype) == "float32", key


def test_model_in_mixed_precision_is_equivariant_within_float16_accuracy(mixed_policy):
    g = _graph()
    x = np.random.default_rng(2).normal(size=(8, 3)).astype("float32")
    model = tfe.models.TensorFieldNetwork("1x1o", "1x1o", channels=4, max_degree=2, num_layers=2, **FILTERS)

    def fn(v, p):
        return model({**g, "node_features": v, "positions": p})

    err = equivariance_error(fn, ["1o", CARTESIAN_POINTS], "1o", args_in=[x, g["positions"]], dtype="float32")
    print(f"mixed_float16 TFN equivariance error: {err:.2e}")
    assert err < 2e-2
