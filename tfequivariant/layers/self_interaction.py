"""The ``SelfInteraction`` (``Linear``) layer: equivariant channel mixing per (l, parity)."""

import math

import keras

from tfequivariant.irreps import Irreps

__all__ = ["SelfInteraction", "Linear", "parse_irreps"]


def parse_irreps(irreps, name):
    """``Irreps(irreps)`` with a ``ValueError`` that names the argument."""
    try:
        return Irreps(irreps)
    except ValueError as e:
        raise ValueError(f"Invalid {name}: {e} Received: {name}={irreps!r}") from None


def mix_channels(blocks, weight):
    """``out[n, w, m] = sum_u blocks[n, u, m] weight[u, w]`` for one irrep type."""
    ops = keras.ops
    if blocks.shape[-1] == 1:
        return ops.matmul(blocks[..., 0], weight)[..., None]
    return ops.einsum("...um,uw->...wm", blocks, weight)


@keras.saving.register_keras_serializable(package="tfequivariant")
class SelfInteraction(keras.layers.Layer):
    """Self-interaction: an equivariant linear map mixing channels of equal (l, parity).

    ``out^{(l,p)}_{w m} = 1/sqrt(U) sum_u W^{(l,p)}_{u w} x^{(l,p)}_{u m} (+ b_w for 0e)``,
    ``U`` the number of input channels of that irrep; the same weights for every
    ``m``, so ``D(g)`` commutes with the map. This is e3nn's ``o3.Linear`` (with
    its "element" normalization and ``N(0, 1)`` initialisation); output irreps
    that no input irrep matches are zero, as in e3nn.

    Args:
        irreps_in: input irreps.
        irreps_out: output irreps, kept in the given order.
        use_bias: add a bias to even scalar (``0e``) outputs (default True).
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        features: ``[..., irreps_in.dim]``.

    Returns:
        ``[..., irreps_out.dim]``.

    Example:
        >>> layer = SelfInteraction("4x0e+2x1o", "3x0e+1x1o")
        >>> tuple(layer(keras.ops.ones((5, 10))).shape)
        (5, 6)

    References:
        Thomas, Smidt et al., "Tensor field networks", 2018 (self-interaction).
    """

    def __init__(self, irreps_in, irreps_out, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.irreps_in = parse_irreps(irreps_in, "irreps_in")
        self.irreps_out = parse_irreps(irreps_out, "irreps_out")
        self.use_bias = bool(use_bias)
        # One weight matrix per irrep type present in both.
        self._types = []
        for _, ir in self.irreps_out:
            if ir not in self._types and self.irreps_in.count(ir) > 0:
                self._types.append(ir)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"features must have last dimension irreps_in.dim = {self.irreps_in.dim} "
                f"({self.irreps_in}). Received shape: {tuple(input_shape)}"
            )
        self.weights_by_type = {}
        for ir in self._types:
            self.weights_by_type[str(ir)] = self.add_weight(
                name=f"weight_{ir}",
                shape=(self.irreps_in.count(ir), self.irreps_out.count(ir)),
                initializer=keras.initializers.RandomNormal(stddev=1.0),
            )
        n_bias = self.irreps_out.count("0e") if self.use_bias else 0
        self.bias = (
            self.add_weight(name="bias", shape=(n_bias,), initializer="zeros") if n_bias else None
        )

    def call(self, features):
        ops = keras.ops
        x = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        lead = ops.shape(x)[:-1]
        in_blocks = self.irreps_in.split(x)
        results = {}
        for ir in self._types:
            parts = [b for b, (mul, ir_in) in zip(in_blocks, self.irreps_in) if ir_in == ir and mul > 0]
            blocks = ops.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0]
            w = ops.cast(self.weights_by_type[str(ir)], self.compute_dtype)
            results[ir] = mix_channels(blocks, w) / math.sqrt(self.irreps_in.count(ir))
        out, offsets, bias_offset = [], {}, 0
        for mul, ir in self.irreps_out:
            if mul == 0:
                continue
            if ir in results:
                start = offsets.get(ir, 0)
                block = results[ir][..., start : start + mul, :]
                offsets[ir] = start + mul
                block = ops.reshape(block, tuple(lead) + (mul * ir.dim,))
            else:
                block = ops.zeros(tuple(lead) + (mul * ir.dim,), dtype=self.compute_dtype)
            if self.bias is not None and ir.is_scalar():
                block = block + ops.cast(self.bias[bias_offset : bias_offset + mul], self.compute_dtype)
                bias_offset += mul
            out.append(block)
        if not out:
            return ops.zeros(tuple(lead) + (0,), dtype=self.compute_dtype)
        return ops.concatenate(out, axis=-1) if len(out) > 1 else out[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.irreps_out.dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps_in": str(self.irreps_in),
            "irreps_out": str(self.irreps_out),
            "use_bias": self.use_bias,
        }


Linear = SelfInteraction
