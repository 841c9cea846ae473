"""Tests of ``TensorProduct`` and ``FullyConnectedTensorProduct``.

Every check is against something other than the layer's own code: the shared
harness (``check_layer``), the shared equivariance check (rotations and
reflections, float64 and float32), closed forms (dot and cross products), a
NumPy einsum written here from the definition

    out[w, k] += c * sum_{u v} W[u, v, w] sum_{i j} C[i, j, k] x1[u, i] x2[v, j]

with ``C = wigner_3j(l1, l2, l_out)`` and e3nn's coefficient recomputed here,
``c = sqrt(alpha)``, ``alpha = (2 l_out + 1) / (sum over the paths into that
output block of their number of summed channel pairs)`` ("component"
normalization, "element" path normalization), and e3nn itself when installed.
Run with ``-s`` to see the equivariance errors.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfequivariant import wigner_3j
from tfequivariant.irreps import Irreps
from tfequivariant.layers import FullyConnectedTensorProduct, TensorProduct
from tfequivariant.testing import assert_equivariant, assert_normalized, check_layer

DTYPES = ["float64", "float32"]
# Irreps with every kind of parity (0o, 1e, 2o next to the usual 0e, 1o, 2e).
IRREPS_PARITY = "2x0e+1x0o+2x1o+1x1e+1x2e+1x2o"

# A TensorProduct with all three modes, an unweighted path and several paths into
# one output block (irreps_out kept in the given, unsorted order). Every
# instruction is one e3nn accepts too (e3nn has no unweighted "uvw").
MIXED_IN1 = "2x0e+2x1o+1x2e"
MIXED_IN2 = "2x0e+1x1o"
MIXED_OUT = "2x1o+2x0e+1x1e+1x2e"
MIXED_INSTRUCTIONS = [
    (0, 0, 1, "uvw", True),  # 0e x 0e -> 0e
    (0, 0, 1, "uuu", True),  # 0e x 0e -> 0e, channel-wise (2 = 2 = 2)
    (1, 1, 1, "uvw", True),  # 1o x 1o -> 0e
    (1, 1, 1, "uvu", False),  # 1o x 1o -> 0e, channel-wise in u, no weight
    (1, 0, 0, "uvu", True),  # 1o x 0e -> 1o, out channel u (2 = 2)
    (2, 1, 0, "uvw", True),  # 2e x 1o -> 1o
    (1, 1, 2, "uvw", True),  # 1o x 1o -> 1e
    (1, 1, 3, "uvw", True),  # 1o x 1o -> 2e
]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _np(x):
    return keras.ops.convert_to_numpy(x).astype(np.float64)


def _x(irreps, n=5, seed=0, dtype="float32"):
    return _rng(seed).normal(size=(n, Irreps(irreps).dim)).astype(dtype)


def _split(x, irreps):
    """``[B, dim]`` -> list of ``[B, mul, 2l+1]`` (e3nn's mul_ir layout)."""
    out, start = [], 0
    for mul, ir in Irreps(irreps):
        out.append(x[:, start : start + mul * ir.dim].reshape(len(x), mul, ir.dim))
        start += mul * ir.dim
    return out


def _allowed(ir1, ir2, ir_out):
    """Selection rule written out: triangle inequality and parity product."""
    return abs(ir1.l - ir2.l) <= ir_out.l <= ir1.l + ir2.l and ir_out.p == ir1.p * ir2.p


def _fc_paths(irreps1, irreps2, irreps_out):
    """e3nn's fully connected path order: loops over in1, in2, out blocks."""
    irreps1, irreps2, irreps_out = Irreps(irreps1), Irreps(irreps2), Irreps(irreps_out)
    return [
        (i1, i2, io, "uvw", True)
        for i1, (_, ir1) in enumerate(irreps1)
        for i2, (_, ir2) in enumerate(irreps2)
        for io, (_, iro) in enumerate(irreps_out)
        if _allowed(ir1, ir2, iro)
    ]


def _summed_pairs(mode, mul1, mul2):
    # Number of (u, v) channel pairs summed into one output channel.
    return {"uvw": mul1 * mul2, "uvu": mul2, "uuu": 1}[mode]


def _reference_tp(x1, x2, weights, irreps1, irreps2, irreps_out, instructions):
    """The tensor product in NumPy float64 from the definition (module docstring).

    ``weights``: a flat vector (shared) or ``[B, numel]`` (per sample), laid out
    in instruction order, each path ``[mul1, mul2, mul_out]`` (uvw),
    ``[mul1, mul2]`` (uvu) or ``[mul1]`` (uuu), row-major. An unweighted path is
    the path with all weights 1 (e3nn's meaning for "uvu" and "uuu").
    """
    irreps1, irreps2, irreps_out = Irreps(irreps1), Irreps(irreps2), Irreps(irreps_out)
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    b = len(x1)
    w = np.asarray(weights, np.float64)
    w = np.broadcast_to(w, (b, w.shape[-1])) if w.ndim == 1 else w
    blocks1, blocks2 = _split(x1, irreps1), _split(x2, irreps2)
    outs = [np.zeros((b, mul, ir.dim)) for mul, ir in irreps_out]
    denom = [0] * len(irreps_out)
    for i1, i2, io, mode, _ in instructions:
        denom[io] += _summed_pairs(mode, irreps1[i1].mul, irreps2[i2].mul)
    offset = 0
    for i1, i2, io, mode, has_weight in instructions:
        (mul1, ir1), (mul2, ir2), (mulo, iro) = irreps1[i1], irreps2[i2], irreps_out[io]
        c = math.sqrt((2 * iro.l + 1) / denom[io])
        C = wigner_3j(ir1.l, ir2.l, iro.l)
        if mode == "uuu":
            t = np.einsum("bui,buj,ijk->buk", blocks1[i1], blocks2[i2], C)
        else:
            t = np.einsum("bui,bvj,ijk->buvk", blocks1[i1], blocks2[i2], C)
        shape = {"uvw": (mul1, mul2, mulo), "uvu": (mul1, mul2), "uuu": (mul1,)}[mode]
        if has_weight:
            n = int(np.prod(shape))
            W = w[:, offset : offset + n].reshape((b,) + shape)
            offset += n
        else:
            W = np.ones((b,) + shape)
        if mode == "uvw":
            y = np.einsum("buvk,buvw->bwk", t, W)
        elif mode == "uvu":
            y = np.einsum("buvk,buv->buk", t, W)
        else:
            y = t * W[:, :, None]
        outs[io] += c * y
    return np.concatenate([o.reshape(b, -1) for o in outs], axis=-1)


def _flat_weight(layer):
    return _np(layer.weight) if layer.weight is not None else np.zeros((0,))


def _fit_step(layer, inputs):
    """One ``fit`` step of ``layer`` in a functional model fed by ``tf.data``.

    ``check_layer``'s own fit step cannot run for layers with several call
    arguments (see ``test_check_layer_fit_step_with_two_inputs``), so the
    harness runs with ``run_fit=False`` and this does step 5 with the inputs
    passed as a tuple.
    """
    symbolic = [keras.Input(shape=np.shape(x)[1:], dtype=str(np.asarray(x).dtype)) for x in inputs]
    model = keras.Model(symbolic, layer(*symbolic))
    target = _rng(9).normal(size=(len(inputs[0]), layer.irreps_out.dim)).astype("float32")
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
    ds = tf.data.Dataset.from_tensors((tuple(inputs), target))
    loss = model.fit(ds, epochs=1, verbose=0).history["loss"][-1]
    assert np.isfinite(loss)
    if before:
        assert any(not np.allclose(b, keras.ops.convert_to_numpy(w)) for b, w in zip(before, model.trainable_weights))


# ==================================================================================
# 1. The shared harness
# ==================================================================================
HARNESS_CASES = [
    (
        TensorProduct,
        dict(irreps_in1=MIXED_IN1, irreps_in2=MIXED_IN2, irreps_out=MIXED_OUT, instructions=MIXED_INSTRUCTIONS),
        (_x(MIXED_IN1, seed=1), _x(MIXED_IN2, seed=2)),
    ),
    (
        FullyConnectedTensorProduct,
        dict(irreps_in1="2x0e+1x1o+1x2e", irreps_in2="1x0e+1x1o", irreps_out="3x0e+2x1o+1x1e+1x2e"),
        (_x("2x0e+1x1o+1x2e", seed=3), _x("1x0e+1x1o", seed=4)),
    ),
    (
        TensorProduct,
        dict(irreps_in1="2x0e+1x1o", irreps_in2="1x0e+1x1o", irreps_out="2x0e+1x1o",
             instructions=[(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True), (1, 0, 1, "uvu", True)],
             internal_weights=False),
        (_x("2x0e+1x1o", seed=5), _x("1x0e+1x1o", seed=6), _rng(7).normal(size=(5, 4 + 2 + 1)).astype("float32")),
    ),
]


@pytest.mark.parametrize(
    "layer_cls, init_kwargs, inputs", HARNESS_CASES, ids=["tensor-product-mixed", "fully-connected", "external-weights"]
)
def test_check_layer(layer_cls, init_kwargs, inputs):
    check_layer(layer_cls, init_kwargs, inputs, run_fit=False)
    _fit_step(layer_cls(**init_kwargs), inputs)


def test_check_layer_fit_step_with_two_inputs():
    layer_cls, init_kwargs, inputs = HARNESS_CASES[1]
    check_layer(layer_cls, init_kwargs, inputs, run_xla=False, run_float64=False, run_saving=False)


# ==================================================================================
# 2. Equivariance: rotations and reflections, float64 and float32
# ==================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_connected_equivariant(dtype):
    layer = FullyConnectedTensorProduct(IRREPS_PARITY, IRREPS_PARITY, IRREPS_PARITY, dtype=dtype)
    assert_equivariant(layer, [IRREPS_PARITY, IRREPS_PARITY], IRREPS_PARITY, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_product_mixed_modes_equivariant(dtype):
    layer = TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS, dtype=dtype)
    assert_equivariant(layer, [MIXED_IN1, MIXED_IN2], MIXED_OUT, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_product_external_weights_equivariant(dtype):
    """Per-sample weights are invariant inputs (spec None): the product stays equivariant."""
    in1, in2, out = IRREPS_PARITY, "1x0e+1x1o+1x2e", "1x0o+2x1o+1x1e+1x2o"
    layer = FullyConnectedTensorProduct(in1, in2, out, internal_weights=False, dtype=dtype)
    rng = _rng(3)
    args = [
        rng.normal(size=(6, Irreps(in1).dim)).astype(dtype),
        rng.normal(size=(6, Irreps(in2).dim)).astype(dtype),
        rng.normal(size=(6, layer.weight_numel)).astype(dtype),
    ]
    assert_equivariant(layer, [in1, in2, None], out, args_in=args, dtype=dtype)


# ==================================================================================
# 3. Closed forms: dot product, cross product
# ==================================================================================
def test_vector_times_vector_to_scalar_is_dot_product_over_sqrt3():
    """``1x1o x 1x1o -> 0e`` (no weight) is ``x . y / sqrt(3)``.

    Derivation: the only invariant of two l=1 vectors is ``delta_ij``; with e3nn's
    unit Frobenius norm and positive sign, ``C = delta_ij / sqrt(3)``. One path
    into the 0e block with one channel pair: ``alpha = (2*0+1) / 1 = 1``, ``c = 1``.
    So ``out = sum_i x_i y_i / sqrt(3)``.
    """
    tp = TensorProduct("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uvw", False)], dtype="float64")
    x, y = _x("1x1o", n=7, seed=1, dtype="float64"), _x("1x1o", n=7, seed=2, dtype="float64")
    np.testing.assert_allclose(_np(tp(x, y))[:, 0], np.sum(x * y, axis=-1) / math.sqrt(3), rtol=0, atol=1e-14)


