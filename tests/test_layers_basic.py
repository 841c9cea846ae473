"""Tests of the basic layers: RadialBasis, EdgeGeometry, SelfInteraction,
NormNonlinearity, Gate and SphericalHarmonics.

Every layer goes through the shared harness (``check_layer``) and the shared
equivariance check (``assert_equivariant``, float64 and float32, with improper
rotations); the maths is checked against NumPy re-implementations written from
the docstrings and papers, never against the layers' own code paths. Run with
``-s`` to see the equivariance errors.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfequivariant.irreps import Irreps
from tfequivariant.layers import (
    EdgeGeometry,
    Gate,
    Linear,
    NormNonlinearity,
    RadialBasis,
    SelfInteraction,
    SphericalHarmonics,
)
from tfequivariant.testing import (
    CARTESIAN_POINTS,
    assert_equivariant,
    assert_normalized,
    check_layer,
)

DTYPES = ["float64", "float32"]
# Irreps with every kind of parity, used for the equivariance checks.
IRREPS_PARITY = "3x0e+2x0o+2x1o+2x1e+1x2e+1x2o"
IRREPS_PARITY_DIM = 27


def _rng(seed=0):
    return np.random.default_rng(seed)


def _features(dim, n=5, seed=0, dtype="float32"):
    return _rng(seed).normal(size=(n, dim)).astype(dtype)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _weights_by_name(layer):
    """Variables by their short name (``weight_1o``, ``bias``)."""
    return {w.name: w for w in layer.weights}


def _randomize_biases(layer, seed=1):
    """Nonzero biases, so that equivariance and references exercise the bias path."""
    rng = _rng(seed)
    for w in layer.weights:
        if w.name == "bias":
            w.assign(rng.normal(size=w.shape).astype(keras.backend.standardize_dtype(w.dtype)))


def _graph(n=6, seed=0, dtype="float32", with_shifts=False):
    rng = _rng(seed)
    senders = np.array([0, 1, 2, 3, 4, 0, 2, 5], np.int32)
    receivers = np.array([1, 2, 3, 4, 0, 2, 0, 1], np.int32)
    graph = {
        "positions": rng.normal(size=(n, 3)).astype(dtype),
        "senders": senders,
        "receivers": receivers,
    }
    if with_shifts:
        graph["edge_shifts"] = rng.normal(size=(len(senders), 3)).astype(dtype)
    return graph


GATE_KW = dict(
    irreps_scalars="2x0e+1x0o",
    act_scalars=["silu", "tanh"],
    irreps_gates="2x0e+1x0o",
    act_gates=["sigmoid", "tanh"],
    irreps_gated="2x1o+1x2e",
)

# ==================================================================================
# 1. The shared harness on every layer
# ==================================================================================
@pytest.mark.parametrize(
    "layer_cls, init_kwargs, inputs",
    [
        (RadialBasis, dict(num_basis=8, cutoff=3.0), (_rng(1).uniform(0, 4, size=(7,)).astype("float32"),)),
        (RadialBasis, dict(num_basis=8, cutoff=3.0, basis="bessel"),
         (_rng(2).uniform(0, 4, size=(7,)).astype("float32"),)),
        (SelfInteraction, dict(irreps_in="3x0e+2x1o+1x2e", irreps_out="1x1o+2x0e+1x0o+1x2e"), (_features(14),)),
        (NormNonlinearity, dict(irreps="3x0e+2x0o+2x1o+1x2e"), (_features(16),)),
        (Gate, dict(irreps_scalars="2x0e", act_scalars="silu", irreps_gates="2x0e", act_gates="sigmoid",
                    irreps_gated="1x1o+1x2e"), (_features(12),)),
        (Gate, GATE_KW, (_features(17),)),
        (SphericalHarmonics, dict(irreps_out=2, normalization="component"), (_features(3),)),
        (EdgeGeometry, dict(irreps_sh=2, num_radial_basis=4, cutoff=3.0), (_graph(),)),
        (EdgeGeometry, dict(irreps_sh="1x0e+1x1o", num_radial_basis=5, radial_basis="bessel"),
         (_graph(with_shifts=True),)),
    ],
    ids=["radial-gaussian", "radial-bessel", "self-interaction", "norm-nonlinearity", "gate", "gate-sorted",
         "spherical-harmonics", "edge-geometry", "edge-geometry-shifts"],
)
def test_check_layer(layer_cls, init_kwargs, inputs):
    check_layer(layer_cls, init_kwargs, inputs)


def test_edge_geometry_fit_step_in_functional_model():
    """check_layer skips fit for dict outputs: train a Dense head on EdgeGeometry's output."""
    graph = _graph()
    inputs = {
        "positions": keras.Input(shape=(3,), name="positions"),
        "senders": keras.Input(shape=(), dtype="int32", name="senders"),
        "receivers": keras.Input(shape=(), dtype="int32", name="receivers"),
    }
    geometry = EdgeGeometry(2, num_radial_basis=4, cutoff=3.0)(inputs)
    features = keras.layers.Concatenate()([geometry["edge_sh"], geometry["edge_radial"]])
    model = keras.Model(inputs, keras.layers.Dense(1)(features))
    target = _rng(3).normal(size=(len(graph["senders"]), 1)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
    history = model.fit(tf.data.Dataset.from_tensors((graph, target)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


# ==================================================================================
# 2. Equivariance of every layer, float64 and float32, with parity
# ==================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
def test_self_interaction_equivariant(dtype):
    irreps_out = "1x1o+2x0e+1x0o+3x1e+2x2e+1x2o+1x3o"
    layer = SelfInteraction(IRREPS_PARITY, irreps_out, dtype=dtype)
    layer.build((None, Irreps(IRREPS_PARITY).dim))
    _randomize_biases(layer)
    assert_equivariant(layer, IRREPS_PARITY, irreps_out, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_nonlinearity_equivariant(dtype):
    layer = NormNonlinearity(IRREPS_PARITY, dtype=dtype)
    layer.build((None, Irreps(IRREPS_PARITY).dim))
    _randomize_biases(layer)
    assert_equivariant(layer, IRREPS_PARITY, IRREPS_PARITY, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_equivariant(dtype):
    layer = Gate(**GATE_KW, dtype=dtype)
    # the odd gate (tanh of 0o) flips 2e -> 2o; tanh keeps the odd scalar odd
    assert str(layer.irreps_out) == "2x0e+1x0o+2x1o+1x2o"
    assert_equivariant(layer, layer.irreps_in, layer.irreps_out, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_with_even_activation_on_odd_scalars_equivariant(dtype):
    def square(x):
        return x * x

    layer = Gate("1x0o+1x0e", [square, "silu"], "1x0o", square, "1x1e", dtype=dtype)
    assert str(layer.irreps_out) == "1x0e+1x0e+1x1e"  # even activations make 0o even
    assert_equivariant(layer, layer.irreps_in, layer.irreps_out, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spherical_harmonics_equivariant(dtype):
    layer = SphericalHarmonics(3, normalization="component", dtype=dtype)
    assert_equivariant(layer, "1o", "1x0e+1x1o+1x2e+1x3o", dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("basis", ["gaussian", "bessel"])
def test_radial_basis_invariant(dtype, basis):
    layer = RadialBasis(6, cutoff=3.0, basis=basis, dtype=dtype)

    def radial_of_vectors(vectors):
        return layer(keras.ops.sqrt(keras.ops.sum(vectors * vectors, axis=-1)))

    assert_equivariant(radial_of_vectors, "1o", "6x0e", dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_shifts", [False, True], ids=["no-shifts", "shifts"])
def test_edge_geometry_equivariant(dtype, with_shifts):
    graph = _graph(dtype=dtype, with_shifts=with_shifts)
    layer = EdgeGeometry(2, num_radial_basis=5, cutoff=3.0, dtype=dtype)

    def edge_quantities(positions, *shifts):
        g = {**graph, "positions": positions}
        if shifts:
            g["edge_shifts"] = shifts[0]
        out = layer(g)
        lengths = keras.ops.reshape(out["edge_lengths"], (-1, 1))
        return [out["edge_vectors"], out["edge_sh"], out["edge_radial"], lengths]

    irreps_out = ["1o", "1x0e+1x1o+1x2e", "5x0e", "1x0e"]
    if with_shifts:
        # periodic image offsets are vectors: rotated with the cell, never translated
        args = [graph["positions"], graph["edge_shifts"]]
        assert_equivariant(edge_quantities, [CARTESIAN_POINTS, "1o"], irreps_out, args, dtype=dtype)
    else:
        assert_equivariant(edge_quantities, [CARTESIAN_POINTS], irreps_out, [graph["positions"]], dtype=dtype)


# ==================================================================================
# 3. SelfInteraction
# ==================================================================================
def test_self_interaction_hand_derived_two_vectors_to_one():
    layer = SelfInteraction("2x1o", "1x1o")
    x = _features(6, n=4)
    out = _np(layer(x))
    w = _np(_weights_by_name(layer)["weight_1o"])  # [u=2, w=1]
    assert w.shape == (2, 1)
    expected = (w[0, 0] * x[:, 0:3] + w[1, 0] * x[:, 3:6]) / math.sqrt(2.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert Linear is SelfInteraction


def test_self_interaction_hand_derived_split_input_blocks_and_given_output_order():
    # input channels of one irrep gathered across blocks; output order as given, not sorted
    layer = SelfInteraction("1x1o+2x0e+1x1o", "1x1o+2x0e")
    x = _features(8, n=4)
    layer.build(x.shape)
    _randomize_biases(layer)
    weights = _weights_by_name(layer)
    w1, w0, b = (_np(weights[k]) for k in ("weight_1o", "weight_0e", "bias"))
    assert w1.shape == (2, 1) and w0.shape == (2, 2) and b.shape == (2,)
    v_a, s, v_b = x[:, 0:3], x[:, 3:5], x[:, 5:8]
    expected = np.concatenate(
        [(w1[0, 0] * v_a + w1[1, 0] * v_b) / math.sqrt(2.0), s @ w0 / math.sqrt(2.0) + b], axis=-1
    )
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_self_interaction_unmatched_outputs_are_zero_and_bias_only_on_even_scalars():
    layer = SelfInteraction("2x0e+1x1e", "1x0o+1x0e+2x1o+1x0e+1x2e")
    x = _features(5, n=3)
    layer.build(x.shape)
    assert _weights_by_name(layer)["bias"].shape == (2,)  # the two 0e outputs only
    _randomize_biases(layer)
    bias = _np(_weights_by_name(layer)["bias"])
    out = _np(layer(x))
    # columns: 0o | 0e | 1o (6) | 0e | 2e (5)
    assert np.all(out[:, 0] == 0.0), "0o output has no matching input and no bias: exactly zero"
    assert np.all(out[:, 2:8] == 0.0), "1o output has no matching input: exactly zero"
    assert np.all(out[:, 9:14] == 0.0), "2e output has no matching input: exactly zero"
    w = _np(_weights_by_name(layer)["weight_0e"])  # [2, 2]
    np.testing.assert_allclose(out[:, 1], x[:, :2] @ w[:, 0] / math.sqrt(2.0) + bias[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 8], x[:, :2] @ w[:, 1] / math.sqrt(2.0) + bias[1], rtol=1e-5, atol=1e-6)


def test_self_interaction_no_bias_on_odd_scalars_with_matching_input():
    layer = SelfInteraction("2x0o+1x0e", "1x0o+1x0e")
    layer.build((None, 3))
    _randomize_biases(layer)
    bias = _np(_weights_by_name(layer)["bias"])
    out = _np(layer(np.zeros((2, 3), np.float32)))
    np.testing.assert_array_equal(out[:, 0], [0.0, 0.0])
    np.testing.assert_allclose(out[:, 1], [bias[0]] * 2)


def test_self_interaction_use_bias_false():
    layer = SelfInteraction("2x0e", "3x0e", use_bias=False)
    out = _np(layer(np.zeros((2, 2), np.float32)))
    assert np.all(out == 0.0)
    assert "bias" not in _weights_by_name(layer)


def test_self_interaction_normalized():
    """Unit-variance inputs give mean square ~1 per output component at initialisation.

    One layer's per-component mean square is a chi-square over its 64 weights
    (std ~0.18), so the check averages the squares over 16 initialisations.
    """
    keras.utils.set_random_seed(0)
    irreps = "64x0e+64x1o"
    layers = [SelfInteraction(irreps, irreps, dtype="float64") for _ in range(16)]

    def rms_over_initialisations(x):
        squares = [keras.ops.square(layer(x)) for layer in layers]
        return keras.ops.sqrt(keras.ops.mean(keras.ops.stack(squares), axis=0))

    ms = assert_normalized(rms_over_initialisations, irreps, num_points=1024, rtol=0.2)
    assert abs(ms.mean() - 1.0) < 0.05


# ==================================================================================
# 4. NormNonlinearity
# ==================================================================================
def _norm_nonlinearity_reference(x, irreps, bias):
    """eta(x + b) for 0e, tanh(x) for 0o, eta(|v| + b) v for l > 0 (eta = silu)."""
    out, col, k = [], 0, 0
    for mul, ir in Irreps(irreps):
        d = 2 * ir.l + 1
        block = x[:, col : col + mul * d].reshape(len(x), mul, d)
        col += mul * d
        if ir.l == 0 and ir.p == -1:
            y = np.tanh(block)
        else:
            b = bias[k : k + mul, None]
            k += mul
            if ir.l == 0:
                y = _silu(block + b)
            else:
                y = _silu(np.linalg.norm(block, axis=-1, keepdims=True) + b) * block
        out.append(y.reshape(len(x), mul * d))
    return np.concatenate(out, axis=-1)


def test_norm_nonlinearity_matches_numpy_reference():
    irreps = "2x0e+1x0o+2x1o+1x2e+1x0e"
    layer = NormNonlinearity(irreps, dtype="float64")
    x = _features(Irreps(irreps).dim, n=7, dtype="float64")
    x[0, 3:6] = 0.0  # one zero vector
    layer.build(x.shape)
    assert _weights_by_name(layer)["bias"].shape == (6,)  # every channel but the 0o one
    _randomize_biases(layer)
    bias = _np(_weights_by_name(layer)["bias"])
    expected = _norm_nonlinearity_reference(x, irreps, bias)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_nonlinearity_zero_features_finite_value_and_gradient(dtype):
    irreps = "1x0e+1x0o+2x1o+1x2e"
    layer = NormNonlinearity(irreps, dtype=dtype)
    layer.build((None, Irreps(irreps).dim))
    _randomize_biases(layer)
    bias = _np(_weights_by_name(layer)["bias"])
    x = tf.zeros((3, Irreps(irreps).dim), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y)
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(grad))
    # d/dv [eta(|v| + b) v] at v = 0 is eta(b) I (safe norm: d|v|/dv = 0 there)
    np.testing.assert_allclose(grad[:, 2:5], np.broadcast_to(_silu(bias[1]), (3, 3)), rtol=1e-6)
    np.testing.assert_allclose(grad[:, 8:13], np.broadcast_to(_silu(bias[3]), (3, 5)), rtol=1e-6)
    np.testing.assert_allclose(grad[:, 1], 1.0, rtol=1e-6)  # tanh'(0) on the odd scalar


def test_norm_nonlinearity_odd_scalars_need_odd_activation():
    with pytest.raises(ValueError, match="odd_activation"):
        NormNonlinearity("1x0o+1x1o", odd_activation="relu")
    # without odd scalars any activation is fine, and 0o uses tanh by default
    NormNonlinearity("1x0e+1x1o", odd_activation="relu")
    x = np.array([[-0.7, 0.7]], np.float32)
    np.testing.assert_allclose(_np(NormNonlinearity("2x0o")(x)), np.tanh(x), rtol=1e-6)


# ==================================================================================
# 5. Gate
# ==================================================================================
def test_gate_layout_is_e3nn_sorted_and_simplified():
    gate = Gate("2x0e", "silu", "2x0e", "sigmoid", "1x1o+1x2e")
    assert str(gate.irreps_in) == "4x0e+1x1o+1x2e"
    assert str(gate.irreps_out) == "2x0e+1x1o+1x2e"
    x = _features(12, n=4, dtype="float64")
    gate = Gate("2x0e", "silu", "2x0e", "sigmoid", "1x1o+1x2e", dtype="float64")
    expected = np.concatenate(
        [_silu(x[:, 0:2]), _sigmoid(x[:, 2:3]) * x[:, 4:7], _sigmoid(x[:, 3:4]) * x[:, 7:12]], axis=-1
    )
    np.testing.assert_allclose(_np(gate(x)), expected, rtol=1e-12)


def test_gate_odd_scalars_first_in_sorted_layout():
    # 0o sorts before 0e (e3nn: by (l, p)); here the given order is already sorted
    gate = Gate("1x0o", "tanh", "1x0e", "sigmoid", "1x1e", dtype="float64")
    assert str(gate.irreps_in) == "1x0o+1x0e+1x1e"
    assert str(gate.irreps_out) == "1x0o+1x1e"
    x = _features(5, n=4, dtype="float64")
    expected = np.concatenate([np.tanh(x[:, 0:1]), _sigmoid(x[:, 1:2]) * x[:, 2:5]], axis=-1)
    np.testing.assert_allclose(_np(gate(x)), expected, rtol=1e-12)


def test_gate_reordered_layout_matches_numpy_reference():
    """A case where sorting moves blocks: scalars, gates and gated all interleave.

    Given order (concatenation): scalars 2x0e, 1x0o | gates 2x0e, 1x0o | gated 2x1o, 1x2e.
    Sorted by (l, p), stably: 0o(scalar) 0o(gate) 0e 0e(scalars) 0e 0e(gates) 1o 1o 2e,
    simplified to 2x0o+4x0e+2x1o+1x2e. The columns below are written out by hand.
    """
    gate = Gate(**GATE_KW, dtype="float64")
    assert str(gate.irreps_in) == "2x0o+4x0e+2x1o+1x2e"
    assert str(gate.irreps_out) == "2x0e+1x0o+2x1o+1x2o"
    x = _features(17, n=5, dtype="float64")
    scalar_odd, gate_odd = x[:, 0], x[:, 1]
    scalars_even, gates_even = x[:, 2:4], x[:, 4:6]
    vec0, vec1, tensor2 = x[:, 6:9], x[:, 9:12], x[:, 12:17]
    expected = np.concatenate(
        [
            _silu(scalars_even),
            np.tanh(scalar_odd)[:, None],
            _sigmoid(gates_even[:, 0:1]) * vec0,
            _sigmoid(gates_even[:, 1:2]) * vec1,
            np.tanh(gate_odd)[:, None] * tensor2,
        ],
        axis=-1,
    )
    np.testing.assert_allclose(_np(gate(x)), expected, rtol=1e-12)


def test_gate_sorts_gated_blocks_but_outputs_them_in_given_order():
    gate = Gate("1x0e", "silu", "2x0e", "sigmoid", "1x2e+1x1o", dtype="float64")
    assert str(gate.irreps_in) == "3x0e+1x1o+1x2e"
    assert str(gate.irreps_out) == "1x0e+1x2e+1x1o"
    x = _features(11, n=4, dtype="float64")
    scalar, gate_a, gate_b, vec, tensor2 = x[:, 0:1], x[:, 1:2], x[:, 2:3], x[:, 3:6], x[:, 6:11]
    expected = np.concatenate([_silu(scalar), _sigmoid(gate_a) * tensor2, _sigmoid(gate_b) * vec], axis=-1)
    np.testing.assert_allclose(_np(gate(x)), expected, rtol=1e-12)


def test_gate_parity_of_outputs():
    # an odd gate (tanh of 0o) flips the gated parity; an even gate keeps it
    assert str(Gate("1x0e", "silu", "1x0o", "tanh", "1x1o").irreps_out) == "1x0e+1x1e"
    assert str(Gate("1x0e", "silu", "1x0e", "sigmoid", "1x1o").irreps_out) == "1x0e+1x1o"
    assert str(Gate("1x0o", "tanh", "1x0e+1x0o", ["sigmoid", "tanh"], "1x1o+1x2e").irreps_out) == "1x0o+1x1o+1x2o"
    # an activation of 0o that is neither even nor odd loses parity
    with pytest.raises(ValueError, match="irreps_gates"):
        Gate("1x0e", "silu", "1x0o", "sigmoid", "1x1o")
    with pytest.raises(ValueError, match="irreps_scalars"):
        Gate("1x0o", "relu", "1x0e", "sigmoid", "1x1o")


def test_gate_mismatched_gate_count_raises():
    with pytest.raises(ValueError, match="irreps_gates") as info:
        Gate("1x0e", "silu", "2x0e", "sigmoid", "1x1o")
    assert "irreps_gated" in str(info.value)
    with pytest.raises(ValueError, match="irreps_gated"):
        Gate("1x0e", "silu", "1x0e", "sigmoid", "1x1o+1x2e")


def test_gate_non_scalar_gates_raise():
    with pytest.raises(ValueError, match="irreps_gates"):
        Gate("1x0e", "silu", "1x1o", "sigmoid", "1x1o")


# ==================================================================================
# 6. RadialBasis
# ==================================================================================
def _radial_reference(r, num_basis, cutoff, basis, p=6):
    """The docstring's formulas in NumPy float64: ``b_k(r) u(r / cutoff)``."""
    r = np.asarray(r, np.float64)[..., None]
    x = r / cutoff
    u = np.where(
        x < 1, 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2), 0.0
    )
    if basis == "gaussian":
        mu = np.linspace(0.0, cutoff, num_basis)
        b = np.exp(-(((r - mu) / (cutoff / (num_basis - 1))) ** 2)) / 1.12
    else:
        k = np.arange(1, num_basis + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.sqrt(2.0 / cutoff) * np.where(r > 0, np.sin(k * np.pi * r / cutoff) / r, k * np.pi / cutoff)
    return b * u


def _radial_value_and_grad(layer, r):
    r = tf.constant(r, layer.compute_dtype)
    return _np(layer(r)), _grad_per_basis(layer, r)


def _grad_per_basis(layer, r):
    """d B_k / d r for each r and k (``[len(r), K]``), one backward pass per k."""
    grads = []
    for k in range(layer.num_basis):
        with tf.GradientTape() as tape:
            tape.watch(r)
            yk = layer(r)[:, k]
        grads.append(tape.gradient(yk, r).numpy())
    return np.stack(grads, axis=-1)


@pytest.mark.parametrize("basis", ["gaussian", "bessel"])
def test_radial_basis_matches_formula(basis):
    layer = RadialBasis(8, cutoff=2.5, basis=basis, dtype="float64")
    r = np.concatenate([[0.0, 1e-6, 2.4e-4, 2.6e-4], np.linspace(0.01, 3.0, 50)])
    np.testing.assert_allclose(_np(layer(r)), _radial_reference(r, 8, 2.5, basis), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("basis", ["gaussian", "bessel"])
def test_radial_basis_exactly_zero_at_and_beyond_cutoff(basis, dtype):
    cutoff = 2.5
    layer = RadialBasis(8, cutoff=cutoff, basis=basis, dtype=dtype)
    value, grad = _radial_value_and_grad(layer, [cutoff, cutoff * (1 + 1e-6), 1.5 * cutoff, 100.0])
    assert np.all(value == 0.0), value
    assert np.all(grad == 0.0), grad


@pytest.mark.parametrize("basis", ["gaussian", "bessel"])
def test_radial_basis_smooth_just_inside_cutoff(basis):
    """Value ~ (1 - x)^3 and derivative ~ (1 - x)^2 as x = r / cutoff -> 1, and the
    tape derivative equals a central finite difference (no kink)."""
    cutoff = 2.5
    layer = RadialBasis(8, cutoff=cutoff, basis=basis, dtype="float64")
    gaps = np.array([1e-2, 1e-3, 1e-4])
    value, grad = _radial_value_and_grad(layer, cutoff * (1 - gaps))
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    peak = np.abs(_np(layer(np.linspace(0.05, cutoff, 200)))).max()
    # envelope ~ 56 (1-x)^3 near 1 (p = 6): generous constants, exact powers
    assert np.all(np.abs(value) <= 200 * peak * gaps[:, None] ** 3)
    assert np.all(np.abs(grad) <= 2000 * peak * gaps[:, None] ** 2 / cutoff)
    h = 1e-6
    r = cutoff * (1 - gaps)
    fd = (_np(layer(r + h)) - _np(layer(r - h))) / (2 * h)
    # atol: the envelope polynomial cancels to ~1e-14 absolute near x = 1, i.e. ~1e-8 in fd
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=2e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_radial_bessel_finite_at_zero_with_finite_gradient(dtype):
    cutoff = 3.0
    layer = RadialBasis(6, cutoff=cutoff, basis="bessel", dtype=dtype)
    value, grad = _radial_value_and_grad(layer, [0.0, 1e-7])
    k = np.arange(1, 7)
    # limit of sqrt(2/c) sin(k pi r / c) / r at r = 0, times u(0) = 1
    np.testing.assert_allclose(value[0], np.sqrt(2.0 / cutoff) * k * np.pi / cutoff, rtol=1e-6)
    np.testing.assert_allclose(value[1], value[0], rtol=1e-6)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0], 0.0, atol=1e-6)  # even function of r: zero slope at 0


def test_radial_basis_shape():
    layer = RadialBasis(5, cutoff=2.0)
    assert tuple(layer(np.ones((3, 4), np.float32)).shape) == (3, 4, 5)
    assert layer.compute_output_shape((3, 4)) == (3, 4, 5)
    assert tuple(layer(np.zeros((0,), np.float32)).shape) == (0, 5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_basis=0), "num_basis"),
        (dict(num_basis=2.5), "num_basis"),
        (dict(cutoff=-1), "cutoff"),
        (dict(cutoff=0.0), "cutoff"),
        (dict(cutoff="far"), "cutoff"),
        (dict(basis="foo"), "basis"),
        (dict(envelope_exponent=1), "envelope_exponent"),
    ],
)
def test_radial_basis_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}=") as info:
        RadialBasis(**kwargs)
    assert repr(list(kwargs.values())[0]) in str(info.value) or name == "cutoff"


# ==================================================================================
# 7. EdgeGeometry
# ==================================================================================
def test_edge_vectors_follow_the_contract():
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    graph = {
        "positions": positions,
        "senders": np.array([1, 0, 3, 2], np.int32),
        "receivers": np.array([0, 1, 2, 2], np.int32),
        "edge_shifts": np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32),
    }
    out = EdgeGeometry(1, num_radial_basis=3, cutoff=10.0)(graph)
    # r = positions[senders] - positions[receivers] + edge_shifts, by hand
    expected = np.array([[1, 0, 0], [-1, 0, 0], [1, -2, 3], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(_np(out["edge_vectors"]), expected)
    np.testing.assert_allclose(_np(out["edge_lengths"]), [1.0, 1.0, math.sqrt(14.0), 0.0], rtol=1e-6)
    # l = 1 component harmonics are sqrt(3) r / |r| in e3nn's (x, y, z) order
    np.testing.assert_allclose(_np(out["edge_sh"])[0], [1.0, math.sqrt(3.0), 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        _np(out["edge_sh"])[2, 1:], math.sqrt(3.0) * np.array([1.0, -2.0, 3.0]) / math.sqrt(14.0), rtol=1e-6
    )
    # the input graph is passed through
    for key in graph:
        np.testing.assert_array_equal(_np(out[key]), graph[key])
    # the radial basis is RadialBasis of the lengths
    np.testing.assert_allclose(
        _np(out["edge_radial"]), _np(RadialBasis(3, cutoff=10.0)(out["edge_lengths"])), rtol=1e-6
    )


@pytest.mark.parametrize("radial_basis", ["gaussian", "bessel"])
def test_edge_geometry_zero_length_edges(radial_basis):
    """A self-loop (0 -> 0) and an edge between two coincident nodes (1 -> 2)."""
    positions = tf.constant([[0.3, -0.2, 0.5], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    graph = {
        "positions": positions,
        "senders": tf.constant([0, 1, 3], tf.int32),
        "receivers": tf.constant([0, 2, 0], tf.int32),
    }
    layer = EdgeGeometry(2, num_radial_basis=4, cutoff=3.0, radial_basis=radial_basis)
    with tf.GradientTape() as tape:
        tape.watch(positions)
        out = layer(graph)
        loss = sum(
            tf.reduce_sum(out[k]) for k in ("edge_vectors", "edge_lengths", "edge_sh", "edge_radial")
        )
    grad = tf.convert_to_tensor(tape.gradient(loss, positions)).numpy()
    assert np.all(np.isfinite(grad)), grad
    for e in (0, 1):
        assert _np(out["edge_lengths"])[e] == 0.0
        np.testing.assert_allclose(_np(out["edge_sh"])[e], [1.0] + [0.0] * 8, atol=1e-6)
        assert np.all(np.isfinite(_np(out["edge_radial"])[e]))
    assert np.all(grad[3] != 0.0)  # the real edge still carries gradient


@pytest.mark.parametrize("lmax", [0, 1, 2, 3, 4])
def test_edge_sh_width_and_component_normalization(lmax):
    graph = _graph(seed=lmax)
    out = EdgeGeometry(lmax, num_radial_basis=2)(graph)
    sh = _np(out["edge_sh"]).astype(np.float64)
    assert sh.shape == (len(graph["senders"]), (lmax + 1) ** 2)
    for l in range(lmax + 1):
        np.testing.assert_allclose((sh[:, l * l : (l + 1) ** 2] ** 2).sum(axis=-1), 2 * l + 1, rtol=1e-5)


def test_edge_sh_holds_every_degree_up_to_lmax():
    layer = EdgeGeometry("1x0e+1x2e", num_radial_basis=2)
    assert layer.lmax == 2
    assert _np(layer(_graph())["edge_sh"]).shape[-1] == 9


def test_edge_geometry_mixed_float16_gives_float32_geometry():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = EdgeGeometry(2, num_radial_basis=4)
        for dtype in ("float32", "float16"):
            out = layer(_graph(dtype=dtype))
            for key in ("edge_vectors", "edge_lengths", "edge_sh", "edge_radial"):
                assert keras.backend.standardize_dtype(out[key].dtype) == "float32", (dtype, key)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.mixed_precision.global_policy().name == previous.name


def test_edge_geometry_graph_without_edges():
    positions = tf.constant(_rng(4).normal(size=(5, 3)).astype("float32"))
    graph = {"positions": positions, "senders": tf.zeros([0], tf.int32), "receivers": tf.zeros([0], tf.int32)}
    layer = EdgeGeometry(2, num_radial_basis=4)
    with tf.GradientTape() as tape:
        tape.watch(positions)
        out = layer(graph)
        loss = sum(tf.reduce_sum(out[k]) for k in ("edge_vectors", "edge_lengths", "edge_sh", "edge_radial"))
    shapes = {k: tuple(out[k].shape) for k in ("edge_vectors", "edge_lengths", "edge_sh", "edge_radial")}
    assert shapes == {"edge_vectors": (0, 3), "edge_lengths": (0,), "edge_sh": (0, 9), "edge_radial": (0, 4)}
    grad = tape.gradient(loss, positions)
    assert grad is None or np.all(tf.convert_to_tensor(grad).numpy() == 0.0)
    # and under XLA, where shapes are static
    xla = tf.function(lambda g: layer(g)["edge_sh"], jit_compile=True)(graph)
    assert tuple(xla.shape) == (0, 9)


def test_edge_geometry_isolated_nodes():
    graph = _graph(n=9)  # nodes 6, 7, 8 have no edges
    out = EdgeGeometry(2, num_radial_basis=4)(graph)
    small = {**graph, "positions": graph["positions"][:6]}
    out_small = EdgeGeometry(2, num_radial_basis=4)(small)
    for key in ("edge_vectors", "edge_lengths", "edge_sh", "edge_radial"):
        np.testing.assert_array_equal(_np(out[key]), _np(out_small[key]))


# ==================================================================================
# 8. Every layer: errors, dtypes, zero features
# ==================================================================================
@pytest.mark.parametrize(
    "make, width, expected_dim",
    [
        (lambda: SelfInteraction("2x1o", "1x0e"), 5, 6),
        (lambda: NormNonlinearity("2x1o+1x0e"), 6, 7),
        (lambda: Gate("1x0e", "silu", "1x0e", "sigmoid", "1x1o"), 4, 5),
        (lambda: SphericalHarmonics(2), 4, 3),
    ],
    ids=["SelfInteraction", "NormNonlinearity", "Gate", "SphericalHarmonics"],
)
def test_wrong_feature_width_names_expected_dim(make, width, expected_dim):
    with pytest.raises(ValueError, match=rf"\b{expected_dim}\b"):
        make()(np.zeros((3, width), np.float32))


@pytest.mark.parametrize("width", [2, 4])
def test_edge_geometry_wrong_positions_width(width):
    graph = {**_graph(), "positions": np.zeros((6, width), np.float32)}
    with pytest.raises(ValueError, match=r"\b3\b"):
        EdgeGeometry(2)(graph)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: SelfInteraction("2x1q", "1x0e"), "irreps_in"),
        (lambda: SelfInteraction("1x0e", "x1o"), "irreps_out"),
        (lambda: NormNonlinearity("1x-1e"), "irreps"),
        (lambda: Gate("0e+bad", "silu", "1x0e", "sigmoid", "1x1o"), "irreps_scalars"),
        (lambda: Gate("1x0e", "silu", "1x0", "sigmoid", "1x1o"), "irreps_gates"),
        (lambda: Gate("1x0e", "silu", "1x0e", "sigmoid", "1x1z"), "irreps_gated"),
        (lambda: SphericalHarmonics("1x0e+1x1q"), "irreps_out"),
        (lambda: EdgeGeometry("1x0e+1x1q"), "irreps_sh"),
        (lambda: EdgeGeometry("1x0e+2x1o"), "irreps_sh"),
        (lambda: EdgeGeometry("1x0e+1x1e"), "irreps_sh"),
        (lambda: EdgeGeometry(-1), "irreps_sh"),
    ],
)
def test_malformed_irreps_name_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize(
    "make, inputs",
    [
        (lambda d: RadialBasis(4, dtype=d), lambda d: np.linspace(0, 6, 5).astype(d)),
        (lambda d: SelfInteraction(IRREPS_PARITY, "2x0e+1x1o", dtype=d),
         lambda d: _features(IRREPS_PARITY_DIM, dtype=d)),
        (lambda d: NormNonlinearity(IRREPS_PARITY, dtype=d), lambda d: _features(IRREPS_PARITY_DIM, dtype=d)),
        (lambda d: Gate(**GATE_KW, dtype=d), lambda d: _features(17, dtype=d)),
        (lambda d: SphericalHarmonics(2, dtype=d), lambda d: _features(3, dtype=d)),
        (lambda d: EdgeGeometry(2, num_radial_basis=4, dtype=d), lambda d: _graph(dtype=d)),
    ],
    ids=["RadialBasis", "SelfInteraction", "NormNonlinearity", "Gate", "SphericalHarmonics", "EdgeGeometry"],
)
@pytest.mark.parametrize("input_dtype", ["float64", "float32"])
def test_float64_layer_gives_float64_outputs(make, inputs, input_dtype):
    out = make("float64")(inputs(input_dtype))
    outs = [out[k] for k in out if k.startswith("edge_")] if isinstance(out, dict) else [out]
    for o in outs:
        assert keras.backend.standardize_dtype(o.dtype) == "float64"


@pytest.mark.parametrize(
    "make, width",
    [
        (lambda: RadialBasis(4, basis="bessel"), None),
        (lambda: RadialBasis(4, basis="gaussian"), None),
        (lambda: SelfInteraction(IRREPS_PARITY, IRREPS_PARITY), IRREPS_PARITY_DIM),
        (lambda: NormNonlinearity(IRREPS_PARITY), IRREPS_PARITY_DIM),
        (lambda: Gate(**GATE_KW), 17),
        (lambda: SphericalHarmonics(3, normalization="component"), 3),
    ],
    ids=["RadialBasis-bessel", "RadialBasis-gaussian", "SelfInteraction", "NormNonlinearity", "Gate",
         "SphericalHarmonics"],
)
def test_zero_features_finite_outputs_and_gradients(make, width):
    layer = make()
    x = tf.zeros((4,) if width is None else (4, width))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y) + tf.reduce_sum(tf.square(y))
    grad = tape.gradient(loss, x)
    assert np.all(np.isfinite(y.numpy()))
    assert grad is not None and np.all(np.isfinite(grad.numpy()))
    if layer.trainable_weights:
        weight_grads = tape.gradient(loss, layer.trainable_weights)
        assert all(g is None or np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in weight_grads)


def test_zero_positions_edge_geometry_finite_outputs_and_gradients():
    positions = tf.zeros((4, 3))
    graph = {"positions": positions, "senders": tf.constant([0, 1, 2, 3]), "receivers": tf.constant([1, 2, 3, 0])}
    layer = EdgeGeometry(3, num_radial_basis=4, radial_basis="bessel")
    with tf.GradientTape() as tape:
        tape.watch(positions)
        out = layer(graph)
        loss = sum(tf.reduce_sum(out[k]) for k in ("edge_vectors", "edge_lengths", "edge_sh", "edge_radial"))
    for k in ("edge_vectors", "edge_lengths", "edge_sh", "edge_radial"):
        assert np.all(np.isfinite(_np(out[k])))
    assert np.all(np.isfinite(tf.convert_to_tensor(tape.gradient(loss, positions)).numpy()))


@pytest.mark.parametrize(
    "make, width",
    [
        (lambda: NormNonlinearity(IRREPS_PARITY), IRREPS_PARITY_DIM),
        (lambda: Gate(**GATE_KW), 17),
        (lambda: SphericalHarmonics(2), 3),
        (lambda: SelfInteraction("3x0e+1x0e", "2x0e"), 4),
        pytest.param(lambda: SelfInteraction("1x0e+2x1o", "1x0e+1x1o"), 7, id="SelfInteraction-l1"),
    ],
    ids=["NormNonlinearity", "Gate", "SphericalHarmonics", "SelfInteraction-scalars", None],
)
def test_extra_leading_dimensions(make, width):
    """``[..., dim]`` inputs: a [2, 3, dim] batch equals the [6, dim] flattened one."""
    layer = make()
    x = _features(width, n=6).reshape(2, 3, width)
    flat = _np(layer(x.reshape(6, width)))
    np.testing.assert_allclose(_np(layer(x)).reshape(6, -1), flat, rtol=1e-6, atol=1e-6)
