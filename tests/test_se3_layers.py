"""Tests of the SE(3)-Transformer layers: AttentiveSelfInteraction,
SE3NormNonlinearity and GraphPooling.

Every layer goes through the shared harness (``check_layer``) and the shared
equivariance check (``assert_equivariant``, float64 and float32, with improper
rotations); the maths is checked against NumPy re-implementations written from
the docstrings and papers (and against ``keras.layers.LayerNormalization`` and
``SelfInteraction`` where those compute the same thing), never against the
layers' own code paths. Run with ``-s`` to see the equivariance errors.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfequivariant.irreps import Irreps
from tfequivariant.layers.attentive_self_interaction import AttentiveSelfInteraction
from tfequivariant.layers.graph_pooling import GraphPooling
from tfequivariant.layers.se3_norm_nonlinearity import SE3NormNonlinearity
from tfequivariant.layers.self_interaction import SelfInteraction
from tfequivariant.testing import assert_equivariant, assert_normalized, check_layer

DTYPES = ["float64", "float32"]
# Irreps with every kind of parity, used for the equivariance checks.
IRREPS_PARITY = "3x0e+2x0o+2x1o+2x1e+1x2e+1x2o"
IRREPS_PARITY_DIM = 27
# Outputs with a repeated type, a type the input lacks (3o) and a reordering.
IRREPS_ASI_OUT = "1x1o+2x0e+1x0o+1x2e+1x3o+1x1o+2x1e+1x2o"


def _rng(seed=0):
    return np.random.default_rng(seed)


def _features(dim, n=5, seed=0, dtype="float32"):
    return _rng(seed).normal(size=(n, dim)).astype(dtype)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _weights_by_name(layer):
    return {w.name: w for w in layer.weights}


def _randomize(layer, names, seed=1, scale=1.0):
    """Random values for the weights whose name starts with one of ``names``."""
    rng = _rng(seed)
    for w in layer.weights:
        if w.name.startswith(names):
            dtype = keras.backend.standardize_dtype(w.dtype)
            w.assign((scale * rng.normal(size=w.shape)).astype(dtype))


def _graph(dtype="float32", masks=True):
    """Three graphs (sizes 3, 0, 2) and a padding graph holding two padding nodes."""
    graph = {
        "node_graph_index": np.array([0, 0, 0, 2, 2, 3, 3], np.int32),
        "graph_sizes": np.array([3, 0, 2, 2], np.int32),
    }
    if masks:
        graph["node_mask"] = np.array([1, 1, 1, 1, 1, 0, 0], dtype)
        graph["graph_mask"] = np.array([1, 1, 1, 0], dtype)
    return graph


def _types(irreps):
    """Channels by irrep type: ``{ir: [(column offset, dim), ...]}`` in order of appearance."""
    out, col = {}, 0
    for mul, ir in Irreps(irreps):
        for _ in range(mul):
            out.setdefault(ir, []).append((col, ir.dim))
            col += ir.dim
    return out


# ==================================================================================
# 1. The shared harness on every layer
# ==================================================================================
@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
@pytest.mark.parametrize(
    "layer_cls, init_kwargs, inputs",
    [
        (AttentiveSelfInteraction, dict(irreps_in=IRREPS_PARITY, irreps_out=IRREPS_ASI_OUT),
         (_features(IRREPS_PARITY_DIM),)),
        (AttentiveSelfInteraction, dict(irreps_in="2x0e+1x1o", irreps_out="1x1o+1x0e", hidden=(), activation="tanh"),
         (_features(5),)),
        (AttentiveSelfInteraction, dict(irreps_in="2x0e+1x1o", irreps_out="3x2e+1x0o"), (_features(5),)),
        (SE3NormNonlinearity, dict(irreps=IRREPS_PARITY), (_features(IRREPS_PARITY_DIM),)),
        (SE3NormNonlinearity, dict(irreps="1x1o+2x0e+1x1o+1x0o", activation="silu", epsilon=1e-3),
         (_features(9),)),
        (GraphPooling, dict(irreps=IRREPS_PARITY), (_features(IRREPS_PARITY_DIM, n=7), _graph())),
        (GraphPooling, dict(irreps=IRREPS_PARITY, mode="mean"), (_features(IRREPS_PARITY_DIM, n=7), _graph())),
        (GraphPooling, dict(irreps="4x0e", mode="max"), (_features(4, n=7), _graph())),
        (GraphPooling, dict(irreps="2x0e+1x1o", mode="mean"), (_features(5, n=7), _graph(masks=False))),
    ],
    ids=["asi-parity", "asi-linear-mlp", "asi-no-common-type", "se3norm-parity", "se3norm-split-types",
         "pool-sum", "pool-mean", "pool-max", "pool-mean-no-masks"],
)
def test_check_layer(layer_cls, init_kwargs, inputs):
    check_layer(layer_cls, init_kwargs, inputs)


# ==================================================================================
# 2. Equivariance, float64 and float32, with parity
# ==================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
def test_attentive_self_interaction_equivariant(dtype):
    layer = AttentiveSelfInteraction(IRREPS_PARITY, IRREPS_ASI_OUT, hidden=(16, 8), dtype=dtype)
    layer.build((None, IRREPS_PARITY_DIM))
    _randomize(layer, ("mlp_bias",))
    assert_equivariant(layer, IRREPS_PARITY, IRREPS_ASI_OUT, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_se3_norm_nonlinearity_equivariant(dtype, activation):
    layer = SE3NormNonlinearity(IRREPS_PARITY, activation=activation, dtype=dtype)
    layer.build((None, IRREPS_PARITY_DIM))
    _randomize(layer, ("gamma", "beta"))
    assert_equivariant(layer, IRREPS_PARITY, IRREPS_PARITY, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_graph_pooling_equivariant(dtype, mode):
    graph = _graph(dtype)
    layer = GraphPooling(IRREPS_PARITY, mode=mode, dtype=dtype)

    def pool(features):
        return layer(features, graph)

    assert_equivariant(pool, IRREPS_PARITY, IRREPS_PARITY, dtype=dtype, num_points=7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_pooling_max_of_even_scalars_invariant(dtype):
    graph = _graph(dtype)
    layer = GraphPooling("5x0e", mode="max", dtype=dtype)
    assert_equivariant(lambda f: layer(f, graph), "5x0e", "5x0e", dtype=dtype, num_points=7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stack_equivariant(dtype):
    """AttentiveSelfInteraction -> SE3NormNonlinearity -> GraphPooling, as in a model."""
    graph = _graph(dtype)
    asi = AttentiveSelfInteraction(IRREPS_PARITY, IRREPS_PARITY, dtype=dtype)
    norm = SE3NormNonlinearity(IRREPS_PARITY, activation="silu", dtype=dtype)
    pool = GraphPooling(IRREPS_PARITY, mode="mean", dtype=dtype)
    assert_equivariant(lambda f: pool(norm(asi(f)), graph), IRREPS_PARITY, IRREPS_PARITY, dtype=dtype,
                       num_points=7)


# ==================================================================================
# 3. AttentiveSelfInteraction
# ==================================================================================
def _asi_reference(x, irreps_in, irreps_out, kernels, biases, act_scale, activation=_silu):
    """Gram upper triangles of every input type -> MLP -> per-node mixing, written from the docstring."""
    types_in, types_out = _types(irreps_in), _types(irreps_out)
    invariants = []
    for ir, chans in types_in.items():
        for a in range(len(chans)):
            for b in range(a, len(chans)):
                (ca, d), (cb, _) = chans[a], chans[b]
                invariants.append(np.sum(x[:, ca : ca + d] * x[:, cb : cb + d], axis=-1) / math.sqrt(d))
    h = np.stack(invariants, axis=-1)
    for k, (kernel, bias) in enumerate(zip(kernels, biases)):
        h = h @ kernel / math.sqrt(kernel.shape[0]) + bias
        if k < len(kernels) - 1:
            h = activation(h) * act_scale
    out = np.zeros((len(x), Irreps(irreps_out).dim))
    offset = 0
    for ir, out_chans in types_out.items():
        if ir not in types_in:
            continue  # stays zero
        in_chans = types_in[ir]
        u, w = len(in_chans), len(out_chans)
        weights = h[:, offset : offset + u * w].reshape(len(x), u, w)
        offset += u * w
        for j, (co, d) in enumerate(out_chans):
            for i, (ci, _) in enumerate(in_chans):
                out[:, co : co + d] += weights[:, i, j, None] * x[:, ci : ci + d] / math.sqrt(u)
    return out


def test_attentive_self_interaction_matches_numpy_reference():
    # split input blocks of one type, an input type without output (0o), a 1e output without input
    irreps_in = "2x0e+1x1o+1x0o+1x1o+1x2e"
    irreps_out = "1x1o+2x0e+2x2e+1x1e+1x0e"
    layer = AttentiveSelfInteraction(irreps_in, irreps_out, hidden=(6, 5), dtype="float64")
    x = _features(Irreps(irreps_in).dim, n=7, dtype="float64")
    layer.build(x.shape)
    _randomize(layer, ("mlp_bias",))
    weights = _weights_by_name(layer)
    # invariants: 0e 3, 1o 3, 0o 1, 2e 1 -> 8; weights: 1o 2x1, 0e 2x3, 2e 1x2 -> 10
    assert weights["mlp_kernel_0"].shape == (8, 6)
    assert weights["mlp_kernel_out"].shape == (5, 10)
    kernels = [_np(weights[f"mlp_kernel_{k}"]) for k in ("0", "1", "out")]
    biases = [_np(weights[f"mlp_bias_{k}"]) for k in ("0", "1", "out")]
    z, w = np.polynomial.hermite_e.hermegauss(80)
    act_scale = 1.0 / np.sqrt(np.sum(w * _silu(z) ** 2) / np.sqrt(2 * np.pi))
    expected = _asi_reference(x, irreps_in, irreps_out, kernels, biases, act_scale)
    out = _np(layer(x))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    assert np.all(out[:, 3 + 2 + 10 : 3 + 2 + 10 + 3] == 0.0), "1e output has no matching input: exactly zero"


def test_attentive_self_interaction_constant_weights_are_self_interaction():
    """With a zero kernel the MLP emits its bias: the layer is SelfInteraction with those weights."""
    irreps_in, irreps_out = "3x0e+2x1o+1x2e", "1x1o+2x0e+1x2e"
    layer = AttentiveSelfInteraction(irreps_in, irreps_out, hidden=())
    linear = SelfInteraction(irreps_in, irreps_out, use_bias=False)
    x = _features(14, n=6)
    layer.build(x.shape)
    linear.build(x.shape)
    weights = _weights_by_name(layer)
    weights["mlp_kernel_out"].assign(np.zeros(weights["mlp_kernel_out"].shape, np.float32))
    bias = _rng(2).normal(size=(2 * 1 + 3 * 2 + 1 * 1,)).astype("float32")
    weights["mlp_bias_out"].assign(bias)
    # the MLP output is laid out by output type in order of first appearance: 1o [2, 1], 0e [3, 2], 2e [1, 1]
    si = _weights_by_name(linear)
    si["weight_1o"].assign(bias[0:2].reshape(2, 1))
    si["weight_0e"].assign(bias[2:8].reshape(3, 2))
    si["weight_2e"].assign(bias[8:9].reshape(1, 1))
    np.testing.assert_allclose(_np(layer(x)), _np(linear(x)), rtol=1e-5, atol=1e-6)


def test_attentive_self_interaction_weights_depend_on_the_node():
    """Per-node weights: scaling one node's features changes its output nonlinearly, others not at all."""
    layer = AttentiveSelfInteraction("2x0e+2x1o", "2x0e+2x1o")
    x = _features(8, n=4)
    y = x.copy()
    y[1] *= 2.0
    out_x, out_y = _np(layer(x)), _np(layer(y))
    np.testing.assert_allclose(out_y[[0, 2, 3]], out_x[[0, 2, 3]], rtol=1e-6)
    assert not np.allclose(out_y[1], 2.0 * out_x[1], rtol=1e-3)


