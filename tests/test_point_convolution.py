"""Tests of ``PointConvolution`` (all three implementations) and a 3-layer TFN stack.

The sparse edge path is checked against a dense all-pairs implementation
written here in NumPy float64 from the Tensor Field Network equations
(reference/equivariant_gnns.md) and the layer's docstring:

    out_i = SI(f_i) + 1/sqrt(avg_num_neighbors) sum_j A[i, j] sum_paths
            c_p sum_{u w} W_p[u, w](|r_ij|) sum_{a b} C[a, b, k] f_j[u, a] Y[b](r_ij)

with ``r_ij = x_j - x_i``, ``A`` the dense [N, N] adjacency (edge mask), ``Y``
component-normalized harmonics (``tfequivariant.spherical_harmonics``, tested
against scipy elsewhere), the radial weights ``W_p`` from an MLP on the gaussian
basis times the polynomial envelope (re-implemented here, weights read from the
layer's named variables), ``C = wigner_3j`` and ``c_p = sqrt(alpha)``,
``alpha = (2 l_out + 1) / (sum of mul_in * mul_sh over the paths into that
output block)``, recomputed here. Everything else uses the shared harness,
the shared equivariance check (rotations, reflections, translations; float64
and float32) and, when installed, e3nn. Run with ``-s`` to see the errors.

Note: ``check_layer`` runs with ``run_fit=False`` here and ``_fit_step`` does
its step 5, because the harness' fit step fails for layers with two call
arguments (see ``test_tensor_product.py::test_check_layer_fit_step_with_two_inputs``).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.integrate import quad
from scipy.special import expit

from _tier_graph import TIER_DEGREES, tier_graph
from tfequivariant import spherical_harmonics, wigner_3j
from tfequivariant.irreps import Irreps
from tfequivariant.layers import EdgeGeometry, Gate, PointConvolution
from tfequivariant.testing import CARTESIAN_POINTS, assert_equivariant, check_layer

DTYPES = ["float64", "float32"]
IMPLEMENTATIONS = ["per_node", "per_edge", "so2"]
# Features with every kind of parity; the output keeps a given (unsorted) order.
IRREPS_IN = "2x0e+1x0o+2x1o+1x1e+1x2e+1x2o"
IRREPS_OUT = "1x1o+2x0e+1x0o+2x1e+1x2e+1x2o"
SMALL = dict(num_radial_basis=6, cutoff=3.0, radial_hidden=(8, 7), avg_num_neighbors=2.5)

# 7 nodes, unique ordered pairs j -> i, one self-loop (2 -> 2, a zero-length edge),
# node 5 only sends, node 6 is isolated. In-degrees: 4, 3, 3, 1, 1, 0, 0.
SENDERS = np.array([0, 1, 2, 3, 4, 0, 2, 5, 1, 4, 2, 3], np.int32)
RECEIVERS = np.array([1, 2, 3, 4, 0, 2, 0, 1, 0, 1, 2, 0], np.int32)
NUM_NODES = 7
MAX_IN_DEGREE = 4
# With _graph()'s positions, edges 2, 4 and 9 are longer than the 3.0 cutoff (radial weights
# exactly 0) and edge 10 (the self-loop) has length 0.


def _rng(seed=0):
    return np.random.default_rng(seed)


def _np(x):
    return keras.ops.convert_to_numpy(x).astype(np.float64)


def _graph(dtype="float32", seed=0, **extra):
    graph = {
        "positions": (_rng(seed).normal(size=(NUM_NODES, 3)) * 1.2).astype(dtype),
        "senders": SENDERS.copy(),
        "receivers": RECEIVERS.copy(),
    }
    graph.update(extra)
    return graph


def _features(irreps=IRREPS_IN, n=NUM_NODES, seed=1, dtype="float32"):
    return _rng(seed).normal(size=(n, Irreps(irreps).dim)).astype(dtype)


def _conv(irreps_in=IRREPS_IN, irreps_out=IRREPS_OUT, dtype="float64", **kwargs):
    return PointConvolution(irreps_in, irreps_out, **{**SMALL, "dtype": dtype, **kwargs})


def _randomize_biases(layer, seed=3):
    """Nonzero self-interaction biases (they start at zero) so references see them."""
    for w in layer.weights:
        if w.name == "bias":
            w.assign(_rng(seed).normal(size=w.shape))


def _built(layer, features, graph, seed=3):
    layer(features, graph)
    _randomize_biases(layer, seed)
    return layer


def _fit_step(layer, inputs):
    """Step 5 of check_layer (one fit step) with the inputs passed as a tuple."""
    features, graph = inputs
    sym_f = keras.Input(shape=features.shape[1:], dtype=str(features.dtype))
    sym_g = {k: keras.Input(shape=np.shape(v)[1:], dtype=str(np.asarray(v).dtype), name=k) for k, v in graph.items()}
    model = keras.Model([sym_f, sym_g], layer(sym_f, sym_g))
    target = _rng(9).normal(size=(len(features), layer.irreps_out.dim)).astype("float32")
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
    loss = model.fit(tf.data.Dataset.from_tensors(((features, graph), target)), epochs=1, verbose=0)
    assert np.isfinite(loss.history["loss"][-1])
    assert any(not np.allclose(b, keras.ops.convert_to_numpy(w)) for b, w in zip(before, model.trainable_weights))


# ----------------------------------------------------------------------------------
# The dense all-pairs reference (NumPy float64)
# ----------------------------------------------------------------------------------
def _silu(x):
    return x * expit(x)


def _second_moment_scale(f):
    """``1 / sqrt(E[f(z)^2])``, ``z ~ N(0, 1)``, by adaptive quadrature."""
    m2, _ = quad(lambda z: f(z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -np.inf, np.inf,
                 epsabs=1e-14, epsrel=1e-13)
    return 1.0 / math.sqrt(m2)


SILU_SCALE = _second_moment_scale(_silu)


def _gaussian_basis(r, num_basis, cutoff, p=6):
    """``exp(-((r - mu_k) / step)^2) / 1.12 * u(r / cutoff)``, ``mu = linspace(0, cutoff)``.

    ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` below 1, 0 beyond
    (for p = 6: ``1 - 28 x^6 + 48 x^7 - 21 x^8``).
    """
    mu = np.linspace(0.0, cutoff, num_basis)
    step = cutoff / (num_basis - 1)
    b = np.exp(-(((r[..., None] - mu) / step) ** 2)) / 1.12
    x = r / cutoff
    u = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return b * np.where(x < 1, u, 0.0)[..., None]


def _blocks(x, irreps):
    """``[..., dim]`` -> list of ``[..., mul, 2l+1]``."""
    out, start = [], 0
    for mul, ir in Irreps(irreps):
        out.append(x[..., start : start + mul * ir.dim].reshape(x.shape[:-1] + (mul, ir.dim)))
        start += mul * ir.dim
    return out


def _weights_by_name(layer):
    return {w.name: _np(w) for w in layer.weights}


def _dense_self_interaction(features, irreps_in, irreps_out, weights):
    """``SI``: per irrep type, all input channels of that type times ``W / sqrt(U)``, + bias on 0e."""
    irreps_in, irreps_out = Irreps(irreps_in), Irreps(irreps_out)
    in_blocks = _blocks(features, irreps_in)
    n = len(features)
    used, out, bias_at = {}, [], 0
    for mul, ir in irreps_out:
        parts = [b for b, (_, ir_in) in zip(in_blocks, irreps_in) if ir_in == ir]
        if parts:
            x = np.concatenate(parts, axis=1)  # [N, U, d]
            y = np.einsum("nud,uw->nwd", x, weights[f"weight_{ir}"]) / math.sqrt(x.shape[1])
            start = used.get(ir, 0)
            used[ir] = start + mul
            block = y[:, start : start + mul, :]
        else:
            block = np.zeros((n, mul, ir.dim))
        if ir.l == 0 and ir.p == 1 and "bias" in weights:
            block = block + weights["bias"][bias_at : bias_at + mul][None, :, None]
            bias_at += mul
        out.append(block.reshape(n, -1))
    return np.concatenate(out, axis=-1)


def dense_reference(layer, features, positions, adjacency, edge_attr=None):
    """The point convolution over every ordered pair (j -> i) with ``adjacency[i, j] != 0``.

    ``edge_attr``: dense ``[N, N, F]`` invariant pair features (row i = receiver).
    """
    features = np.asarray(features, np.float64)
    x = np.asarray(positions, np.float64)
    adjacency = np.asarray(adjacency, np.float64)
    n = len(x)
    irreps_in, irreps_sh, irreps_out = Irreps(layer.irreps_in), Irreps(layer.irreps_sh), Irreps(layer.irreps_out)
    w = _weights_by_name(layer)

    r = x[None, :, :] - x[:, None, :]  # r[i, j] = x_j - x_i
    length = np.sqrt(np.sum(r * r, axis=-1))
    sh = {
        ir.l: spherical_harmonics(ir.l, r.reshape(-1, 3), normalize=True, normalization="component").reshape(
            n, n, ir.dim
        )
        for _, ir in irreps_sh
    }
    h = _gaussian_basis(length, layer.num_radial_basis, layer.cutoff)
    if edge_attr is not None:
        h = np.concatenate([h, np.asarray(edge_attr, np.float64)], axis=-1)
    k = 0
    while f"radial_kernel_{k}" in w:
        kernel = w[f"radial_kernel_{k}"]
        h = _silu(h @ kernel / math.sqrt(kernel.shape[0])) * SILU_SCALE
        k += 1
    radial = h @ w["radial_output"] / math.sqrt(h.shape[-1])  # [N, N, weight_numel]

    # Paths: every in x sh -> out allowed by |l1 - l2| <= l <= l1 + l2 and p = p1 p2,
    # e3nn's order (loops over in, sh, out); weights [mul_in, 1, mul_out] each.
    paths = [
        (i1, i2, io)
        for i1, (_, ir1) in enumerate(irreps_in)
        for i2, (_, ir2) in enumerate(irreps_sh)
        for io, (_, iro) in enumerate(irreps_out)
        if abs(ir1.l - ir2.l) <= iro.l <= ir1.l + ir2.l and iro.p == ir1.p * ir2.p
    ]
    denom = [
        sum(irreps_in[p[0]].mul * irreps_sh[p[1]].mul for p in paths if p[2] == io) for io in range(len(irreps_out))
    ]
    f_blocks = _blocks(features, irreps_in)
    out = [np.zeros((n, mul, ir.dim)) for mul, ir in irreps_out]
    offset = 0
    for i1, i2, io in paths:
        (mul1, ir1), (_, ir2), (mulo, iro) = irreps_in[i1], irreps_sh[i2], irreps_out[io]
        W = radial[..., offset : offset + mul1 * mulo].reshape(n, n, mul1, mulo)
        offset += mul1 * mulo
        c = math.sqrt((2 * iro.l + 1) / denom[io])
        C = wigner_3j(ir1.l, ir2.l, iro.l)
        # message[i, j, w, k] = c sum_u W[i,j,u,w] sum_ab C[a,b,k] f_j[u,a] Y_ij[b]
        msg = c * np.einsum("ijuw,abk,jua,ijb->ijwk", W, C, f_blocks[i1], sh[ir2.l])
        out[io] += np.einsum("ij,ijwk->iwk", adjacency, msg)
    assert offset == radial.shape[-1]
    conv = np.concatenate([o.reshape(n, -1) for o in out], axis=-1) / math.sqrt(layer.avg_num_neighbors)
    if layer.self_interaction:
        conv = conv + _dense_self_interaction(features, irreps_in, irreps_out, w)
    return conv


def _adjacency(senders, receivers, n, mask=None):
    a = np.zeros((n, n))
    mask = np.ones(len(senders)) if mask is None else mask
    for s, r, m in zip(senders, receivers, mask):
        assert a[r, s] == 0, "the dense reference needs unique ordered pairs"
        a[r, s] = m
    return a


def _assert_close(got, expected, rel, what=""):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(got - expected).max())
    assert err <= rel * scale, f"{what}: max |diff| {err:.3e} > {rel:.1e} * {scale:.3g}"


# ==================================================================================
# 1. The shared harness
# ==================================================================================
@pytest.mark.parametrize(
    "init_kwargs, graph",
    [
        (dict(max_neighbors=MAX_IN_DEGREE), _graph(edge_mask=(np.arange(12) % 5 != 0).astype("float32"),
                                                   edge_attr=_rng(4).normal(size=(12, 2)).astype("float32"))),
        (dict(implementation="per_edge"), _graph(edge_shifts=_rng(5).normal(size=(12, 3)).astype("float32"))),
    ],
    ids=["per_node-mask-attr", "per_edge-shifts"],
)
def test_check_layer(init_kwargs, graph):
    kwargs = dict(irreps_in="3x0e+2x1o+1x2e", irreps_out="2x0e+2x1o+1x1e+1x2e", irreps_sh=2,
                  num_radial_basis=4, cutoff=3.0, radial_hidden=(8,), **init_kwargs)
    inputs = (_features("3x0e+2x1o+1x2e"), graph)
    check_layer(PointConvolution, kwargs, inputs, run_fit=False)
    _fit_step(PointConvolution(**kwargs), inputs)


# ==================================================================================
# 2. Equivariance: rotations, reflections and translations, float64 and float32
# ==================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_equivariant(implementation, dtype):
    graph = _graph(dtype)
    layer = _built(_conv(dtype=dtype, implementation=implementation), _features(dtype=dtype), graph)

    def conv(features, positions):
        return layer(features, {**graph, "positions": positions})

    args = [_features(dtype=dtype, seed=2), graph["positions"]]
    assert_equivariant(conv, [IRREPS_IN, CARTESIAN_POINTS], IRREPS_OUT, args_in=args, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_equivariant_with_shifts_mask_and_edge_attr(implementation, dtype):
    """Shifts are vectors (rotated, not translated: spec ``1x1o``), edge_attr and mask invariant."""
    rng = _rng(6)
    graph = _graph(dtype, edge_mask=(np.arange(12) % 4 != 1).astype(dtype),
                   edge_attr=rng.normal(size=(12, 3)).astype(dtype))
    shifts = rng.normal(size=(12, 3)).astype(dtype)
    layer = _built(_conv(dtype=dtype, implementation=implementation), _features(dtype=dtype),
                   {**graph, "edge_shifts": shifts})

    def conv(features, positions, edge_shifts):
        return layer(features, {**graph, "positions": positions, "edge_shifts": edge_shifts})

    args = [_features(dtype=dtype, seed=2), graph["positions"], shifts]
    assert_equivariant(conv, [IRREPS_IN, CARTESIAN_POINTS, "1x1o"], IRREPS_OUT, args_in=args, dtype=dtype)


def _tfn_stack(dtype, irreps_in, irreps_final):
    """EdgeGeometry once, then PointConvolution -> Gate -> PointConvolution -> Gate -> PointConvolution."""
    geometry = EdgeGeometry(irreps_sh=2, num_radial_basis=6, cutoff=3.0, dtype=dtype)
    gate1 = Gate("3x0e+1x0o", ["silu", "tanh"], "2x0e+1x0o", ["sigmoid", "tanh"], "2x1o+1x1e", dtype=dtype)
    gate2 = Gate("2x0e+1x0o", ["silu", "tanh"], "2x0e+1x0o", ["sigmoid", "tanh"], "1x1o+1x1e+1x2e", dtype=dtype)
    kw = dict(num_radial_basis=6, cutoff=3.0, radial_hidden=(8,), avg_num_neighbors=2.5, dtype=dtype)
    conv1 = PointConvolution(irreps_in, gate1.irreps_in, max_neighbors=MAX_IN_DEGREE, **kw)
    conv2 = PointConvolution(gate1.irreps_out, gate2.irreps_in, implementation="per_edge", **kw)
    conv3 = PointConvolution(gate2.irreps_out, irreps_final, **kw)
    return geometry, [conv1, gate1, conv2, gate2, conv3]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tfn_stack_equivariant(dtype):
    irreps_in, irreps_final = "2x0e+1x1o+1x1e+1x2e", "2x0e+1x0o+1x1o+1x1e+1x2o"
    graph = _graph(dtype)
    geometry, layers = _tfn_stack(dtype, irreps_in, irreps_final)
    # the gates fit: each convolution outputs its gate's (sorted) input layout
    assert str(layers[0].irreps_out) == str(layers[1].irreps_in) == "2x0o+5x0e+2x1o+1x1e"
    assert str(layers[2].irreps_out) == str(layers[3].irreps_in)

    def stack(features, positions):
        g = geometry({**graph, "positions": positions})  # shared by the three convolutions
        x = features
        for layer in layers:
            x = layer(x, g) if isinstance(layer, PointConvolution) else layer(x)
        return x

    stack(_features(irreps_in, dtype=dtype), graph["positions"])
    for layer in layers:
        _randomize_biases(layer, seed=len(layer.weights))
    args = [_features(irreps_in, dtype=dtype, seed=2), graph["positions"]]
    out = stack(*args)
    assert np.all(np.isfinite(_np(out))) and np.abs(_np(out)).max() > 1e-3
    assert_equivariant(stack, [irreps_in, CARTESIAN_POINTS], irreps_final, args_in=args, dtype=dtype)


# ==================================================================================
# 3. The sparse path equals the dense all-pairs reference (float64, 1e-10)
# ==================================================================================
DENSE_CASES = {
    "per_node": dict(implementation="per_node"),
    "per_node-max_neighbors": dict(implementation="per_node", max_neighbors=MAX_IN_DEGREE + 2),
    # 7 nodes in blocks of 3: three blocks, the last one padded with two empty rows
    "per_node-node_chunk-3": dict(implementation="per_node", node_chunk=3),
    "per_node-node_chunk-1-max_neighbors": dict(implementation="per_node", node_chunk=1, max_neighbors=MAX_IN_DEGREE),
    "per_edge": dict(implementation="per_edge"),
    "per_node-sh-0-2": dict(implementation="per_node", irreps_sh="1x0e+1x2e"),
    "per_edge-sh-3-no-si": dict(implementation="per_edge", irreps_sh=3, self_interaction=False),
    "so2": dict(implementation="so2"),
    "so2-sh-0-2": dict(implementation="so2", irreps_sh="1x0e+1x2e"),
    "so2-sh-3-no-si": dict(implementation="so2", irreps_sh=3, self_interaction=False),
}


@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_matches_dense_all_pairs_reference(case):
    graph = _graph("float64")
    features = _features(dtype="float64", seed=2)
    layer = _built(_conv(**DENSE_CASES[case]), features, graph)
    expected = dense_reference(layer, features, graph["positions"], _adjacency(SENDERS, RECEIVERS, NUM_NODES))
    _assert_close(layer(features, graph), expected, 1e-10, case)
    if not layer.self_interaction:  # nodes 5 (sends only) and 6 (isolated) receive nothing
        assert np.all(expected[5:] == 0) and np.abs(expected[:5]).min(axis=1).max() > 0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_dense_reference_with_mask_and_edge_attr(implementation):
    rng = _rng(7)
    attr_dense = rng.normal(size=(NUM_NODES, NUM_NODES, 3))
    mask = (np.arange(12) % 3 != 2).astype("float64")
    graph = _graph("float64", edge_mask=mask, edge_attr=attr_dense[RECEIVERS, SENDERS])
    features = _features(dtype="float64", seed=2)
    layer = _built(_conv(implementation=implementation), features, graph)
    assert layer.radial_kernels[0].shape == (layer.num_radial_basis + 3, 8)
    adjacency = _adjacency(SENDERS, RECEIVERS, NUM_NODES, mask)
    expected = dense_reference(layer, features, graph["positions"], adjacency, attr_dense)
    _assert_close(layer(features, graph), expected, 1e-10, implementation)


# ==================================================================================
# 4. Graph contract: permutations, edge order, mask, shifts, edge_attr, EdgeGeometry
# ==================================================================================
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_node_permutation_permutes_output(implementation):
    graph, features = _graph("float64"), _features(dtype="float64", seed=2)
    layer = _built(_conv(implementation=implementation), features, graph)
    ref = _np(layer(features, graph))
    perm = _rng(8).permutation(NUM_NODES)  # new node k is old node perm[k]
    inv = np.argsort(perm).astype(np.int32)
    permuted = {"positions": graph["positions"][perm], "senders": inv[SENDERS], "receivers": inv[RECEIVERS]}
    _assert_close(layer(features[perm], permuted), ref[perm], 1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_edge_order_does_not_matter(implementation):
    rng = _rng(9)
    graph = _graph("float64", edge_attr=rng.normal(size=(12, 2)), edge_mask=(np.arange(12) != 3).astype("float64"),
                   edge_shifts=rng.normal(size=(12, 3)) * 0.3)
    features = _features(dtype="float64", seed=2)
    layer = _built(_conv(implementation=implementation), features, graph)
    ref = _np(layer(features, graph))
    order = rng.permutation(12)
    shuffled = {k: (v[order] if k != "positions" else v) for k, v in graph.items()}
    _assert_close(layer(features, shuffled), ref, 1e-12)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_masked_edges_equal_removed_edges(implementation):
    graph, features = _graph("float64"), _features(dtype="float64", seed=2)
    layer = _built(_conv(implementation=implementation), features, graph)
    keep = np.ones(12, bool)
    keep[[0, 4, 8, 10]] = False  # 10 is the self-loop
    masked = _np(layer(features, {**graph, "edge_mask": keep.astype("float64")}))
    removed = _np(layer(features, {**graph, "senders": SENDERS[keep], "receivers": RECEIVERS[keep]}))
    _assert_close(masked, removed, 1e-13)
    assert np.abs(masked - _np(layer(features, graph))).max() > 1e-3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_padding_node_with_masked_self_loops_is_invisible(implementation):
    """The padding convention: an extra node, padding edges = masked self-loops on it."""
    graph, features = _graph("float64"), _features(dtype="float64", seed=2)
    layer = _built(_conv(implementation=implementation), features, graph)
    ref = _np(layer(features, graph))
    pad = NUM_NODES
    padded = {
        "positions": np.concatenate([graph["positions"], np.zeros((1, 3))]),
        "senders": np.concatenate([SENDERS, [pad] * 3]).astype(np.int32),
        "receivers": np.concatenate([RECEIVERS, [pad] * 3]).astype(np.int32),
        "edge_mask": np.concatenate([np.ones(12), np.zeros(3)]),
    }
    out = _np(layer(np.concatenate([features, np.zeros((1, features.shape[1]))]), padded))
    _assert_close(out[:NUM_NODES], ref, 1e-13)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_edge_shifts_equal_a_shifted_copy_of_the_sender(implementation):
    """``r = x_j - x_i + s`` equals an edge from a copy of j placed at ``x_j + s``."""
    graph, features = _graph("float64"), _features(dtype="float64", seed=2)
    rng = _rng(10)
    shifts = np.zeros((12, 3))
    shifted_edges = [1, 6, 9]
    shifts[shifted_edges] = rng.normal(size=(3, 3))
    layer = _built(_conv(implementation=implementation), features, graph)
    got = _np(layer(features, {**graph, "edge_shifts": shifts}))
    # periodic copies: one new node per shifted edge, at x_sender + shift, same features
    positions, feats, senders = [graph["positions"]], [features], SENDERS.copy()
    for k, e in enumerate(shifted_edges):
        positions.append(graph["positions"][SENDERS[e]][None] + shifts[e])
        feats.append(features[SENDERS[e]][None])
        senders[e] = NUM_NODES + k
    copies = {"positions": np.concatenate(positions), "senders": senders, "receivers": RECEIVERS}
    expected = _np(layer(np.concatenate(feats), copies))[:NUM_NODES]
    _assert_close(got, expected, 1e-12)
    assert np.abs(got - _np(layer(features, graph))).max() > 1e-3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_edge_attr_widens_radial_input_and_changes_output(implementation):
    features = _features(dtype="float64", seed=2)
    plain = _built(_conv(implementation=implementation), features, _graph("float64"))
    attr = _rng(11).normal(size=(12, 5))
    with_attr = _conv(implementation=implementation)
    with_attr(features, _graph("float64", edge_attr=attr))
    assert plain.radial_kernels[0].shape == (6, 8)
    assert with_attr.radial_kernels[0].shape == (6 + 5, 8)
    # the first layer divides by sqrt(fan_in) (6 -> 11): basis rows scaled by
    # sqrt(11/6) and zero rows for edge_attr give back the plain output
    w = plain.get_weights()
    w_attr = [np.concatenate([w[0] * math.sqrt(11 / 6), np.zeros((5, 8))])] + w[1:]
    with_attr.set_weights(w_attr)
    ref = _np(plain(features, _graph("float64")))
    _assert_close(with_attr(features, _graph("float64", edge_attr=attr)), ref, 1e-13)
    # nonzero weights on those rows: edge_attr changes the output
    w_attr[0][6:] = _rng(12).normal(size=(5, 8))
    with_attr.set_weights(w_attr)
    assert np.abs(_np(with_attr(features, _graph("float64", edge_attr=attr))) - ref).max() > 1e-3


def test_edge_attr_on_a_layer_built_without_it_raises():
    features = _features(dtype="float64", seed=2)
    layer = _built(_conv(), features, _graph("float64"))
    with pytest.raises(ValueError):
        layer(features, _graph("float64", edge_attr=_rng(11).normal(size=(12, 5))))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_precomputed_edge_geometry_equals_computing_inside(implementation):
    graph, features = _graph("float64", edge_shifts=_rng(13).normal(size=(12, 3)) * 0.2), _features(dtype="float64")
    layer = _built(_conv(implementation=implementation), features, graph)
    ref = _np(layer(features, graph))
    # lmax 3 > the layer's 2: the layer takes the columns it needs
    geometry = EdgeGeometry(irreps_sh=3, num_radial_basis=6, cutoff=3.0, dtype="float64")(graph)
    _assert_close(layer(features, geometry), ref, 1e-13)
    # a layer using harmonics 0 and 2 only slices them out of the full 0..lmax tensor
    sliced = _built(_conv(implementation=implementation, irreps_sh="1x0e+1x2e"), features, graph)
    _assert_close(sliced(features, geometry), sliced(features, graph), 1e-13)


def test_edge_sh_with_too_low_lmax_raises():
    graph, features = _graph("float64"), _features(dtype="float64")
    geometry = EdgeGeometry(irreps_sh=1, num_radial_basis=6, cutoff=3.0, dtype="float64")(graph)
    with pytest.raises(ValueError, match="edge_sh"):
        _conv()(features, geometry)


def test_mismatched_edge_radial_width_raises():
    graph, features = _graph("float64"), _features(dtype="float64")
    geometry = EdgeGeometry(irreps_sh=2, num_radial_basis=5, cutoff=3.0, dtype="float64")(graph)
    with pytest.raises(ValueError, match="num_radial_basis=6"):
        _conv()(features, geometry)
    # after build (on a graph without edge_radial) the matmul rejects it
    layer = _built(_conv(), features, graph)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        layer(features, geometry)


# ==================================================================================
# 5. Robustness: no edges, isolated nodes, zero-length edges; bad input
# ==================================================================================
def _finite_value_and_gradients(layer, features, graph):
    positions = tf.constant(graph["positions"])
    features = tf.constant(features)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([positions, features])
        out = layer(features, {**graph, "positions": positions})
        loss = tf.reduce_sum(out**2) + tf.reduce_sum(tf.sin(out))
    grads = tape.gradient(loss, [positions, features] + list(layer.trainable_weights))
    assert np.all(np.isfinite(_np(out))), "non-finite output"
    for g, name in zip(grads, ["positions", "features"] + [w.path for w in layer.trainable_weights]):
        assert g is not None, f"no gradient for {name}"
        assert np.all(np.isfinite(_np(g))), f"non-finite gradient for {name}"
    return _np(out), grads


ROBUSTNESS_CONFIGS = [
    dict(implementation="per_node"),
    dict(implementation="per_node", max_neighbors=3),
    dict(implementation="per_edge"),
    dict(implementation="so2"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", ROBUSTNESS_CONFIGS, ids=["per_node", "per_node-K3", "per_edge", "so2"])
def test_no_edges_finite_and_equal_to_self_interaction(config, dtype):
    empty = {"positions": _graph(dtype)["positions"], "senders": np.zeros((0,), np.int32),
             "receivers": np.zeros((0,), np.int32)}
    features = _features(dtype=dtype, seed=2)
    layer = _built(_conv(dtype=dtype, **config), features, empty)
    out, grads = _finite_value_and_gradients(layer, features, empty)
    expected = _dense_self_interaction(features, IRREPS_IN, IRREPS_OUT, _weights_by_name(layer))
    _assert_close(out, expected, 1e-12 if dtype == "float64" else 1e-5)
    np.testing.assert_array_equal(_np(grads[0]), 0.0)  # positions do not matter without edges


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", ROBUSTNESS_CONFIGS, ids=["per_node", "per_node-K3", "per_edge", "so2"])
def test_zero_length_edges_and_isolated_nodes_finite(config, dtype):
    """Self-loops, two nodes at the same place (both directions), an isolated node."""
    positions = _graph(dtype)["positions"].copy()
    positions[4] = positions[3]
    graph = {"positions": positions,
             "senders": np.array([0, 1, 3, 4, 2, 0], np.int32),
             "receivers": np.array([0, 1, 4, 3, 1, 1], np.int32)}
    features = _features(dtype=dtype, seed=2)
    layer = _built(_conv(dtype=dtype, **config), features, graph)
    out, _ = _finite_value_and_gradients(layer, features, graph)
    if dtype == "float64":
        expected = dense_reference(layer, features, positions, _adjacency(graph["senders"], graph["receivers"], 7))
        _assert_close(out, expected, 1e-10)


def test_padded_zero_features_and_zero_positions_finite_gradients():
    """All-zero padding: zero features, zero positions, masked self-loops."""
    graph = {"positions": np.zeros((3, 3)), "senders": np.array([0, 1, 2, 2], np.int32),
             "receivers": np.array([0, 1, 2, 1], np.int32), "edge_mask": np.array([0.0, 0.0, 0.0, 1.0])}
    features = np.zeros((3, Irreps(IRREPS_IN).dim))
    for config in ROBUSTNESS_CONFIGS:
        _finite_value_and_gradients(_built(_conv(**config), features, graph), features, graph)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_wrong_feature_width_names_expected_dim(implementation):
    graph = _graph()
    dim = Irreps(IRREPS_IN).dim
    with pytest.raises(ValueError, match=f"irreps_in.dim = {dim}"):
        _conv(dtype="float32", implementation=implementation)(np.ones((NUM_NODES, dim + 1), "float32"), graph)
    layer = _built(_conv(dtype="float32", implementation=implementation), _features(), graph)
    with pytest.raises(ValueError, match=str(dim)):
        layer(np.ones((NUM_NODES, dim - 1), "float32"), graph)


def test_missing_graph_key_raises():
    graph = _graph()
    del graph["receivers"]
    with pytest.raises(ValueError, match="receivers"):
        _conv(dtype="float32")(_features(), graph)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("key", ["senders", "receivers"])
def test_out_of_range_index_raises_on_cpu_eager(implementation, key):
    """CPU eager gathers raise; XLA would clamp and a GPU gather would return zeros, so
    indices are validated at the boundary (DESIGN.md section 3). A negative index is
    NOT caught here: ``keras.ops.take`` wraps -1 to the last node."""
    graph = _graph()
    layer = _built(_conv(dtype="float32", implementation=implementation), _features(), graph)
    bad = graph[key].copy()
    bad[3] = NUM_NODES + 2
    with pytest.raises(tf.errors.InvalidArgumentError):
        layer(_features(), {**graph, key: bad})


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_max_neighbors_smaller_than_in_degree_raises_naming_it(mode):
    """``max_neighbors`` below the largest in-degree (4 here) raises an error naming the
    layer and ``max_neighbors`` (before: the ``ScatterNd``'s "does not index into shape",
    naming nothing). Under XLA assertions do not run: the layer then adds the edges the layout
    left out (next tests); ``validate_graph(graph, max_neighbors=K)`` checks at the boundary.
    Edges with ``edge_mask == 0`` take no slot, so they do not count."""
    graph, features = _graph("float64"), _features(dtype="float64")
    layer = _conv(max_neighbors=MAX_IN_DEGREE - 1)
    layer(features, {**graph, "senders": SENDERS[:1], "receivers": RECEIVERS[:1]})  # build
    call = layer if mode == "eager" else tf.function(lambda f, g: layer(f, g))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"PointConvolution: a node receives more edges than max_neighbors={MAX_IN_DEGREE - 1}"):
        call(features, graph)
    # one incoming edge of the busiest node masked out: fits, and equals the graph without it
    busiest = np.flatnonzero(RECEIVERS == np.bincount(RECEIVERS).argmax())
    mask = np.ones(len(SENDERS), "float64")
    mask[busiest[0]] = 0.0
    free = _conv()
    free(features, graph)
    free.set_weights(layer.get_weights())
    keep = mask > 0
    _assert_close(call(features, {**graph, "edge_mask": mask}),
                  free(features, {**graph, "senders": SENDERS[keep], "receivers": RECEIVERS[keep]}), 1e-13)
    # at exactly the largest in-degree it is fine and equals the run-time K
    exact = _conv(max_neighbors=MAX_IN_DEGREE)
    exact(features, graph)
    exact.set_weights(free.get_weights())
    _assert_close(exact(features, graph), free(features, graph), 1e-13)


@pytest.mark.parametrize("max_neighbors, node_chunk", [(1, None), (2, 3)], ids=["one_block", "node_chunk=3"])
def test_xla_over_full_neighbour_lists_lose_no_edge(monkeypatch, max_neighbors, node_chunk):
    """Under XLA the assertion on ``max_neighbors`` does not run and the layout leaves a busy
    node's extra edges out; the layer adds their messages (a per-edge loop over them), so the
    output and every gradient equal the exact layer's (no ``max_neighbors``, eagerly), with an
    edge masked out and edge attributes. With that correction switched off the output is wrong
    (the test can fail)."""
    from tfequivariant.layers import point_convolution

    mask = np.ones(len(SENDERS))
    mask[np.flatnonzero(RECEIVERS == np.bincount(RECEIVERS).argmax())[1]] = 0.0  # a masked edge of the busiest node
    graph = _graph("float64", edge_mask=mask, edge_attr=_rng(5).normal(size=(len(SENDERS), 2)))
    irreps_in, irreps_out = "2x0e+1x1o", "1x0e+1x1o"  # small: XLA compiles the blocked gradient in ~1 min
    features = _features(irreps_in, dtype="float64")
    exact = _built(_conv(irreps_in, irreps_out), features, graph)
    small = _conv(irreps_in, irreps_out, max_neighbors=max_neighbors, node_chunk=node_chunk)
    small.build(features.shape, {k: np.shape(v) for k, v in graph.items()})
    small.set_weights(exact.get_weights())
    cotangent = _rng(23).normal(size=(NUM_NODES, Irreps(irreps_out).dim))
    expected = _value_and_grads(exact, features, graph, cotangent, "eager")
    got = _value_and_grads(small, features, graph, cotangent, "xla")
    assert len(got) == 3 + len(exact.trainable_weights)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.abs(e).max() > 1e-6, i
        _assert_close(g, e, 1e-12, f"output/gradient {i}")
    monkeypatch.setattr(point_convolution, "in_xla_context", lambda: False)  # no correction: edges lost
    dropped = tf.function(lambda f, g: small(f, g), jit_compile=True)(features, graph)
    assert np.abs(_np(dropped) - expected[0]).max() > 1e-3 * np.abs(expected[0]).max()


@pytest.mark.parametrize("trips", [0, 3])
@pytest.mark.parametrize("mode", ["function", "xla"])
def test_looped_sum_and_its_first_and_second_gradients_equal_the_unrolled_sum(trips, mode):
    """``looped_sum`` (the loop behind the dropped edges, with a custom gradient that is itself a
    looped_sum) against the same steps summed in Python, differentiated by TensorFlow."""
    from tfequivariant.layers._receiver_blocks import looped_sum

    def step(i, x, w):
        k = tf.cast(i + 1, x.dtype)
        return [tf.sin(x * w * k), tf.reduce_sum(x ** 2) * w * k]

    def both(x, w, looped):
        with tf.GradientTape() as outer:
            outer.watch([x, w])
            with tf.GradientTape() as inner:
                inner.watch([x, w])
                if looped:
                    a, b = looped_sum(step, [x, w], [tf.zeros_like(x), tf.zeros((), x.dtype)], tf.constant(trips), 3)
                else:
                    parts = [step(tf.constant(i), x, w) for i in range(trips)]
                    a = sum((p[0] for p in parts), tf.zeros_like(x))
                    b = sum((p[1] for p in parts), tf.zeros((), x.dtype))
                value = tf.reduce_sum(tf.cos(a)) + b
            gx, gw = inner.gradient(value, [x, w], unconnected_gradients=tf.UnconnectedGradients.ZERO)
            second = tf.reduce_sum(gx ** 2) + gw ** 2
        return [a, b, gx, gw] + outer.gradient(second, [x, w], unconnected_gradients=tf.UnconnectedGradients.ZERO)

    x, w = tf.constant(_rng(4).normal(size=(5,))), tf.constant(0.7, tf.float64)
    expected = [_np(v) for v in both(x, w, False)]
    got = [_np(v) for v in tf.function(lambda x, w: both(x, w, True), jit_compile=mode == "xla")(x, w)]
    for i, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=str(i))
    if trips:
        assert min(np.abs(e).max() for e in expected) > 1e-3


def test_xla_over_full_neighbour_lists_second_order_gradients():
    """Forces in the loss (a gradient of a gradient) through the edges the layout left out:
    under XLA with ``max_neighbors=2`` equal to the exact layer's, eagerly."""
    irreps_in, irreps_out = "2x0e+1x1o", "1x0e+1x1o"
    graph, features = _graph("float64"), _features(irreps_in, dtype="float64")
    exact = _built(_conv(irreps_in, irreps_out), features, graph)
    small = _conv(irreps_in, irreps_out, max_neighbors=2)
    small.build(features.shape, {k: np.shape(v) for k, v in graph.items()})
    small.set_weights(exact.get_weights())

    def forces_loss(layer, jit):
        @tf.function(jit_compile=jit)
        def f(x, p):
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as inner:
                    inner.watch(p)
                    energy = tf.reduce_sum(tf.sin(layer(x, {**graph, "positions": p})))
                forces = tf.convert_to_tensor(inner.gradient(energy, p))
                loss = tf.reduce_sum(forces ** 2)
            return [loss] + [tf.convert_to_tensor(g) for g in outer.gradient(loss, [x] + layer.trainable_weights)]
        return [_np(v) for v in f(tf.constant(features), tf.constant(graph["positions"]))]

    expected, got = forces_loss(exact, False), forces_loss(small, True)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.abs(e).max() > 1e-6, i
        _assert_close(g, e, 1e-11, f"loss/gradient {i}")


@pytest.mark.parametrize("implementation", ["per_edge", "so2"])
def test_implementations_agree_float32(implementation):
    graph, features = _graph(), _features(seed=2)
    a = _built(_conv(dtype="float32"), features, graph)
    b = _conv(dtype="float32", implementation=implementation)
    b(features, graph)
    b.set_weights(a.get_weights())
    _assert_close(a(features, graph), b(features, graph), 1e-5)


# ==================================================================================
# 5a. The SO(2) evaluation (implementation="so2") is the per-edge function
# ==================================================================================
def _axis_graph(dtype="float64"):
    """Edges along +-x, +-y, +-z (the poles of both frames), on both sides of the chart
    switch (r_y^2 = |r|^2 / 2), one of zero length, and random ones."""
    rng = _rng(7)
    directions = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1),
                  (1, 1 + 1e-9, 0), (1, 1 - 1e-9, 0), (0, -1 - 1e-9, 1), (0, 0, 0)]
    directions += list(rng.normal(size=(6, 3)))
    n = len(directions) + 1
    positions = np.zeros((n, 3))
    positions[1:] = np.asarray(directions, dtype=np.float64) * rng.uniform(0.5, 2.5, size=(n - 1, 1))
    senders = np.concatenate([np.arange(1, n), np.zeros(4, int)]).astype(np.int32)
    receivers = np.concatenate([np.zeros(n - 1, int), [1, 3, 5, 9]]).astype(np.int32)
    return {"positions": positions.astype(dtype), "senders": senders, "receivers": receivers}


def _value_and_all_gradients(layer, features, graph, mode="eager"):
    def f(x, pos):
        with tf.GradientTape() as tape:
            tape.watch([x, pos])
            out = layer(x, {**graph, "positions": pos})
            loss = tf.reduce_sum(tf.sin(out) * out)
        grads = tape.gradient(loss, [x, pos] + layer.trainable_weights)
        return [out] + [tf.convert_to_tensor(g) for g in grads]

    if mode != "eager":
        f = tf.function(f, jit_compile=mode == "xla")
    return [_np(t) for t in f(tf.constant(features), tf.constant(graph["positions"]))]


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("irreps_in, irreps_out, irreps_sh", [
    (IRREPS_IN, IRREPS_OUT, 2),
    ("2x0e+1x1o+1x2e+1x3o+1x4e+1x4o", "1x0e+1x1o+1x1e+2x2e+1x3e+1x3o+1x4e", 4),
], ids=["lmax2", "lmax4"])
def test_so2_equals_per_edge_with_gradients_at_the_poles(mode, irreps_in, irreps_out, irreps_sh):
    """Values and every gradient (features, positions, weights) equal the tensor-product path
    at 1e-10, for edges along the frames' poles, at the chart switch and of zero length."""
    graph = _axis_graph()
    features = _features(irreps_in, n=len(graph["positions"]), seed=4, dtype="float64")
    ref = _built(_conv(irreps_in, irreps_out, irreps_sh=irreps_sh, implementation="per_edge", cutoff=5.0),
                 features, graph)
    so2 = _conv(irreps_in, irreps_out, irreps_sh=irreps_sh, implementation="so2", cutoff=5.0)
    so2(features, graph)
    so2.set_weights(ref.get_weights())
    expected = _value_and_all_gradients(ref, features, graph, mode)
    got = _value_and_all_gradients(so2, features, graph, mode)
    names = ["output", "d features", "d positions"] + [w.name for w in ref.trainable_weights]
    for name, a, b in zip(names, got, expected):
        assert np.abs(b).max() > 1e-3, name  # nothing compared is trivially zero
        _assert_close(a, b, 1e-10, f"{mode} {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_so2_equivariant_at_degree_4(dtype):
    irreps_in, irreps_out = "2x0e+1x1o+1x2e+1x3o+1x4e", "1x0e+1x1o+1x2e+1x3o+1x4e+1x4o"
    graph = _graph(dtype)
    features = _features(irreps_in, dtype=dtype, seed=5)
    layer = _built(_conv(irreps_in, irreps_out, irreps_sh=4, dtype=dtype, implementation="so2"), features, graph)

    def f(x, pos):
        return layer(x, {**graph, "positions": pos})

    assert_equivariant(f, [irreps_in, CARTESIAN_POINTS], irreps_out, args_in=[features, graph["positions"]],
                       dtype=dtype)


def test_so2_frame_rotates_y_onto_each_edge():
    """The frame's Wigner matrices (from the Chebyshev tables) are D(R_e) with R_e y = r / |r|."""
    from tfequivariant.layers._so2 import SO2Plan, _from_frame, edge_frame
    from tfequivariant.so3 import wigner_D

    vec = _rng(3).normal(size=(5, 3))
    vec[0], vec[1] = (0, 2.0, 0), (0, -0.5, 0)
    plan = SO2Plan(Irreps("1x3o"), Irreps("1x0e"), Irreps("1x3o"), [])
    frame = edge_frame(tf.constant(vec), 3, "float64")
    unit = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    for l in (1, 2, 3):
        # rows of D(R_e)^T applied to the identity: D(R_e) itself
        eye = np.broadcast_to(np.eye(2 * l + 1), (5, 2 * l + 1, 2 * l + 1))
        d = np.swapaxes(_np(_from_frame(tf.constant(eye), l, plan, frame)), 1, 2)
        np.testing.assert_allclose(np.einsum("eij,ejk->eik", d, np.swapaxes(d, 1, 2)), eye, atol=1e-12)
        y_axis = _np(spherical_harmonics(l, np.array([[0.0, 1.0, 0.0]]), normalize=True))[0]
        y_edge = _np(spherical_harmonics(l, unit, normalize=True))
        np.testing.assert_allclose(np.einsum("eij,j->ei", d, y_axis), y_edge, atol=1e-12)
    np.testing.assert_allclose(d[2], wigner_D(3, *_euler(unit[2])), atol=1e-12)  # chart 1: Euler angles


def _euler(u):
    return math.atan2(u[0], u[2]), math.acos(u[1]), 0.0


def test_so2_config_round_trip_and_node_chunk_refused():
    layer = _conv(implementation="so2")
    clone = PointConvolution.from_config(layer.get_config())
    assert clone.implementation == "so2"
    with pytest.raises(ValueError, match="node_chunk applies to implementation='per_node' only"):
        _conv(implementation="so2", node_chunk=4)


# ==================================================================================
# 5b. Node blocks (node_chunk): the same function, blocks of receivers one after another
# ==================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
def test_node_chunk_equivariant(dtype):
    graph = _graph(dtype, edge_mask=(np.arange(12) % 4 != 1).astype(dtype))
    layer = _built(_conv(dtype=dtype, node_chunk=3), _features(dtype=dtype), graph)

    def conv(features, positions):
        return layer(features, {**graph, "positions": positions})

    args = [_features(dtype=dtype, seed=2), graph["positions"]]
    assert_equivariant(conv, [IRREPS_IN, CARTESIAN_POINTS], IRREPS_OUT, args_in=args, dtype=dtype)


def _value_and_grads(layer, features, graph, cotangent, mode):
    def f(features, positions):
        with tf.GradientTape() as tape:
            tape.watch([features, positions])
            out = layer(features, {**graph, "positions": positions})
            loss = tf.reduce_sum(out * cotangent)
        grads = tape.gradient(loss, [features, positions] + list(layer.trainable_weights))
        return [out] + [tf.convert_to_tensor(g) for g in grads]

    if mode != "eager":
        f = tf.function(f, jit_compile=mode == "xla")
    return [_np(x) for x in f(tf.constant(features), tf.constant(graph["positions"]))]


# the tf.function and XLA cases: 39 and 55 s; blocks with gradients in both modes are also
# test_node_chunk_degree_tiers_equal_one_block_with_gradients' and test_receiver_blocks' (default run)
@pytest.mark.parametrize("node_chunk, mode", [(3, "eager"), pytest.param(6, "function", marks=pytest.mark.slow),
                                              pytest.param(3, "xla", marks=pytest.mark.slow)])
def test_node_chunk_equals_one_block_with_gradients(node_chunk, mode):
    """Output and every gradient (features, positions, all weights) equal the unblocked layer's.

    Smaller irreps than elsewhere (a few paths of each kind): tracing the blocked gradient is slow.
    """
    rng = _rng(8)
    graph = _graph("float64", edge_mask=(np.arange(12) % 5 != 0).astype("float64"),
                   edge_attr=rng.normal(size=(12, 2)), edge_shifts=rng.normal(size=(12, 3)))
    irreps_in, irreps_out = "2x0e+1x1o+1x2e", "1x0e+2x1o+1x2e"
    features = _features(irreps_in, dtype="float64", seed=2)
    plain = _built(_conv(irreps_in, irreps_out, max_neighbors=MAX_IN_DEGREE), features, graph)
    blocked = _conv(irreps_in, irreps_out, max_neighbors=MAX_IN_DEGREE, node_chunk=node_chunk)
    blocked(features, graph)
    blocked.set_weights(plain.get_weights())
    cotangent = rng.normal(size=(NUM_NODES, Irreps(irreps_out).dim))
    expected = _value_and_grads(plain, features, graph, cotangent, "eager")
    got = _value_and_grads(blocked, features, graph, cotangent, mode)
    assert len(got) == len(expected) == 2 + 1 + len(plain.trainable_weights)
    for i, (a, b) in enumerate(zip(got, expected)):
        _assert_close(a, b, 1e-10, f"output/gradient {i}")
        assert np.abs(b).max() > 0, f"gradient {i} is zero: the comparison would not test it"


# 14 nodes whose in-degrees 0..12 are all different (receiver r gets edges from the next d_r
# nodes): sorted by degree, blocks of 2 receivers need 12, 10, 8, 6, 4, 2 and 0 slots, so with
# K = 12 every one of the tiers 12 / 9 / 6 / 3 runs (a block on too few slots would drop edges).
def test_degree_order_and_slot_tiers():
    """Hand-derived: the receivers' permutation, the slots each block uses, the tier sizes."""
    from tfequivariant.layers._receiver_blocks import degree_order, slot_tiers

    e = 99  # empty slot
    slots = tf.constant([[0, e, e], [e, e, e], [1, 2, 3], [4, 5, e], [6, e, e], [e, e, e]], "int32")
    order, inverse, block_slots = degree_order(slots, e, 2)
    np.testing.assert_array_equal(order, [2, 3, 0, 4, 1, 5])  # degrees 1 0 3 2 1 0, ties keep their order
    np.testing.assert_array_equal(inverse, [2, 4, 0, 1, 3, 5])
    np.testing.assert_array_equal(block_slots, [3, 1, 0])
    assert slot_tiers(51) == [51, 39, 26, 13]
    assert slot_tiers(12) == [12, 9, 6, 3]
    assert slot_tiers(2) == [2, 1]
    assert slot_tiers(1) == [1]
    assert [int(t) for t in slot_tiers(tf.constant(12))] == [12, 9, 6, 3]


@pytest.mark.parametrize("mode, max_neighbors", [("eager", None), ("function", None), ("xla", 12)])
def test_node_chunk_degree_tiers_equal_one_block_with_gradients(mode, max_neighbors):
    """Receivers sorted by in-degree, each block on the slots of its tier: output and every
    gradient equal the unblocked layer's (``function`` without ``max_neighbors``: K and the tiers
    only known at run time)."""
    graph = tier_graph()
    irreps_in, irreps_out = "2x0e+1x1o", "1x0e+1x1o"  # few paths: XLA compiles the tiers' blocks faster
    features = _features(irreps_in, n=len(TIER_DEGREES), dtype="float64", seed=2)
    kwargs = dict(cutoff=10.0, max_neighbors=max_neighbors, irreps_sh="1x0e+1x1o")  # every edge inside the cutoff
    plain = _built(_conv(irreps_in, irreps_out, **kwargs), features, graph)
    blocked = _conv(irreps_in, irreps_out, node_chunk=2, **kwargs)
    blocked(features, graph)
    blocked.set_weights(plain.get_weights())
    cotangent = _rng(7).normal(size=(len(TIER_DEGREES), Irreps(irreps_out).dim))
    expected = _value_and_grads(plain, features, graph, cotangent, "eager")
    got = _value_and_grads(blocked, features, graph, cotangent, mode)
    for i, (a, b) in enumerate(zip(got, expected)):
        _assert_close(a, b, 1e-10, f"output/gradient {i}")
        assert np.abs(b).max() > 0, f"gradient {i} is zero: the comparison would not test it"


def test_node_chunk_with_unknown_number_of_nodes():
    """A graph whose node count is only known at run time (SavedModel-style signature)."""
    irreps_in, small = "2x0e+1x1o+1x2e", dict(irreps_sh="1x0e+1x1o")  # few paths: a shorter trace
    graph, features = _graph("float64"), _features(irreps_in, dtype="float64", seed=2)
    plain = _built(_conv(irreps_in, "1x0e+1x1o", **small), features, graph)
    blocked = _conv(irreps_in, "1x0e+1x1o", node_chunk=2, **small)
    blocked(features, graph)
    blocked.set_weights(plain.get_weights())
    spec = dict(positions=tf.TensorSpec([None, 3], "float64"), senders=tf.TensorSpec([None], "int32"),
                receivers=tf.TensorSpec([None], "int32"))

    @tf.function(input_signature=[tf.TensorSpec([None, Irreps(irreps_in).dim], "float64"), spec])
    def f(features, graph):
        return blocked(features, graph)

    g = {k: graph[k] for k in spec}
    _assert_close(f(features, g), plain(features, graph), 1e-12)
    # fewer nodes than one block, and exactly one block
    for n in (1, 2):
        sub = dict(positions=graph["positions"][:n], senders=np.zeros(1, "int32"), receivers=np.full(1, n - 1, "int32"))
        _assert_close(f(features[:n], sub), plain(features[:n], sub), 1e-12)


def test_node_chunk_second_order_gradients_are_not_supported():
    """Documented limit: the blocks' recomputing backward has no gradient of its own (forces in the loss)."""
    graph, features = _graph("float64"), _features(dtype="float64", seed=2)
    layer = _built(_conv(node_chunk=3), features, graph)
    positions = tf.constant(graph["positions"])
    with pytest.raises(NotImplementedError, match=r"not supported through node blocks \(node_chunk\)"):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(positions)
                energy = tf.reduce_sum(layer(features, {**graph, "positions": positions})[:, :2] ** 2)
            forces = tf.convert_to_tensor(inner.gradient(energy, positions))
            loss = tf.reduce_sum(forces**2)
        outer.gradient(loss, layer.trainable_weights)


def test_node_chunk_config_round_trip():
    """The full harness (check_layer) is too slow to trace with blocks; the config is what it adds."""
    layer = _conv(node_chunk=2, max_neighbors=MAX_IN_DEGREE)
    graph, features = _graph("float64"), _features(dtype="float64", seed=2)
    layer(features, graph)
    config = layer.get_config()
    assert config["node_chunk"] == 2
    clone = PointConvolution.from_config(config)
    clone(features, graph)
    clone.set_weights(layer.get_weights())
    assert clone.node_chunk == 2
    _assert_close(clone(features, graph), layer(features, graph), 1e-14)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_bad_node_chunk_raises(bad):
    with pytest.raises(ValueError, match="node_chunk"):
        _conv(node_chunk=bad)


# ==================================================================================
# 6. e3nn itself (optional: needs torch and e3nn)
# ==================================================================================
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_e3nn_convolution(implementation):
    """e3nn's building blocks assembled as in its point-convolution examples.

    e3nn pieces: ``o3.spherical_harmonics`` (component), ``soft_one_hot_linspace``
    (gaussian, ``cutoff=False``; the polynomial envelope, which e3nn has not,
    is multiplied in from its formula), ``nn.FullyConnectedNet`` (same weight
    layout and 1/sqrt(fan_in) scaling), ``o3.FullyConnectedTensorProduct`` with
    per-edge weights, a scatter-sum and ``o3.Linear`` as the self-interaction.
    e3nn's ``normalize2mom`` estimates the activation constant from 1e6 normal
    samples (about 1e-4 off); it is set to the exact value so that the
    comparison is about the layer, not that estimate.
    """
    torch = pytest.importorskip("torch")
    o3 = pytest.importorskip("e3nn.o3")
    from e3nn.math import soft_one_hot_linspace
    from e3nn.nn import FullyConnectedNet

    irreps_in, irreps_out = "3x0e+2x1o+1x1e+1x2e", "2x0e+1x0o+2x1o+1x1e+1x2e"
    graph, features = _graph("float64"), _features(irreps_in, dtype="float64", seed=2)
    layer = _built(_conv(irreps_in, irreps_out, implementation=implementation, radial_hidden=(8,)), features, graph)
    w = _weights_by_name(layer)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pos = torch.as_tensor(graph["positions"])
        s, r = torch.as_tensor(SENDERS).long(), torch.as_tensor(RECEIVERS).long()
        vec = pos[s] - pos[r]
        sh = o3.spherical_harmonics("1x0e+1x1o+1x2e", vec, normalize=True, normalization="component")
        length = vec.norm(dim=-1)
        x = length / 3.0
        envelope = torch.where(x < 1, 1 - 28 * x**6 + 48 * x**7 - 21 * x**8, torch.zeros_like(x))
        emb = soft_one_hot_linspace(length, 0.0, 3.0, 6, basis="gaussian", cutoff=False) * envelope[:, None]
        tp = o3.FullyConnectedTensorProduct(irreps_in, "1x0e+1x1o+1x2e", irreps_out,
                                            shared_weights=False, internal_weights=False)
        fc = FullyConnectedNet([6, 8, tp.weight_numel], torch.nn.functional.silu)
        linear = o3.Linear(irreps_in, irreps_out, biases=True)
        with torch.no_grad():
            fc.layer0.act.cst = SILU_SCALE
            fc.layer0.weight.copy_(torch.as_tensor(w["radial_kernel_0"]))
            fc.layer1.weight.copy_(torch.as_tensor(w["radial_output"]))
            flat = []
            for ins in linear.instructions:
                if ins.i_in >= 0:
                    flat.append(w[f"weight_{Irreps(irreps_in)[ins.i_in].ir}"].ravel())
            linear.weight.copy_(torch.as_tensor(np.concatenate(flat)))
            linear.bias.copy_(torch.as_tensor(w["bias"]))
            f = torch.as_tensor(features)
            messages = tp(f[s], sh, fc(emb))
            conv = torch.zeros(NUM_NODES, messages.shape[1]).index_add(0, r, messages) / math.sqrt(2.5)
            expected = (conv + linear(f)).numpy()
    finally:
        torch.set_default_dtype(previous)
    _assert_close(layer(features, graph), expected, 1e-10)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_unknown_static_widths(implementation):
    """Inputs whose widths are unknown when traced (a Keras functional graph can give
    ``edge_sh``/features of shape ``[None, None]``) give the eager numbers; the per-node
    path once built its zero row from the static width and failed there."""
    import tensorflow as tf

    graph = _graph()
    features = _features()
    layer = _built(_conv(dtype="float32", implementation=implementation), features, graph)
    expected = layer(features, graph)
    spec = tf.TensorSpec([None, None], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)])
    def traced(features, positions, senders, receivers):
        return layer(features, {"positions": positions, "senders": senders, "receivers": receivers})

    got = traced(features, graph["positions"], graph["senders"], graph["receivers"])
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), atol=1e-5)