def test_vector_times_vector_to_vector_is_cross_product_over_sqrt2():
    """``1x1o x 1x1o -> 1e`` (no weight) is ``(x cross y) / sqrt(2)``.

    Derivation: the l=1 components are (x, y, z) (``D^1(R) = R``); the only
    invariant trilinear form is ``epsilon_ijk``, of Frobenius norm sqrt(6), so
    ``C = epsilon_ijk / sqrt(6)`` (e3nn's sign: +). One path, one channel pair:
    ``alpha = (2*1+1) / 1 = 3``, ``c = sqrt(3)``; ``out_k = sqrt(3)/sqrt(6)
    sum_ij epsilon_ijk x_i y_j = (x cross y)_k / sqrt(2)``. The output is
    even (``1e``): a pseudovector, as a cross product of two vectors is.
    """
    tp = TensorProduct("1x1o", "1x1o", "1x1e", [(0, 0, 0, "uvw", False)], dtype="float64")
    x, y = _x("1x1o", n=7, seed=3, dtype="float64"), _x("1x1o", n=7, seed=4, dtype="float64")
    np.testing.assert_allclose(_np(tp(x, y)), np.cross(x, y) / math.sqrt(2), rtol=0, atol=1e-14)


def test_bilinear_in_both_arguments():
    layer = FullyConnectedTensorProduct(IRREPS_PARITY, "1x0e+1x1o+1x2e", IRREPS_PARITY, dtype="float64")
    x1, y1 = _x(IRREPS_PARITY, seed=1, dtype="float64"), _x(IRREPS_PARITY, seed=2, dtype="float64")
    x2, y2 = _x("1x0e+1x1o+1x2e", seed=3, dtype="float64"), _x("1x0e+1x1o+1x2e", seed=4, dtype="float64")
    a, b = 0.7, -2.3
    lhs1 = _np(layer(a * x1 + b * y1, x2))
    rhs1 = a * _np(layer(x1, x2)) + b * _np(layer(y1, x2))
    lhs2 = _np(layer(x1, a * x2 + b * y2))
    rhs2 = a * _np(layer(x1, x2)) + b * _np(layer(x1, y2))
    scale = np.abs(rhs1).max()
    np.testing.assert_allclose(lhs1, rhs1, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(lhs2, rhs2, rtol=0, atol=1e-12 * scale)


# ==================================================================================
# 4. Normalization (e3nn's coefficients, unit variance)
# ==================================================================================
def test_fully_connected_normalized_over_weight_seeds():
    """Unit-variance inputs give unit-variance outputs, averaged over 8 weight draws.

    The expectation is exactly 1 per component (e3nn's coefficients), but one
    weight draw is a small sample: a 0e output channel sums ``3 paths * 8``
    squared N(0, 1) weights, relative std ``sqrt(2/24) ~ 0.3``, and single
    draws measured mean squares from 0.37 to 2.2. Eight draws (concatenated
    along the batch axis) measured 0.87..1.21, inside ``assert_normalized``'s 0.35.
    """
    layers = []
    for seed in range(8):
        keras.utils.set_random_seed(seed)
        layer = FullyConnectedTensorProduct("8x0e+8x1o+8x2e", "1x0e+1x1o+1x2e", "8x0e+8x1o+8x2e", dtype="float64")
        layer.build((None, 72), (None, 9))  # draw the weights now, under this seed
        layers.append(layer)

    def fn(x1, x2):
        return np.concatenate([_np(layer(x1, x2)) for layer in layers], axis=0)

    ms = assert_normalized(fn, ["8x0e+8x1o+8x2e", "1x0e+1x1o+1x2e"], num_points=2048)
    assert abs(ms.mean() - 1) < 0.05


@pytest.mark.parametrize(
    "irreps1, irreps2, irreps_out",
    [
        ("8x0e+8x1o+8x2e", "1x0e+1x1o+1x2e", "8x0e+8x1o+8x2e"),
        ("3x0e+2x1o+1x1e", "2x0e+1x1o", "1x0e+4x1o+2x1e+1x2e"),
    ],
)
def test_coefficients_follow_e3nn_formula(irreps1, irreps2, irreps_out):
    layer = FullyConnectedTensorProduct(irreps1, irreps2, irreps_out)
    paths = _fc_paths(irreps1, irreps2, irreps_out)
    assert [(i.i_in1, i.i_in2, i.i_out) for i in layer.instructions] == [p[:3] for p in paths]
    i1s, i2s, outs = Irreps(irreps1), Irreps(irreps2), Irreps(irreps_out)
    for ins in layer.instructions:
        into = [p for p in paths if p[2] == ins.i_out]
        denom = sum(i1s[p[0]].mul * i2s[p[1]].mul for p in into)
        expected = math.sqrt((2 * outs[ins.i_out].ir.l + 1) / denom)
        assert ins.coefficient == pytest.approx(expected, rel=1e-12)


# ==================================================================================
# 5. The NumPy reference: modes, shapes, hand-computed uvu, weights in or out
# ==================================================================================
def test_fully_connected_matches_numpy_reference():
    in1, in2, out = "2x0e+1x0o+2x1o+1x1e+1x2e", "1x0e+1x1o+1x2e", "1x2o+2x0e+3x1o+1x0o+1x1e"
    layer = FullyConnectedTensorProduct(in1, in2, out, dtype="float64")
    x1, x2 = _x(in1, n=6, seed=1, dtype="float64"), _x(in2, n=6, seed=2, dtype="float64")
    got = _np(layer(x1, x2))
    expected = _reference_tp(x1, x2, _flat_weight(layer), in1, in2, out, _fc_paths(in1, in2, out))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_mixed_modes_match_numpy_reference():
    layer = TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS, dtype="float64")
    x1, x2 = _x(MIXED_IN1, n=6, seed=1, dtype="float64"), _x(MIXED_IN2, n=6, seed=2, dtype="float64")
    got = _np(layer(x1, x2))
    expected = _reference_tp(x1, x2, _flat_weight(layer), MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_mode_weight_shapes():
    layer = TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS)
    shapes = [ins.path_shape for ins in layer.instructions]
    # uvw [mul1, mul2, mul_out]; uuu [mul]; uvw; unweighted (); uvu [mul1, mul2]; uvw; uvw; uvw
    assert shapes == [(2, 2, 2), (2,), (2, 1, 2), (), (2, 2), (1, 1, 2), (2, 1, 1), (2, 1, 1)]
    assert layer.weight_numel == 8 + 2 + 4 + 0 + 4 + 2 + 2 + 2
    out = layer(_x(MIXED_IN1, n=3), _x(MIXED_IN2, n=3))
    assert tuple(out.shape) == (3, Irreps(MIXED_OUT).dim)
    assert tuple(layer.weight.shape) == (layer.weight_numel,)


