"""Clebsch–Gordan tensor products: ``TensorProduct`` and ``FullyConnectedTensorProduct``."""

import collections
import math

import keras
import numpy as np

from tfequivariant._xla import in_xla_context
from tfequivariant.layers.self_interaction import parse_irreps
from tfequivariant.so3 import wigner_3j

__all__ = ["TensorProduct", "FullyConnectedTensorProduct", "Instruction", "plan_instructions"]

_MODES = ("uvw", "uvu", "uuu")

Instruction = collections.namedtuple(
    "Instruction",
    ["i_in1", "i_in2", "i_out", "mode", "has_weight", "path_weight", "path_shape", "coefficient"],
)


def _num_elements(mode, mul1, mul2):
    return {"uvw": mul1 * mul2, "uvu": mul2, "uuu": 1}[mode]


def plan_instructions(
    irreps_in1,
    irreps_in2,
    irreps_out,
    instructions,
    irrep_normalization="component",
    path_normalization="element",
):
    """Validate instructions and attach e3nn's normalization coefficient to each.

    Each instruction is ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``.
    The coefficient follows e3nn's ``TensorProduct`` with unit input and output
    variances: ``sqrt(alpha)``, ``alpha = dim(ir_out) / x`` ("component") with
    ``x`` the number of elements summed into the output ("element": over every
    path into ``i_out``; "path": per path times the number of paths).
    """
    if irrep_normalization not in ("component", "norm", "none"):
        raise ValueError(
            "irrep_normalization must be 'component', 'norm' or 'none'. "
            f"Received: irrep_normalization={irrep_normalization!r}"
        )
    if path_normalization not in ("element", "path", "none"):
        raise ValueError(
            "path_normalization must be 'element', 'path' or 'none'. "
            f"Received: path_normalization={path_normalization!r}"
        )
    parsed = []
    for ins in instructions:
        if not isinstance(ins, (list, tuple)) or len(ins) not in (5, 6):
            raise ValueError(
                "Each instruction is (i_in1, i_in2, i_out, mode, has_weight[, path_weight]). "
                f"Received: {ins!r}"
            )
        i1, i2, io, mode, has_weight = ins[:5]
        path_weight = float(ins[5]) if len(ins) == 6 else 1.0
        for name, i, irreps in (("i_in1", i1, irreps_in1), ("i_in2", i2, irreps_in2), ("i_out", io, irreps_out)):
            if not (isinstance(i, (int, np.integer)) and 0 <= i < len(irreps)):
                raise ValueError(f"Instruction {ins!r}: {name}={i!r} is not a block index of {irreps}.")
        if mode not in _MODES:
            raise ValueError(f"Instruction {ins!r}: mode must be one of {_MODES}. Received: {mode!r}")
        mul1, ir1 = irreps_in1[i1]
        mul2, ir2 = irreps_in2[i2]
        mulo, iro = irreps_out[io]
        if iro not in list(ir1 * ir2):
            raise ValueError(
                f"Instruction {ins!r}: {ir1} x {ir2} cannot produce {iro} "
                f"(|l1-l2| <= l <= l1+l2 and p = p1 p2)."
            )
        if mode == "uvu" and mulo != mul1:
            raise ValueError(f"Instruction {ins!r}: mode 'uvu' needs mul_out == mul_in1 ({mulo} != {mul1}).")
        if mode == "uvw" and not has_weight and mulo != 1:
            raise ValueError(
                f"Instruction {ins!r}: an unweighted 'uvw' path sums every channel pair into one "
                f"output channel, so it needs mul_out == 1 (got {mulo}); give it weights or use 'uvu'/'uuu'."
            )
        if mode == "uuu" and not (mul1 == mul2 == mulo):
            raise ValueError(f"Instruction {ins!r}: mode 'uuu' needs equal multiplicities.")
        shape = {"uvw": (mul1, mul2, mulo), "uvu": (mul1, mul2), "uuu": (mul1,)}[mode] if has_weight else ()
        parsed.append((int(i1), int(i2), int(io), mode, bool(has_weight), path_weight, shape))

    out = []
    for i1, i2, io, mode, has_weight, path_weight, shape in parsed:
        mul1, ir1 = irreps_in1[i1]
        mul2, ir2 = irreps_in2[i2]
        _, iro = irreps_out[io]
        alpha = {"component": iro.dim, "norm": ir1.dim * ir2.dim, "none": 1}[irrep_normalization]
        if path_normalization == "element":
            x = sum(
                _num_elements(m, irreps_in1[a].mul, irreps_in2[b].mul)
                for a, b, c, m, *_ in parsed
                if c == io
            )
        elif path_normalization == "path":
            x = _num_elements(mode, mul1, mul2) * len([1 for p in parsed if p[2] == io])
        else:
            x = 1
        if x > 0:
            alpha /= x
        alpha *= path_weight
        out.append(Instruction(i1, i2, io, mode, has_weight, path_weight, shape, math.sqrt(alpha)))
    return out


