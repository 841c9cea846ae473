"""The per-node ("neighbour-last") form of a convolution with a linear last radial layer.

For a receiver ``n`` with incoming edges ``k``, a fully connected tensor product
whose weights are ``W h_k`` (``h_k`` the radial network's last hidden layer,
``W`` its last, linear, layer) sums to

    out[n, w, m_o] = sum_{a, c} W[c, a, w] s[n, (m_o, a), c],
    s[n, (m_o, a), c] = sum_k t[n, (m_o, a), k] h[n, k, c],

with ``t`` the weightless Clebsch–Gordan products of the sender's features and
the edge's harmonics, ``a = (u, v)`` the input channel pair of a path. The
neighbour sum is a batched matmul and ``W`` is applied once per node instead of
once per edge (DESIGN.md section 5). Layout choices, each measured on the shared
benchmark (XLA, 2 CPU cores):

* ``t`` is built directly as ``[N, Q, K]`` (neighbour index last: XLA's CPU
  batched matmul is about 2x slower with the contraction on the left operand's
  major axis), from per-block slices of the padded sender features and
  harmonics with the Clebsch–Gordan coefficients as constants; plain
  elementwise ops, so TensorFlow's own gradient applies (any order).
  Alternatives measured and dropped: gathering ``t``'s rows with constant index
  tables (XLA materialized every gathered term, 120 MB each, in the backward
  pass) and a broadcast-and-reduce per path (slower fusions).
* one ``t`` and one neighbour-sum matmul per output block, rows ordered
  (``m_o``, path, ``u``, ``v``): its ``s`` is then ``[N dim_o, (path, u, v, c)]``
  as it stands, and the last layer is one plain matmul per output block. (One
  ``t`` for all blocks made XLA concatenate the rows of all blocks and copy each
  block's rows out of ``s`` again: in-process A/B, ``node_chunk=8``, forward
  79.9 -> 65.7 ms, forward+backward 297 -> 284, the same numbers to the bit.)
"""

import math

import numpy as np

from tfequivariant.so3 import wigner_3j

__all__ = ["PerNodePlan", "last_layer_weights", "per_node_convolution"]

_ZERO = 1e-12