def test_uvu_hand_computed():
    """``2x0e+2x1o`` times ``3x0e`` -> ``2x0e+2x1o``, both paths ``uvu``.

    ``C(0,0,0) = 1`` and ``C(1,0,1) = delta_ik / sqrt(3)`` (e3nn: positive); each
    output block has one path summing ``mul2 = 3`` pairs: 0e block
    ``c = sqrt(1/3)``, 1o block ``c = sqrt(3/3) = 1``. Both give
    ``out[u] = x1[u] * (sum_v W[u, v] x2[v]) / sqrt(3)``.
    """
    np.testing.assert_allclose(wigner_3j(1, 0, 1)[:, 0, :], np.eye(3) / math.sqrt(3), atol=1e-15)
    tp = TensorProduct(
        "2x0e+2x1o", "3x0e", "2x0e+2x1o", [(0, 0, 0, "uvu", True), (1, 0, 1, "uvu", True)], dtype="float64"
    )
    x1, x2 = _x("2x0e+2x1o", n=4, seed=1, dtype="float64"), _x("3x0e", n=4, seed=2, dtype="float64")
    tp(x1, x2)
    W0 = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])
    W1 = np.array([[-2.0, 1.0, 0.25], [1.0, 1.0, 1.0]])
    tp.weight.assign(np.concatenate([W0.ravel(), W1.ravel()]))
    s0, s1 = x2 @ W0.T, x2 @ W1.T  # [B, u]
    expected = np.concatenate(
        [x1[:, :2] * s0, (x1[:, 2:].reshape(4, 2, 3) * s1[:, :, None]).reshape(4, 6)], axis=-1
    ) / math.sqrt(3)
    np.testing.assert_allclose(_np(tp(x1, x2)), expected, rtol=0, atol=1e-14)


