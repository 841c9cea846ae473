"""Spherical harmonics against scipy, their equivariance, edge cases and the layer.

The reference is ``scipy.special.sph_harm_y`` (complex, Condon–Shortley phase)
turned into the real "Wikipedia" form and evaluated at the permuted point
``(X, Y, Z) = (z, x, y)``: that is e3nn's ``Y(x, y, z)`` (DESIGN.md section 2).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import sph_harm_y

import tfequivariant as tfe
from tfequivariant import Irreps, spherical_harmonics
from tfequivariant.layers import SphericalHarmonics
from tfequivariant.testing import assert_equivariant

LMAX = 16


# --- independent reference ---------------------------------------------------
def reference_sh(l, xyz, normalization="integral"):
    """e3nn's real harmonics of degree ``l`` from scipy, float64, ``[..., 2l+1]``."""
    xyz = np.asarray(xyz, dtype=np.float64)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    X, Y, Z = z, x, y  # e3nn's (x, y, z) is the textbook (Y, Z, X)
    theta = np.arctan2(np.sqrt(X * X + Y * Y), Z)  # polar; arccos(Z/r) is inaccurate at the poles
    phi = np.arctan2(Y, X)  # azimuth
    comps = []
    for m in range(-l, l + 1):
        c = sph_harm_y(l, abs(m), theta, phi)
        if m < 0:
            comps.append(math.sqrt(2) * (-1) ** m * c.imag)
        elif m == 0:
            comps.append(c.real)
        else:
            comps.append(math.sqrt(2) * (-1) ** m * c.real)
    out = np.stack(comps, axis=-1)
    if normalization in ("component", "norm"):
        out = out * math.sqrt(4 * math.pi)
    if normalization == "norm":
        out = out / math.sqrt(2 * l + 1)
    return out


def random_vectors(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    # Include the axes (poles of both bases) and a few awkward directions.
    special = np.array(
        [
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [0, -1, 0],
            [-1, 0, 0],
            [0, 0, -1],
            [1, 1, 1],
            [1e-9, 1.0, 0.0],
            [0.0, -1.0, 1e-9],
        ],
        dtype=np.float64,
    )
    return np.concatenate([special, x], axis=0)


def rel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / max(1e-300, np.max(np.abs(want))))


# --- values against scipy ------------------------------------------------------
def test_reference_is_the_documented_real_form():
    # The reference itself: Y^1 must be +sqrt(3/4pi) (x, y, z)/r (D^1 = R in e3nn).
    x = random_vectors(20)
    want = math.sqrt(3 / (4 * math.pi)) * x / np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(reference_sh(1, x), want, atol=1e-14)
    np.testing.assert_allclose(reference_sh(0, x), 1 / math.sqrt(4 * math.pi), atol=1e-15)


@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
def test_matches_scipy_float64(normalization):
    x = random_vectors(200, seed=1)
    got = spherical_harmonics(list(range(LMAX + 1)), x, normalization=normalization)
    assert got.shape == (len(x), (LMAX + 1) ** 2)
    for l, s in zip(range(LMAX + 1), Irreps.spherical_harmonics(LMAX).slices()):
        err = rel_err(got[:, s], reference_sh(l, x, normalization))
        assert err < 1e-10, f"l={l} {normalization}: relative error {err:.2e}"


@pytest.mark.parametrize("l", range(LMAX + 1))
def test_single_degree_matches_scipy_float64(l):
    # One degree at a time goes through the same code as the stacked call.
    x = random_vectors(50, seed=2)
    got = spherical_harmonics(l, x, normalization="component")
    assert got.shape == (len(x), 2 * l + 1)
    assert rel_err(got, reference_sh(l, x, "component")) < 1e-10


def test_matches_scipy_float32():
    x = random_vectors(500, seed=3).astype(np.float32)
    got = spherical_harmonics(list(range(LMAX + 1)), x, normalization="component")
    assert got.dtype == np.float32
    for l, s in zip(range(LMAX + 1), Irreps.spherical_harmonics(LMAX).slices()):
        err = rel_err(got[:, s], reference_sh(l, x.astype(np.float64), "component"))
        assert err < 1e-4, f"l={l} float32: relative error {err:.2e}"


