"""Tests of ``SE3Attention`` and ``segment_softmax``.

The sparse attention is checked against a dense all-pairs attention written
here in NumPy float64 from the SE(3)-Transformer equations
(reference/equivariant_gnns.md) and the layer's docstring. For every ordered
pair ``j -> i`` with ``A[i, j] != 0`` (``A`` the dense ``[N, N]`` adjacency, no
self-loops), ``r_ij = x_j - x_i``:

    k_ij (+) v_ij = sum_paths c_p sum_{u w} W_p[u, w](|r_ij|, attr_ij)
                    sum_{a b} C[a, b, k] f_j[u, a] Y[b](r_ij)      (to irreps_key + irreps_out)
    q_i           = per type  W_Q^T f_i / sqrt(fan_in)             (no bias)
    logit_ij^h    = sum over key blocks of q_i^h . k_ij^h / sqrt(irreps_key.dim / H)
    alpha_ij^h    = exp(logit_ij^h) / sum_{j' : A[i, j'] != 0} exp(logit_ij'^h)   (0 if no j')
    out_i         = SI(f_i) + sum_j alpha_ij^h v_ij^h

where head ``h`` owns channels ``[h mul / H, (h + 1) mul / H)`` of every block,
``W_p`` comes from the radial MLP (gaussian basis times the polynomial envelope,
re-implemented here; weights read from the layer's variables), ``C = wigner_3j``
and ``c_p = sqrt((2 l_out + 1) / sum of mul_in * mul_sh over the paths into that
output block)``, recomputed here. Everything else uses the shared harness and the
shared equivariance check (rotations, reflections, translations; float64 and
float32). Run with ``-s`` to see the equivariance errors.
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
from tfequivariant.layers import SE3Attention
from tfequivariant.layers.se3_attention import segment_softmax
from tfequivariant.testing import CARTESIAN_POINTS, assert_equivariant, check_layer

DTYPES = ["float64", "float32"]
# Every kind of parity; multiplicities divisible by 1, 2 and 4 heads; the output
# keeps a given (unsorted) order and has a type (2e) the input lacks.
IRREPS_IN = "4x0e+4x0o+4x1o+4x1e+4x2o"
IRREPS_OUT = "4x1o+4x0e+4x0o+4x2e"
SMALL = dict(num_radial_basis=5, cutoff=3.0, radial_hidden=(8,))

# 7 nodes, unique ordered pairs j -> i, no self-loops; node 5 only sends, node 6 is
# isolated. In-degrees: 4, 3, 2, 1, 1, 0, 0. With _graph()'s positions every edge is
# shorter than the 3.0 cutoff (lengths 1.0 .. 2.7).
SENDERS = np.array([0, 1, 2, 3, 4, 0, 2, 5, 1, 4, 3], np.int32)
RECEIVERS = np.array([1, 2, 3, 4, 0, 2, 0, 1, 0, 1, 0], np.int32)
NUM_NODES = 7
NUM_EDGES = 11


def _rng(seed=0):
    return np.random.default_rng(seed)


def _np(x):
    return keras.ops.convert_to_numpy(x).astype(np.float64)


def _graph(dtype="float64", seed=1, **extra):
    graph = {
        "positions": (_rng(seed).normal(size=(NUM_NODES, 3)) * 1.2).astype(dtype),
        "senders": SENDERS.copy(),
        "receivers": RECEIVERS.copy(),
    }
    graph.update(extra)
    return graph


def _features(irreps=IRREPS_IN, n=NUM_NODES, seed=2, dtype="float64"):
    return _rng(seed).normal(size=(n, Irreps(irreps).dim)).astype(dtype)


def _att(irreps_in=IRREPS_IN, irreps_out=IRREPS_OUT, dtype="float64", **kwargs):
    return SE3Attention(irreps_in, irreps_out, **{**SMALL, "dtype": dtype, **kwargs})


def _built(layer, features, graph, seed=3):
    """Build, then give the self-interaction bias (zero at init) nonzero values."""
    layer(features, graph)
    if layer.skip is not None and layer.skip.bias is not None:
        layer.skip.bias.assign(_rng(seed).normal(size=layer.skip.bias.shape))
    return layer


def _assert_close(got, expected, rel, what=""):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(got - expected).max())
    assert err <= rel * scale, f"{what}: max |diff| {err:.3e} > {rel:.1e} * {scale:.3g}"


def _adjacency(senders, receivers, n, mask=None):
    a = np.zeros((n, n))
    mask = np.ones(len(senders)) if mask is None else mask
    for s, r, m in zip(senders, receivers, mask):
        assert s != r and a[r, s] == 0, "the dense reference needs unique ordered pairs, no self-loops"
        a[r, s] = m
    return a


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
    """``exp(-((r - mu_k) / step)^2) / 1.12 * u(r / cutoff)``, ``mu = linspace(0, cutoff)``,
    ``u(x) = 1 - 28 x^6 + 48 x^7 - 21 x^8`` below 1, 0 beyond (p = 6)."""
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


def _si_weights(si_layer):
    """A ``SelfInteraction``'s variables by type (``weight_0e``, ...) and ``bias``."""
    return {w.name: _np(w) for w in si_layer.weights}


def _dense_self_interaction(features, irreps_in, irreps_out, weights):
    """Per irrep type, all input channels of that type times ``W / sqrt(U)``, + bias on 0e if given."""
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