def test_external_weights_equal_broadcast_internal_weights():
    internal = TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS, dtype="float64")
    external = TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS, internal_weights=False,
                             dtype="float64")
    x1, x2 = _x(MIXED_IN1, n=5, seed=1, dtype="float64"), _x(MIXED_IN2, n=5, seed=2, dtype="float64")
    ref = _np(internal(x1, x2))
    w = _flat_weight(internal)
    assert external.weight_numel == internal.weight_numel == w.size
    assert not external.trainable_weights
    got = _np(external(x1, x2, np.tile(w, (5, 1))))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
    # Different weights per sample: row b equals the internal layer with weight w_b.
    per_sample = _rng(5).normal(size=(5, w.size))
    got = _np(external(x1, x2, per_sample))
    for b in range(5):
        internal.weight.assign(per_sample[b])
        np.testing.assert_allclose(got[b], _np(internal(x1[b : b + 1], x2[b : b + 1]))[0], rtol=0, atol=1e-12)


def test_unweighted_paths_have_no_weights():
    tp = TensorProduct("1x1o", "1x1o", "1x0e+1x1e", [(0, 0, 0, "uvw", False), (0, 0, 1, "uvw", False)])
    tp(_x("1x1o"), _x("1x1o"))
    assert tp.weight_numel == 0 and not tp.trainable_weights


