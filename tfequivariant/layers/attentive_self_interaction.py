"""The ``AttentiveSelfInteraction`` layer: channel mixing with per-node weights from invariants."""

import math

import keras
import numpy as np

from tfequivariant.layers._activations import get_activation, serialize_activation
from tfequivariant.layers._edge_filter import check_positive_int, second_moment_constant
from tfequivariant.layers.self_interaction import parse_irreps
from tfequivariant.layers.tensor_product import split_columns

__all__ = ["AttentiveSelfInteraction", "gram_invariants"]


def gram_invariants(blocks):
    """Upper triangle (diagonal included) of the Gram matrix of one irrep type's channels.

    ``blocks [..., C, 2l+1]`` -> ``[..., C (C + 1) / 2]``: ``<f_c, f_c'> / sqrt(2l+1)``
    for ``c <= c'``, row-major (``(0,0), (0,1), ..., (0,C-1), (1,1), ...``). The
    ``1/sqrt(2l+1)`` is e3nn's component normalization of the ``l x l -> 0e``
    product. The matrix is symmetric, so the upper triangle holds all of it.
    """
    ops = keras.ops
    channels, dim = blocks.shape[-2], blocks.shape[-1]
    if dim == 1:
        x = blocks[..., 0]
        gram = x[..., :, None] * x[..., None, :]
    else:
        gram = ops.einsum("...um,...vm->...uv", blocks, blocks) / math.sqrt(dim)
    if channels == 1:
        return gram[..., 0]
    rows, cols = np.triu_indices(channels)
    flat = ops.reshape(gram, tuple(ops.shape(gram)[:-2]) + (channels * channels,))
    return ops.take(flat, (rows * channels + cols).astype("int32"), axis=-1)


