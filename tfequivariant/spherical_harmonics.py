"""Real spherical harmonics in e3nn's basis and normalizations.

e3nn's ``Y(x, y, z)`` is the textbook real spherical harmonic (the
Condon–Shortley phase cancelled, as in the common "real form") evaluated at
the permuted point ``(z, x, y)``: the polar (m = 0) axis is y and
``Y^1 ∝ (x, y, z)``, so that the l = 1 Wigner matrix is the rotation matrix.

Degrees 0-2 are hand-written polynomials; higher degrees use the
three-term recursion of the fully normalized associated Legendre functions
times the Cartesian ``Re/Im (X + iY)^m`` polynomials: no trigonometric
functions, stable to at least l = 16 in float32.
"""

import functools
import math
from fractions import Fraction

import keras
import numpy as np

from tfequivariant.irreps import Irreps

__all__ = ["spherical_harmonics", "sh_irreps"]

_NORMALIZATIONS = ("integral", "component", "norm")


def sh_irreps(l):
    """The degrees and ``Irreps`` asked for by ``l`` (int, list of ints, Irreps or str).

    Returns ``(ls, irreps, pseudo)``: ``ls`` the degree of every output block in
    order (repeated by multiplicity), the output ``Irreps`` and whether the
    input is a pseudovector (all-even parities, e3nn's ``1e`` input).
    """
    if isinstance(l, (bool, np.bool_)):
        raise ValueError(f"l must be an int, a list of ints or irreps. Received: l={l!r}")
    if isinstance(l, (int, np.integer)):
        if l < 0:
            raise ValueError(f"l must be >= 0. Received: l={l!r}")
        ls = [int(l)]
        return ls, Irreps([(1, (l, (-1) ** l))]), False
    if isinstance(l, (str, Irreps)):
        irreps = Irreps(l)
        odd_input = all(ir.p == (-1) ** ir.l for _, ir in irreps)
        even_input = all(ir.p == 1 for _, ir in irreps)
        if not (odd_input or even_input):
            raise ValueError(
                "Spherical harmonics of a vector (1o) have parity (-1)**l, those of a "
                "pseudovector (1e) parity +1; mixed parities are not harmonics of one "
                f"input. Received: l={str(irreps)!r}"
            )
        ls = [ir.l for mul, ir in irreps for _ in range(mul)]
        return ls, irreps, even_input and not odd_input
    try:
        ls = [int(v) for v in l]
    except (TypeError, ValueError):
        raise ValueError(
            f"l must be an int, a list of ints, an Irreps or its string. Received: l={l!r}"
        ) from None
    if any(v < 0 for v in ls) or any(isinstance(v, bool) for v in l):
        raise ValueError(f"Every degree in l must be an int >= 0. Received: l={l!r}")
    return ls, Irreps([(1, (v, (-1) ** v)) for v in ls]), False


@functools.lru_cache(maxsize=None)
def _legendre_coefficients(lmax):
    """Coefficients of the normalized recursion (integral normalization).

    ``q[l][m] = N_lm Q_l^m`` with ``N_lm^2 = (2l+1)/(4 pi) (l-m)!/(l+m)!`` and
    ``Q_l^m`` the associated Legendre polynomial without the ``sin^m`` factor:
    ``q_m^m = diag[m]``, ``q_{m+1}^m = c1[m] Z q_m^m``,
    ``q_l^m = a[l,m] Z q_{l-1}^m - b[l,m] r^2 q_{l-2}^m``.
    """

    def n2(l, m):  # N_lm^2 * 4 pi, exact
        return Fraction(2 * l + 1) * Fraction(math.factorial(l - m), math.factorial(l + m))

    def dfact(n):
        out = 1
        while n > 1:
            out *= n
            n -= 2
        return out

    inv4pi = 1 / (4 * math.pi)
    diag = [math.sqrt(float(n2(m, m)) * inv4pi) * dfact(2 * m - 1) for m in range(lmax + 1)]
    c1 = [math.sqrt(float(n2(m + 1, m) / n2(m, m))) * (2 * m + 1) for m in range(lmax)]
    a, b = {}, {}
    for m in range(lmax + 1):
        for l in range(m + 2, lmax + 1):
            a[l, m] = math.sqrt(float(n2(l, m) / n2(l - 1, m))) * (2 * l - 1) / (l - m)
            b[l, m] = math.sqrt(float(n2(l, m) / n2(l - 2, m))) * (l + m - 1) / (l - m)
    return diag, c1, a, b