def test_unweighted_uvw_into_several_channels_raises_early_or_is_all_ones():
    instructions = [(0, 0, 0, "uvw", False)]
    try:
        tp = TensorProduct("2x1o", "1x0e", "2x1o", instructions, dtype="float64")
    except ValueError:
        return
    x1, x2 = _x("2x1o", n=3, seed=1, dtype="float64"), _x("1x0e", n=3, seed=2, dtype="float64")
    expected = _reference_tp(x1, x2, np.zeros((0,)), "2x1o", "1x0e", "2x1o", instructions)
    np.testing.assert_allclose(_np(tp(x1, x2)), expected, atol=1e-12)


# ==================================================================================
# 6. Errors
# ==================================================================================
def test_output_no_path_can_produce_raises():
    with pytest.raises(ValueError, match="1x1o"):
        FullyConnectedTensorProduct("1x0e", "1x0e", "1x1o")
    with pytest.raises(ValueError, match="1x0o"):
        FullyConnectedTensorProduct("1x0e+1x1o", "1x1o", "1x0e+1x0o")


@pytest.mark.parametrize(
    "instruction, match",
    [
        ((0, 0, 0, "uvw"), "Each instruction"),  # too short
        ((0, 0, 0, "uvw", True, 1.0, 2), "Each instruction"),  # too long
        ("0,0,0", "Instruction"),  # not a tuple (read as 5 characters: i_in1='0')
        ((0, 0, 2, "uvw", True), "i_out"),  # out of range
        ((-1, 0, 0, "uvw", True), "i_in1"),  # negative
        ((0, 1, 0, "uvw", True), "i_in2"),
        ((0, 0, 0, "uvv", True), "mode"),  # unknown mode
        ((0, 0, 1, "uvw", True), "cannot produce"),  # 1o x 1o -> 1o breaks parity
        ((0, 0, 0, "uvu", True), "uvu"),  # mul_out 3 != mul_in1 2
        ((0, 0, 0, "uuu", True), "uuu"),  # multiplicities differ
    ],
)
def test_malformed_instruction_raises(instruction, match):
    with pytest.raises(ValueError, match=match):
        TensorProduct("2x1o", "1x1o", "3x0e+1x1o", [instruction])


def test_bad_normalization_names_raise():
    with pytest.raises(ValueError, match="irrep_normalization"):
        FullyConnectedTensorProduct("1x0e", "1x0e", "1x0e", irrep_normalization="unit")
    with pytest.raises(ValueError, match="path_normalization"):
        FullyConnectedTensorProduct("1x0e", "1x0e", "1x0e", path_normalization="paths")