def fully_connected_instructions(irreps_in1, irreps_in2, irreps_out):
    """Every ``uvw`` path ``in1 x in2 -> out`` allowed by the selection rules (e3nn's order)."""
    return [
        (i1, i2, io, "uvw", True)
        for i1, (_, ir1) in enumerate(irreps_in1)
        for i2, (_, ir2) in enumerate(irreps_in2)
        for io, (_, iro) in enumerate(irreps_out)
        if iro in list(ir1 * ir2)
    ]


def split_columns(w, sizes):
    """The last axis of ``w`` cut into consecutive pieces of ``sizes`` columns.

    One ``tf.split`` rather than a strided slice per piece: the gradient of a
    split is one concatenation, where each slice's gradient is a zero-padded
    tensor of ``w``'s full size, summed over the pieces (for per-edge weights
    ``[E, 6912]`` cut into 22 paths, 22 full-size tensors in the backward pass).
    Columns past ``sum(sizes)`` are dropped.
    """
    import tensorflow as tf

    sizes = [int(n) for n in sizes]
    total = sum(sizes)
    width = w.shape[-1]
    if width is not None and int(width) > total:
        sizes = sizes + [int(width) - total]
        return tf.split(w, sizes, axis=-1)[:-1]
    if len(sizes) == 1:
        return [w]
    return tf.split(w, sizes, axis=-1)


def radial_path_weights(h, radial_output, instructions):
    """Per-sample weights of each path from a linear last radial layer.

    ``h [B, H] @ radial_output [H, weight_numel] / sqrt(H)``, one product per path with
    that path's columns, reshaped to ``[B, *path_shape]``. One product per path rather
    than one for all paths cut afterwards: the ``[B, weight_numel]`` result is never
    formed, so there is no copy to cut it (nor one to join its gradient). On the
    attention benchmark's shapes (``[31912, 64] x [64, 6912]``) 162-187 instead of
    265-324 ms forward (two rounds of a micro-benchmark).
    """
    sizes = [int(np.prod(ins.path_shape)) for ins in instructions]
    h = h / math.sqrt(h.shape[-1])
    return [keras.ops.reshape(keras.ops.matmul(h, columns), (-1,) + tuple(ins.path_shape))
            for columns, ins in zip(split_columns(radial_output, sizes), instructions)]


# _XLA_PER_SAMPLE: per-sample contractions (per-edge weights, the features times the
# Clebsch–Gordan block per edge) are batched matmuls of tiny matrices, one per sample, which
# XLA's CPU back end runs 5-30x slower than the same sum written as a product and a reduction
# over the contracted axis: [31912 edges, u=16, k=3] x [u, w=16] per edge, `einsum` 59.4 ms
# under XLA against 5.6 ms as a product and sum (`tf.function`'s einsum: 9.0 ms, where the
# product and sum took 78.6). So under XLA, and only there, they are written that way.