def dense_attention(layer, features, positions, adjacency, edge_attr=None):
    """SE(3)-Transformer attention over every ordered pair (j -> i) with ``adjacency[i, j] != 0``.

    ``edge_attr``: dense ``[N, N, F]`` invariant pair features (row i = receiver).
    Returns ``(out [N, irreps_out.dim], alpha [N, N, H])``.
    """
    features = np.asarray(features, np.float64)
    x = np.asarray(positions, np.float64)
    connected = np.asarray(adjacency, np.float64) != 0
    n = len(x)
    irreps_in, irreps_sh = Irreps(layer.irreps_in), Irreps(layer.irreps_sh)
    irreps_key, irreps_out = Irreps(layer.irreps_key), Irreps(layer.irreps_out)
    heads = layer.num_heads
    kernels = [_np(v) for v in layer.radial_kernels]

    r = x[None, :, :] - x[:, None, :]  # r[i, j] = x_j - x_i
    with np.errstate(invalid="ignore", divide="ignore"):  # the diagonal (r = 0) is never used
        length = np.sqrt(np.sum(r * r, axis=-1))
        sh = [
            spherical_harmonics(ir.l, r.reshape(-1, 3), normalize=True, normalization="component")
            .reshape(n, n, 1, ir.dim)
            * np.ones((1, 1, mul, 1))
            for mul, ir in irreps_sh
        ]
    h = _gaussian_basis(length, layer.num_radial_basis, layer.cutoff)
    if edge_attr is not None:
        h = np.concatenate([h, np.asarray(edge_attr, np.float64)], axis=-1)
    for kernel in kernels:
        h = _silu(h @ kernel / math.sqrt(kernel.shape[0])) * SILU_SCALE
    radial = h @ _np(layer.radial_output) / math.sqrt(h.shape[-1])  # [N, N, weight_numel]

    # The key and value convolution: irreps_in x irreps_sh -> irreps_key + irreps_out (blocks kept
    # apart), every path allowed by |l1 - l2| <= l <= l1 + l2 and p = p1 p2, e3nn's order
    # (loops over in, sh, out), weights [mul_in, mul_sh, mul_out] each.
    irreps_kv = list(irreps_key) + list(irreps_out)
    paths = [
        (i1, i2, io)
        for i1, (_, ir1) in enumerate(irreps_in)
        for i2, (_, ir2) in enumerate(irreps_sh)
        for io, (_, iro) in enumerate(irreps_kv)
        if abs(ir1.l - ir2.l) <= iro.l <= ir1.l + ir2.l and iro.p == ir1.p * ir2.p
    ]
    denom = [
        sum(irreps_in[p[0]].mul * irreps_sh[p[1]].mul for p in paths if p[2] == io)
        for io in range(len(irreps_kv))
    ]
    f_blocks = _blocks(features, irreps_in)
    kv = [np.zeros((n, n, mul, ir.dim)) for mul, ir in irreps_kv]
    offset = 0
    for i1, i2, io in paths:
        (mul1, ir1), (mul2, ir2), (mulo, iro) = irreps_in[i1], irreps_sh[i2], irreps_kv[io]
        size = mul1 * mul2 * mulo
        W = radial[..., offset : offset + size].reshape(n, n, mul1, mul2, mulo)
        offset += size
        c = math.sqrt((2 * iro.l + 1) / denom[io])
        C = wigner_3j(ir1.l, ir2.l, iro.l)
        # kv[i, j, w, k] += c sum_uv W[i,j,u,v,w] sum_ab C[a,b,k] f_j[u,a] Y_ij[v,b]
        kv[io] += c * np.einsum("ijuvw,abk,jua,ijvb->ijwk", W, C, f_blocks[i1], sh[i2], optimize=True)
    assert offset == radial.shape[-1]
    keys, values = kv[: len(irreps_key)], kv[len(irreps_key) :]

    q = _blocks(_dense_self_interaction(features, irreps_in, irreps_key, _si_weights(layer.query)), irreps_key)
    logits = np.zeros((n, n, heads))
    for (mul, ir), qb, kb in zip(irreps_key, q, keys):
        qh = qb.reshape(n, heads, mul // heads, ir.dim)
        kh = kb.reshape(n, n, heads, mul // heads, ir.dim)
        logits += np.einsum("ihcd,ijhcd->ijh", qh, kh)
    logits /= math.sqrt(irreps_key.dim / heads)

    masked = np.where(connected[..., None], logits, -np.inf)
    top = np.max(masked, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(masked - top)  # exactly 0 off the edges
    total = e.sum(axis=1, keepdims=True)
    alpha = np.divide(e, total, out=np.zeros_like(e), where=total > 0)

    out = []
    for (mul, ir), vb in zip(irreps_out, values):
        vh = vb.reshape(n, n, heads, mul // heads, ir.dim)
        out.append(np.einsum("ijh,ijhcd->ihcd", alpha, vh).reshape(n, mul * ir.dim))
    out = np.concatenate(out, axis=-1)
    if layer.self_interaction:
        out = out + _dense_self_interaction(features, irreps_in, irreps_out, _si_weights(layer.skip))
    return out, alpha


# ==================================================================================
# 1. The shared harness
# ==================================================================================
HARNESS_IN, HARNESS_OUT = "4x0e+2x1o", "2x0e+2x1o+2x1e"


@pytest.mark.parametrize(
    "graph",
    [
        _graph("float32"),
        _graph("float32", edge_mask=(np.arange(NUM_EDGES) % 4 != 1).astype("float32"),
               edge_attr=_rng(4).normal(size=(NUM_EDGES, 2)).astype("float32"),
               edge_shifts=(_rng(5).normal(size=(NUM_EDGES, 3)) * 0.2).astype("float32")),
    ],
    ids=["plain", "mask-attr-shifts"],
)
def test_check_layer(graph):
    kwargs = dict(irreps_in=HARNESS_IN, irreps_out=HARNESS_OUT, num_heads=2, irreps_sh=2, **SMALL)
    out = check_layer(SE3Attention, kwargs, (_features(HARNESS_IN, dtype="float32"), graph))
    assert out.shape == (NUM_NODES, Irreps(HARNESS_OUT).dim)


# ==================================================================================
# 2. Equivariance: rotations, reflections and translations, float64 and float32
# ==================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_equivariant(num_heads, dtype):
    """Positions rotated and translated; edge_attr and edge_mask invariant (spec None)."""
    rng = _rng(6)
    graph = _graph(dtype, edge_mask=(np.arange(NUM_EDGES) % 5 != 2).astype(dtype))
    attr = rng.normal(size=(NUM_EDGES, 3)).astype(dtype)
    layer = _built(_att(dtype=dtype, num_heads=num_heads), _features(dtype=dtype), {**graph, "edge_attr": attr})

    def attention(features, positions, edge_attr):
        return layer(features, {**graph, "positions": positions, "edge_attr": edge_attr})

    args = [_features(dtype=dtype, seed=7), graph["positions"], attr]
    assert_equivariant(attention, [IRREPS_IN, CARTESIAN_POINTS, None], IRREPS_OUT, args_in=args, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_weights_invariant(dtype):
    graph = _graph(dtype)
    layer = _built(_att(dtype=dtype, num_heads=2), _features(dtype=dtype), graph)

    def weights(features, positions):
        alpha, values = layer.attention_weights(features, {**graph, "positions": positions})
        return [alpha, values]

    args = [_features(dtype=dtype, seed=7), graph["positions"]]
    # values are per edge [E, irreps_out.dim]: equivariant like node features
    assert_equivariant(weights, [IRREPS_IN, CARTESIAN_POINTS], [None, IRREPS_OUT], args_in=args, dtype=dtype)


# ==================================================================================
# 3. The sparse path equals the dense all-pairs reference (float64, 1e-10)
# ==================================================================================
DENSE_CASES = {
    "heads-1": dict(num_heads=1),
    "heads-2-key": dict(num_heads=2, irreps_key="2x1o+4x0e+2x0o+2x2o"),
    "heads-4-sh-0-1-no-si": dict(num_heads=4, irreps_sh="1x0e+1x1o", self_interaction=False),
    "heads-2-sh-0-2-hidden-2": dict(num_heads=2, irreps_sh="1x0e+1x2e", radial_hidden=(6, 7)),
    "heads-2-key-so2": dict(num_heads=2, irreps_key="2x1o+4x0e+2x0o+2x2o", implementation="so2"),
    "heads-4-sh-0-1-no-si-so2": dict(num_heads=4, irreps_sh="1x0e+1x1o", self_interaction=False,
                                     implementation="so2"),
}


@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_matches_dense_all_pairs_reference(case):
    graph, features = _graph(), _features()
    layer = _built(_att(**DENSE_CASES[case]), features, graph)
    expected, alpha = dense_attention(layer, features, graph["positions"], _adjacency(SENDERS, RECEIVERS, NUM_NODES))
    _assert_close(layer(features, graph), expected, 1e-10, case)
    got_alpha, _ = layer.attention_weights(features, graph)
    _assert_close(got_alpha, alpha[RECEIVERS, SENDERS], 1e-12, case + " alpha")
    # the weights really depend on the logits (not uniform) and sum to one per receiver and head
    assert np.abs(alpha[0] - 0.25)[[1, 2, 3, 4]].max() > 1e-3
    np.testing.assert_allclose(alpha.sum(axis=1)[:5], 1.0, atol=1e-14)
    if not layer.self_interaction:  # nodes 5 (sends only) and 6 (isolated) receive nothing
        assert np.all(_np(layer(features, graph))[5:] == 0)


def test_matches_dense_reference_with_mask_and_edge_attr():
    rng = _rng(7)
    attr_dense = rng.normal(size=(NUM_NODES, NUM_NODES, 3))
    mask = (np.arange(NUM_EDGES) % 3 != 2).astype("float64")
    graph = _graph(edge_mask=mask, edge_attr=attr_dense[RECEIVERS, SENDERS])
    features = _features()
    layer = _built(_att(num_heads=2), features, graph)
    assert layer.radial_kernels[0].shape == (layer.num_radial_basis + 3, 8)
    expected, alpha = dense_attention(layer, features, graph["positions"],
                                      _adjacency(SENDERS, RECEIVERS, NUM_NODES, mask), attr_dense)
    _assert_close(layer(features, graph), expected, 1e-10)
    got_alpha, _ = layer.attention_weights(features, graph)
    _assert_close(got_alpha, alpha[RECEIVERS, SENDERS], 1e-12)
    assert np.all(_np(got_alpha)[mask == 0] == 0)


def test_matches_dense_reference_without_scalar_harmonic():
    """``irreps_sh = 1x1o``: 3e is unreachable (3e x 1o -> 2o, 3o, 4o), so the default key drops it."""
    irreps_in, irreps_out = "2x0e+2x1o+2x3e", "2x1o+2x0e+2x2o"
    layer = _att(irreps_in, irreps_out, irreps_sh="1x1o", num_heads=2)
    assert str(layer.irreps_key) == "2x0e+2x1o"
    graph, features = _graph(), _features(irreps_in)
    _built(layer, features, graph)
    expected, _ = dense_attention(layer, features, graph["positions"], _adjacency(SENDERS, RECEIVERS, NUM_NODES))
    _assert_close(layer(features, graph), expected, 1e-10)


# ==================================================================================
# 4. Masks, nodes without neighbours, gradients
# ==================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_edges_equal_removed_edges(dtype):
    mask = np.ones(NUM_EDGES, dtype)
    mask[[0, 3, 6]] = 0  # 0->1, 3->4 (node 4's only edge), 2->0
    graph, features = _graph(dtype, edge_mask=mask), _features(dtype=dtype)
    layer = _built(_att(dtype=dtype, num_heads=2), features, graph)
    keep = mask == 1
    removed = _graph(dtype, senders=SENDERS[keep], receivers=RECEIVERS[keep], edge_mask=mask[keep])
    # equal up to 1 ulp: Eigen's vectorized exp in the radial basis already differs by 1 ulp on
    # arrays of another length (measured: the attention weights themselves are bit-identical)
    _assert_close(layer(features, graph), _np(layer(features, removed)), 1e-14 if dtype == "float64" else 1e-6)
    alpha, values = layer.attention_weights(features, graph)
    assert np.all(_np(alpha)[~keep] == 0) and np.all(_np(values)[~keep] == 0)


def test_masked_edge_with_huge_logit_equals_removed_edge():
    """An extra (padding) node 7 with features ~1e6 sends to node 0: unmasked its edge takes
    all of node 0's attention (logit ~1e6); masked, node 0 is as if the edge did not exist."""
    graph, features = _graph(), _features()
    layer = _built(_att(num_heads=2), features, graph)
    positions = np.concatenate([graph["positions"], graph["positions"][:1] + [[0.5, 0.3, -0.2]]])
    senders = np.concatenate([SENDERS, [7]]).astype(np.int32)
    receivers = np.concatenate([RECEIVERS, [0]]).astype(np.int32)
    big = _features(n=1, seed=8) * 1e6
    for sign in (1.0, -1.0):  # the logit is linear in f_7: one sign makes it hugely positive
        feats = np.concatenate([features, sign * big])
        unmasked = {"positions": positions, "senders": senders, "receivers": receivers}
        alpha, _ = layer.attention_weights(feats, unmasked)
        if _np(alpha)[-1].max() > 1 - 1e-12:
            break
    assert _np(alpha)[-1].max() > 1 - 1e-12, "the extra edge does not dominate: no huge logit"
    masked = {**unmasked, "edge_mask": np.concatenate([np.ones(NUM_EDGES), [0.0]])}
    removed = {"positions": positions, "senders": SENDERS, "receivers": RECEIVERS}
    got = _np(layer(feats, masked))
    _assert_close(got[:NUM_NODES], _np(layer(feats, removed))[:NUM_NODES], 1e-14)
    _assert_close(got[:NUM_NODES], _np(layer(features, graph)), 1e-14)
    assert _np(layer.attention_weights(feats, masked)[0])[-1].max() == 0


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_nodes_without_neighbours_get_self_interaction_only(dtype):
    """Node 6 isolated, node 5 only sends, node 3's only edge (2 -> 3) and node 4's (3 -> 4)
    masked; plus a padding node 7 at the origin with a masked zero-length self-loop."""
    positions = np.concatenate([_graph(dtype)["positions"], np.zeros((1, 3), dtype)])
    graph = {
        "positions": positions,
        "senders": np.concatenate([SENDERS, [7]]).astype(np.int32),
        "receivers": np.concatenate([RECEIVERS, [7]]).astype(np.int32),
        "edge_mask": np.array([1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0], dtype),
    }
    features = np.concatenate([_features(dtype=dtype), np.zeros((1, Irreps(IRREPS_IN).dim), dtype)])
    layer = _built(_att(dtype=dtype, num_heads=2), features, graph)
    out, grads = _finite_value_and_gradients(layer, features, graph)
    lonely = [3, 4, 5, 6, 7]
    skip = _np(layer.skip(features))
    np.testing.assert_array_equal(out[lonely], skip[lonely])
    expected = _dense_self_interaction(features, IRREPS_IN, IRREPS_OUT, _si_weights(layer.skip))
    _assert_close(out[lonely], expected[lonely], 1e-12 if dtype == "float64" else 1e-5)
    assert np.abs(out[[0, 1, 2]] - skip[[0, 1, 2]]).max() > 1e-3  # the others do attend


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["no-edges", "all-masked"])
def test_graph_without_active_edges(which, dtype):
    graph = _graph(dtype)
    if which == "no-edges":
        graph = {**graph, "senders": np.zeros((0,), np.int32), "receivers": np.zeros((0,), np.int32)}
    else:
        graph = {**graph, "edge_mask": np.zeros(NUM_EDGES, dtype)}
    features = _features(dtype=dtype)
    layer = _built(_att(dtype=dtype, num_heads=4), features, graph)
    out, grads = _finite_value_and_gradients(layer, features, graph)
    np.testing.assert_array_equal(out, _np(layer.skip(features)))
    np.testing.assert_array_equal(_np(grads[0]), 0.0)  # positions do not matter


def test_zero_features_and_coincident_positions_finite_gradients():
    """All-zero padding features, all nodes at the origin, real edges of length 0."""
    graph = {"positions": np.zeros((3, 3)), "senders": np.array([0, 1, 2, 2], np.int32),
             "receivers": np.array([1, 0, 0, 1], np.int32), "edge_mask": np.array([1.0, 1.0, 0.0, 1.0])}
    features = np.zeros((3, Irreps(IRREPS_IN).dim))
    _finite_value_and_gradients(_built(_att(num_heads=2), features, graph), features, graph)


# ==================================================================================
# 5. edge_attr, permutations, edge order
# ==================================================================================
def test_edge_attr_feeds_the_radial_network():
    features = _features()
    plain = _built(_att(num_heads=2), features, _graph())
    attr = _rng(11).normal(size=(NUM_EDGES, 4))
    with_attr = _att(num_heads=2)
    with_attr(features, _graph(edge_attr=attr))
    fan = SMALL["num_radial_basis"]
    assert plain.radial_kernels[0].shape == (fan, 8)
    assert with_attr.radial_kernels[0].shape == (fan + 4, 8)
    # the first layer divides by sqrt(fan_in): basis rows scaled by sqrt((fan + 4) / fan)
    # and zero rows for edge_attr give back the plain output
    w = plain.get_weights()
    k0 = next(i for i, v in enumerate(plain.weights) if v is plain.radial_kernels[0])
    assert with_attr.weights[k0] is with_attr.radial_kernels[0]
    w_attr = list(w)
    w_attr[k0] = np.concatenate([w[k0] * math.sqrt((fan + 4) / fan), np.zeros((4, 8))])
    with_attr.set_weights(w_attr)
    ref = _np(plain(features, _graph()))
    _assert_close(with_attr(features, _graph(edge_attr=attr)), ref, 1e-13)
    # nonzero weights on those rows: edge_attr changes the output (and the attention)
    w_attr[k0][fan:] = _rng(12).normal(size=(4, 8))
    with_attr.set_weights(w_attr)
    assert np.abs(_np(with_attr(features, _graph(edge_attr=attr))) - ref).max() > 1e-3
    alpha_plain, _ = plain.attention_weights(features, _graph())
    alpha_attr, _ = with_attr.attention_weights(features, _graph(edge_attr=attr))
    assert np.abs(_np(alpha_attr) - _np(alpha_plain)).max() > 1e-3


def test_node_permutation_permutes_outputs():
    rng = _rng(13)
    graph = _graph(edge_mask=(np.arange(NUM_EDGES) % 4 != 3).astype("float64"),
                   edge_attr=rng.normal(size=(NUM_EDGES, 2)))
    features = _features()
    layer = _built(_att(num_heads=2), features, graph)
    ref = _np(layer(features, graph))
    perm = rng.permutation(NUM_NODES)  # new node k is old node perm[k]
    inverse = np.argsort(perm)
    permuted = {**graph, "positions": graph["positions"][perm],
                "senders": inverse[SENDERS].astype(np.int32), "receivers": inverse[RECEIVERS].astype(np.int32)}
    _assert_close(layer(features[perm], permuted), ref[perm], 1e-13)


def test_edge_order_does_not_matter():
    rng = _rng(14)
    graph = _graph(edge_mask=(np.arange(NUM_EDGES) % 4 != 3).astype("float64"),
                   edge_attr=rng.normal(size=(NUM_EDGES, 2)), edge_shifts=rng.normal(size=(NUM_EDGES, 3)) * 0.1)
    features = _features()
    layer = _built(_att(num_heads=2), features, graph)
    ref = _np(layer(features, graph))
    order = rng.permutation(NUM_EDGES)
    shuffled = {k: (v[order] if k != "positions" else v) for k, v in graph.items()}
    _assert_close(layer(features, shuffled), ref, 1e-13)
    alpha, _ = layer.attention_weights(features, graph)
    alpha_shuffled, _ = layer.attention_weights(features, shuffled)
    _assert_close(alpha_shuffled, _np(alpha)[order], 1e-13)


# ==================================================================================
# 6. Construction: heads, irreps_key
# ==================================================================================
def test_num_heads_must_divide_every_multiplicity():
    with pytest.raises(ValueError, match=r"num_heads=3 .*irreps_key.*4x0e.*Received: irreps_key='4x0e\+2x1o'"):
        SE3Attention("4x0e+2x1o", "3x0e+3x1o", num_heads=3)
    with pytest.raises(ValueError, match=r"num_heads=2 .*irreps_out.*3x0e.*Received: irreps_out='3x0e\+2x1o'"):
        SE3Attention("4x0e+2x1o", "3x0e+2x1o", num_heads=2)
    with pytest.raises(ValueError, match=r"num_heads=4 .*irreps_key.*2x1o"):
        SE3Attention("4x0e+4x1o", "4x0e", irreps_key="4x0e+2x1o", num_heads=4)
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="num_heads"):
            SE3Attention("4x0e", "4x0e", num_heads=bad)


def test_irreps_key_default_is_the_reachable_part_of_irreps_in():
    # With 0e among the harmonics every input type is reachable (ir x 0e = ir): the default
    # key is irreps_in itself (zero multiplicities dropped).
    assert str(SE3Attention("2x0e+2x2e", "2x0e", irreps_sh="1x0e+1x1o").irreps_key) == "2x0e+2x2e"
    assert str(SE3Attention("2x0e+0x1e+2x1o", "2x0e", irreps_sh=1).irreps_key) == "2x0e+2x1o"
    # Without it: 0e x 1o -> 1o, 1o x 1o -> 0e + 1e + 2e, 3e x 1o -> 2o + 3o + 4o: 3e unreachable.
    assert str(SE3Attention("2x0e+2x1o+2x3e", "2x0e", irreps_sh="1x1o").irreps_key) == "2x0e+2x1o"
    # 0e x 2e -> 2e; 1o x 2e -> 1o + 2o + 3o: 0e unreachable, 1o reachable.
    assert str(SE3Attention("2x0e+2x1o", "2x1o", irreps_sh="1x2e").irreps_key) == "2x1o"
    # nothing reachable: 0e x 1o -> 1o, 0o x 1o -> 1e
    with pytest.raises(ValueError, match="irreps_key is empty"):
        SE3Attention("2x0e+2x0o", "2x1o", irreps_sh="1x1o")
    # an explicit key (or output) type that no path produces
    with pytest.raises(ValueError, match="3e"):
        SE3Attention("2x0e+2x1o", "2x0e", irreps_key="2x0e+2x3e", irreps_sh="1x1o")
    with pytest.raises(ValueError, match="0o"):
        SE3Attention("2x0e+2x1o", "2x0o", irreps_sh=1)


def test_config_keeps_the_resolved_key():
    layer = SE3Attention("2x0e+2x1o+2x3e", "2x0e", irreps_sh="1x1o", num_heads=2, radial_hidden=4)
    config = layer.get_config()
    assert config["irreps_key"] == "2x0e+2x1o" and config["num_heads"] == 2
    clone = SE3Attention.from_config(config)
    assert clone.irreps_key == layer.irreps_key and clone.radial_hidden == (4,)


def test_wrong_feature_width_raises():
    with pytest.raises(ValueError, match=f"irreps_in.dim = {Irreps(IRREPS_IN).dim}"):
        _att()(np.ones((NUM_NODES, Irreps(IRREPS_IN).dim + 1)), _graph())


# ==================================================================================
# 7. XLA equals eager
# ==================================================================================
def test_xla_equals_eager_float64():
    graph = _graph(edge_mask=(np.arange(NUM_EDGES) % 4 != 1).astype("float64"),
                   edge_attr=_rng(15).normal(size=(NUM_EDGES, 2)))
    # small irreps: the XLA compile dominates. Node 2's edges (1 -> 2, 0 -> 2) are masked.
    features = _features("2x0e+2x1o")
    layer = _built(_att("2x0e+2x1o", "2x0e+2x1o", irreps_sh=1, num_heads=2), features, graph)
    compiled = tf.function(lambda f, g: (layer(f, g), layer.attention_weights(f, g)[0]), jit_compile=True)
    out, alpha = compiled(features, graph)
    _assert_close(out, _np(layer(features, graph)), 1e-12)
    _assert_close(alpha, _np(layer.attention_weights(features, graph)[0]), 1e-12)


# ==================================================================================
# 8. segment_softmax
# ==================================================================================
# 9 entries, 2 heads, 5 segments: 0 (3 entries), 1 (2), 2 (empty), 3 (1), 4 (3)
SEGMENTS = np.array([0, 3, 1, 0, 4, 1, 4, 0, 4], np.int32)
NUM_SEGMENTS = 5


def _np_segment_softmax(logits, segments, num_segments, mask=None):
    keep = np.ones(len(logits), bool) if mask is None else np.asarray(mask) > 0
    out = np.zeros_like(logits, dtype=np.float64)
    for s in range(num_segments):
        idx = np.flatnonzero((segments == s) & keep)
        if len(idx):
            z = logits[idx].astype(np.float64)
            e = np.exp(z - z.max(axis=0))
            out[idx] = e / e.sum(axis=0)
    return out


def _ss(logits, mask=None, segments=SEGMENTS, num_segments=NUM_SEGMENTS):
    return _np(segment_softmax(tf.constant(logits), tf.constant(segments), num_segments,
                               None if mask is None else tf.constant(mask)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_softmax_sums_to_one_and_matches_numpy(dtype):
    logits = (_rng(20).normal(size=(9, 2)) * 3).astype(dtype)
    got = _ss(logits)
    _assert_close(got, _np_segment_softmax(logits, SEGMENTS, NUM_SEGMENTS), 1e-14 if dtype == "float64" else 1e-6)
    sums = np.zeros((NUM_SEGMENTS, 2))
    np.add.at(sums, SEGMENTS, got)
    np.testing.assert_allclose(sums[[0, 1, 3, 4]], 1.0, atol=1e-14 if dtype == "float64" else 1e-6)
    assert np.all(sums[2] == 0)  # the empty segment has no entries


def test_segment_softmax_invariant_to_a_constant_per_segment():
    logits = _rng(21).normal(size=(9, 2))
    shift = _rng(22).normal(size=(NUM_SEGMENTS, 2)) * 1e3
    _assert_close(_ss(logits + shift[SEGMENTS]), _ss(logits), 1e-12)


def test_segment_softmax_huge_logits_float32():
    logits = np.zeros((9, 2), np.float32)
    logits[[0, 3, 7], 0] = [1e30, 1e30, -1e30]  # segment 0: two equal maxima
    logits[[0, 3, 7], 1] = [3e38, -3e38, 0]  # segment 0, head 1: near float32 max and min
    logits[[2, 5], :] = [[-1e30, 1e30], [1e30, -1e30]]
    logits[[4, 6, 8], :] = 1e30  # segment 4: all equal
    got = _ss(logits)
    assert np.all(np.isfinite(got))
    expected = np.zeros((9, 2))
    expected[[0, 3], 0] = 0.5
    expected[0, 1] = 1.0
    expected[[5, 2], :] = [[1, 0], [0, 1]]
    expected[1, :] = 1.0
    expected[[4, 6, 8], :] = 1 / 3
    _assert_close(got, expected, 1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_softmax_mask(dtype):
    """Masked entries get exactly 0 and do not shift the maximum, even with a huge logit; a
    segment whose entries are all masked (3) and an empty one (2) give no NaN."""
    logits = _rng(23).normal(size=(9, 2)).astype(dtype)
    mask = np.array([1, 0, 1, 0, 1, 1, 1, 1, 0], dtype)
    logits[3] = 1e30 if dtype == "float32" else 1e300  # masked, segment 0
    logits[8] = -1e30 if dtype == "float32" else -1e300  # masked, segment 4
    got = _ss(logits, mask)
    assert np.all(np.isfinite(got))
    assert np.all(got[mask == 0] == 0)
    _assert_close(got, _np_segment_softmax(logits, SEGMENTS, NUM_SEGMENTS, mask), 1e-14 if dtype == "float64" else 1e-6)
    # masked entries are removed entries (up to 1 ulp: exp runs on arrays of another length)
    keep = mask == 1
    removed = _ss(logits[keep], segments=SEGMENTS[keep])
    _assert_close(got[keep], removed, 1e-15 if dtype == "float64" else 2e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_softmax_gradient_finite_and_exact(dtype):
    logits = _rng(24).normal(size=(9, 2)).astype(dtype)
    logits[3] = 1e30 if dtype == "float32" else 1e300
    mask = np.array([1, 0, 1, 0, 1, 1, 1, 1, 0], dtype)
    w = _rng(25).normal(size=(9, 2))
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        alpha = segment_softmax(x, tf.constant(SEGMENTS), NUM_SEGMENTS, tf.constant(mask))
        loss = tf.reduce_sum(alpha * tf.constant(w, dtype))
    grad = _np(tape.gradient(loss, x))
    assert np.all(np.isfinite(grad))
    assert np.all(grad[mask == 0] == 0)
    # d/dz_e sum_f alpha_f w_f = alpha_e (w_e - sum_{f in seg(e)} alpha_f w_f)
    a = _np(alpha)
    seg_mean = np.zeros((NUM_SEGMENTS, 2))
    np.add.at(seg_mean, SEGMENTS, a * w)
    expected = a * (w - seg_mean[SEGMENTS])
    _assert_close(grad, expected, 1e-13 if dtype == "float64" else 1e-6)


def test_segment_softmax_xla_equals_eager():
    logits = _rng(26).normal(size=(9, 2))
    mask = np.array([1, 0, 1, 0, 1, 1, 1, 1, 0], np.float64)
    fn = tf.function(lambda z, s, m: segment_softmax(z, s, NUM_SEGMENTS, m), jit_compile=True)
    _assert_close(fn(logits, SEGMENTS, mask), _ss(logits, mask), 1e-14)


# ==================================================================================
# 9. Chunks: the same function over blocks of receivers (node_chunk) or chunks of edges
#    (edge_chunk), one after another
# ==================================================================================
MAX_IN_DEGREE = 4  # of RECEIVERS


def _mask_attr_shifts_graph(dtype="float64"):
    return _graph(dtype, edge_mask=(np.arange(NUM_EDGES) % 4 != 1).astype(dtype),
                  edge_attr=_rng(15).normal(size=(NUM_EDGES, 2)).astype(dtype),
                  edge_shifts=(_rng(16).normal(size=(NUM_EDGES, 3)) * 0.2).astype(dtype))


@pytest.mark.parametrize("chunking", [dict(node_chunk=3), dict(node_chunk=2, max_neighbors=MAX_IN_DEGREE),
                                      dict(node_chunk=20), dict(edge_chunk=5), dict(edge_chunk=1000),
                                      dict(node_chunk=3, implementation="so2"),
                                      dict(edge_chunk=5, implementation="so2")])
def test_chunks_match_dense_reference(chunking):
    """Blocks of 3 receivers (the last one padded), 2 with a static K, one block larger than the
    graph; chunks of 5 edges (the last one padded), one chunk larger than the graph."""
    rng = _rng(7)
    attr_dense = rng.normal(size=(NUM_NODES, NUM_NODES, 3))
    mask = (np.arange(NUM_EDGES) % 3 != 2).astype("float64")
    graph = _graph(edge_mask=mask, edge_attr=attr_dense[RECEIVERS, SENDERS])
    features = _features()
    layer = _built(_att(num_heads=2, **chunking), features, graph)
    expected, _ = dense_attention(layer, features, graph["positions"],
                                  _adjacency(SENDERS, RECEIVERS, NUM_NODES, mask), attr_dense)
    _assert_close(layer(features, graph), expected, 1e-10)


@pytest.mark.parametrize("chunking", [dict(node_chunk=3), dict(edge_chunk=7), dict(implementation="so2"),
                                      dict(edge_chunk=7, implementation="so2")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunks_equivariant(dtype, chunking):
    graph = _graph(dtype, edge_mask=(np.arange(NUM_EDGES) % 5 != 2).astype(dtype))
    layer = _built(_att(dtype=dtype, num_heads=2, **chunking), _features(dtype=dtype), graph)

    def attention(features, positions):
        return layer(features, {**graph, "positions": positions})

    args = [_features(dtype=dtype, seed=7), graph["positions"]]
    assert_equivariant(attention, [IRREPS_IN, CARTESIAN_POINTS], IRREPS_OUT, args_in=args, dtype=dtype)


def _value_and_gradients(layer, features, graph, cotangent, mode):
    """Output and the gradients of ``sum(out * cotangent)`` w.r.t. features, positions and all weights."""
    def fn(x, positions):
        with tf.GradientTape() as tape:
            tape.watch([x, positions])
            out = layer(x, {**graph, "positions": positions})
            loss = tf.reduce_sum(out * cotangent)
        return [out] + [tf.convert_to_tensor(g) for g in tape.gradient(loss, [x, positions] + layer.trainable_weights)]

    if mode != "eager":
        fn = tf.function(fn, jit_compile=mode == "xla")
    return fn(tf.constant(features), tf.constant(graph["positions"]))


@pytest.mark.parametrize("chunking, mode",
                         [(dict(node_chunk=3), "eager"), (dict(node_chunk=2, max_neighbors=MAX_IN_DEGREE), "function"),
                          # receiver blocks under XLA with gradients: also
                          # test_node_chunk_degree_tiers_equal_unblocked_with_gradients[xla-12] (default run)
                          pytest.param(dict(node_chunk=3, max_neighbors=MAX_IN_DEGREE), "xla", marks=pytest.mark.slow),
                          (dict(edge_chunk=5), "eager"), (dict(edge_chunk=4), "function"), (dict(edge_chunk=6), "xla"),
                          (dict(edge_chunk=6, implementation="so2"), "xla")])
def test_chunks_equal_unchunked_with_gradients(chunking, mode):
    """Output and every gradient (features, positions, all weights) equal the unblocked layer's."""
    graph, features = _mask_attr_shifts_graph(), _features("2x0e+2x1o")
    kwargs = dict(irreps_in="2x0e+2x1o", irreps_out="2x0e+2x1o", irreps_sh=2, num_heads=2)
    plain = _built(_att(**kwargs), features, graph)
    blocked = _att(**kwargs, **chunking)
    blocked(features, graph)
    blocked.set_weights(plain.get_weights())
    cotangent = _rng(17).normal(size=(NUM_NODES, Irreps("2x0e+2x1o").dim))
    expected, got = (_value_and_gradients(layer, features, graph, cotangent, mode) for layer in (plain, blocked))
    assert len(got) == 3 + len(plain.trainable_weights)  # output, features, positions, weights
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.abs(_np(e)).max() > 1e-6, i  # no vacuous comparison
        _assert_close(g, e, 1e-12, f"output/gradient {i}")


@pytest.mark.parametrize("mode, tables", [("function", False), ("xla", True)])
def test_edge_chunks_gather_from_tables_under_xla_only(monkeypatch, mode, tables):
    """Under XLA the edge chunks gather their node rows from tables and add the rows' gradients in
    place (``map_blocks_by_degree``): ``tf.recompute_grad``'s dense ``[N, D]`` gradient per chunk
    made the backward pass quadratic in the graph size. Elsewhere they keep ``map_blocks``."""
    from tfequivariant.layers import se3_attention

    calls = []
    original = se3_attention.map_blocks_by_degree
    monkeypatch.setattr(se3_attention, "map_blocks_by_degree", lambda *a, **k: calls.append(1) or original(*a, **k))
    graph, features = _mask_attr_shifts_graph(), _features("2x0e+2x1o")
    layer = _built(_att(irreps_in="2x0e+2x1o", irreps_out="2x0e+2x1o", irreps_sh=2, num_heads=2, edge_chunk=5),
                   features, graph)
    cotangent = _rng(17).normal(size=(NUM_NODES, Irreps("2x0e+2x1o").dim))
    calls.clear()
    _value_and_gradients(layer, features, graph, cotangent, mode)
    assert len(calls) == (2 if tables else 0)  # keys and values


@pytest.mark.parametrize("implementation", ["per_edge", "so2"])
def test_xla_over_full_neighbour_lists_lose_no_edge(monkeypatch, implementation):
    """Under XLA the receiver blocks with ``max_neighbors`` below some in-degree leave the extra
    edges out (no assertion runs); the layer recomputes those receivers' attention over all their
    edges, so the output and every gradient equal the unblocked layer's (masked edge, edge
    attributes, shifts), and are wrong with that correction switched off."""
    from tfequivariant.layers import se3_attention

    graph, features = _mask_attr_shifts_graph(), _features("2x0e+2x1o")
    kwargs = dict(irreps_in="2x0e+2x1o", irreps_out="2x0e+2x1o", irreps_sh=2, num_heads=2,
                  implementation=implementation)
    plain = _built(_att(**kwargs), features, graph)
    small = _att(**kwargs, node_chunk=3, max_neighbors=MAX_IN_DEGREE - 2)
    small(features, {**graph, "senders": graph["senders"][:1], "receivers": graph["receivers"][:1],
                     **{k: graph[k][:1] for k in ("edge_mask", "edge_attr", "edge_shifts") if k in graph}})
    small.set_weights(plain.get_weights())
    cotangent = _rng(29).normal(size=(NUM_NODES, Irreps("2x0e+2x1o").dim))
    expected = _value_and_gradients(plain, features, graph, cotangent, "eager")
    got = _value_and_gradients(small, features, graph, cotangent, "xla")
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.abs(_np(e)).max() > 1e-6, i
        _assert_close(g, e, 1e-12, f"output/gradient {i}")
    monkeypatch.setattr(se3_attention, "in_xla_context", lambda: False)
    dropped = tf.function(lambda f, g: small(f, g), jit_compile=True)(tf.constant(features), graph)
    assert np.abs(_np(dropped) - _np(expected[0])).max() > 1e-3 * np.abs(_np(expected[0])).max()


@pytest.mark.parametrize("mode, max_neighbors", [("eager", None), ("function", None), ("xla", 12)])
def test_node_chunk_degree_tiers_equal_unblocked_with_gradients(mode, max_neighbors):
    """Receivers sorted by in-degree, blocks of 2 on the slots of their tier (K = 12: 12, 9, 6
    or 3 slots): output and every gradient equal the unblocked layer's, K known statically
    (XLA) or only at run time; the receivers with no edge get the self-interaction only."""
    graph = tier_graph()
    n = len(TIER_DEGREES)
    irreps = "2x0e+2x1o"
    features = _features(irreps, n=n)
    kwargs = dict(irreps_in=irreps, irreps_out=irreps, irreps_sh=2, num_heads=2, cutoff=10.0)
    plain = _built(_att(**kwargs), features, graph)
    blocked = _att(**kwargs, node_chunk=2, max_neighbors=max_neighbors)
    blocked(features, graph)
    blocked.set_weights(plain.get_weights())
    cotangent = _rng(19).normal(size=(n, Irreps(irreps).dim))
    expected, got = (_value_and_gradients(layer, features, graph, cotangent, mode) for layer in (plain, blocked))
    assert len(got) == 3 + len(plain.trainable_weights)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.abs(_np(e)).max() > 1e-6, i
        _assert_close(g, e, 1e-10, f"output/gradient {i}")


@pytest.mark.parametrize("chunking, mode",
                         [(dict(), "eager"), (dict(), "xla"),
                          # 70 s of XLA compilation; so2 receiver blocks under XLA with gradients are also
                          # test_xla_over_full_neighbour_lists_lose_no_edge[so2]'s (default run)
                          pytest.param(dict(node_chunk=3, max_neighbors=MAX_IN_DEGREE), "xla", marks=pytest.mark.slow),
                          (dict(edge_chunk=4), "function")])
def test_so2_equals_per_edge_with_gradients(chunking, mode):
    """implementation="so2" (with and without chunks): output and every gradient equal the
    per-edge tensor products' at 1e-10, edges along the y axis (the Euler frame's pole) included."""
    graph, features = _mask_attr_shifts_graph(), _features("2x0e+2x1o+2x2e")
    positions = graph["positions"].copy()
    positions[3] = positions[2] + [0.0, 1.1, 0.0]  # edge 2 -> 3 along +y, 3 -> 4 ... see SENDERS
    positions[0] = positions[4] - [0.0, 0.7, 0.0]  # edge 4 -> 0 along -y
    graph = {**graph, "positions": positions, "edge_shifts": np.zeros_like(graph["edge_shifts"])}
    kwargs = dict(irreps_in="2x0e+2x1o+2x2e", irreps_out="2x0e+2x1o+2x2e", irreps_sh=3, num_heads=2, cutoff=5.0)
    ref = _built(_att(**kwargs), features, graph)
    so2 = _att(**kwargs, implementation="so2", **chunking)
    so2(features, graph)
    so2.set_weights(ref.get_weights())
    cotangent = _rng(18).normal(size=(NUM_NODES, Irreps("2x0e+2x1o+2x2e").dim))
    expected, got = (_value_and_gradients(layer, features, graph, cotangent, mode) for layer in (ref, so2))
    assert len(got) == 3 + len(ref.trainable_weights)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.abs(_np(e)).max() > 1e-6, i
        _assert_close(g, e, 1e-10, f"output/gradient {i}")


def test_so2_config_round_trip_and_bad_implementation():
    layer = _att(implementation="so2", edge_chunk=4)
    clone = type(layer).from_config(layer.get_config())
    assert clone.implementation == "so2" and clone.edge_chunk == 4
    with pytest.raises(ValueError, match="implementation must be 'per_edge' or 'so2'. Received: implementation='tp'"):
        _att(implementation="tp")


@pytest.mark.parametrize("chunking", [dict(node_chunk=2), dict(edge_chunk=3)])
def test_chunks_with_unknown_numbers_of_nodes_and_edges(chunking):
    graph, features = _graph(), _features()
    plain = _built(_att(num_heads=2), features, graph)
    blocked = _att(num_heads=2, **chunking)
    blocked(features, graph)
    blocked.set_weights(plain.get_weights())
    spec = {"positions": tf.TensorSpec([None, 3], "float64"), "senders": tf.TensorSpec([None], "int32"),
            "receivers": tf.TensorSpec([None], "int32")}
    f = tf.function(blocked, input_signature=[tf.TensorSpec([None, Irreps(IRREPS_IN).dim], "float64"), spec])
    _assert_close(f(features, graph), _np(plain(features, graph)), 1e-12)
    sub = dict(positions=graph["positions"][:1], senders=np.zeros(0, "int32"), receivers=np.zeros(0, "int32"))
    _assert_close(f(features[:1], sub), _np(plain(features[:1], sub)), 1e-12)  # one node, no edges


@pytest.mark.parametrize("chunking", [dict(node_chunk=2), dict(edge_chunk=3)])
def test_chunks_without_edges_eager(chunking):
    """No edge at all (no chunk to run) in eager mode: only the self-interaction, right width."""
    graph, features = _graph(), _features()
    plain = _built(_att(num_heads=2), features, graph)
    chunked = _att(num_heads=2, **chunking)
    chunked(features, graph)
    chunked.set_weights(plain.get_weights())
    sub = dict(positions=graph["positions"][:2], senders=np.zeros(0, "int32"), receivers=np.zeros(0, "int32"))
    got = chunked(features[:2], sub)
    assert tuple(got.shape) == (2, Irreps(IRREPS_OUT).dim)
    _assert_close(got, _np(plain(features[:2], sub)), 1e-12)


@pytest.mark.parametrize("chunking", [dict(node_chunk=3), dict(edge_chunk=4)])
def test_chunks_second_order_gradients_are_not_supported(chunking):
    """Documented limit: the recomputed blocks/chunks have no gradient of their gradient."""
    graph, features = _graph(), _features()
    layer = _built(_att(**chunking), features, graph)
    positions = tf.constant(graph["positions"])
    match = "node blocks \\(node_chunk\\)" if "node_chunk" in chunking else "recompute_grad"
    with pytest.raises(NotImplementedError, match=match):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(positions)
                energy = tf.reduce_sum(layer(features, {**graph, "positions": positions})[:, :2] ** 2)
            forces = tf.convert_to_tensor(inner.gradient(energy, positions))
            loss = tf.reduce_sum(forces**2)
        outer.gradient(loss, layer.trainable_weights)


@pytest.mark.parametrize("chunking", [dict(node_chunk=2, max_neighbors=MAX_IN_DEGREE), dict(edge_chunk=3)])
def test_chunks_config_round_trip(chunking):
    graph, features = _graph(), _features()
    layer = _built(_att(num_heads=2, **chunking), features, graph)
    config = layer.get_config()
    assert {k: config[k] for k in chunking} == chunking
    clone = SE3Attention.from_config(config)
    clone(features, graph)
    clone.set_weights(layer.get_weights())
    assert {k: getattr(clone, k) for k in chunking} == chunking
    _assert_close(clone(features, graph), _np(layer(features, graph)), 1e-14)


@pytest.mark.parametrize("name", ["node_chunk", "max_neighbors", "edge_chunk"])
@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_bad_chunk_or_max_neighbors_raises(name, bad):
    with pytest.raises(ValueError, match=name):
        _att(**{name: bad})


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_in_degree_above_max_neighbors_raises_naming_it(mode):
    graph, features = _graph(), _features()
    layer = _att(node_chunk=2, max_neighbors=MAX_IN_DEGREE - 1)
    layer(features, {**graph, "senders": SENDERS[:1], "receivers": RECEIVERS[:1]})  # build
    call = layer if mode == "eager" else tf.function(lambda f, g: layer(f, g))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"SE3Attention: a node receives more edges than max_neighbors={MAX_IN_DEGREE - 1}"):
        call(features, graph)


def test_node_chunk_and_edge_chunk_together_raise():
    with pytest.raises(ValueError, match=r"node_chunk or edge_chunk, not both.*node_chunk=2, edge_chunk=8"):
        _att(node_chunk=2, edge_chunk=8)