def test_wrong_widths_and_weight_arguments_raise():
    tp = FullyConnectedTensorProduct("2x0e+1x1o", "1x0e+1x1o", "2x0e+1x1o")
    with pytest.raises(ValueError, match="5"):
        tp(np.ones((2, 6), "float32"), np.ones((2, 4), "float32"))
    with pytest.raises(ValueError, match="4"):
        FullyConnectedTensorProduct("2x0e+1x1o", "1x0e+1x1o", "2x0e+1x1o")(
            np.ones((2, 5), "float32"), np.ones((2, 3), "float32"))
    tp(np.ones((2, 5), "float32"), np.ones((2, 4), "float32"))
    with pytest.raises(ValueError, match="internal weights"):
        tp(np.ones((2, 5), "float32"), np.ones((2, 4), "float32"), np.ones((2, tp.weight_numel), "float32"))
    ext = FullyConnectedTensorProduct("2x0e+1x1o", "1x0e+1x1o", "2x0e+1x1o", internal_weights=False)
    with pytest.raises(ValueError, match="weight"):
        ext(np.ones((2, 5), "float32"), np.ones((2, 4), "float32"))
    with pytest.raises(ValueError, match=str(ext.weight_numel)):
        ext(np.ones((2, 5), "float32"), np.ones((2, 4), "float32"), np.ones((2, ext.weight_numel + 1), "float32"))


# ==================================================================================
# 7. e3nn itself (optional: needs torch and e3nn)
# ==================================================================================
@pytest.fixture
def e3nn_o3():
    torch = pytest.importorskip("torch")
    o3 = pytest.importorskip("e3nn.o3")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch, o3
    torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    "irreps1, irreps2, irreps_out",
    [
        ("2x0e+1x0o+2x1o+1x1e+1x2e", "1x0e+1x1o+1x2e", "1x2o+2x0e+3x1o+1x0o+1x1e"),
        (IRREPS_PARITY, IRREPS_PARITY, IRREPS_PARITY),
    ],
)
def test_fully_connected_matches_e3nn(e3nn_o3, irreps1, irreps2, irreps_out):
    torch, o3 = e3nn_o3
    ours = FullyConnectedTensorProduct(irreps1, irreps2, irreps_out, dtype="float64")
    theirs = o3.FullyConnectedTensorProduct(irreps1, irreps2, irreps_out)
    x1, x2 = _x(irreps1, n=6, seed=1, dtype="float64"), _x(irreps2, n=6, seed=2, dtype="float64")
    ours(x1, x2)
    assert [(i.i_in1, i.i_in2, i.i_out) for i in ours.instructions] == [
        (i.i_in1, i.i_in2, i.i_out) for i in theirs.instructions
    ]
    assert ours.weight_numel == theirs.weight_numel
    with torch.no_grad():
        theirs.weight.copy_(torch.as_tensor(_flat_weight(ours)))
        expected = theirs(torch.as_tensor(x1), torch.as_tensor(x2)).numpy()
    np.testing.assert_allclose(_np(ours(x1, x2)), expected, rtol=0, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("irrep_normalization", ["component", "norm"])
@pytest.mark.parametrize("path_normalization", ["element", "path"])
def test_mixed_modes_match_e3nn(e3nn_o3, irrep_normalization, path_normalization):
    torch, o3 = e3nn_o3
    kw = dict(irrep_normalization=irrep_normalization, path_normalization=path_normalization)
    ours = TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS, dtype="float64", **kw)
    theirs = o3.TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS, **kw)
    x1, x2 = _x(MIXED_IN1, n=6, seed=1, dtype="float64"), _x(MIXED_IN2, n=6, seed=2, dtype="float64")
    ours(x1, x2)
    assert ours.weight_numel == theirs.weight_numel
    with torch.no_grad():
        theirs.weight.copy_(torch.as_tensor(_flat_weight(ours)))
        expected = theirs(torch.as_tensor(x1), torch.as_tensor(x2)).numpy()
    np.testing.assert_allclose(_np(ours(x1, x2)), expected, rtol=0, atol=1e-10 * np.abs(expected).max())


# -- cutting per-sample weights into paths ------------------------------------------------
def test_split_columns_pieces_remainder_and_gradient():
    from tfequivariant.layers.tensor_product import split_columns

    w = tf.constant(np.arange(2 * 10, dtype=np.float64).reshape(2, 10))
    parts = split_columns(w, [3, 1, 4])  # columns 8 and 9 are not asked for: dropped
    assert [tuple(p.shape) for p in parts] == [(2, 3), (2, 1), (2, 4)]
    np.testing.assert_array_equal(_np(tf.concat(parts, axis=1)), _np(w)[:, :8])
    (only,) = split_columns(w, [10])
    np.testing.assert_array_equal(_np(only), _np(w))
    cts = [tf.constant(_rng(s).normal(size=p.shape)) for s, p in enumerate(parts)]
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = tf.add_n([tf.reduce_sum(p * c) for p, c in zip(split_columns(w, [3, 1, 4]), cts)])
    expected = np.concatenate([_np(c) for c in cts] + [np.zeros((2, 2))], axis=1)
    np.testing.assert_array_equal(_np(tape.gradient(loss, w)), expected)