class PerNodePlan:
    """The paths of one convolution grouped for the per-node form (built once per layer).

    Args:
        irreps_in, irreps_sh, irreps_out: the convolution's irreps.
        instructions: planned ``uvw`` instructions (``plan_instructions``), in the
            order of the radial network's output columns.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_out, instructions):
        x_off, s_off = irreps_in.slices(), irreps_sh.slices()
        offsets = np.cumsum([0] + [int(np.prod(ins.path_shape)) for ins in instructions])  # into radial_output
        # per output block: (mul_o, dim_o, [path]); path = (x slice, mul1, dim1, sh slice, mul2, dim2,
        # CG [dim1, dim2, dim_o] times the path coefficient, weight offset)
        self.groups = []
        for i_out, (mul_o, ir_o) in enumerate(irreps_out):
            paths = []
            for k, ins in enumerate(instructions):
                if ins.i_out != i_out:
                    continue
                (mul1, ir1), (mul2, ir2) = irreps_in[ins.i_in1], irreps_sh[ins.i_in2]
                cg = wigner_3j(ir1.l, ir2.l, ir_o.l) * ins.coefficient
                paths.append((x_off[ins.i_in1], mul1, ir1.dim, s_off[ins.i_in2], mul2, ir2.dim, cg, offsets[k]))
            self.groups.append((mul_o, ir_o.dim, paths))


def _products(plan, features_t, sh_t):
    """Weightless products, one ``t [N, Q_g, K]`` per output block, rows (``m_o``, path, ``u``, ``v``)."""
    import tensorflow as tf

    k = tf.shape(features_t)[2]
    # path key -> (the sender block's components x_i [N, mul1, 1, K], the harmonics' Y_j [N, 1, mul2, K]),
    # each sliced once: slicing them per m_o and per CG entry made a node block's graph ~2x
    # larger (Const and StridedSlice ops), which TensorFlow and XLA pay for in tracing,
    # compilation and the Python stack trace they keep per op
    blocks = {}
    per_block = []
    for _, dim_o, paths in plan.groups:
        rows = []
        for m_o in range(dim_o):
            for xs, mul1, d1, ss, mul2, d2, cg, _ in paths:
                key = (xs.start, ss.start)
                if key not in blocks:
                    x = tf.reshape(features_t[:, xs], (-1, mul1, d1, k))
                    y = tf.reshape(sh_t[:, ss], (-1, mul2, d2, k))
                    # slices, not tf.unstack: TFLite's UNPACK rejects an empty graph's zero-size input
                    blocks[key] = ([x[:, :, i : i + 1] for i in range(d1)], [y[:, None, :, j] for j in range(d2)])
                x_i, y_j = blocks[key]
                acc = None
                for i in range(d1):
                    a = None  # [N, 1, mul2, K]: sum_j cg[i, j, m_o] Y_j
                    for j in range(d2):
                        c = float(cg[i, j, m_o])
                        if abs(c) > _ZERO:
                            a = c * y_j[j] if a is None else a + c * y_j[j]
                    if a is not None:
                        term = x_i[i] * a  # [N, mul1, mul2, K]
                        acc = term if acc is None else acc + term
                if acc is None:  # the CG slice is zero for this m_o
                    acc = tf.zeros_like(x_i[0] * y_j[0])
                rows.append(tf.reshape(acc, (-1, mul1 * mul2, k)))
        per_block.append(tf.concat(rows, axis=1) if len(rows) > 1 else rows[0])
    return per_block


def last_layer_weights(plan, radial_output, dtype):
    """The last radial layer rearranged for ``per_node_convolution``: one matrix per output block.

    Args:
        plan: ``PerNodePlan``.
        radial_output: ``[H, weight_numel]`` last radial layer.
        dtype: compute dtype.

    Returns:
        list, per output block, of ``[(path, u, v, c), mul_out]`` matrices, the
        ``1/sqrt(H)`` factor included. Built once per call, outside any node
        blocks, so that blocks receive contiguous matrices (and their weight
        gradients are plain sums).
    """
    import tensorflow as tf

    hidden = int(radial_output.shape[0])
    w_all = tf.cast(radial_output, dtype) / math.sqrt(hidden)
    weights = []
    for mul_o, _, paths in plan.groups:
        w_g = [
            tf.reshape(tf.transpose(tf.reshape(w_all[:, off : off + n * mul_o], (hidden, n, mul_o)), (1, 0, 2)),
                       (n * hidden, mul_o))
            for n, off in ((mul1 * mul2, off) for _, mul1, _, _, mul2, _, _, off in paths)
        ]
        weights.append(tf.concat(w_g, axis=0) if len(w_g) > 1 else w_g[0])
    return weights


def per_node_convolution(plan, features_t, sh_t, h_pad, weights):
    """The neighbour sum and last radial layer of ``PointConvolution``'s per-node form.

    Args:
        plan: ``PerNodePlan``.
        features_t: ``[N, irreps_in.dim, K]`` sender features per neighbour slot (zeros
            in empty slots), neighbour index last.
        sh_t: ``[N, irreps_sh.dim, K]`` edge harmonics, same layout.
        h_pad: ``[N, K, H]`` last hidden layer of the radial network (zeros in empty slots).
        weights: ``last_layer_weights(plan, radial_output, dtype)``.

    Returns:
        ``[N, irreps_out.dim]`` (before the ``1/sqrt(avg_num_neighbors)`` factor).
    """
    import tensorflow as tf

    hidden = h_pad.shape[-1]
    out = []
    for (mul_o, dim_o, paths), w_g, t_g in zip(plan.groups, weights, _products(plan, features_t, sh_t)):
        puv = sum(mul1 * mul2 for _, mul1, _, _, mul2, _, _, _ in paths)
        s_g = tf.reshape(tf.matmul(t_g, h_pad), (-1, puv * hidden))  # [N dim_o, (p, u, v, c)]
        y = tf.reshape(tf.matmul(s_g, w_g), (-1, dim_o, mul_o))
        out.append(tf.reshape(tf.transpose(y, (0, 2, 1)), (-1, mul_o * dim_o)))
    return tf.concat(out, axis=-1) if len(out) > 1 else out[0]