def test_normalizations_norms():
    x = random_vectors(30, seed=4)
    ls = list(range(LMAX + 1))
    comp = spherical_harmonics(ls, x, normalization="component")
    norm = spherical_harmonics(ls, x, normalization="norm")
    integ = spherical_harmonics(ls, x)  # the default
    for l, s in zip(ls, Irreps.spherical_harmonics(LMAX).slices()):
        np.testing.assert_allclose(np.sum(comp[:, s] ** 2, -1), 2 * l + 1, rtol=1e-10)
        np.testing.assert_allclose(np.linalg.norm(norm[:, s], axis=-1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(integ * math.sqrt(4 * math.pi), comp, atol=1e-10)


def test_known_values_component():
    # Hand-computed: Y^1 = sqrt(3) (x, y, z), Y^2_0 = sqrt(5) (y^2 - (x^2 + z^2)/2).
    y = spherical_harmonics([0, 1, 2], np.array([[0.0, 0.0, 2.0]]), normalization="component")
    np.testing.assert_allclose(
        y[0], [1, 0, 0, math.sqrt(3), 0, 0, -math.sqrt(5) / 2, 0, math.sqrt(15) / 2], atol=1e-12
    )
    y = spherical_harmonics(2, np.array([[0.0, 1.0, 0.0]]), normalization="component")
    np.testing.assert_allclose(y[0], [0, 0, math.sqrt(5), 0, 0], atol=1e-12)


def test_orthonormal_by_quadrature():
    # Gauss-Legendre in cos(theta) x uniform phi integrates the products of degree <= 12 exactly.
    lmax = 6
    u, w_u = np.polynomial.legendre.leggauss(12)
    n_phi = 26
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    U, P = np.meshgrid(u, phi, indexing="ij")
    s = np.sqrt(1 - U**2)
    # polar axis along e3nn's y, to exercise the real basis in its own frame
    pts = np.stack([s * np.sin(P), U, s * np.cos(P)], -1).reshape(-1, 3)
    w = (w_u[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None, :]).reshape(-1)
    Y = spherical_harmonics(list(range(lmax + 1)), pts)
    gram = np.einsum("n,ni,nj->ij", w, Y, Y)
    np.testing.assert_allclose(gram, np.eye((lmax + 1) ** 2), atol=1e-12)


# --- normalize=False and layouts ---------------------------------------------
@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
def test_unnormalized_is_homogeneous(normalization):
    x = random_vectors(40, seed=5) * 2.5
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    got = spherical_harmonics(list(range(LMAX + 1)), x, normalize=False, normalization=normalization)
    for l, s in zip(range(LMAX + 1), Irreps.spherical_harmonics(LMAX).slices()):
        want = r**l * reference_sh(l, x, normalization)
        assert rel_err(got[:, s], want) < 1e-10, f"l={l}"


def test_unnormalized_polynomials_low_degree():
    x = np.array([[0.3, -1.2, 2.0], [1.5, 0.5, -0.7]])
    got = spherical_harmonics([0, 1], x, normalize=False, normalization="component")
    np.testing.assert_allclose(got[:, 0], 1.0)
    np.testing.assert_allclose(got[:, 1:], math.sqrt(3) * x, atol=1e-14)


def test_layout_of_ls_and_irreps_with_multiplicities():
    x = random_vectors(10, seed=6)
    y0, y1, y2 = (reference_sh(l, x) for l in range(3))
    got = spherical_harmonics("2x0e+1x2e", x)
    np.testing.assert_allclose(got, np.concatenate([y0, y0, y2], -1), atol=1e-12)
    got = spherical_harmonics([2, 0, 1], x)  # order as asked, no sorting
    np.testing.assert_allclose(got, np.concatenate([y2, y0, y1], -1), atol=1e-12)
    got = spherical_harmonics(Irreps.spherical_harmonics(2), x)
    np.testing.assert_allclose(got, np.concatenate([y0, y1, y2], -1), atol=1e-12)
    got = spherical_harmonics("1x0e + 3x1o", x)
    np.testing.assert_allclose(got, np.concatenate([y0, y1, y1, y1], -1), atol=1e-12)
    assert spherical_harmonics([], x).shape == (len(x), 0)


def test_pseudovector_irreps_give_the_same_values():
    # e3nn: all-even irreps mean the input is a pseudovector (1e); same polynomials.
    x = random_vectors(10, seed=7)
    np.testing.assert_allclose(
        spherical_harmonics("0e+1e+2e+3e", x), spherical_harmonics([0, 1, 2, 3], x), atol=1e-14
    )


def test_batch_shapes():
    x = np.random.default_rng(8).normal(size=(2, 5, 3))
    got = spherical_harmonics([0, 3], x)
    assert got.shape == (2, 5, 8)
    np.testing.assert_allclose(got[..., 1:], reference_sh(3, x), atol=1e-12)
    got = spherical_harmonics(2, np.array([0.0, 1.0, 0.0]))  # a single vector
    assert got.shape == (5,)


# --- dtypes -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lmax", [2, 5])  # both code paths
def test_dtype_preserved(dtype, lmax):
    x = random_vectors(5).astype(dtype)
    out = spherical_harmonics(list(range(lmax + 1)), x)
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    out = spherical_harmonics(list(range(lmax + 1)), tf.constant(x))
    assert isinstance(out, tf.Tensor) and out.dtype == tf.as_dtype(dtype)
    out = spherical_harmonics(list(range(lmax + 1)), tf.constant(x), normalize=False)
    assert out.dtype == tf.as_dtype(dtype)


# --- edge cases ---------------------------------------------------------------
@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
@pytest.mark.parametrize("normalize", [True, False])
def test_zero_vector_gives_y0_and_zeros(normalize, normalization):
    ls = list(range(7))
    x = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    got = spherical_harmonics(ls, x, normalize=normalize, normalization=normalization)
    y0 = {"integral": 1 / math.sqrt(4 * math.pi), "component": 1.0, "norm": 1.0}[normalization]
    np.testing.assert_allclose(got[0, 0], y0, rtol=1e-12)
    np.testing.assert_array_equal(got[0, 1:], 0.0)
    np.testing.assert_allclose(got[1], reference_sh_stack(ls, x[1:], normalization)[0], atol=1e-12)


def reference_sh_stack(ls, x, normalization="integral"):
    return np.concatenate([reference_sh(l, x, normalization) for l in ls], -1)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("lmax", range(7))
def test_zero_vector_has_zero_gradient(lmax, dtype):
    """The direction of the zero vector is undefined: its gradient is 0 (not 1/tiny, which
    it was: 2e30 in float32), and the other rows' gradients are untouched."""
    def grad(rows):
        x = tf.constant(rows, dtype=dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = spherical_harmonics(list(range(lmax + 1)), x, normalization="component")
            loss = tf.reduce_sum(y * tf.cast(tf.range(1, y.shape[-1] + 1), dtype))
        return tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO).numpy()

    g = grad([[0.0, 0.0, 0.0], [0.3, -0.4, 1.2]])
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_array_equal(g[1], grad([[0.3, -0.4, 1.2]])[0])
    assert lmax == 0 or np.abs(g[1]).max() > 0.1


@pytest.mark.parametrize("normalize", [True, False])
def test_gradients_match_finite_differences(normalize):
    ls = list(range(7))
    x = random_vectors(5, seed=9)[-5:]
    w = np.random.default_rng(9).normal(size=(len(x), 49))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(spherical_harmonics(ls, xt, normalize=normalize) * w)
    grad = tape.gradient(loss, xt).numpy()
    # Central differences, all coordinates in one call (the harmonics act row by row).
    h = 1e-6
    step = h * np.eye(3)[None, :, :]  # [1, k, 3]
    plus = spherical_harmonics(ls, x[:, None, :] + step, normalize=normalize)
    minus = spherical_harmonics(ls, x[:, None, :] - step, normalize=normalize)
    numerical = np.einsum("nkd,nd->nk", plus - minus, w) / (2 * h)
    np.testing.assert_allclose(grad, numerical, atol=1e-6 * np.abs(numerical).max())


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("lmax", [2, 6])
def test_nan_input_propagates(lmax, normalize):
    x = np.array([[np.nan, 0.5, 1.0], [np.nan] * 3, [0.1, 0.2, 0.3]])
    got = spherical_harmonics(list(range(lmax + 1)), x, normalize=normalize)
    # Y^0 is a constant; every other component that depends on the NaN must show it.
    # Normalizing mixes all coordinates; the raw polynomial Y^1_y = sqrt(3) y does not.
    bad = got[0, 1:] if normalize else got[1, 1:]
    assert np.all(np.isnan(bad)), got
    assert np.any(np.isnan(got[0, 1:]))
    assert np.all(np.isfinite(got[2]))


def test_tiny_vectors_keep_their_direction():
    d = np.array([[0.3, -0.5, 0.8]])
    want = spherical_harmonics(list(range(7)), d)
    np.testing.assert_allclose(spherical_harmonics(list(range(7)), 1e-100 * d), want, atol=1e-12)
    got32 = spherical_harmonics(list(range(7)), (1e-15 * d).astype(np.float32))
    np.testing.assert_allclose(got32, want, atol=1e-5)


def test_huge_vectors_keep_their_direction():
    d = np.array([[0.3, -0.5, 0.8]])
    want = spherical_harmonics([4], d)
    got = spherical_harmonics([4], (1e20 * d).astype(np.float32))
    np.testing.assert_allclose(got, want, atol=1e-5)


# --- errors -------------------------------------------------------------------
def test_integer_input_raises():
    with pytest.raises(ValueError, match="dtype"):
        spherical_harmonics(2, np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match="dtype"):
        spherical_harmonics(2, tf.constant([[1, 2, 3]]))


@pytest.mark.parametrize("shape", [(4, 2), (4, 4), (3,) * 0])
def test_wrong_last_dim_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        spherical_harmonics(1, np.ones(shape))


def test_bad_normalization_raises():
    with pytest.raises(ValueError, match="normalization.*'unit'"):
        spherical_harmonics(1, np.ones((2, 3)), normalization="unit")


@pytest.mark.parametrize(
    "l,fragment",
    [
        (-1, "l=-1"),
        ([0, -2], "[0, -2]"),
        ("1x", "'1x'"),
        ("1o+2o", "1x2o"),  # mixed parities are not the harmonics of one input
        (True, "l=True"),
        (1.5, "l=1.5"),
        ([1, True], "[1, True]"),
        (None, "l=None"),
    ],
)
def test_bad_l_raises(l, fragment):
    with pytest.raises(ValueError) as info:
        spherical_harmonics(l, np.ones((2, 3)))
    assert fragment in str(info.value)


# --- graph modes ----------------------------------------------------------------
def _reference_real_sh(ls, x, normalize, normalization):
    """scipy reference for any rows, zero vectors included (Y^0 and zeros)."""
    r = np.linalg.norm(x, axis=-1, keepdims=True)
    unit = np.where(r > 0, x / np.where(r > 0, r, 1), [0.0, 0.0, 1.0])
    blocks = []
    for l in ls:
        y = reference_sh(l, unit, normalization)
        if l > 0:
            y = np.where(r > 0, y * (1.0 if normalize else r**l), 0.0)
        blocks.append(y)
    return np.concatenate(blocks, -1)


# Under XLA, outputs of at most 16 columns are assembled from one-hot rows and
# wider ones are stacked; both layouts, both code paths (l <= 2 hand-written,
# recursion above), repeated and unsorted degrees and constant columns.
_LAYOUT_CASES = [[0, 2, 5], [0, 1, 2], [0, 1, 2, 3], [3], [2, 0, 2], [0], [1], [0, 0], list(range(7))]


@pytest.mark.parametrize("ls", _LAYOUT_CASES, ids=str)
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("dtype,atol", [(tf.float32, 1e-5), (tf.float64, 1e-12)])
def test_tf_function_and_xla_equal_eager(ls, jit_compile, dtype, atol):
    x = tf.constant(random_vectors(20, seed=10), dtype=dtype)
    x = tf.concat([x, tf.zeros((1, 3), dtype)], 0)  # the zero-vector branch too
    for normalize, normalization in [(True, "component"), (True, "integral"), (False, "norm")]:
        fn = tf.function(
            lambda v: spherical_harmonics(ls, v, normalize=normalize, normalization=normalization),
            jit_compile=jit_compile,
            input_signature=[tf.TensorSpec([None, 3], dtype)],
        )
        got = fn(x)
        assert got.dtype == dtype
        want = _reference_real_sh(ls, x.numpy().astype(np.float64), normalize, normalization)
        np.testing.assert_allclose(got.numpy(), want, atol=atol * max(1.0, np.abs(want).max()))


def test_xla_layout_is_used_and_keeps_batch_dimensions():
    import importlib

    sh = importlib.import_module("tfequivariant.spherical_harmonics")
    seen = []

    def fn(v):
        seen.append(sh.in_xla_context())
        return spherical_harmonics([0, 1, 2], v, normalization="component")

    x = tf.constant(random_vectors(12, seed=3)[:12].reshape(2, 6, 3), tf.float32)
    got = tf.function(fn, jit_compile=True)(x)
    tf.function(fn)(x)
    assert seen == [True, False]
    assert got.shape == (2, 6, 9)
    np.testing.assert_allclose(got.numpy(), spherical_harmonics([0, 1, 2], x, normalization="component").numpy(),
                               atol=1e-5)


@pytest.mark.parametrize(
    "ls,path",
    [([0, 1, 2], "_evaluate_broadcast"), ([2, 0, 2], "_evaluate_broadcast"), ([1], "_evaluate_broadcast"),
     ([3], "_evaluate_by_column"), ([0, 1, 2, 3], "_evaluate_by_column"), ([6, 4, 4, 0], "_evaluate_by_column"),
     (list(range(7)), "_evaluate_by_column")],
    ids=str,
)
@pytest.mark.parametrize("normalization", ["component", "integral", "norm"])
def test_xla_fast_paths_are_used_and_match_reference(ls, path, normalization, monkeypatch):
    # Under XLA, normalized harmonics of degree <= 2 are evaluated on coordinates
    # broadcast to the output width, degrees 3..6 by the per-column formula
    # (Horner in Z, powers of X + iY by squaring). The path must be taken, and
    # agree with the reference on ordinary, zero, tiny, huge and NaN vectors, in
    # float32 and float64.
    import importlib

    sh = importlib.import_module("tfequivariant.spherical_harmonics")
    calls = []
    original = getattr(sh, path)
    monkeypatch.setattr(sh, path, lambda *a: calls.append(a[3]) or original(*a))
    d = random_vectors(40, seed=21)
    special = np.array([[0.0, 0.0, 0.0], [1e-30, -2e-30, 3e-30], [3e30, 1e30, -2e30], [0.0, -1.0, 0.0], [0.0, 2.0, 0.0]])
    for dtype, atol in [(tf.float32, 2e-5), (tf.float64, 1e-12)]:
        x = np.concatenate([d, special]).astype(dtype.as_numpy_dtype)
        fn = tf.function(lambda v: spherical_harmonics(ls, v, normalization=normalization), jit_compile=True)
        got = fn(tf.constant(x)).numpy()
        want = _reference_real_sh(ls, x.astype(np.float64), True, normalization)
        np.testing.assert_allclose(got, want, atol=atol * max(1.0, np.abs(want).max()))
        nan = tf.constant(np.array([[np.nan, 0.5, 1.0], [0.1, 0.2, 0.3]], dtype.as_numpy_dtype))
        got, want = fn(nan).numpy(), spherical_harmonics(ls, nan, normalization=normalization).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # Y^0 stays a constant
        assert np.isnan(got[0]).sum() == got.shape[1] - ls.count(0)
    assert calls == [tuple(ls)] * 4  # traced once per dtype and input shape


# --- equivariance: Y(R x) = D(R) Y(x) ------------------------------------------
def test_equivariance_float64_all_degrees():
    irreps = Irreps.spherical_harmonics(LMAX)
    x = random_vectors(50, seed=11)
    Y = spherical_harmonics(irreps, x)
    for seed in range(3):
        R = tfe.rand_matrix(seed=seed)
        D = irreps.D_from_matrix(R)
        err = np.abs(spherical_harmonics(irreps, x @ R.T) - Y @ D.T).max()
        assert err <= 1e-10, f"seed {seed}: {err:.2e}"


def test_equivariance_float32_all_degrees():
    irreps = Irreps.spherical_harmonics(LMAX)
    x = random_vectors(50, seed=12)
    Y = spherical_harmonics(irreps, x.astype(np.float32), normalization="component")
    R = tfe.rand_matrix(seed=3)
    D = irreps.D_from_matrix(R)
    Yr = spherical_harmonics(irreps, (x @ R.T).astype(np.float32), normalization="component")
    scale = np.abs(Y).max()
    for (mul, ir), s in zip(irreps, irreps.slices()):
        err = np.abs(Yr[:, s] - Y[:, s].astype(np.float64) @ D[s, s].T).max() / scale
        assert err <= 1e-4, f"l={ir.l}: {err:.2e}"


@pytest.mark.parametrize("p", [-1, 1])
def test_equivariance_with_parity(p):
    # Harmonics of a vector (1o) have parity (-1)^l; of a pseudovector (1e), +1.
    irreps_out = Irreps.spherical_harmonics(5, p=p)
    irreps_in = "1o" if p == -1 else "1e"
    assert_equivariant(lambda v: spherical_harmonics(irreps_out, v), irreps_in, irreps_out)
    assert_equivariant(
        lambda v: spherical_harmonics(irreps_out, v), irreps_in, irreps_out, dtype="float32"
    )


def test_wrong_parity_is_caught():
    # The vector's harmonics declared with the pseudovector parity must fail.
    with pytest.raises(AssertionError):
        assert_equivariant(lambda v: spherical_harmonics([0, 1, 2], v), "1o", "0e+1e+2e")


# --- the SphericalHarmonics layer ----------------------------------------------
def test_layer_matches_function_and_reference():
    layer = SphericalHarmonics(3, normalization="component")
    x = random_vectors(8, seed=13).astype(np.float32)
    y = layer(x)
    assert y.shape == (len(x), 16)
    assert isinstance(layer.irreps_out, Irreps) and str(layer.irreps_out) == "1x0e+1x1o+1x2e+1x3o"
    np.testing.assert_allclose(
        np.asarray(y), reference_sh_stack(range(4), x.astype(np.float64), "component"), atol=1e-5
    )
    assert layer.compute_output_shape((None, 7, 3)) == (None, 7, 16)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(irreps_out=2),
        dict(irreps_out="2x0e+1x2e", normalize=False, normalization="norm"),
        dict(irreps_out="0e+1e+2e", normalization="integral", name="sh"),
    ],
)
def test_layer_config_round_trip(kwargs):
    layer = SphericalHarmonics(**kwargs)
    config = layer.get_config()
    assert isinstance(config["irreps_out"], str)
    clone = SphericalHarmonics.from_config(config)
    assert clone.get_config() == config
    assert clone.irreps_out == layer.irreps_out
    x = random_vectors(6, seed=14).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(layer(x)))