def _per_edge_weight_gradient_ops(layer, features, graph):
    """Op types in the traced gradient whose output has the per-edge weights' full width."""

    @tf.function
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, graph) ** 2)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    ops = grad.get_concrete_function(tf.constant(features)).graph.get_operations()
    full = [op.type for op in ops if op.outputs and op.outputs[0].shape.rank == 2
            and op.outputs[0].shape[-1] == layer.weight_numel and "Grad" in op.type]
    return full, [op.type for op in ops]


@pytest.mark.parametrize("which", ["attention", "per_edge_convolution"])
def test_per_edge_weights_gradient_is_not_a_sum_of_full_size_slice_gradients(which):
    """The backward pass of per-edge weights cut into paths makes one concat, not one
    zero-padded full-size tensor per path (the memory blow-up fixed by split_columns)."""
    from tfequivariant.layers import PointConvolution, SE3Attention

    rng = _rng(3)
    graph = {"positions": tf.constant(rng.normal(size=(5, 3)), tf.float32),
             "senders": tf.constant([0, 1, 2, 3, 4, 0], tf.int32),
             "receivers": tf.constant([1, 2, 3, 4, 0, 2], tf.int32)}
    irreps = "4x0e+2x1o+2x2e"
    if which == "attention":
        layer = SE3Attention(irreps, irreps, num_heads=2, irreps_sh="1x0e+1x1o+1x2e", cutoff=3.0)
    else:
        layer = PointConvolution(irreps, irreps, irreps_sh="1x0e+1x1o+1x2e", cutoff=3.0,
                                 implementation="per_edge")
    features = rng.normal(size=(5, Irreps(irreps).dim)).astype(np.float32)
    layer(features, graph)
    full, types = _per_edge_weight_gradient_ops(layer, features, graph)
    assert len(layer.instructions) > 5
    assert "StridedSliceGrad" not in full, full
    assert "SplitV" in types


@pytest.mark.parametrize("shape", [(5, 3, 2), (0, 3, 2)], ids=["five", "empty"])
def test_clebsch_gordan_step_equals_the_three_operand_einsum(shape):
    """The per-sample product with the Clebsch–Gordan block (written as two matmuls with the
    sample axis leading, for LiteRT's XNNPack delegate on empty edge sets) against NumPy's
    einsum, with several v channels and l = 1 x 2 -> 2; and a batch of zero samples."""
    from tfequivariant.layers.tensor_product import _cg_uv

    n, u, v = shape
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, u, 3)), rng.normal(size=(n, v, 5))
    C = wigner_3j(1, 2, 2)
    expected = np.einsum("nui,nvj,ijk->nuvk", a, b, C)
    got = _cg_uv(tf.constant(a), tf.constant(b), tf.constant(C))
    assert got.shape == (n, u, v, 5)
    np.testing.assert_allclose(got, expected, atol=1e-13)
    xla_form = _cg_uv(tf.constant(a), tf.constant(b), tf.constant(C), xla=True)  # the product and sum over i
    assert xla_form.shape == (n, u, v, 5)
    np.testing.assert_allclose(xla_form, expected, atol=1e-13)
    if n:
        assert np.abs(expected).max() > 0.1
    dyn = tf.function(_cg_uv, input_signature=[tf.TensorSpec([None, u, 3], tf.float64),
                                               tf.TensorSpec([None, v, 5], tf.float64),
                                               tf.TensorSpec([3, 5, 5], tf.float64)])
    np.testing.assert_allclose(dyn(a, b, C), expected, atol=1e-13)


@pytest.mark.parametrize("shape", [(5, 3), (0, 3)], ids=["five", "empty"])
def test_uuu_clebsch_gordan_step_equals_the_three_operand_einsum(shape):
    """``_cg_uu`` (one matmul with the sample axis in its rows, then a product and a sum)
    against NumPy's einsum, l = 2 x 1 -> 2 and l = 1 x 1 -> 0, and a batch of zero samples."""
    from tfequivariant.layers.tensor_product import _cg_uu

    n, u = shape
    rng = np.random.default_rng(1)
    for l1, l2, lo in ((2, 1, 2), (1, 1, 0)):
        a, b = rng.normal(size=(n, u, 2 * l1 + 1)), rng.normal(size=(n, u, 2 * l2 + 1))
        C = wigner_3j(l1, l2, lo)
        expected = np.einsum("nui,nuj,ijk->nuk", a, b, C)
        got = _cg_uu(tf.constant(a), tf.constant(b), tf.constant(C))
        assert got.shape == (n, u, 2 * lo + 1)
        np.testing.assert_allclose(got, expected, atol=1e-13)
        if n:
            assert np.abs(expected).max() > 0.1


