"""The ``NormNonlinearity`` layer: the Tensor Field Network nonlinearity."""

import keras

from tfequivariant import ops as tfe_ops
from tfequivariant.layers._activations import activation_parity, get_activation, serialize_activation
from tfequivariant.layers.self_interaction import parse_irreps

__all__ = ["NormNonlinearity"]


@keras.saving.register_keras_serializable(package="tfequivariant")
class NormNonlinearity(keras.layers.Layer):
    """Norm nonlinearity of Tensor Field Networks.

    ``eta(V_c + b_c)`` for even scalars, ``eta_odd(V_c)`` for odd scalars (an odd
    function, no bias, so the parity is kept) and ``eta(|V_c| + b_c) V_c`` for
    ``l > 0``, where ``|V_c|`` is the norm over ``m`` (0 with a zero gradient for
    zero features). Rotations leave the norms unchanged, so the layer is
    equivariant; output irreps equal input irreps.

    Args:
        irreps: irreps of the features.
        activation: ``eta``, a Keras activation name or callable (default ``"silu"``).
        odd_activation: applied to odd scalars (``0o``); must be an odd function
            (default ``"tanh"``).
        use_bias: learn ``b_c`` (initialised to 0) for even scalars and norms
            (default True).
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        features: ``[..., irreps.dim]``.

    Returns:
        ``[..., irreps.dim]``.

    Example:
        >>> tuple(NormNonlinearity("4x0e+2x1o")(keras.ops.ones((3, 10))).shape)
        (3, 10)

    References:
        Thomas, Smidt et al., "Tensor field networks", 2018.
    """

    def __init__(self, irreps, activation="silu", odd_activation="tanh", use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.irreps_in = parse_irreps(irreps, "irreps")
        self.irreps_out = self.irreps_in
        self.activation = get_activation(activation, "activation")
        if self.activation is None:
            raise ValueError("activation must be a Keras activation name or a callable. Received: None")
        self.odd_activation = get_activation(odd_activation, "odd_activation")
        if self.irreps_in.count("0o") > 0:
            if self.odd_activation is None or activation_parity(self.odd_activation) != -1:
                raise ValueError(
                    "odd_activation must be an odd function (f(-x) = -f(x)) since irreps "
                    f"contain odd scalars (0o): anything else breaks parity. "
                    f"Received: odd_activation={odd_activation!r}"
                )
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"features must have last dimension irreps.dim = {self.irreps_in.dim} "
                f"({self.irreps_in}). Received shape: {tuple(input_shape)}"
            )
        n_bias = sum(mul for mul, ir in self.irreps_in if not (ir.l == 0 and ir.p == -1))
        self.bias = (
            self.add_weight(name="bias", shape=(n_bias,), initializer="zeros")
            if self.use_bias and n_bias
            else None
        )

    def call(self, features):
        ops = keras.ops
        x = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        lead = ops.shape(x)[:-1]
        out, offset = [], 0
        for (mul, ir), block in zip(self.irreps_in, self.irreps_in.split(x)):
            if mul == 0:
                continue
            if ir.l == 0 and ir.p == -1:
                y = self.odd_activation(block)
            else:
                b = 0.0
                if self.bias is not None:
                    b = ops.cast(self.bias[offset : offset + mul], self.compute_dtype)[:, None]
                    offset += mul
                if ir.l == 0:
                    y = self.activation(block + b)
                else:
                    norm = tfe_ops.safe_norm(block, axis=-1, keepdims=True)
                    y = self.activation(norm + b) * block
            out.append(ops.reshape(y, tuple(lead) + (mul * ir.dim,)))
        return ops.concatenate(out, axis=-1) if len(out) > 1 else out[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps": str(self.irreps_in),
            "activation": serialize_activation(self.activation),
            "odd_activation": serialize_activation(self.odd_activation),
            "use_bias": self.use_bias,
        }