def _harmonics_low(x, y, z, lmax):
    """Component-normalized e3nn harmonics for l <= 2, as lists of components."""
    ops = keras.ops
    out = [[ops.ones_like(x)]]
    if lmax >= 1:
        s3 = math.sqrt(3.0)
        out.append([s3 * x, s3 * y, s3 * z])
    if lmax >= 2:
        s15, s5 = math.sqrt(15.0), math.sqrt(5.0)
        x2, y2, z2 = x * x, y * y, z * z
        out.append(
            [
                s15 * x * z,
                s15 * x * y,
                s5 * (y2 - 0.5 * (x2 + z2)),
                s15 * y * z,
                (0.5 * s15) * (z2 - x2),
            ]
        )
    return out


def _harmonics_recursive(x, y, z, r2, lmax):
    """Integral-normalized e3nn harmonics for 0..lmax by recursion, as component lists.

    ``r2`` is ``x^2 + y^2 + z^2`` (1 for unit vectors, 0 for a zero vector), so the
    result is the homogeneous harmonic polynomial of degree l.
    """
    ops = keras.ops
    # e3nn's point (x, y, z) is the textbook point (X, Y, Z) = (z, x, y).
    X, Y, Z = z, x, y
    diag, c1, a, b = _legendre_coefficients(lmax)
    A = [ops.ones_like(X)]
    B = [ops.zeros_like(X)]
    for m in range(1, lmax + 1):
        A.append(X * A[m - 1] - Y * B[m - 1])
        B.append(X * B[m - 1] + Y * A[m - 1])
    q = [[None] * (lmax + 1) for _ in range(lmax + 1)]  # q[l][m]
    for m in range(lmax + 1):
        q[m][m] = diag[m] * ops.ones_like(X)
        if m + 1 <= lmax:
            q[m + 1][m] = c1[m] * Z * q[m][m]
        for l in range(m + 2, lmax + 1):
            q[l][m] = a[l, m] * Z * q[l - 1][m] - b[l, m] * r2 * q[l - 2][m]
    s2 = math.sqrt(2.0)
    out = []
    for l in range(lmax + 1):
        comps = []
        for m in range(-l, l + 1):
            if m < 0:
                comps.append(s2 * q[l][-m] * B[-m])
            elif m == 0:
                comps.append(q[l][0])
            else:
                comps.append(s2 * q[l][m] * A[m])
        out.append(comps)
    return out


def _to_tensor(x):
    if isinstance(x, np.ndarray) or np.isscalar(x):
        arr = np.asarray(x)
        if arr.dtype.kind in "iub":
            raise ValueError(
                "x must be a float tensor of vectors [..., 3]; integer input would be "
                f"silently truncated. Received dtype: {arr.dtype}"
            )
        return keras.ops.convert_to_tensor(arr), True
    t = keras.ops.convert_to_tensor(x)
    return t, False