@pytest.mark.parametrize("n", [6, 0], ids=["six", "empty"])
def test_per_sample_weights_under_xla_match_numpy_reference_with_gradients(n):
    """Under XLA the per-sample contractions are products and sums, not batched matmuls of
    tiny matrices (5-30x faster there): all three modes with per-sample weights, and shared
    weights, against the NumPy reference at 1e-12; gradients (inputs and weights) equal
    eager's; no batched matmul is traced under XLA (one is traced by ``tf.function``, so the
    check sees the difference); an empty batch works."""
    external = TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS, internal_weights=False,
                             dtype="float64")
    internal = TensorProduct(MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS, dtype="float64")
    x1, x2 = _x(MIXED_IN1, n=n, seed=1, dtype="float64"), _x(MIXED_IN2, n=n, seed=2, dtype="float64")
    internal(x1, x2)
    w = _rng(3).normal(size=(n, external.weight_numel))
    cot = _rng(4).normal(size=(n, Irreps(MIXED_OUT).dim))

    def value_and_grads(a, b, ww):
        with tf.GradientTape() as tape:
            tape.watch([a, b, ww])
            out = external(a, b, ww)
            loss = tf.reduce_sum(out * cot)
        return [out] + tape.gradient(loss, [a, b, ww])

    args = [tf.constant(x1), tf.constant(x2), tf.constant(w)]
    eager = [_np(t) for t in value_and_grads(*args)]
    xla = tf.function(value_and_grads, jit_compile=True)
    got = [_np(t) for t in xla(*args)]
    reference = lambda ww: (_reference_tp(x1, x2, ww, MIXED_IN1, MIXED_IN2, MIXED_OUT, MIXED_INSTRUCTIONS) if n
                            else np.zeros((0, Irreps(MIXED_OUT).dim)))
    expected = reference(w)
    scale = lambda e: max(1.0, np.abs(e).max(initial=0.0))
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-12 * scale(expected))
    for g, e in zip(got, eager):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12 * scale(e))
    if n:
        assert min(np.abs(e).max() for e in eager) > 0.1
    shared = tf.function(lambda a, b: internal(a, b), jit_compile=True)(args[0], args[1])
    expected = reference(_flat_weight(internal))
    np.testing.assert_allclose(_np(shared), expected, rtol=0, atol=1e-12 * scale(expected))

    def op_types(jit):
        fn = tf.function(lambda a, b, ww: external(a, b, ww), jit_compile=jit)
        return {op.type for op in fn.get_concrete_function(*args).graph.get_operations()}

    batched = {"BatchMatMulV2", "BatchMatMulV3", "Einsum"}
    assert op_types(False) & batched
    assert not op_types(True) & batched


def _tensor_product_graph_model(layer, irreps):
    """A graph model (the export's named inputs) whose output is ``layer(f, f)`` of the node features."""
    inputs = {
        "positions": keras.Input(shape=(3,), name="positions"),
        "node_features": keras.Input(shape=(Irreps(irreps).dim,), name="node_features"),
        "senders": keras.Input(shape=(), dtype="int32", name="senders"),
        "receivers": keras.Input(shape=(), dtype="int32", name="receivers"),
    }
    return keras.Model(inputs, layer(inputs["node_features"], inputs["node_features"]))


@pytest.mark.parametrize("mode", ["uvw", "uvu", "uuu", "fully_connected"])
def test_shared_weight_tensor_products_run_in_tflite_on_empty_and_nonempty_batches(tmp_path, mode):
    """Exported to TFLite and run by LiteRT with its default (XNNPack) delegate, the layers
    with shared weights give Keras's numbers for 4 nodes, 1 node and no node. The uvu and uuu
    paths were einsums whose batched matmul put the node axis in its columns: the delegate
    failed to prepare them for zero nodes."""
    pytest.importorskip("ai_edge_litert")
    from tfequivariant import export

    irreps = "2x0e+2x1o+1x2e"
    if mode == "fully_connected":
        layer = FullyConnectedTensorProduct(irreps, irreps, "2x0e+1x1o+1x1e+1x2e")
    else:
        instructions = [(0, 0, 0, mode, True), (1, 1, 0, mode, True), (1, 0, 1, mode, True),
                        (0, 1, 1, mode, True), (2, 2, 2, mode, True)]
        out = "2x0e+2x1o+1x2e" if mode != "uvw" else "3x0e+2x1o+1x2e"
        layer = TensorProduct(irreps, irreps, out, instructions)
    model = _tensor_product_graph_model(layer, irreps)
    rng = np.random.default_rng(3)
    layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])  # not the initial weights
    path = export.export_saved_model(model, tmp_path / "tp", version=1)
    export.to_tflite(path, tmp_path / "tp.tflite")
    runner = export.TFLiteRunner(tmp_path / "tp.tflite")
    for n in (4, 1, 0):
        graph = {"positions": rng.normal(size=(n, 3)).astype("float32"),
                 "node_features": rng.normal(size=(n, Irreps(irreps).dim)).astype("float32"),
                 "senders": np.zeros((0,), "int32"), "receivers": np.zeros((0,), "int32")}
        expected = np.asarray(model({k: graph[k] for k in model.input}))
        got = runner(graph)
        assert got.shape == expected.shape == (n, layer.irreps_out.dim)
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)
        if n:
            assert np.abs(expected).max() > 0.1