def test_attentive_self_interaction_output_of_order_one():
    """Unit-variance inputs give outputs of order one at initialisation.

    The diagonal Gram entries |f_c|^2 / sqrt(2l+1) have second moment 2l+3,
    so the MLP inputs are a little above unit scale; the mean square over 8
    initialisations lands around 1.6 for these irreps, checked within [0.5, 2.5].
    """
    keras.utils.set_random_seed(0)
    irreps = "16x0e+8x1o+4x2e"
    layers = [AttentiveSelfInteraction(irreps, irreps, dtype="float64") for _ in range(8)]

    def rms_over_initialisations(x):
        squares = [keras.ops.square(layer(x)) for layer in layers]
        return keras.ops.sqrt(keras.ops.mean(keras.ops.stack(squares), axis=0))

    ms = assert_normalized(rms_over_initialisations, irreps, num_points=512, rtol=1.0)
    assert 0.5 < ms.mean() < 2.5 and ms.min() > 0.5 and ms.max() < 3.0


# ==================================================================================
# 4. SE3NormNonlinearity
# ==================================================================================
def _se3_norm_reference(x, irreps, gammas, betas, activation, epsilon=1e-5):
    """LayerNorm of the norms per irrep type, phi, times the direction (0 at 0)."""
    out = np.zeros_like(x)
    for ir, chans in _types(irreps).items():
        norms = np.stack([np.linalg.norm(x[:, c : c + d], axis=-1) for c, d in chans], axis=-1)
        mean = norms.mean(axis=-1, keepdims=True)
        var = ((norms - mean) ** 2).mean(axis=-1, keepdims=True)
        scale = activation((norms - mean) / np.sqrt(var + epsilon) * gammas[str(ir)] + betas[str(ir)])
        for k, (c, d) in enumerate(chans):
            n = norms[:, k : k + 1]
            direction = np.where(n > 0, x[:, c : c + d] / np.where(n > 0, n, 1.0), 0.0)
            out[:, c : c + d] = scale[:, k : k + 1] * direction
    return out