def test_layer_keras_save_and_reload(tmp_path):
    inputs = keras.Input((3,))
    outputs = SphericalHarmonics("1x0e+2x1o+1x4e", normalization="norm")(inputs)
    model = keras.Model(inputs, outputs)
    x = random_vectors(12, seed=15).astype(np.float32)
    want = model.predict(x, verbose=0)
    path = tmp_path / "sh.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), want)
    assert reloaded.layers[-1].get_config() == model.layers[-1].get_config()


def test_layer_symbolic_call():
    inputs = keras.Input((5, 3))
    out = SphericalHarmonics(2)(inputs)
    assert tuple(out.shape) == (None, 5, 9)


def test_layer_xla_equals_eager():
    layer = SphericalHarmonics(4, normalization="component")
    x = tf.constant(random_vectors(30, seed=16), tf.float32)
    eager = layer(x)
    xla = tf.function(lambda v: layer(v), jit_compile=True)(x)
    np.testing.assert_allclose(xla.numpy(), eager.numpy(), atol=1e-5)


def test_layer_float64():
    layer = SphericalHarmonics(6, dtype="float64")
    x = random_vectors(10, seed=17)
    y = layer(tf.constant(x))
    assert y.dtype == tf.float64
    np.testing.assert_allclose(y.numpy(), reference_sh_stack(range(7), x), atol=1e-12)
    assert layer(tf.constant(x, tf.float32)).dtype == tf.float64  # inputs are cast


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(irreps_out=-1), "irreps_out"),
        (dict(irreps_out="1o+2o"), "irreps_out"),
        (dict(irreps_out="1x"), "irreps_out"),
        (dict(irreps_out=2, normalization="unit"), "normalization"),
    ],
)
def test_layer_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SphericalHarmonics(**kwargs)