def _cg_uv(a, b, C, xla=False):
    """``einsum("nui,nvj,ijk->nuvk", a, b, C)`` with the batch axis ``n`` leading in both products.

    ``b`` meets the Clebsch–Gordan block first as one plain matmul ``[n v, j] x [j, i k]``,
    then ``a`` per sample. Left to ``einsum`` the three-operand contraction put ``n`` in the
    columns of a batched matmul with the constant, which LiteRT's XNNPack delegate cannot
    resize to zero columns: a model on a graph with no edges failed to run there.
    ``xla``: the per-sample step as a product and a sum over ``i`` (``_XLA_PER_SAMPLE``).
    """
    ops = keras.ops
    n, v = ops.shape(b)[0], b.shape[1]
    di, dk = C.shape[0], C.shape[2]
    bc = _harmonics_times_cg(b, C)  # [n, v, i, k]
    if xla:
        return ops.sum(a[:, :, None, :, None] * bc[:, None], axis=3)
    bc = ops.reshape(ops.transpose(bc, (0, 2, 1, 3)), (n, di, v * dk))
    return ops.reshape(ops.matmul(a, bc), (n, a.shape[1], v, dk))


def _harmonics_times_cg(b, C):
    """``einsum("nvj,ijk->nvik", b, C)`` as one plain matmul ``[n v, j] x [j, i k]`` (the batch axis in rows)."""
    ops = keras.ops
    n, v, dj = ops.shape(b)[0], b.shape[1], b.shape[2]
    di, dk = C.shape[0], C.shape[2]
    bc = ops.matmul(ops.reshape(b, (-1, dj)), ops.reshape(ops.transpose(C, (1, 0, 2)), (dj, di * dk)))
    return ops.reshape(bc, (n, v, di, dk))


def _cg_uu(a, b, C):
    """``einsum("nui,nuj,ijk->nuk", a, b, C)`` with no batched matmul over the constant.

    Left to ``einsum``, the batch axis ``n`` ended up in the columns of a batched matmul
    (as in ``_cg_uv``), and LiteRT's XNNPack delegate failed to prepare a model on an empty
    batch. Here: one plain matmul with the batch axis in its rows, then a product and a sum
    over ``i`` (at most ``2 l1 + 1`` terms).
    """
    return keras.ops.sum(a[:, :, :, None] * _harmonics_times_cg(b, C), axis=2)


