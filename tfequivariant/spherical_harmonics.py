"""Real spherical harmonics in e3nn's basis and normalizations.

e3nn's ``Y(x, y, z)`` is the textbook real spherical harmonic (the
Condon–Shortley phase cancelled, as in the common "real form") evaluated at
the permuted point ``(z, x, y)``: the polar (m = 0) axis is y and
``Y^1 ∝ (x, y, z)``, so that the l = 1 Wigner matrix is the rotation matrix.

Degrees 0-2 are hand-written polynomials; higher degrees use the
three-term recursion of the fully normalized associated Legendre functions
times the Cartesian ``Re/Im (X + iY)^m`` polynomials: no trigonometric
functions, stable to at least l = 16 in float32. Under XLA, normalized
harmonics up to degree 6 are laid out for one fused loop per call (see
``_evaluate_broadcast``); degrees 3-6 there use the same polynomials with the
recursion unrolled into per-column Horner coefficients.
"""

import functools
import math
from fractions import Fraction

import keras
import numpy as np

from tfequivariant._xla import in_xla_context
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


# Components are built symbolically: a Python float stands for a constant
# (e.g. the m = m starting values of the recursion), so that no pass over the
# data multiplies by ones or adds zeros, and the normalization constants fold
# into the coefficients.
def _mul(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a * b
    if isinstance(a, float):
        a, b = b, a
    if isinstance(b, float):
        return a if b == 1.0 else (0.0 if b == 0.0 else a * b)
    return a * b


def _add(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a + b
    if isinstance(a, float) and a == 0.0:
        return b
    if isinstance(b, float) and b == 0.0:
        return a
    return a + b


def _sub(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a - b
    if isinstance(b, float) and b == 0.0:
        return a
    return a - b


def _harmonics_low(x, y, z, lmax, scales):
    """e3nn harmonics for l <= 2 times ``scales[l]``, as lists of components.

    The polynomials are the component-normalized ones; ``scales[l]`` converts
    to the requested normalization.
    """
    out = [[scales[0]]]
    if lmax >= 1:
        c = math.sqrt(3.0) * scales[1]
        out.append([c * x, c * y, c * z])
    if lmax >= 2:
        c15, c5 = math.sqrt(15.0) * scales[2], math.sqrt(5.0) * scales[2]
        x2, z2 = x * x, z * z
        out.append(
            [
                (c15 * x) * z,
                (c15 * x) * y,
                c5 * (y * y) - (0.5 * c5) * (x2 + z2),
                (c15 * y) * z,
                (0.5 * c15) * (z2 - x2),
            ]
        )
    return out


def _harmonics_recursive(x, y, z, r2, lmax, scales):
    """e3nn harmonics for 0..lmax by recursion, times ``scales[l]``, as component lists.

    The recursion yields integral-normalized harmonics; ``scales[l]`` converts.
    ``r2`` is ``x^2 + y^2 + z^2`` (1 for unit vectors, 0 for a zero vector), so the
    result is the homogeneous harmonic polynomial of degree l.
    """
    # e3nn's point (x, y, z) is the textbook point (X, Y, Z) = (z, x, y).
    X, Y, Z = z, x, y
    A, B = [1.0], [0.0]  # Re / Im (X + iY)^m
    for m in range(1, lmax + 1):
        A.append(_sub(_mul(X, A[m - 1]), _mul(Y, B[m - 1])))
        B.append(_add(_mul(X, B[m - 1]), _mul(Y, A[m - 1])))
    q = _legendre_q(Z, r2, lmax)
    s2 = math.sqrt(2.0)
    out = []
    for l in range(lmax + 1):
        comps = []
        for m in range(-l, l + 1):
            if m == 0:
                comps.append(_mul(scales[l], q[l][0]))
            else:
                ab = B[-m] if m < 0 else A[m]
                comps.append(_mul(_mul(s2 * scales[l], q[l][abs(m)]), ab))
        out.append(comps)
    return out


def _legendre_q(Z, r2, lmax):
    """``q[l][m] = N_lm Q_l^m`` for ``0 <= m <= l <= lmax`` by the recursion of
    ``_legendre_coefficients``; ``Z`` and ``r2`` are tensors, floats or NumPy
    polynomials (any operands of ``_mul`` / ``_sub``)."""
    diag, c1, a, b = _legendre_coefficients(lmax)
    q = [[None] * (lmax + 1) for _ in range(lmax + 1)]
    for m in range(lmax + 1):
        q[m][m] = diag[m]
        if m + 1 <= lmax:
            q[m + 1][m] = _mul(c1[m] * diag[m], Z)
        for l in range(m + 2, lmax + 1):
            q[l][m] = _sub(_mul(a[l, m], _mul(Z, q[l - 1][m])), _mul(b[l, m], _mul(r2, q[l - 2][m])))
    return q


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
            ``Y^0`` and zeros, with gradient 0); if False, the homogeneous
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


# Up to this many output columns, XLA writes the output fastest as a sum of
# component * one-hot row (one fused loop, no concatenate of [N, 1] slices);
# beyond it the repeated evaluation costs more than the concatenate saves.
# Measured on a 2-core CPU, 1M vectors: lmax 2 10 vs 16 ms, lmax 3 17 vs 33 ms.
# Normalized harmonics up to degree 6 now take ``_evaluate_broadcast`` instead;
# this layout remains for the gradient ([..., 3]) and the other cases.
_ONE_HOT_MAX_COLUMNS = 16


# Power-of-two rescaling that brings any finite vector's |x|^2 into the normal
# range: (threshold, factor) per dtype, exact in binary floating point.
_RESCALE = {"float32": (2.0**60, 2.0**-100), "float64": (2.0**500, 2.0**-600)}


def _unit_vectors(x, y, z):
    """``(x, y, z) / |(x, y, z)|``, safe for every finite input.

    Vectors whose squared norm leaves the normal range (it overflows, or it is
    so small that it lost precision or underflowed to zero) are first scaled by
    a power of two, exact in binary floating point; the test is on ``|x|^2``
    itself, which the common case needs anyway (a division per vector, or the
    largest component first, cost more under XLA). Exact zero vectors stay zero;
    their ``1/|x|`` (the last output, used by the gradient) is 0, so the gradient
    of the harmonics at the zero vector, where the direction is undefined, is 0
    rather than the huge ``1/tiny`` of the rescaled division. NaN propagates.
    """
    ops = keras.ops
    dtype = keras.backend.standardize_dtype(x.dtype)
    threshold, factor = _RESCALE[dtype]
    r2 = x * x + y * y + z * z
    normal = (r2 < threshold * threshold) & (r2 > 1 / (threshold * threshold))
    down, up, one = (ops.convert_to_tensor(np.array(v, dtype)) for v in (factor, 1 / factor, 1.0))
    scale = ops.where(normal, one, ops.where(r2 >= threshold * threshold, down, up))
    x, y, z = x * scale, y * scale, z * scale
    r2 = ops.where(normal, r2, x * x + y * y + z * z)
    zero = r2 == 0  # only for the zero vector
    inv = ops.rsqrt(ops.where(zero, ops.ones_like(r2), r2))
    return x * inv, y * inv, z * inv, ops.where(zero, ops.zeros_like(inv), scale * inv)


def _harmonics_flat(x, ls, normalize, normalization):
    ops = keras.ops
    out_dtype = keras.backend.standardize_dtype(x.dtype)
    if out_dtype not in _RESCALE:  # float16 / bfloat16: evaluate in float32, return the input's dtype
        return ops.cast(_harmonics_flat(ops.cast(x, "float32"), ls, normalize, normalization), out_dtype)
    if max(ls) == 0 or keras.backend.backend() != "tensorflow":
        return _evaluate(x, ls, normalize, normalization)
    import tensorflow as tf

    @tf.custom_gradient
    def harmonics(v):
        def grad(g):
            return _vjp(v, g, ls, normalize, normalization)

        return _evaluate(v, ls, normalize, normalization), grad

    return harmonics(x)


# -- the gradient -------------------------------------------------------------------
# A derivative of a harmonic polynomial of degree l is a harmonic polynomial of
# degree l - 1: d S_l^m / d x_a = sum_k K_l[m, a, k] S_{l-1}^k. With u = x / |x|
# and Euler's identity u . grad S_l(u) = l S_l(u), the vector-Jacobian product
# of the normalized harmonics is
#     g . dY/dx = (sum_l G_l K_l S_{l-1}(u) - (sum_l l G_l . S_l(u)) u) / |x|,
# a short sum of products (K_l is sparse) instead of differentiating the
# recursion op by op (which XLA fuses poorly: the backward took 3-5x the forward).
# The VJP is itself built from differentiable ops (and these harmonics), so
# higher derivatives (forces, Hessian-vector products) work.
@functools.lru_cache(maxsize=None)
def _derivative_matrix(l, normalization):
    """``K_l [2l+1, 3, 2l-1]`` (float64) with ``dS_l/dx_a = K_l[:, a, :] S_{l-1}``."""
    import tensorflow as tf

    # Complex-step derivatives of the polynomials (exact to rounding: the
    # imaginary step h is far below float64 resolution of the real part).
    # Evaluated eagerly, also while a tf.function or XLA program is traced.
    with tf.init_scope():
        rng = np.random.default_rng(l)
        points = rng.normal(size=(8 * (2 * l + 1) ** 2, 3))
        h = 1e-30
        jac = np.stack(
            [
                np.imag(keras.ops.convert_to_numpy(
                    _evaluate(tf.constant(points + 1j * h * np.eye(3)[a]), (l,), False, normalization)
                )) / h
                for a in range(3)
            ],
            axis=-1,
        )  # [M, 2l+1, 3]
        s_prev = keras.ops.convert_to_numpy(_evaluate(tf.constant(points), (l - 1,), False, normalization))
    target = jac.reshape(len(jac), -1)  # [M, (2l+1) * 3]
    sol, *_ = np.linalg.lstsq(s_prev, target, rcond=None)  # [2l-1, (2l+1) * 3]
    residual = np.abs(s_prev @ sol - target).max() / np.abs(target).max()
    if residual > 1e-9:  # pragma: no cover - a broken invariant, not bad input
        raise RuntimeError(f"derivative of Y^{l} is not in the span of Y^{l - 1} (residual {residual:.1e})")
    k = sol.reshape(2 * l - 1, 2 * l + 1, 3).transpose(1, 2, 0)  # [2l+1, 3, 2l-1]
    k[np.abs(k) < 1e-12 * np.abs(k).max()] = 0.0
    return k


def _vjp(x, g, ls, normalize, normalization):
    # Elementwise, with the (sparse: about 10 l nonzeros) K_l unrolled: under
    # XLA the whole backward, the recomputed harmonics included, is one fused loop.
    lmax = max(ls)
    per_degree = [None] * (lmax + 1)  # upstream gradient columns, summed over repeated degrees
    offset = 0
    for l in ls:
        cols = [g[..., offset + i] for i in range(2 * l + 1)]
        offset += 2 * l + 1
        per_degree[l] = cols if per_degree[l] is None else [a + b for a, b in zip(per_degree[l], cols)]
    x_, y_, z_ = x[..., 0], x[..., 1], x[..., 2]
    if normalize:
        x_, y_, z_, inv_r = _unit_vectors(x_, y_, z_)
    s = _blocks(x_, y_, z_, lmax if normalize else lmax - 1, normalization)
    total = [0.0, 0.0, 0.0]
    euler = 0.0
    for l in range(1, lmax + 1):
        gl = per_degree[l]
        if gl is None:
            continue
        k = _derivative_matrix(l, normalization)
        for m, a, j in zip(*np.nonzero(k)):
            total[a] = _add(total[a], _mul(_mul(float(k[m, a, j]), gl[m]), s[l - 1][j]))
        if normalize:
            for m in range(2 * l + 1):
                euler = _add(euler, _mul(_mul(float(l), gl[m]), s[l][m]))
    if normalize:
        point = (x_, y_, z_)
        total = [_mul(_sub(total[a], _mul(euler, point[a])), inv_r) for a in range(3)]
    return _assemble(total, x_)


def _blocks(x_, y_, z_, lmax, normalization):
    """Component lists of degrees 0..lmax at the points (x_, y_, z_), not normalized."""
    r2 = x_ * x_ + y_ * y_ + z_ * z_  # 1 (up to rounding) or 0 for normalized points
    base = "component" if lmax <= 2 else "integral"
    scales = [_scale(l, base, normalization) for l in range(lmax + 1)]
    if lmax <= 2:
        return _harmonics_low(x_, y_, z_, lmax, scales)
    return _harmonics_recursive(x_, y_, z_, r2, lmax, scales)


def _assemble(comps, like):
    """``[..., len(comps)]`` from components (tensors shaped like ``like``, or floats)."""
    ops = keras.ops
    if len(comps) <= _ONE_HOT_MAX_COLUMNS and in_xla_context():
        return _one_hot_sum(comps, like, expand=True)
    comps = [ops.full_like(like, c) if isinstance(c, float) else c for c in comps]
    return ops.stack(comps, axis=-1)


def _one_hot_sum(comps, like, expand):
    """``sum_k comps[k] * e_k``: ``[..., dim]`` in one fused XLA loop.

    ``comps`` are tensors shaped like ``like`` (``expand=True``: ``[...]``, each
    broadcast along a new last axis; ``expand=False``: already ``[..., dim]``) or
    floats (constant columns). Constant columns stay constant for NaN input, as
    with ``stack`` (a NaN times a zero of the one-hot row would spread).
    """
    ops = keras.ops
    dim = len(comps)
    dtype = like.dtype
    eye = np.eye(dim)
    is_constant = np.array([isinstance(c, float) for c in comps])
    constant = np.array([c if isinstance(c, float) else 0.0 for c in comps])
    out = None
    for k, c in enumerate(comps):
        if not is_constant[k]:
            term = (ops.expand_dims(c, -1) if expand else c) * ops.convert_to_tensor(eye[k], dtype)
            out = term if out is None else out + term
    if out is None:
        base = ops.expand_dims(ops.ones_like(like), -1) if expand else ops.ones_like(like)
        return base * ops.convert_to_tensor(constant, dtype)
    if is_constant.any():
        out = ops.where(ops.convert_to_tensor(is_constant), ops.convert_to_tensor(constant, dtype), out)
    return out


def _evaluate(x, ls, normalize, normalization):
    x_, y_, z_ = x[..., 0], x[..., 1], x[..., 2]
    if normalize and max(ls) <= _TABLE_MAX_DEGREE and in_xla_context():
        return _evaluate_broadcast(x_, y_, z_, ls, normalization)
    if normalize:
        x_, y_, z_, _ = _unit_vectors(x_, y_, z_)
    blocks = _blocks(x_, y_, z_, max(ls), normalization)
    return _assemble([c for l in ls for c in blocks[l]], x_)


def _evaluate_broadcast(x_, y_, z_, ls, normalization):
    """XLA, unit vectors, degrees <= 6: the coordinates broadcast to ``[..., dim]`` first.

    Normalizing ``[...]`` vectors made XLA run four loops over the input (the
    scaled coordinates and ``1/|x|`` each have several users, and XLA does not
    repeat such work per element); on ``[..., dim]`` every value has one user and
    the whole evaluation is one fused loop that recomputes the cheap
    normalization per column. Degrees <= 2 then sum the hand-written components
    times one-hot rows, higher degrees use the per-column formula below.
    Measured on a 2-core CPU, 1M float32 vectors, interleaved in one process:
    lmax 2 7.8 vs 12.5 ms (tcmalloc) and 20.2 vs 23.5 ms (glibc malloc); lmax 3
    (with the ``|x|^2`` test of ``_unit_vectors``) 14.0 vs 17.6 ms and 37.7 vs
    41.5 ms; lmax 4 and 6 within 3 %.
    """
    dim = sum(2 * l + 1 for l in ls)
    ones = keras.ops.ones((dim,), x_.dtype)
    xb, yb, zb = (keras.ops.expand_dims(v, -1) * ones for v in (x_, y_, z_))
    xb, yb, zb, _ = _unit_vectors(xb, yb, zb)
    if max(ls) >= _TABLE_MIN_DEGREE:
        return _evaluate_by_column(xb, yb, zb, ls, normalization)
    blocks = _blocks(xb, yb, zb, max(ls), normalization)
    return _one_hot_sum([c for l in ls for c in blocks[l]], xb, expand=False)


# -- one formula for every output column (XLA, unit vectors) -------------------------
# XLA computes an output element by element: it cannot evaluate the components of
# a vector once and write them side by side. Stacking them made one loop per
# component plus a concatenate that copies 4-byte pieces (at lmax 6 a 195 MB
# temporary buffer, which glibc malloc maps and zeroes on every call); the one-hot
# sum evaluates every component for every column. Here every column is the same
# short formula with per-column constants, one fused loop that writes the output
# once: Y_l^m = H_c(Z) * [Re or Im] (X + iY)^|m| on unit vectors, H_c the
# normalized associated Legendre polynomial (r^2 = 1) in Horner form and the power
# taken by squaring, selected by the bits of |m|.
# Measured on a 2-core CPU, 1M float32 vectors, interleaved in one process, against
# the stack / one-hot layouts: lmax 3 40 vs 46 ms (glibc malloc) and 13.5 vs 16.4 ms
# (tcmalloc); lmax 6 127 vs 274 ms and 54 vs 75 ms; at lmax 2 no gain (kept one-hot).
# Above degree 6 the monomial coefficients grow and cancel (float32 error 2.4x the
# recursion's at l = 6 already), so the recursion stays.
_TABLE_MIN_DEGREE = 3
_TABLE_MAX_DEGREE = 6


@functools.lru_cache(maxsize=None)
def _column_tables(ls, normalization):
    """Per-column constants for ``_evaluate_by_column`` (float64 NumPy arrays).

    Returns ``(horner, bits, use_re, use_im, degree0)``: ``horner [D+1, C]`` the
    coefficients of ``H_c`` by power of Z (normalization and the sqrt(2) of m != 0
    folded in), ``bits [B, C]`` the binary digits of ``|m|``, ``use_re``/``use_im``
    ``[C]`` which part of ``(X + iY)^|m|`` column c takes, ``degree0 [C]`` 1 for l = 0.
    """
    lmax = max(ls)
    poly = np.polynomial.Polynomial
    q = _legendre_q(poly([0.0, 1.0]), 1.0, lmax)  # q[l][m](Z) with r^2 = 1 (q[m][m] a float)
    columns = [(l, m) for l in ls for m in range(-l, l + 1)]
    horner = np.zeros((lmax + 1, len(columns)))
    bits = np.zeros((max(1, lmax.bit_length()), len(columns)))
    use_re, use_im, degree0 = (np.zeros(len(columns)) for _ in range(3))
    for c, (l, m) in enumerate(columns):
        qlm = q[l][abs(m)]
        coef = (qlm if isinstance(qlm, poly) else poly([qlm])).coef
        coef = coef * _scale(l, "integral", normalization) * (math.sqrt(2.0) if m else 1.0)
        horner[: len(coef), c] = coef
        for k in range(len(bits)):
            bits[k, c] = (abs(m) >> k) & 1
        use_re[c], use_im[c], degree0[c] = float(m >= 0), float(m < 0), float(l == 0)
    return horner, bits, use_re, use_im, degree0


def _evaluate_by_column(x_, y_, z_, ls, normalization):
    """``[..., C]`` harmonics of unit vectors (zero vectors allowed), coordinates ``[..., C]``."""
    ops = keras.ops
    dtype = x_.dtype
    horner, bits, use_re, use_im, degree0 = _column_tables(tuple(ls), normalization)

    def const(v):
        return ops.convert_to_tensor(v, dtype)

    # e3nn's point (x, y, z) is the textbook point (X, Y, Z) = (z, x, y).
    X, Y, Z = z_, x_, y_
    # The zero vector (r^2 = 0 exactly) has Y^0 and zeros: the constant term of H_c
    # (a multiple of r^l) is kept only for l = 0 there; every other term has a factor
    # X, Y or Z.
    nonzero = ops.cast(X * X + Y * Y + Z * Z > 0, dtype)
    constant = const(horner[0] * degree0) + const(horner[0] * (1.0 - degree0)) * nonzero
    acc = None
    for k in range(len(horner) - 1, 0, -1):
        acc = const(horner[k]) if acc is None else acc * Z + const(horner[k])
    h = constant if acc is None else acc * Z + constant
    # Re + i Im of (X + iY)^|m| by squaring: multiply by w^(2^k) where bit k of |m| is set.
    re = const(bits[0]) * X + const(1.0 - bits[0])
    im = const(bits[0]) * Y
    wr, wi = X, Y
    for k in range(1, len(bits)):
        wr, wi = wr * wr - wi * wi, 2.0 * wr * wi
        fr = const(bits[k]) * wr + const(1.0 - bits[k])
        fi = const(bits[k]) * wi
        re, im = re * fr - im * fi, re * fi + im * fr
    out = h * (const(use_re) * re + const(use_im) * im)
    if degree0.any():  # Y^0 is a constant, also for a NaN vector (as on the other paths)
        out = ops.where(const(degree0) > 0, const(horner[0] * degree0), out)
    return out


def _scale(l, base, normalization):
    # Multiplier from the `base` normalization to the requested one.
    to_component = {"component": 1.0, "integral": math.sqrt(4 * math.pi)}[base]
    from_component = {
        "component": 1.0,
        "integral": 1 / math.sqrt(4 * math.pi),
        "norm": 1 / math.sqrt(2 * l + 1),
    }[normalization]
    return to_component * from_component