@pytest.mark.parametrize("activation, np_activation", [("relu", lambda v: np.maximum(v, 0.0)), ("silu", _silu)])
def test_se3_norm_nonlinearity_matches_numpy_reference(activation, np_activation):
    irreps = "2x0e+1x1o+1x0o+2x1o+1x2e+1x0e+2x0o"  # types split across blocks, single-channel 2e
    layer = SE3NormNonlinearity(irreps, activation=activation, dtype="float64")
    x = _features(Irreps(irreps).dim, n=6, dtype="float64")
    x[0, 2:5] = 0.0  # a zero vector
    x[1, 0] = 0.0  # a zero scalar
    x[2] = 0.0  # a zero node
    layer.build(x.shape)
    _randomize(layer, ("gamma", "beta"))
    weights = _weights_by_name(layer)
    assert weights["gamma_0e"].shape == (3,) and weights["gamma_1o"].shape == (3,)
    assert weights["beta_0o"].shape == (3,) and weights["beta_2e"].shape == (1,)
    gammas = {k[len("gamma_"):]: _np(v) for k, v in weights.items() if k.startswith("gamma_")}
    betas = {k[len("beta_"):]: _np(v) for k, v in weights.items() if k.startswith("beta_")}
    expected = _se3_norm_reference(x, irreps, gammas, betas, np_activation)
    out = _np(layer(x))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    assert np.all(out[2] == 0.0) and np.all(out[0, 2:5] == 0.0) and out[1, 0] == 0.0