# --- the closed-form gradient (custom VJP) ---------------------------------------
_VJP_CASES = [(1,), (2,), (3,), (0, 1, 2, 3), (6,), (2, 0, 2, 5), tuple(range(9))]


@pytest.mark.parametrize("ls", _VJP_CASES, ids=str)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
def test_gradient_equals_autodiff_of_the_polynomials(ls, normalize, normalization):
    import importlib

    sh = importlib.import_module("tfequivariant.spherical_harmonics")
    x = tf.constant(random_vectors(6, seed=4).reshape(-1, 1, 3) * 1.7)  # extra batch dimension
    g = tf.constant(np.random.default_rng(5).normal(size=x.shape[:-1] + (sum(2 * l + 1 for l in ls),)))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        reference = sh._evaluate(x, ls, normalize, normalization)  # differentiated op by op
        y = spherical_harmonics(ls, x, normalize=normalize, normalization=normalization)
    want = tape.gradient(reference, x, output_gradients=g)
    got = tape.gradient(y, x, output_gradients=g)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-12 * max(1.0, np.abs(want.numpy()).max()))


@pytest.mark.parametrize("normalize", [True, False])
def test_second_derivatives_match_finite_differences(normalize):
    # Forces-style training differentiates the gradient again.
    ls = list(range(5))
    x0 = random_vectors(4, seed=12)[-4:]
    w = np.random.default_rng(12).normal(size=(len(x0), 25))
    c = np.random.default_rng(13).normal(size=x0.shape)

    def directional(x):  # c . d/dx sum(w * Y(x))
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(spherical_harmonics(ls, xt, normalize=normalize) * w)
        return tf.reduce_sum(tape.gradient(loss, xt) * c)

    xt = tf.constant(x0)
    with tf.GradientTape() as outer:
        outer.watch(xt)
        with tf.GradientTape() as inner:
            inner.watch(xt)
            loss = tf.reduce_sum(spherical_harmonics(ls, xt, normalize=normalize) * w)
        d = tf.reduce_sum(inner.gradient(loss, xt) * c)
    hvp = outer.gradient(d, xt).numpy()
    h = 1e-6
    numerical = np.zeros_like(x0)
    for n in range(len(x0)):
        for a in range(3):
            e = np.zeros_like(x0)
            e[n, a] = h
            numerical[n, a] = (directional(x0 + e) - directional(x0 - e)) / (2 * h)
    np.testing.assert_allclose(hvp, numerical, atol=1e-6 * np.abs(numerical).max())


@pytest.mark.parametrize("ls", [[0, 1, 2], [0, 1, 2, 3], list(range(7))], ids=str)
def test_xla_gradient_equals_eager(ls):
    x = tf.constant(np.concatenate([random_vectors(30, seed=6), np.zeros((1, 3))]), tf.float32)

    def fb(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            s = tf.reduce_sum(tf.sin(spherical_harmonics(ls, v, normalization="component")))
        return tape.gradient(s, v)

    eager = fb(x).numpy()
    assert np.all(np.isfinite(eager))
    np.testing.assert_allclose(tf.function(fb, jit_compile=True)(x).numpy(), eager, atol=1e-4)
