"""The filter tensor products evaluated in each edge's own frame (the SO(2) reduction of eSCN).

A filter's tensor product ``f_j (x) Y(r)`` is equivariant, so with any rotation
``R_e`` that takes the y axis (e3nn's polar axis) to ``r / |r|``:

    C (f (x) Y(r)) = D(R_e) C (D(R_e)^T f (x) Y(y)),

and ``Y_l(y)`` is zero but for its ``m = 0`` component, ``sqrt(2l + 1)`` (component
normalization). Every path ``l_i x l_f -> l_o`` is then one constant
``[2l_i+1, 2l_o+1]`` matrix (the Clebsch–Gordan slice at ``m_f = 0``, nonzero only
where ``|m_i| = |m_o|``) instead of a product with all ``2l_f+1`` harmonics: the
reduction of Passaro & Zitnick (eSCN, 2023). The weights per path are those of the
plain tensor product, so the numbers are the same as ``tensor_product``'s.

The rotation is ``R_e = R_y(alpha) R_x(beta)`` (Y-X-Y Euler angles with gamma = 0),
applied per degree as ``D_y(alpha) Dp D_y(beta) Dp^T``: ``D_y`` mixes ``m`` with
``-m`` by ``cos |m| theta`` and ``sin |m| theta`` (elementwise with a reversal of
the ``m`` axis), ``Dp`` is the constant Wigner matrix of ``P = R_z(-pi/2)``, which
turns rotations about y into rotations about x. The cosines and sines come from
the edge's coordinates by the Chebyshev recursion: no trigonometric function.

Euler angles are singular where ``r`` is along +-y (alpha undefined, and the
gradient through it unbounded). Edges with ``r_y^2 > |r|^2 / 2`` use the frame
``P R_u`` of ``u = P^T r / |r|`` instead, whose pole is the x axis: in the
frame each edge uses, ``sin(beta) >= 1 / sqrt(2)``, so values and gradients are
exact everywhere (the result does not depend on the frame chosen).
"""

import numpy as np

from tfequivariant import ops as tfe_ops
from tfequivariant.so3 import matrix_to_angles, matrix_z, wigner_3j, wigner_D

__all__ = ["SO2Plan", "edge_frame", "so2_products"]

_P = matrix_z(-np.pi / 2)  # P y = x: P R_y(b) P^T = R_x(b)