def test_se3_norm_nonlinearity_equals_keras_layer_normalization_of_norms():
    layer = SE3NormNonlinearity("4x1o", activation="relu")
    ln = keras.layers.LayerNormalization(epsilon=1e-5)
    x = _features(12, n=8)
    layer.build(x.shape)
    ln.build((None, 4))
    _randomize(layer, ("gamma", "beta"))
    weights = _weights_by_name(layer)
    ln.set_weights([_np(weights["gamma_1o"]), _np(weights["beta_1o"])])
    v = x.reshape(8, 4, 3)
    norms = np.linalg.norm(v, axis=-1)
    expected = (np.maximum(_np(ln(norms)), 0.0)[..., None] * v / norms[..., None]).reshape(8, 12)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-4, atol=1e-5)


def test_se3_norm_nonlinearity_scalars_keep_their_sign():
    """For scalars the norm is |x| and the direction sign(x): phi(LN(|x|)) sign(x)."""
    layer = SE3NormNonlinearity("3x0o", activation="silu")
    x = np.array([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]], np.float32)
    out = _np(layer(x))
    np.testing.assert_allclose(out[0], -out[1], rtol=1e-6)  # odd: f(-x) = -f(x)
    n = np.abs(x[0])
    expected = _silu((n - n.mean()) / np.sqrt(n.var() + 1e-5)) * np.sign(x[0])
    np.testing.assert_allclose(out[0], expected, rtol=1e-5)