def tensor_product(x1_blocks, x2_blocks, weights, instructions, irreps_out, lead, dtype, shared):
    """The tensor product of split inputs.

    Args:
        x1_blocks, x2_blocks: lists of ``[B, mul, 2l+1]`` blocks.
        weights: one tensor per weighted instruction: its ``path_shape`` (shared)
            or ``[B, *path_shape]`` (per sample); None entries for unweighted.
        instructions: planned ``Instruction``s.
        irreps_out: output irreps.
        lead: the batch shape ``(B,)``.

    Returns:
        ``[B, irreps_out.dim]``.
    """
    ops = keras.ops
    xla = in_xla_context()
    per_out = [[] for _ in irreps_out]
    for ins, w in zip(instructions, weights):
        a, b = x1_blocks[ins.i_in1], x2_blocks[ins.i_in2]
        C = ops.convert_to_tensor(
            wigner_3j(a.shape[-1] // 2, b.shape[-1] // 2, irreps_out[ins.i_out].ir.l), dtype=dtype
        )
        if ins.mode == "uvw":
            t = _cg_uv(a, b, C, xla)
            if not ins.has_weight:
                y = ops.sum(t, axis=(1, 2))[:, None, :]
            elif shared:
                y = ops.einsum("nuvk,uvw->nwk", t, w)
            elif xla:  # _XLA_PER_SAMPLE
                y = ops.sum(t[:, :, :, None, :] * w[:, :, :, :, None], axis=(1, 2))
            else:
                y = ops.einsum("nuvk,nuvw->nwk", t, w)
        elif ins.mode == "uvu":
            t = _cg_uv(a, b, C, xla)
            if ins.has_weight:
                # a product and a sum over v, not einsum("nuvk,uv->nuk"), whose batched matmul put n
                # in its columns (LiteRT's XNNPack delegate failed on an empty batch); per sample
                # under XLA too (_XLA_PER_SAMPLE)
                if shared or xla:
                    y = ops.sum(t * (w[None, :, :, None] if shared else w[:, :, :, None]), axis=2)
                else:
                    y = ops.einsum("nuvk,nuv->nuk", t, w)
            else:
                y = ops.sum(t, axis=2)
        else:  # uuu
            t = _cg_uu(a, b, C)
            if ins.has_weight:
                y = t * (w[None, :, None] if shared else w[:, :, None])
            else:
                y = t
        per_out[ins.i_out].append(ins.coefficient * y)
    out = []
    for (mul, ir), ys in zip(irreps_out, per_out):
        if mul == 0:
            continue
        if ys:
            y = ys[0]
            for extra in ys[1:]:
                y = y + extra
            out.append(ops.reshape(y, tuple(lead) + (mul * ir.dim,)))
        else:
            out.append(ops.zeros(tuple(lead) + (mul * ir.dim,), dtype=dtype))
    if not out:
        return ops.zeros(tuple(lead) + (0,), dtype=dtype)
    return ops.concatenate(out, axis=-1) if len(out) > 1 else out[0]


@keras.saving.register_keras_serializable(package="tfequivariant")
class TensorProduct(keras.layers.Layer):
    """Clebsch–Gordan tensor product with weighted paths (e3nn's ``o3.TensorProduct``).

    For each instruction ``(i_in1, i_in2, i_out, mode, has_weight)``:
    ``out_{w k} += c * sum_{u v} W_{u v w} sum_{i j} C_{i j k} x1_{u i} x2_{v j}``
    (mode ``uvw``: every pair of channels to every output channel; ``uvu``:
    ``W_{u v}``, output channel ``u``; ``uuu``: channel-wise), ``C`` the
    ``wigner_3j`` of the three degrees and ``c`` e3nn's normalization
    coefficient, so unit-variance inputs give unit-variance outputs.

    Args:
        irreps_in1, irreps_in2, irreps_out: the irreps of the two inputs and the output.
        instructions: list of ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])``.
        irrep_normalization: ``"component"`` (default), ``"norm"`` or ``"none"``.
        path_normalization: ``"element"`` (default), ``"path"`` or ``"none"``.
        internal_weights: learn the weights in the layer (default True); False
            means weights are passed to ``call`` per sample (e.g. per edge from a
            radial network), ``[B, weight_numel]`` in e3nn's flat layout.
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        x1: ``[B, irreps_in1.dim]``.
        x2: ``[B, irreps_in2.dim]``.
        weight: ``[B, weight_numel]`` when ``internal_weights=False``.

    Returns:
        ``[B, irreps_out.dim]``.

    Example:
        >>> tp = TensorProduct("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uvw", False)])
        >>> tuple(tp(keras.ops.ones((2, 3)), keras.ops.ones((2, 3))).shape)
        (2, 1)

    References:
        Thomas, Smidt et al., "Tensor field networks", 2018; Geiger & Smidt,
        "e3nn: Euclidean neural networks", 2022.
    """

    def __init__(
        self,
        irreps_in1,
        irreps_in2,
        irreps_out,
        instructions,
        irrep_normalization="component",
        path_normalization="element",
        internal_weights=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.irreps_in1 = parse_irreps(irreps_in1, "irreps_in1")
        self.irreps_in2 = parse_irreps(irreps_in2, "irreps_in2")
        self.irreps_out = parse_irreps(irreps_out, "irreps_out")
        self.irreps_in = self.irreps_in1
        self._raw_instructions = [tuple(i) for i in instructions]
        self.instructions = plan_instructions(
            self.irreps_in1,
            self.irreps_in2,
            self.irreps_out,
            self._raw_instructions,
            irrep_normalization,
            path_normalization,
        )
        self.irrep_normalization = irrep_normalization
        self.path_normalization = path_normalization
        self.internal_weights = bool(internal_weights)
        self.weight_numel = sum(int(np.prod(i.path_shape)) for i in self.instructions if i.has_weight)

    def _check(self, shape, irreps, name):
        if shape[-1] is not None and shape[-1] != irreps.dim:
            raise ValueError(
                f"{name} must have last dimension {irreps.dim} ({irreps}). Received shape: {tuple(shape)}"
            )

    def build(self, x1_shape, x2_shape, weight_shape=None):
        self._check(x1_shape, self.irreps_in1, "x1")
        self._check(x2_shape, self.irreps_in2, "x2")
        if self.internal_weights and self.weight_numel:
            self.weight = self.add_weight(
                name="weight",
                shape=(self.weight_numel,),
                initializer=keras.initializers.RandomNormal(stddev=1.0),
            )
        else:
            self.weight = None

    def _split_weights(self, w, shared):
        ops = keras.ops
        weighted = [ins for ins in self.instructions if ins.has_weight]
        parts = iter(split_columns(w, [int(np.prod(ins.path_shape)) for ins in weighted]) if weighted else ())
        out = []
        for ins in self.instructions:
            if not ins.has_weight:
                out.append(None)
                continue
            out.append(ops.reshape(next(parts), ins.path_shape if shared else (-1,) + tuple(ins.path_shape)))
        return out

    def call(self, x1, x2, weight=None):
        ops = keras.ops
        x1 = ops.convert_to_tensor(x1, dtype=self.compute_dtype)
        x2 = ops.convert_to_tensor(x2, dtype=self.compute_dtype)
        if self.internal_weights:
            if weight is not None:
                raise ValueError("This TensorProduct has internal weights; do not pass `weight`.")
            w = ops.cast(self.weight, self.compute_dtype) if self.weight is not None else None
            shared = True
        else:
            if weight is None and self.weight_numel:
                raise ValueError(
                    f"internal_weights=False: pass weight of shape [B, {self.weight_numel}] to call."
                )
            w = ops.convert_to_tensor(weight, dtype=self.compute_dtype) if weight is not None else None
            if w is not None and w.shape[-1] is not None and w.shape[-1] != self.weight_numel:
                raise ValueError(
                    f"weight must have last dimension weight_numel = {self.weight_numel}. "
                    f"Received shape: {tuple(w.shape)}"
                )
            shared = False
        weights = self._split_weights(w, shared) if w is not None else [None] * len(self.instructions)
        lead = ops.shape(x1)[:-1]
        return tensor_product(
            self.irreps_in1.split(x1),
            self.irreps_in2.split(x2),
            weights,
            self.instructions,
            self.irreps_out,
            lead,
            self.compute_dtype,
            shared,
        )

    def compute_output_shape(self, x1_shape, x2_shape, weight_shape=None):
        return tuple(x1_shape[:-1]) + (self.irreps_out.dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps_in1": str(self.irreps_in1),
            "irreps_in2": str(self.irreps_in2),
            "irreps_out": str(self.irreps_out),
            "instructions": [list(i) for i in self._raw_instructions],
            "irrep_normalization": self.irrep_normalization,
            "path_normalization": self.path_normalization,
            "internal_weights": self.internal_weights,
        }


@keras.saving.register_keras_serializable(package="tfequivariant")
class FullyConnectedTensorProduct(TensorProduct):
    """Fully connected (``uvw``) tensor product over every allowed path.

    Every ``in1 x in2 -> out`` combination allowed by the selection rules gets a
    weight tensor ``[mul1, mul2, mul_out]``; paths whose output is not in
    ``irreps_out`` are skipped, and an ``irreps_out`` block that no path can
    produce raises ``ValueError``.

    Args:
        irreps_in1, irreps_in2, irreps_out: irreps of the inputs and the output.
        **kwargs: ``irrep_normalization``, ``path_normalization``,
            ``internal_weights`` (see ``TensorProduct``) and base ``Layer`` arguments.

    Example:
        >>> tp = FullyConnectedTensorProduct("2x0e+1x1o", "1x0e+1x1o", "3x0e+2x1o")
        >>> tp.weight_numel
        15
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, **kwargs):
        kwargs.pop("instructions", None)
        in1 = parse_irreps(irreps_in1, "irreps_in1")
        in2 = parse_irreps(irreps_in2, "irreps_in2")
        out = parse_irreps(irreps_out, "irreps_out")
        instructions = fully_connected_instructions(in1, in2, out)
        reached = {ins[2] for ins in instructions}
        missing = [str(out[i]) for i in range(len(out)) if i not in reached and out[i].mul > 0]
        if missing:
            raise ValueError(
                f"irreps_out contains {', '.join(missing)}, which no path {in1} x {in2} can produce. "
                f"Received: irreps_out={str(out)!r}"
            )
        super().__init__(in1, in2, out, instructions, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("instructions")
        return config
