"""Rotations, Wigner D matrices and Wigner 3j (real Clebsch–Gordan) coefficients.

Conventions are e3nn's (see DESIGN.md section 2):

* Euler angles are Y-X-Y: ``R(alpha, beta, gamma) = Ry(alpha) Rx(beta) Ry(gamma)``.
* The real basis of degree ``l`` has its polar (m = 0) axis along y, so that
  ``wigner_D(1, a, b, c) == angles_to_matrix(a, b, c)`` acting on ``(x, y, z)``.
* ``wigner_3j(l1, l2, l3)`` is real, has Frobenius norm 1 and satisfies
  ``w3j(1, 1, 1) = +epsilon / sqrt(6)`` and ``w3j(l, l, 0) = +I / sqrt(2l+1)``.

Everything here is NumPy (float64 inside): these are constants and test
utilities, computed once and handed to the layers as tensors.
"""

import functools
import math
from fractions import Fraction

import numpy as np

__all__ = [
    "wigner_3j",
    "wigner_D",
    "so3_generators",
    "su2_generators",
    "change_basis_real_to_complex",
    "rand_matrix",
    "rand_angles",
    "angles_to_matrix",
    "matrix_to_angles",
    "matrix_x",
    "matrix_y",
    "matrix_z",
]


def _as_float_array(x, name):
    try:
        import tensorflow as tf

        if isinstance(x, (tf.Tensor, tf.Variable)):
            x = x.numpy()
    except ImportError:  # pragma: no cover - TensorFlow is a hard requirement in practice
        pass
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        x = x.astype(np.float64)
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must be a real float array. Received dtype: {x.dtype}")
    return x


def _check_l(l, name="l"):
    if isinstance(l, (bool, np.bool_)) or not isinstance(l, (int, np.integer)) or l < 0:
        raise ValueError(f"{name} must be an int >= 0. Received: {name}={l!r}")
    return int(l)


# --- generators --------------------------------------------------------------
def su2_generators(j2):
    """Complex generators of spin ``j = j2 / 2`` in the ``|j, m>`` basis, ``m = -j..j``.

    Returns ``[3, 2j+1, 2j+1]`` complex128, ordered so that index 1 generates
    rotations about the quantization axis (e3nn's y axis).
    """
    j = j2 / 2
    m = np.arange(-j, j)
    raising = np.diag(-np.sqrt(j * (j + 1) - m * (m + 1)), k=-1)
    m = np.arange(-j + 1, j + 1)
    lowering = np.diag(np.sqrt(j * (j + 1) - m * (m - 1)), k=1)
    m = np.arange(-j, j + 1)
    return np.stack(
        [
            0.5 * (raising + lowering),
            np.diag(1j * m),
            -0.5j * (raising - lowering),
        ]
    ).astype(np.complex128)


@functools.lru_cache(maxsize=None)
def change_basis_real_to_complex(l):
    """Unitary ``Q`` (complex128 ``[2l+1, 2l+1]``) from e3nn's real basis to ``|l, m>``.

    Includes the global phase ``(-i)**l`` that makes the real Clebsch–Gordan
    coefficients real.
    """
    l = _check_l(l)
    q = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    s2 = 1 / math.sqrt(2)
    for m in range(-l, 0):
        q[l + m, l + abs(m)] = s2
        q[l + m, l - abs(m)] = -1j * s2
    q[l, l] = 1
    for m in range(1, l + 1):
        q[l + m, l + abs(m)] = (-1) ** m * s2
        q[l + m, l - abs(m)] = 1j * (-1) ** m * s2
    q = (-1j) ** l * q
    q.setflags(write=False)
    return q


@functools.lru_cache(maxsize=None)
def so3_generators(l):
    """Real antisymmetric generators ``[3, 2l+1, 2l+1]`` in e3nn's real basis."""
    l = _check_l(l)
    X = su2_generators(2 * l)
    Q = change_basis_real_to_complex(l)
    X = np.conj(Q.T) @ X @ Q
    assert np.abs(X.imag).max() < 1e-10
    X = np.ascontiguousarray(X.real)
    X.setflags(write=False)
    return X