def test_se3_norm_nonlinearity_groups_channels_by_type():
    """"1x1o+2x0e+1x1o" normalizes its two 1o channels together, exactly like "2x0e+2x1o"."""
    x = _features(8, n=5)
    split = SE3NormNonlinearity("1x1o+2x0e+1x1o", activation="silu")
    joint = SE3NormNonlinearity("2x0e+2x1o", activation="silu")
    permuted = np.concatenate([x[:, 3:5], x[:, 0:3], x[:, 5:8]], axis=-1)
    out_split, out_joint = _np(split(x)), _np(joint(permuted))
    np.testing.assert_allclose(out_split[:, 0:3], out_joint[:, 2:5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_split[:, 3:5], out_joint[:, 0:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_split[:, 5:8], out_joint[:, 5:8], rtol=1e-5, atol=1e-6)


def test_se3_norm_nonlinearity_single_channel_type():
    """One channel normalizes to 0: the output is phi(beta) f / |f|."""
    layer = SE3NormNonlinearity("1x2e", activation="silu")
    x = _features(5, n=3)
    layer.build(x.shape)
    _weights_by_name(layer)["beta_2e"].assign(np.array([0.7], np.float32))
    expected = _silu(0.7) * x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_se3_norm_nonlinearity_gradient_at_zero(dtype):
    """d out / d f at f = 0 is phi(beta_c) I: the norm of a zero vector has gradient 0, the direction is 0."""
    irreps = "2x0e+1x0o+2x1o+1x2e"
    layer = SE3NormNonlinearity(irreps, activation="silu", dtype=dtype)
    layer.build((None, 14))
    _randomize(layer, ("beta",), seed=4)
    betas = {k: _np(v) for k, v in _weights_by_name(layer).items()}
    x = tf.zeros((3, 14), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x))
    grad = tape.gradient(loss, x).numpy()
    expected = np.concatenate(
        [_silu(betas["beta_0e"]), _silu(betas["beta_0o"]), np.repeat(_silu(betas["beta_1o"]), 3),
         np.repeat(_silu(betas["beta_2e"]), 5)]
    )
    np.testing.assert_allclose(grad, np.broadcast_to(expected, grad.shape), rtol=1e-5)


# ==================================================================================
# 5. GraphPooling
# ==================================================================================
def _pool_reference(x, graph, mode):
    num_graphs = len(graph["graph_sizes"])
    node_mask = graph.get("node_mask", np.ones(len(x)))
    graph_mask = graph.get("graph_mask", np.ones(num_graphs))
    out = np.zeros((num_graphs, x.shape[1]))
    for g in range(num_graphs):
        rows = x[(graph["node_graph_index"] == g) & (node_mask > 0)]
        if len(rows) and graph_mask[g] > 0:
            out[g] = {"sum": np.sum, "mean": np.mean, "max": np.max}[mode](rows, axis=0)
    return out


@pytest.mark.parametrize("masks", [True, False], ids=["masks", "no-masks"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_graph_pooling_matches_numpy_reference(mode, masks):
    irreps = "3x0e" if mode == "max" else IRREPS_PARITY
    graph = _graph(masks=masks)
    graph["node_mask"] = np.array([1, 0, 1, 1, 1, 0, 0], np.float32) if masks else None
    graph = {k: v for k, v in graph.items() if v is not None}
    # negative features: a max that let masked or missing nodes in as 0 would show
    x = _features(Irreps(irreps).dim, n=7, dtype="float64") - 3.0
    out = _np(GraphPooling(irreps, mode=mode, dtype="float64")(x, graph))
    np.testing.assert_allclose(out, _pool_reference(x, graph, mode), rtol=1e-12, atol=1e-12)
    assert np.all(out[1] == 0.0), "the empty graph pools to 0"


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_graph_pooling_padding_graph_gives_zeros_and_leaves_the_rest_unchanged(mode):
    irreps = "2x0e" if mode == "max" else "2x0e+1x1o"
    dim = Irreps(irreps).dim
    real = {"node_graph_index": np.array([0, 0, 1, 1, 1], np.int32), "graph_sizes": np.array([2, 3], np.int32)}
    x = _features(dim, n=5)
    # tensorflow-gnn padding: 3 padding nodes (nonzero features!) in a padding graph, plus an empty one
    padded = {
        "node_graph_index": np.array([0, 0, 1, 1, 1, 2, 2, 2], np.int32),
        "graph_sizes": np.array([2, 3, 3, 0], np.int32),
        "node_mask": np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32),
        "graph_mask": np.array([1, 1, 0, 0], np.float32),
    }
    x_padded = np.concatenate([x, 100.0 + _features(dim, n=3, seed=5)])
    layer = GraphPooling(irreps, mode=mode)
    out, out_padded = _np(layer(x, real)), _np(layer(x_padded, padded))
    assert out_padded.shape == (4, dim)
    np.testing.assert_allclose(out_padded[:2], out, rtol=1e-6)
    assert np.all(out_padded[2:] == 0.0)
    # and under XLA
    xla = tf.function(lambda f, g: layer(f, g), jit_compile=True)(x_padded, padded)
    np.testing.assert_allclose(_np(xla), out_padded, rtol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_graph_pooling_empty_and_fully_masked_graphs_give_zero_and_finite_gradients(mode):
    graph = {
        "node_graph_index": np.array([0, 0, 2, 2], np.int32),
        "graph_sizes": np.array([2, 0, 2], np.int32),  # graph 1 empty
        "node_mask": np.array([1, 1, 0, 0], np.float32),  # graph 2 fully masked
    }
    x = tf.constant(_features(3, n=4) - 2.0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = GraphPooling("3x0e", mode=mode)(x, graph)
        loss = tf.reduce_sum(out * tf.constant([[1.0], [2.0], [3.0]]))
    out = _np(out)
    assert np.all(np.isfinite(out)) and np.all(out[1:] == 0.0)
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad))
    assert np.all(grad[2:] == 0.0), "masked nodes get no gradient"


def test_graph_pooling_mean_divides_by_unmasked_nodes():
    graph = {
        "node_graph_index": np.array([0, 0, 0, 1], np.int32),
        "graph_sizes": np.array([3, 1], np.int32),
        "node_mask": np.array([1, 0, 1, 1], np.float32),
    }
    x = np.array([[1.0], [50.0], [3.0], [4.0]], np.float32)
    np.testing.assert_allclose(_np(GraphPooling("0e", mode="mean")(x, graph)), [[2.0], [4.0]])


def test_graph_pooling_in_functional_model_with_dynamic_sizes():
    """One model, graphs of different N and G; the output has G rows."""
    inputs = (
        keras.Input(shape=(5,), name="features"),
        {"node_graph_index": keras.Input(shape=(), dtype="int32", name="node_graph_index"),
         "graph_sizes": keras.Input(shape=(), dtype="int32", name="graph_sizes")},
    )
    pooled = GraphPooling("2x0e+1x1o", mode="mean")(*inputs)
    assert tuple(pooled.shape) == (None, 5)
    model = keras.Model(inputs, pooled)
    for sizes in ([2, 3], [1, 1, 4, 2]):
        graph = {"node_graph_index": np.repeat(np.arange(len(sizes)), sizes).astype(np.int32),
                 "graph_sizes": np.array(sizes, np.int32)}
        x = _features(5, n=sum(sizes))
        np.testing.assert_allclose(_np(model((x, graph))), _pool_reference(x, graph, "mean"), rtol=1e-5, atol=1e-6)


# ==================================================================================
# 6. Every layer: zero features, leading dimensions, errors
# ==================================================================================
@pytest.mark.parametrize(
    "make",
    [
        lambda: AttentiveSelfInteraction(IRREPS_PARITY, IRREPS_ASI_OUT),
        lambda: SE3NormNonlinearity(IRREPS_PARITY),
        lambda: SE3NormNonlinearity(IRREPS_PARITY, activation="silu"),
    ],
    ids=["AttentiveSelfInteraction", "SE3NormNonlinearity-relu", "SE3NormNonlinearity-silu"],
)
def test_zero_features_finite_outputs_and_gradients(make):
    layer = make()
    x = tf.zeros((4, IRREPS_PARITY_DIM))
    layer.build(x.shape)
    _randomize(layer, ("mlp_bias", "beta"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y) + tf.reduce_sum(tf.square(y))
    assert np.all(_np(y) == 0.0)
    grad = tape.gradient(loss, x)
    assert grad is not None and np.all(np.isfinite(grad.numpy()))
    weight_grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is None or np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in weight_grads)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_graph_pooling_zero_features_finite_gradients(mode):
    x = tf.zeros((7, 3))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(GraphPooling("3x0e", mode=mode)(x, _graph()))
    assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))