class SO2Plan:
    """Constants of the SO(2) evaluation of ``uvw`` paths ``irreps_in x irreps_sh -> irreps_out``.

    The paths into each output block are applied together: per input block, one
    constant matrix (the paths' ``[2l_i+1, 2l_o+1]`` slices side by side), and per
    output block one per-edge product with the weights of all its paths, whose
    columns ``column_order`` puts in the matching ``(input block, u, path)`` order.

    Args:
        irreps_in, irreps_sh, irreps_out: the product's irreps (``irreps_sh``: harmonics,
            multiplicity 1).
        instructions: planned instructions (``plan_instructions``), all ``uvw``, in the
            order of the weight columns.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_out, instructions):
        bad = [str(ins) for ins in instructions if ins.mode != "uvw" or not ins.has_weight]
        if bad or any(mul != 1 for mul, _ in irreps_sh):
            raise ValueError(
                "The SO(2) evaluation handles weighted 'uvw' paths with harmonics of multiplicity 1. "
                f"Received: irreps_sh={irreps_sh}, other instructions: {bad}"
            )
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.lmax = max([ir.l for _, ir in irreps_in] + [ir.l for _, ir in irreps_out])
        angles = matrix_to_angles(_P)
        self.dp = {l: wigner_D(l, *angles) for l in range(1, self.lmax + 1)}
        offsets = np.cumsum([0] + [int(np.prod(ins.path_shape)) for ins in instructions])
        # per output block: (i_out, [(i_in, M [2l_i+1, n_paths * (2l_o+1)], scale pattern or None)], columns)
        self.groups, order = [], []
        for i_out, (mul_o, ir_o) in enumerate(irreps_out):
            inputs, columns = [], []
            for i_in, (mul_i, ir_i) in enumerate(irreps_in):
                paths = [(k, ins) for k, ins in enumerate(instructions) if ins.i_out == i_out and ins.i_in1 == i_in]
                if not paths:
                    continue
                mats, has_harmonic = [], []
                for _, ins in paths:
                    l_f = irreps_sh[ins.i_in2].ir.l
                    # Y_l(y) = sqrt(2l + 1) e_{m=0} (component normalization)
                    mats.append(wigner_3j(ir_i.l, l_f, ir_o.l)[:, l_f, :] * np.sqrt(2 * l_f + 1) * ins.coefficient)
                    has_harmonic.append(np.full(ir_o.dim, l_f > 0))
                pattern = np.concatenate(has_harmonic)
                inputs.append((i_in, np.concatenate(mats, axis=1), pattern if pattern.any() else None))
                # weight columns in (u, path, w) order
                for u in range(mul_i):
                    for k, _ in paths:
                        columns.extend(offsets[k] + u * mul_o + np.arange(mul_o))
            if inputs:
                self.groups.append((i_out, inputs, len(columns) // mul_o))
                order.extend(columns)
        self.column_order = np.asarray(order, dtype=np.int64)
        assert sorted(order) == list(range(int(offsets[-1])))


def edge_frame(vec, lmax, dtype):
    """Per-edge rotation data: ``(cos, sin, use_p, nonzero)``.

    ``cos[l]``, ``sin[l]`` are ``(C, S)`` pairs ``[E, 2l+1]`` for the two angles
    (``alpha``, ``beta``) with ``C = cos(|m| theta)``, ``S = sign(m) sin(|m| theta)``;
    ``use_p [E, 1, 1]`` marks edges in the second chart; ``nonzero [E]`` is 1 for
    edges of nonzero length (a zero-length edge has harmonics ``Y_0`` only). Computed
    in ``vec``'s dtype, returned in ``dtype``.
    """
    import tensorflow as tf

    n2 = tf.reduce_sum(vec * vec, axis=-1, keepdims=True)
    nonzero = tf.greater(n2, 0)
    unit = vec / tfe_ops.safe_sqrt(tf.where(nonzero, n2, tf.ones_like(n2)))
    unit = tf.where(nonzero, unit, tf.constant([[0.0, 1.0, 0.0]], vec.dtype))  # any unit vector
    use_p = tf.greater(unit[:, 1:2] ** 2, 0.5)
    u = tf.where(use_p, tf.matmul(unit, tf.constant(_P, vec.dtype)), unit)  # u = P^T r_hat
    ux, uy, uz = u[:, 0], u[:, 1], u[:, 2]
    rho = tf.sqrt(tf.maximum(ux * ux + uz * uz, 0.25))  # >= 1/sqrt(2) in the chosen chart
    tables = []
    for c1, s1 in ((uz / rho, ux / rho), (uy, rho)):  # alpha, beta
        cos_m, sin_m = [tf.ones_like(c1)], [tf.zeros_like(s1)]
        for _ in range(lmax):
            c, s = cos_m[-1], sin_m[-1]
            cos_m.append(c * c1 - s * s1)
            sin_m.append(s * c1 + c * s1)
        per_l = {}
        for l in range(1, lmax + 1):
            ms = range(-l, l + 1)
            per_l[l] = (tf.stack([cos_m[abs(m)] for m in ms], axis=-1),
                        tf.stack([float(np.sign(m)) * sin_m[abs(m)] for m in ms], axis=-1))
        tables.append(per_l)
    cast = lambda t: tf.cast(t, dtype)
    tables = [{l: (cast(c), cast(s)) for l, (c, s) in per_l.items()} for per_l in tables]
    return tables[0], tables[1], use_p[:, :, None], cast(nonzero[:, 0])


def _const(v, a):
    """``v [E, mul, d] @ a [d, d']`` for a constant ``a``."""
    import tensorflow as tf

    d, d2 = a.shape
    mul = v.shape[1]
    return tf.reshape(tf.matmul(tf.reshape(v, (-1, d)), tf.constant(a, v.dtype)), (-1, mul, d2))


def _rot_y(v, cs, transpose):
    """``v @ D_y(theta)`` (or ``@ D_y(theta)^T``), ``cs`` the ``(C, S)`` pair of the degree."""
    import tensorflow as tf

    c, s = cs
    r = tf.reverse(v, axis=[-1]) * s[:, None, :]
    return v * c[:, None, :] + (-r if transpose else r)


def _to_frame(v, l, plan, frame):
    """``v @ D(R_e)`` (the block in the edge's frame)."""
    import tensorflow as tf

    alpha, beta, use_p, _ = frame
    dp = plan.dp[l]
    v = tf.where(use_p, _const(v, dp), v)
    v = _rot_y(v, alpha[l], False)
    v = _rot_y(_const(v, dp), beta[l], False)
    return _const(v, dp.T)


def _from_frame(v, l, plan, frame):
    """``v @ D(R_e)^T`` (the block back in the global frame)."""
    import tensorflow as tf

    alpha, beta, use_p, _ = frame
    dp = plan.dp[l]
    v = _rot_y(_const(v, dp), beta[l], True)
    v = _rot_y(_const(v, dp.T), alpha[l], True)
    return tf.where(use_p, _const(v, dp.T), v)


def so2_products(plan, x_send, frame, h, radial_output, ordered=False):
    """The weighted tensor products of every edge, evaluated in the edge's frame.

    Args:
        plan: ``SO2Plan``.
        x_send: ``[E, irreps_in.dim]`` sender features.
        frame: ``edge_frame(vec, plan.lmax, dtype)``.
        h: ``[E, H]`` last hidden layer of the radial network.
        radial_output: ``[H, weight_numel]`` its linear last layer (weights ``h @ W / sqrt(H)``).
        ordered: ``radial_output``'s columns are already in ``plan.column_order`` (gathered
            once outside a loop over chunks of edges).

    Returns:
        ``[E, irreps_out.dim]``, equal to ``tensor_product`` of the sender features with
        the harmonics of the edges and the per-edge weights.
    """
    import math

    import tensorflow as tf

    dtype = x_send.dtype
    nonzero = frame[3][:, None]
    blocks = plan.irreps_in.split(x_send)
    rotated = {}
    columns = tf.cast(radial_output, dtype)
    if not ordered:
        columns = tf.gather(columns, plan.column_order, axis=1)
    h = h / math.sqrt(int(h.shape[-1]))
    sizes = [a * plan.irreps_out[i_out].mul for i_out, _, a in plan.groups]
    per_out = {}
    for (i_out, inputs, a), w_cols in zip(plan.groups, tf.split(columns, sizes, axis=1) if len(sizes) > 1 else [columns]):
        mul_o, ir_o = plan.irreps_out[i_out]
        z = []
        for i_in, m, pattern in inputs:
            if i_in not in rotated:
                l_in = plan.irreps_in[i_in].ir.l
                rotated[i_in] = blocks[i_in] if l_in == 0 else _to_frame(blocks[i_in], l_in, plan, frame)
            zi = _const(rotated[i_in], m)  # [E, mul_in, n_paths * (2l_o+1)]
            if pattern is not None:  # zero-length edges: harmonics of degree > 0 vanish
                p = tf.constant(pattern.astype(np.float64), dtype)
                zi = zi * (nonzero * p + (1 - p))[:, None, :]
            z.append(tf.reshape(zi, (-1, zi.shape[1] * (m.shape[1] // ir_o.dim), ir_o.dim)))
        z = tf.concat(z, axis=1) if len(z) > 1 else z[0]  # [E, a, 2l_o+1]
        w = tf.reshape(tf.matmul(h, w_cols), (-1, a, mul_o))
        per_out[i_out] = tf.matmul(w, z, transpose_a=True)  # [E, mul_o, 2l_o+1]
    out = []
    for i_out, (mul, ir) in enumerate(plan.irreps_out):
        if mul == 0:
            continue
        y = per_out.get(i_out)
        if y is None:
            out.append(tf.zeros((tf.shape(x_send)[0], mul * ir.dim), dtype))
            continue
        if ir.l > 0:
            y = _from_frame(y, ir.l, plan, frame)
        out.append(tf.reshape(y, (-1, mul * ir.dim)))
    return tf.concat(out, axis=-1) if len(out) > 1 else out[0]
