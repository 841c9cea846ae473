"""Rotations, Wigner D and Wigner 3j against independent references.

References written here, not taken from the package:

* rotation matrices about x, y, z written out by hand;
* the closed-form Wigner small-d formula (sum over s), assembled into the
  complex ``D = exp(-i m' alpha) d(beta) exp(-i m gamma)`` (Z-Y-Z);
* exact Clebsch–Gordan coefficients from ``sympy.physics.wigner``;
* the complex -> real change of basis of the "Wikipedia" real harmonics.

e3nn's real basis index m is the textbook real index m once the point is
permuted ``(X, Y, Z) = (z, x, y)``; that cyclic permutation keeps orientation,
so e3nn's ``Ry(a) Rx(b) Ry(c)`` is the textbook ``Rz(a) Ry(b) Rz(c)`` with the
same angles.
"""

import functools
import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from sympy.physics.wigner import clebsch_gordan

import tfequivariant as tfe
from tfequivariant import Irrep, Irreps, so3

LMAX_D = 16
LMAX_3J = 6


# --- independent references ------------------------------------------------------
def rx(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def ry(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rz(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def real_from_complex(l):
    """``U`` with ``Y_real = U @ Y_complex`` (rows: real m, columns: complex m), Wikipedia form.

    ``Y_{l,m<0} = i/sqrt2 (Y_l^m - (-1)^m Y_l^{-m})``, ``Y_{l,0} = Y_l^0``,
    ``Y_{l,m>0} = 1/sqrt2 (Y_l^{-m} + (-1)^m Y_l^m)``.
    """
    u = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    s = 1 / math.sqrt(2)
    for m in range(-l, l + 1):
        if m < 0:
            u[l + m, l + m] = 1j * s
            u[l + m, l - m] = -1j * (-1) ** m * s
        elif m == 0:
            u[l, l] = 1
        else:
            u[l + m, l - m] = s
            u[l + m, l + m] = (-1) ** m * s
    return u


def small_d(l, beta):
    """Wigner small d^l_{m'm}(beta), closed form (Wikipedia), rows m', columns m."""
    f = math.factorial
    c, s = math.cos(beta / 2), math.sin(beta / 2)
    d = np.zeros((2 * l + 1, 2 * l + 1))
    for mp in range(-l, l + 1):
        for m in range(-l, l + 1):
            total = 0.0
            for k in range(0, 2 * l + 1):
                if l + m - k < 0 or mp - m + k < 0 or l - mp - k < 0:
                    continue
                total += (
                    (-1) ** (mp - m + k)
                    / (f(l + m - k) * f(k) * f(mp - m + k) * f(l - mp - k))
                    * c ** (2 * l + m - mp - 2 * k)
                    * s ** (mp - m + 2 * k)
                )
            d[l + mp, l + m] = total * math.sqrt(f(l + mp) * f(l - mp) * f(l + m) * f(l - m))
    return d


def complex_D(l, alpha, beta, gamma):
    """``<l m'| Rz(alpha) Ry(beta) Rz(gamma) |l m>``."""
    m = np.arange(-l, l + 1)
    return np.exp(-1j * m * alpha)[:, None] * small_d(l, beta) * np.exp(-1j * m * gamma)[None, :]


def reference_real_D(l, alpha, beta, gamma):
    """Real D acting on harmonic *values*: ``Y(R x) = D Y(x)``.

    For complex harmonics ``Y(R^-1 x) = D^T Y(x)`` (Y_l^m(R^-1 r) = sum_m' Y_l^m'(r) D_m'm),
    so ``Y(R x) = conj(D) Y(x)`` and, with ``Y_real = U Y``, ``D_real = U conj(D) U^H``.
    The angles map one to one (fixed from l = 1, see test_reference_D_mapping_from_l1).
    """
    U = real_from_complex(l)
    D = U @ np.conj(complex_D(l, alpha, beta, gamma)) @ np.conj(U).T
    assert np.abs(D.imag).max() < 1e-12
    return D.real


@functools.lru_cache(maxsize=None)
def sympy_cg(l1, l2, l3):
    """``C[m1, m2, m3] = <l1 m1 l2 m2 | l3 m3>``, exact (sympy), as float64."""
    C = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    for m1 in range(-l1, l1 + 1):
        for m2 in range(-l2, l2 + 1):
            m3 = m1 + m2
            if abs(m3) <= l3:
                C[l1 + m1, l2 + m2, l3 + m3] = float(clebsch_gordan(l1, l2, l3, m1, m2, m3))
    return C


def reference_3j_complex(l1, l2, l3):
    """The CG tensor in the real basis: invariant under ``D_real^l1 x D_real^l2 x D_real^l3``.

    ``C`` is invariant under ``D1 x D2 x conj(D3)``; ``D_real = conj(U) D U^T`` so the
    real-basis tensor is ``conj(U1) x conj(U2) x U3`` applied to C. Complex up to a
    global phase.
    """
    U1, U2, U3 = (real_from_complex(l) for l in (l1, l2, l3))
    return np.einsum("am,bn,ck,mnk->abc", np.conj(U1), np.conj(U2), U3, sympy_cg(l1, l2, l3))


def real_up_to_phase(W):
    """Divide out the phase of the largest entry; return the real tensor, norm 1."""
    big = W.flat[np.argmax(np.abs(W))]
    W = W / (big / abs(big))
    assert np.abs(W.imag).max() < 1e-12
    return W.real / np.linalg.norm(W.real)


def triples(lmax):
    for l1, l2, l3 in itertools.product(range(lmax + 1), repeat=3):
        if abs(l1 - l2) <= l3 <= l1 + l2:
            yield l1, l2, l3


def levi_civita():
    eps = np.zeros((3, 3, 3))
    for (i, j, k), sign in [((0, 1, 2), 1), ((1, 2, 0), 1), ((2, 0, 1), 1)]:
        eps[i, j, k] = sign
        eps[j, i, k] = -sign
    return eps


# --- rotation matrices ----------------------------------------------------------------
def test_axis_rotations_written_out():
    for t in (0.0, 0.3, -1.7, math.pi):
        np.testing.assert_allclose(so3.matrix_x(t), rx(t), atol=1e-15)
        np.testing.assert_allclose(so3.matrix_y(t), ry(t), atol=1e-15)
        np.testing.assert_allclose(so3.matrix_z(t), rz(t), atol=1e-15)


def test_angles_to_matrix_is_y_x_y():
    a, b, c = 0.4, 1.3, -2.2
    np.testing.assert_allclose(tfe.angles_to_matrix(a, b, c), ry(a) @ rx(b) @ ry(c), atol=1e-15)
    rng = np.random.default_rng(0)
    abc = rng.uniform(-3, 3, size=(3, 7))
    got = tfe.angles_to_matrix(*abc)
    assert got.shape == (7, 3, 3)
    for i in range(7):
        np.testing.assert_allclose(got[i], ry(abc[0, i]) @ rx(abc[1, i]) @ ry(abc[2, i]), atol=1e-14)


def test_matrix_to_angles_inverts_angles_to_matrix():
    rng = np.random.default_rng(1)
    a = rng.uniform(-math.pi, math.pi, 50)
    b = rng.uniform(0.01, math.pi - 0.01, 50)
    c = rng.uniform(-math.pi, math.pi, 50)
    a2, b2, c2 = tfe.matrix_to_angles(tfe.angles_to_matrix(a, b, c))
    # Angles in (-pi, pi] x (0, pi) x (-pi, pi] are unique: recovered exactly.
    np.testing.assert_allclose(np.stack([a2, b2, c2]), np.stack([a, b, c]), atol=1e-10)
    # Random rotations and the degenerate beta = 0, pi: the matrix is recovered.
    R = np.concatenate(
        [
            tfe.rand_matrix(20, seed=2),
            tfe.angles_to_matrix(np.array([0.3, -1.0]), np.array([0.0, math.pi]), np.array([0.5, 2.0])),
        ]
    )
    np.testing.assert_allclose(tfe.angles_to_matrix(*tfe.matrix_to_angles(R)), R, atol=1e-10)


def test_matrix_to_angles_rejects_improper_and_bad_shapes():
    with pytest.raises(ValueError, match="det"):
        tfe.matrix_to_angles(-np.eye(3))
    with pytest.raises(ValueError, match="shape"):
        tfe.matrix_to_angles(np.eye(2))


def test_rand_matrix_is_a_seeded_rotation():
    R = tfe.rand_matrix(1000, seed=3)
    assert R.shape == (1000, 3, 3) and R.dtype == np.float64
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_array_equal(tfe.rand_matrix(1000, seed=3), R)
    assert not np.allclose(tfe.rand_matrix(1000, seed=4), R)
    # Haar measure: E[R] = 0 and E[R_ij^2] = 1/3.
    assert np.abs(R.mean(0)).max() < 0.1
    np.testing.assert_allclose((R**2).mean(0), 1 / 3, atol=0.05)
    assert tfe.rand_matrix(seed=0).shape == (3, 3)
    assert tfe.rand_matrix(2, seed=0, dtype=np.float32).dtype == np.float32


def test_rand_angles():
    a, b, c = tfe.rand_angles(10, seed=5)
    assert a.shape == b.shape == c.shape == (10,)
    assert np.all((b >= 0) & (b <= math.pi))
    np.testing.assert_allclose(tfe.angles_to_matrix(a, b, c), tfe.rand_matrix(10, seed=5), atol=1e-12)
    assert tfe.rand_angles(2, seed=5, dtype=np.float32)[0].dtype == np.float32


# --- Wigner D: the closed form -------------------------------------------------
def test_reference_D_mapping_from_l1():
    # The one place the angle convention of the reference is fixed: D^1 is the rotation
    # matrix Ry(a) Rx(b) Ry(c) in e3nn's (x, y, z) basis.
    rng = np.random.default_rng(6)
    for a, b, c in rng.uniform(-3, 3, size=(10, 3)):
        np.testing.assert_allclose(reference_real_D(1, a, b, c), ry(a) @ rx(b) @ ry(c), atol=1e-14)
        np.testing.assert_allclose(so3.wigner_D(1, a, b, c), ry(a) @ rx(b) @ ry(c), atol=1e-14)


@pytest.mark.parametrize("l", range(LMAX_D + 1))
def test_wigner_D_matches_closed_form(l):
    rng = np.random.default_rng(7 + l)
    angles = list(rng.uniform(-3, 3, size=(6, 3))) + [(0.0, 0.0, 0.0), (0.0, math.pi, 0.0), (1.0, 0.0, -2.0)]
    for a, b, c in angles:
        # The alternating sum of the closed form loses ~1e-12 by l = 16.
        np.testing.assert_allclose(so3.wigner_D(l, a, b, c), reference_real_D(l, a, b, c), atol=1e-11)


# --- Wigner D: group properties ----------------------------------------------------
def test_wigner_D_is_a_representation():
    R1, R2 = tfe.rand_matrix(2, seed=8)
    angles = [tfe.matrix_to_angles(R) for R in (R1, R2, R1 @ R2)]
    for l in range(LMAX_D + 1):
        D1, D2, D12 = (so3.wigner_D(l, *abc) for abc in angles)
        np.testing.assert_allclose(D12, D1 @ D2, atol=1e-10, err_msg=f"l={l}")
        np.testing.assert_allclose(D1 @ D1.T, np.eye(2 * l + 1), atol=1e-10, err_msg=f"l={l}")
        np.testing.assert_allclose(np.linalg.det(D1), 1.0, atol=1e-9)
        np.testing.assert_allclose(so3.wigner_D(l, 0.0, 0.0, 0.0), np.eye(2 * l + 1), atol=1e-12)
        # inverse: D(R^-1) = D(R)^T
        np.testing.assert_allclose(so3.wigner_D(l, *tfe.matrix_to_angles(R1.T)), D1.T, atol=1e-10)


def test_wigner_D_of_matrix_is_angles_to_matrix():
    a, b, c = tfe.rand_angles(20, seed=9)
    np.testing.assert_allclose(so3.wigner_D(1, a, b, c), tfe.angles_to_matrix(a, b, c), atol=1e-13)


def test_wigner_D_broadcasts():
    D = so3.wigner_D(2, np.zeros((4, 1)), np.array([0.1, 0.2, 0.3]), 0.5)
    assert D.shape == (4, 3, 5, 5)
    np.testing.assert_allclose(D[2, 1], so3.wigner_D(2, 0.0, 0.2, 0.5), atol=1e-14)


def test_generators_are_the_derivatives_of_the_rotations():
    # so3_generators(1)[i] = d/dt R_axis(t) at 0, for axes x, y, z.
    X = so3.so3_generators(1)
    h = 1e-6
    for gen, rot in zip(X, (rx, ry, rz)):
        np.testing.assert_allclose(gen, (rot(h) - rot(-h)) / (2 * h), atol=1e-9)
    for l in range(5):
        X = so3.so3_generators(l)
        np.testing.assert_allclose(X, -np.swapaxes(X, -1, -2), atol=1e-12)
        # [X_x, X_y] = X_z, cyclic
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            np.testing.assert_allclose(X[i] @ X[j] - X[j] @ X[i], X[k], atol=1e-12)


@pytest.mark.parametrize(
    "make,dtype",
    [
        (lambda a: np.float32(a), np.float32),
        (lambda a: np.float64(a), np.float64),
        (lambda a: float(a), np.float64),
        (lambda a: tf.constant(a, tf.float32), np.float32),
        (lambda a: tf.constant(a, tf.float64), np.float64),
    ],
)
def test_wigner_D_dtype(make, dtype):
    D = so3.wigner_D(3, make(0.1), make(0.2), make(0.3))
    assert D.dtype == dtype
    np.testing.assert_allclose(D, reference_real_D(3, 0.1, 0.2, 0.3), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_D_from_matrix_dtype(dtype):
    irreps = Irreps("2x0e+1o+2e")
    R = tfe.rand_matrix(seed=10)
    D = irreps.D_from_matrix(R.astype(dtype))
    assert D.dtype == dtype
    np.testing.assert_allclose(D, irreps.D_from_matrix(R), atol=1e-5)
    assert Irrep("1o").D_from_matrix(R.astype(dtype)).dtype == dtype


def test_wigner_D_bad_l():
    for l in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="l"):
            so3.wigner_D(l, 0.0, 0.0, 0.0)


# --- D_from_matrix: block structure and parity ---------------------------------------
def test_D_from_matrix_inversion_gives_parities():
    D = Irreps("1o+1e+2o").D_from_matrix(-np.eye(3))
    want = np.diag([-1.0] * 3 + [1.0] * 3 + [-1.0] * 5)
    np.testing.assert_allclose(D, want, atol=1e-12)
    D = Irreps("0e+0o+3x1y").D_from_matrix(-np.eye(3))
    np.testing.assert_allclose(D, np.diag([1.0, -1.0] + [-1.0] * 9), atol=1e-12)


def test_D_from_matrix_blocks_and_improper_rotations():
    irreps = Irreps("2x0e+1x1o+1x1e+2x2o+1x3e")
    R = tfe.rand_matrix(seed=11)
    a, b, c = tfe.matrix_to_angles(R)
    for sign in (1, -1):
        D = irreps.D_from_matrix(sign * R)
        assert D.shape == (irreps.dim, irreps.dim)
        want = np.zeros_like(D)
        start = 0
        for mul, ir in irreps:
            block = reference_real_D(ir.l, a, b, c) * (ir.p if sign == -1 else 1)
            for _ in range(mul):
                want[start : start + ir.dim, start : start + ir.dim] = block
                start += ir.dim
        np.testing.assert_allclose(D, want, atol=1e-12)
    # For a vector, D(R) = R even for improper R; for a pseudovector det(R) R.
    np.testing.assert_allclose(Irreps("1o").D_from_matrix(-R), -R, atol=1e-12)
    np.testing.assert_allclose(Irreps("1e").D_from_matrix(-R), R, atol=1e-12)
    mirror = np.diag([1.0, 1.0, -1.0])
    np.testing.assert_allclose(Irreps("1o").D_from_matrix(mirror), mirror, atol=1e-12)
    np.testing.assert_allclose(Irreps("1e").D_from_matrix(mirror), -mirror, atol=1e-12)


def test_D_from_matrix_batched_and_representation():
    irreps = Irreps("0o+1e+2o+3y")
    R = tfe.rand_matrix(4, seed=12)
    R[1::2] *= -1  # half improper
    D = irreps.D_from_matrix(R)
    assert D.shape == (4, irreps.dim, irreps.dim)
    np.testing.assert_allclose(D[0] @ D[1], irreps.D_from_matrix(R[0] @ R[1]), atol=1e-10)
    np.testing.assert_allclose(D[1] @ D[3], irreps.D_from_matrix(R[1] @ R[3]), atol=1e-10)


def test_D_from_angles_parity_power():
    irreps = Irreps("1o+2e")
    D0 = irreps.D_from_angles(0.1, 0.2, 0.3)
    D1 = irreps.D_from_angles(0.1, 0.2, 0.3, k=1)
    np.testing.assert_allclose(D1[:3, :3], -D0[:3, :3], atol=1e-15)
    np.testing.assert_allclose(D1[3:, 3:], D0[3:, 3:], atol=1e-15)
    np.testing.assert_allclose(Irrep("1o").D_from_angles(0.1, 0.2, 0.3, k=1), -D0[:3, :3], atol=1e-15)


def test_D_from_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        Irreps("1o").D_from_matrix(np.eye(2))
    with pytest.raises(ValueError):
        Irreps("1o").D_from_matrix(2 * np.eye(3))  # not a rotation


# --- Wigner 3j ---------------------------------------------------------------------
def test_reference_3j_is_invariant():
    # The independent reference itself transforms correctly with the reference D.
    a, b, c = 0.3, 1.1, -2.0
    for l1, l2, l3 in [(1, 1, 1), (1, 2, 3), (2, 2, 2), (3, 2, 1)]:
        W = reference_3j_complex(l1, l2, l3)
        D1, D2, D3 = (reference_real_D(l, a, b, c) for l in (l1, l2, l3))
        np.testing.assert_allclose(np.einsum("abc,ai,bj,ck->ijk", W, D1, D2, D3), W, atol=1e-12)


def test_wigner_3j_matches_sympy_up_to_sign():
    for l1, l2, l3 in triples(LMAX_3J):
        P = so3.wigner_3j(l1, l2, l3)
        W = real_up_to_phase(reference_3j_complex(l1, l2, l3))
        sign = np.sign(np.sum(P * W))
        np.testing.assert_allclose(P, sign * W, atol=1e-12, err_msg=f"{(l1, l2, l3)}")


def test_wigner_3j_matches_sympy_with_e3nn_phase():
    # e3nn's real basis carries a phase (-i)^l per degree (to make the coefficients
    # real), so the real 3j is (-i)^(l1+l2-l3) times the CG tensor in the real basis,
    # normalized. This pins every sign, not only the two documented rules.
    for l1, l2, l3 in triples(LMAX_3J):
        W = (-1j) ** (l1 + l2 - l3) * reference_3j_complex(l1, l2, l3)
        assert np.abs(W.imag).max() < 1e-12
        W = W.real / np.linalg.norm(W.real)
        np.testing.assert_allclose(so3.wigner_3j(l1, l2, l3), W, atol=1e-12, err_msg=f"{(l1, l2, l3)}")


def test_wigner_3j_documented_signs():
    eps = levi_civita()
    np.testing.assert_allclose(so3.wigner_3j(1, 1, 1), eps / math.sqrt(6), atol=1e-15)
    for l in range(LMAX_3J + 1):
        np.testing.assert_allclose(
            so3.wigner_3j(l, l, 0)[:, :, 0], np.eye(2 * l + 1) / math.sqrt(2 * l + 1), atol=1e-15
        )
    # Two vectors couple to degree 2 through their symmetric traceless part.
    W = so3.wigner_3j(1, 1, 2)
    np.testing.assert_allclose(W, np.swapaxes(W, 0, 1), atol=1e-15)  # symmetric in the vectors
    np.testing.assert_allclose(np.einsum("iik->k", W), 0, atol=1e-15)  # traceless


@pytest.mark.parametrize("seed", [0, 1])
def test_wigner_3j_invariance(seed):
    R = tfe.rand_matrix(seed=100 + seed)
    a, b, c = tfe.matrix_to_angles(R)
    D = {l: so3.wigner_D(l, a, b, c) for l in range(LMAX_3J + 1)}
    for l1, l2, l3 in triples(LMAX_3J):
        W = so3.wigner_3j(l1, l2, l3)
        rotated = np.einsum("ijk,ia,jb,kc->abc", W, D[l1], D[l2], D[l3])
        np.testing.assert_allclose(rotated, W, atol=1e-12, err_msg=f"{(l1, l2, l3)}")


def test_wigner_3j_norm_and_permutation_symmetry():
    for l1, l2, l3 in triples(LMAX_3J):
        W = so3.wigner_3j(l1, l2, l3)
        assert W.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1) and W.dtype == np.float64
        np.testing.assert_allclose(np.linalg.norm(W), 1.0, atol=1e-13)
        # The invariant of three irreps is unique: a permuted triple gives the permuted
        # tensor up to a sign.
        Wp = np.transpose(so3.wigner_3j(l2, l1, l3), (1, 0, 2))
        np.testing.assert_allclose(np.abs(np.sum(W * Wp)), 1.0, atol=1e-12)


@pytest.mark.parametrize("ls", [(1, 1, 3), (0, 1, 2), (3, 0, 2), (2, 5, 2), (6, 1, 4)])
def test_wigner_3j_selection_rule(ls):
    with pytest.raises(ValueError, match="triangle"):
        so3.wigner_3j(*ls)


@pytest.mark.parametrize("ls", [(-1, 1, 1), (1, 1.0, 1), (1, 1, True)])
def test_wigner_3j_bad_l(ls):
    with pytest.raises(ValueError, match="l"):
        so3.wigner_3j(*ls)


def test_wigner_3j_cannot_be_corrupted():
    W = so3.wigner_3j(1, 1, 1)
    with pytest.raises(ValueError):
        W[0, 0, 0] = 1.0  # cached and shared: read-only


# --- longer sweeps (pytest -m slow) ------------------------------------------------
@pytest.mark.slow
def test_wigner_3j_matches_sympy_higher_degrees():
    for l1, l2, l3 in triples(8):
        if max(l1, l2, l3) <= LMAX_3J:
            continue  # the default run covers these
        W = (-1j) ** (l1 + l2 - l3) * reference_3j_complex(l1, l2, l3)
        W = W.real / np.linalg.norm(W.real)
        np.testing.assert_allclose(so3.wigner_3j(l1, l2, l3), W, atol=1e-12, err_msg=f"{(l1, l2, l3)}")