@pytest.mark.parametrize(
    "make, width",
    [
        (lambda: AttentiveSelfInteraction("2x0e+2x1o", "1x0e+2x1o+1x2e"), 8),
        (lambda: SE3NormNonlinearity("2x0e+2x1o+1x0o"), 9),
    ],
    ids=["AttentiveSelfInteraction", "SE3NormNonlinearity"],
)
def test_extra_leading_dimensions(make, width):
    """``[..., dim]`` inputs: a [2, 3, dim] batch equals the [6, dim] flattened one."""
    layer = make()
    x = _features(width, n=6).reshape(2, 3, width)
    flat = _np(layer(x.reshape(6, width)))
    np.testing.assert_allclose(_np(layer(x)).reshape(6, -1), flat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("irreps", ["1x1o", "1x0o", "2x0e+1x1e", "1x0e+1x0o"])
def test_graph_pooling_max_needs_even_scalars(irreps):
    with pytest.raises(ValueError, match=r"irreps=.*" + irreps.replace("+", r"\+")):
        GraphPooling(irreps, mode="max")
    GraphPooling(irreps, mode="mean")  # fine


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: AttentiveSelfInteraction("2x1q", "1x0e"), "irreps_in"),
        (lambda: AttentiveSelfInteraction("1x0e", "x1o"), "irreps_out"),
        (lambda: AttentiveSelfInteraction("1x0e", "1x0e", hidden=(0,)), "hidden"),
        (lambda: AttentiveSelfInteraction("1x0e", "1x0e", hidden=-3), "hidden"),
        (lambda: AttentiveSelfInteraction("1x0e", "1x0e", hidden=(8.5,)), "hidden"),
        (lambda: AttentiveSelfInteraction("1x0e", "1x0e", hidden="32"), "hidden"),
        (lambda: AttentiveSelfInteraction("1x0e", "1x0e", activation="no-such-activation"), "activation"),
        (lambda: AttentiveSelfInteraction("1x0e", "1x0e", activation=None), "activation"),
        (lambda: SE3NormNonlinearity("1x-1e"), "irreps"),
        (lambda: SE3NormNonlinearity("1x1o", activation="no-such-activation"), "activation"),
        (lambda: SE3NormNonlinearity("1x1o", epsilon=0.0), "epsilon"),
        (lambda: SE3NormNonlinearity("1x1o", epsilon="small"), "epsilon"),
        (lambda: GraphPooling("1x0e+bad"), "irreps"),
        (lambda: GraphPooling("1x0e", mode="median"), "mode"),
        (lambda: GraphPooling("1x0e", mode=None), "mode"),
    ],
)
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize(
    "make, width, expected_dim",
    [
        (lambda: AttentiveSelfInteraction("2x1o", "1x1o"), 5, 6),
        (lambda: SE3NormNonlinearity("2x1o+1x0e"), 6, 7),
    ],
    ids=["AttentiveSelfInteraction", "SE3NormNonlinearity"],
)
def test_wrong_feature_width_names_expected_dim(make, width, expected_dim):
    with pytest.raises(ValueError, match=rf"\b{expected_dim}\b"):
        make()(np.zeros((3, width), np.float32))