def spherical_harmonics(l, x, normalize=True, normalization="integral"):
    """Real spherical harmonics ``Y^l(x)`` in e3nn's convention.

    Args:
        l: an int, a list of ints, an ``Irreps`` or its string (``"1x0e+1x1o+1x2e"``,
            multiplicities repeat a block; all-even parities mean a pseudovector
            input, as in e3nn).
        x: ``[..., 3]`` float tensor or NumPy array of vectors.
        normalize: if True, the harmonics of ``x / |x|`` (a zero vector gives
            ``Y^0`` and zeros, with finite gradients); if False, the homogeneous
            polynomials ``|x|^l Y^l(x / |x|)``.
        normalization: ``"integral"`` (orthonormal on the sphere, the default),
            ``"component"`` (``|Y^l|^2 = 2l+1`` on unit vectors) or ``"norm"``
            (``|Y^l| = 1``).

    Returns:
        ``[..., dim]`` in the input's float dtype (a NumPy array for NumPy input),
        blocks in the order asked for, each ordered ``m = -l..l``.

    Example:
        >>> import numpy as np
        >>> y = spherical_harmonics([0, 1], np.array([[0.0, 0.0, 2.0]]), normalization="component")
        >>> np.round(y, 4).tolist()
        [[1.0, 0.0, 0.0, 1.7321]]
    """
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {_NORMALIZATIONS}. Received: normalization={normalization!r}"
        )
    ls, _, _ = sh_irreps(l)
    x, was_numpy = _to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if not dtype.startswith("float") and not dtype.startswith("bfloat"):
        raise ValueError(
            "x must be a float tensor of vectors [..., 3]; integer input would be "
            f"silently truncated. Received dtype: {dtype}"
        )
    shape = x.shape
    if len(shape) == 0 or (shape[-1] is not None and shape[-1] != 3):
        raise ValueError(f"x must have shape [..., 3]. Received shape: {tuple(shape)}")
    if not ls:
        out = keras.ops.zeros(keras.ops.shape(x)[:-1] + (0,), dtype=dtype)
        return keras.ops.convert_to_numpy(out) if was_numpy else out
    y = _harmonics_flat(x, tuple(ls), normalize, normalization)
    return keras.ops.convert_to_numpy(y) if was_numpy else y


def _harmonics_flat(x, ls, normalize, normalization):
    ops = keras.ops
    lmax = max(ls)
    x_, y_, z_ = x[..., 0], x[..., 1], x[..., 2]
    if normalize:
        # Scale by the largest component first so |x|^2 neither overflows nor
        # underflows; exact zero vectors divide by 1 instead of 0, giving Y^0 and
        # zeros with finite gradients; NaN input still propagates.
        big = ops.maximum(ops.maximum(ops.abs(x_), ops.abs(y_)), ops.abs(z_))
        is_zero = ops.equal(big, 0)
        inv_big = 1 / ops.where(is_zero, ops.ones_like(big), big)
        x_, y_, z_ = x_ * inv_big, y_ * inv_big, z_ * inv_big
        inv = ops.rsqrt(ops.where(is_zero, ops.ones_like(big), x_ * x_ + y_ * y_ + z_ * z_))
        x_, y_, z_ = x_ * inv, y_ * inv, z_ * inv
        r2 = 1 - ops.cast(is_zero, big.dtype)
    else:
        r2 = x_ * x_ + y_ * y_ + z_ * z_
    if lmax <= 2:
        blocks = _harmonics_low(x_, y_, z_, lmax)
        base = "component"
    else:
        blocks = _harmonics_recursive(x_, y_, z_, r2, lmax)
        base = "integral"
    out = []
    for l in ls:
        scale = _scale(l, base, normalization)
        comps = blocks[l]
        block = ops.stack(comps, axis=-1)
        if scale != 1.0:
            block = block * scale
        out.append(block)
    return ops.concatenate(out, axis=-1) if len(out) > 1 else out[0]


def _scale(l, base, normalization):
    # Multiplier from the `base` normalization to the requested one.
    to_component = {"component": 1.0, "integral": math.sqrt(4 * math.pi)}[base]
    from_component = {
        "component": 1.0,
        "integral": 1 / math.sqrt(4 * math.pi),
        "norm": 1 / math.sqrt(2 * l + 1),
    }[normalization]
    return to_component * from_component