@keras.saving.register_keras_serializable(package="tfequivariant")
class AttentiveSelfInteraction(keras.layers.Layer):
    """Attentive self-interaction of the SE(3)-Transformer: per-node channel-mixing weights.

    For every irrep type ``(l, p)`` present in both ``irreps_in`` and
    ``irreps_out``, with ``U`` input and ``W`` output channels of that type:

    ``out_{i,w} = 1/sqrt(U) sum_u w_{i,u,w} f_{i,u}``,
    ``w_i = MLP(concat_types upper_triangle(<f_{i,u}, f_{i,u'}> / sqrt(2l+1)))``.

    The MLP's inputs are inner products of channels of equal type: invariant
    under rotations and (products of two equal parities) reflections, so the
    weights are invariant and the output transforms like the input. Unlike the
    paper's code (one MLP per degree, each seeing only its own degree's Gram
    matrix), a single MLP sees the Gram matrices of *every* input type jointly
    and emits the weights of every type: a vector channel's weight can depend
    on the scalar channels (as in a gate), and one matmul chain replaces a few
    small ones. Since each Gram matrix is symmetric only its upper triangle,
    diagonal included, is used. Input types no output uses still feed the MLP.
    Output irreps that no input irrep matches are zero.

    The MLP follows e3nn's ``FullyConnectedNet`` normalization (weights
    ``N(0, 1)`` divided by ``sqrt(fan_in)``, activations rescaled to unit
    second moment) plus biases initialised to 0; its output is laid out type by
    type in the order types first appear in ``irreps_out``, each a row-major
    ``[U, W]`` matrix as in ``SelfInteraction``. The ``1/sqrt(U)`` replaces the
    paper code's softmax over input channels, so the weights are free in sign
    and unit-variance inputs give outputs of order one.

    Args:
        irreps_in: input irreps.
        irreps_out: output irreps, kept in the given order.
        hidden: hidden sizes of the weight MLP (default ``(32,)``; ``()`` makes
            the weights an affine function of the invariants).
        activation: the MLP's activation, a Keras activation name or callable
            (default ``"silu"``).
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        features: ``[..., irreps_in.dim]``.

    Returns:
        ``[..., irreps_out.dim]``.

    Example:
        >>> layer = AttentiveSelfInteraction("4x0e+2x1o", "3x0e+1x1o")
        >>> tuple(layer(keras.ops.ones((5, 10))).shape)
        (5, 6)

    References:
        Fuchs, Worrall, Fischer, Welling, "SE(3)-Transformers: 3D Roto-Translation
        Equivariant Attention Networks", NeurIPS 2020 (attentive self-interaction).
    """

    def __init__(self, irreps_in, irreps_out, hidden=(32,), activation="silu", **kwargs):
        super().__init__(**kwargs)
        self.irreps_in = parse_irreps(irreps_in, "irreps_in")
        self.irreps_out = parse_irreps(irreps_out, "irreps_out")
        if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
            hidden = (hidden,)
        if not isinstance(hidden, (list, tuple)):
            raise ValueError(f"hidden must be a list of ints >= 1. Received: hidden={hidden!r}")
        self.hidden = tuple(check_positive_int(h, "hidden") for h in hidden)
        self.activation = get_activation(activation, "activation")
        if self.activation is None:
            raise ValueError("activation must be a Keras activation name or a callable. Received: None")
        self._act_scale = second_moment_constant(self.activation)
        # Every input type feeds the MLP; the types present in both get weights.
        self._in_types = []
        for mul, ir in self.irreps_in:
            if mul > 0 and ir not in self._in_types:
                self._in_types.append(ir)
        self._types = []
        for mul, ir in self.irreps_out:
            if mul > 0 and ir not in self._types and ir in self._in_types:
                self._types.append(ir)
        self._num_invariants = sum(
            self.irreps_in.count(ir) * (self.irreps_in.count(ir) + 1) // 2 for ir in self._in_types
        )
        self._num_weights = sum(self.irreps_in.count(ir) * self.irreps_out.count(ir) for ir in self._types)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"features must have last dimension irreps_in.dim = {self.irreps_in.dim} "
                f"({self.irreps_in}). Received shape: {tuple(input_shape)}"
            )
        self.mlp_kernels, self.mlp_biases = [], []
        if not self._types:
            return
        fan_in = self._num_invariants
        for k, size in enumerate(tuple(self.hidden) + (self._num_weights,)):
            name = str(k) if k < len(self.hidden) else "out"
            self.mlp_kernels.append(
                self.add_weight(
                    name=f"mlp_kernel_{name}",
                    shape=(fan_in, size),
                    initializer=keras.initializers.RandomNormal(stddev=1.0),
                )
            )
            self.mlp_biases.append(self.add_weight(name=f"mlp_bias_{name}", shape=(size,), initializer="zeros"))
            fan_in = size

    def _blocks_by_type(self, x):
        blocks = self.irreps_in.split(x)
        out = {}
        for ir in self._in_types:
            parts = [b for b, (mul, ir_in) in zip(blocks, self.irreps_in) if ir_in == ir and mul > 0]
            out[ir] = keras.ops.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0]
        return out

    def _mixing_weights(self, blocks):
        ops = keras.ops
        invariants = [gram_invariants(blocks[ir]) for ir in self._in_types]
        h = ops.concatenate(invariants, axis=-1) if len(invariants) > 1 else invariants[0]
        for k, (kernel, bias) in enumerate(zip(self.mlp_kernels, self.mlp_biases)):
            kernel = ops.cast(kernel, self.compute_dtype)
            h = ops.matmul(h, kernel) / math.sqrt(kernel.shape[0]) + ops.cast(bias, self.compute_dtype)
            if k < len(self.hidden):
                h = self.activation(h) * self._act_scale
        return h

    def call(self, features):
        ops = keras.ops
        x = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        lead = tuple(ops.shape(x)[:-1])
        results = {}
        if self._types:
            blocks = self._blocks_by_type(x)
            weights = self._mixing_weights(blocks)
            shapes = [(self.irreps_in.count(ir), self.irreps_out.count(ir)) for ir in self._types]
            parts = split_columns(weights, [u * w for u, w in shapes])
            for ir, (u, w), part in zip(self._types, shapes, parts):
                wt = ops.reshape(part, lead + (u, w))
                results[ir] = ops.einsum("...um,...uw->...wm", blocks[ir], wt) / math.sqrt(u)
        out, offsets = [], {}
        for mul, ir in self.irreps_out:
            if mul == 0:
                continue
            if ir in results:
                start = offsets.get(ir, 0)
                offsets[ir] = start + mul
                out.append(ops.reshape(results[ir][..., start : start + mul, :], lead + (mul * ir.dim,)))
            else:
                out.append(ops.zeros(lead + (mul * ir.dim,), dtype=self.compute_dtype))
        if not out:
            return ops.zeros(lead + (0,), dtype=self.compute_dtype)
        return ops.concatenate(out, axis=-1) if len(out) > 1 else out[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.irreps_out.dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps_in": str(self.irreps_in),
            "irreps_out": str(self.irreps_out),
            "hidden": list(self.hidden),
            "activation": serialize_activation(self.activation),
        }