def test_graph_pooling_wrong_inputs():
    with pytest.raises(ValueError, match=r"\b4\b"):
        GraphPooling("1x0e+1x1o")(np.zeros((3, 5), np.float32), _graph())
    with pytest.raises(ValueError, match="graph_sizes"):
        GraphPooling("1x0e")(np.zeros((3, 1), np.float32), {"node_graph_index": np.zeros(3, np.int32)})


# ==================================================================================
# 7. Export: SavedModel and TFLite builtins with dynamic N and G
# ==================================================================================
def test_stack_exports_to_saved_model_and_tflite(tmp_path):
    Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter

    irreps = "4x0e+2x1o+1x2e"
    dim = Irreps(irreps).dim
    features = keras.Input(shape=(dim,), name="features")
    graph_in = {
        "node_graph_index": keras.Input(shape=(), dtype="int32", name="node_graph_index"),
        "graph_sizes": keras.Input(shape=(), dtype="int32", name="graph_sizes"),
        "node_mask": keras.Input(shape=(), name="node_mask"),
        "graph_mask": keras.Input(shape=(), name="graph_mask"),
    }
    h = AttentiveSelfInteraction(irreps, irreps)(features)
    h = SE3NormNonlinearity(irreps)(h)
    model = keras.Model((features, graph_in), GraphPooling(irreps, mode="mean")(h, graph_in))
    path = str(tmp_path / "model")
    model.export(path, verbose=False)

    graph = _graph()
    x = _features(dim, n=7)
    expected = _np(model((x, graph)))
    reloaded = tf.saved_model.load(path)
    np.testing.assert_allclose(_np(reloaded.serve((x, graph))), expected, rtol=1e-5, atol=1e-6)

    converter = tf.lite.TFLiteConverter.from_saved_model(path)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner("serving_default")
    names = runner.get_input_details()
    feeds = {}
    for name in names:
        key = next(k for k in ("features", "node_graph_index", "graph_sizes", "node_mask", "graph_mask")
                   if name.endswith(k))
        feeds[name] = x if key == "features" else graph[key]
    out = next(iter(runner(**feeds).values()))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