@functools.lru_cache(maxsize=None)
def _generator_eig(l, axis):
    # i * X is Hermitian: i X = V diag(mu) V^H, so exp(t X) = V diag(exp(-i mu t)) V^H.
    X = so3_generators(l)[axis]
    mu, V = np.linalg.eigh(1j * X)
    return mu, V


def _expm_generator(l, axis, t):
    mu, V = _generator_eig(l, axis)
    phase = np.exp(-1j * mu * t[..., None])  # [..., d]
    M = np.einsum("ij,...j,kj->...ik", V, phase, np.conj(V))
    return M.real


# --- Wigner D ----------------------------------------------------------------
def wigner_D(l, alpha, beta, gamma):
    """Wigner D matrix of degree ``l`` in e3nn's real basis, Y-X-Y Euler angles.

    Args:
        l: degree, int >= 0.
        alpha, beta, gamma: broadcastable arrays of angles (NumPy, Python floats
            or eager tensors).

    Returns:
        ``[..., 2l+1, 2l+1]`` NumPy array; float64 unless all angles are float32
        (then float32). ``wigner_D(1, a, b, c) == angles_to_matrix(a, b, c)``.
    """
    l = _check_l(l)
    arrays = [_as_float_array(a, n) for a, n in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma"))]
    out_dtype = np.result_type(*[a.dtype for a in arrays], np.float32)
    a, b, c = np.broadcast_arrays(*[x.astype(np.float64) for x in arrays])
    D = _expm_generator(l, 1, a) @ _expm_generator(l, 0, b) @ _expm_generator(l, 1, c)
    return D.astype(out_dtype)


# --- Wigner 3j ---------------------------------------------------------------
def _su2_cg_coeff(j1, m1, j2, m2, j3, m3):
    """<j1 m1 j2 m2 | j3 m3> (Condon–Shortley), integer spins, by Racah's formula."""
    if m3 != m1 + m2:
        return 0.0
    f = math.factorial
    vmin = max(-j1 + j2 + m3, -j1 + m1, 0)
    vmax = min(j2 + j3 + m1, j3 - j1 + j2, j3 + m3)
    C = math.sqrt(
        (2 * j3 + 1)
        * f(j3 + j1 - j2)
        * f(j3 - j1 + j2)
        * f(j1 + j2 - j3)
        * f(j3 + m3)
        * f(j3 - m3)
        / (f(j1 + j2 + j3 + 1) * f(j1 - m1) * f(j1 + m1) * f(j2 - m2) * f(j2 + m2))
    )
    S = Fraction(0)
    for v in range(vmin, vmax + 1):
        S += Fraction(
            (-1) ** (v + j2 + m2) * f(j2 + j3 + m1 - v) * f(j1 - m1 + v),
            f(v) * f(j3 - j1 + j2 - v) * f(j3 + m3 - v) * f(v + j1 - j2 - m3),
        )
    return C * float(S)


def _su2_clebsch_gordan(j1, j2, j3):
    mat = np.zeros((2 * j1 + 1, 2 * j2 + 1, 2 * j3 + 1), dtype=np.float64)
    if abs(j1 - j2) <= j3 <= j1 + j2:
        for m1 in range(-j1, j1 + 1):
            for m2 in range(-j2, j2 + 1):
                m3 = m1 + m2
                if abs(m3) <= j3:
                    mat[j1 + m1, j2 + m2, j3 + m3] = _su2_cg_coeff(j1, m1, j2, m2, j3, m3)
    return mat


@functools.lru_cache(maxsize=None)
def _wigner_3j_cached(l1, l2, l3):
    C = _su2_clebsch_gordan(l1, l2, l3).astype(np.complex128)
    Q1 = change_basis_real_to_complex(l1)
    Q2 = change_basis_real_to_complex(l2)
    Q3 = change_basis_real_to_complex(l3)
    C = np.einsum("ij,kl,mn,ikn->jlm", Q1, Q2, np.conj(Q3.T), C)
    assert np.abs(C.imag).max() < 1e-10, "real Clebsch-Gordan coefficients must be real"
    C = C.real
    C = C / np.linalg.norm(C)
    C = np.ascontiguousarray(C)
    C.setflags(write=False)
    return C


def wigner_3j(l1, l2, l3):
    """Real Wigner 3j symbol in e3nn's basis and sign convention.

    Returns a read-only float64 array ``[2l1+1, 2l2+1, 2l3+1]`` of Frobenius norm
    1, invariant under ``D^l1(R) x D^l2(R) x D^l3(R)``. Raises ``ValueError`` when
    the triangle rule ``|l1 - l2| <= l3 <= l1 + l2`` fails.
    """
    l1, l2, l3 = _check_l(l1, "l1"), _check_l(l2, "l2"), _check_l(l3, "l3")
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(
            f"wigner_3j(l1, l2, l3) needs |l1 - l2| <= l3 <= l1 + l2 (triangle rule). "
            f"Received: l1={l1}, l2={l2}, l3={l3}"
        )
    return _wigner_3j_cached(l1, l2, l3)


# --- rotation matrices -------------------------------------------------------
def _rot(angle, i, j):
    angle = _as_float_array(angle, "angle")
    c, s = np.cos(angle), np.sin(angle)
    out = np.zeros(angle.shape + (3, 3), dtype=np.result_type(angle.dtype, np.float32))
    k = 3 - i - j
    out[..., k, k] = 1
    out[..., i, i] = c
    out[..., j, j] = c
    out[..., i, j] = -s
    out[..., j, i] = s
    return out


def matrix_x(angle):
    """Rotation about x by ``angle``."""
    return _rot(angle, 1, 2)


def matrix_y(angle):
    """Rotation about y by ``angle``."""
    return _rot(angle, 2, 0)


def matrix_z(angle):
    """Rotation about z by ``angle``."""
    return _rot(angle, 0, 1)


def angles_to_matrix(alpha, beta, gamma):
    """``Ry(alpha) Rx(beta) Ry(gamma)`` (e3nn's Y-X-Y Euler angles)."""
    alpha, beta, gamma = np.broadcast_arrays(
        *(_as_float_array(a, n) for a, n in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma")))
    )
    return matrix_y(alpha) @ matrix_x(beta) @ matrix_y(gamma)


def _xyz_to_angles(xyz):
    xyz = xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)
    xyz = np.clip(xyz, -1, 1)
    beta = np.arccos(xyz[..., 1])
    alpha = np.arctan2(xyz[..., 0], xyz[..., 2])
    return alpha, beta


def matrix_to_angles(R):
    """Inverse of ``angles_to_matrix`` for proper rotations (``det R = +1``)."""
    R = _as_float_array(R, "R")
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape [..., 3, 3]. Received shape: {R.shape}")
    det = np.linalg.det(R.astype(np.float64))
    tol = 1e-3 if R.dtype == np.float32 else 1e-6
    if not np.allclose(det, 1.0, atol=tol):
        raise ValueError(
            "matrix_to_angles needs proper rotations (det R = +1); use "
            "Irreps.D_from_matrix for improper ones. Received det(R) in "
            f"[{det.min():.4g}, {det.max():.4g}]"
        )
    R64 = R.astype(np.float64)
    x = R64 @ np.array([0.0, 1.0, 0.0])
    a, b = _xyz_to_angles(x)
    R64 = np.swapaxes(angles_to_matrix(a, b, np.zeros_like(a)), -1, -2) @ R64
    c = np.arctan2(R64[..., 0, 2], R64[..., 0, 0])
    return a, b, c


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def rand_matrix(*shape, seed=None, dtype=np.float64):
    """Uniformly random proper rotation matrices ``[*shape, 3, 3]`` (Haar measure)."""
    rng = _rng(seed)
    q = rng.normal(size=shape + (4,))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    R = np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    return R.astype(dtype)


def rand_angles(*shape, seed=None, dtype=np.float64):
    """Euler angles of uniformly random rotations: ``(alpha, beta, gamma)``."""
    return tuple(a.astype(dtype) for a in matrix_to_angles(rand_matrix(*shape, seed=seed)))
