"""The ``SE3NormNonlinearity`` layer: the SE(3)-Transformer's layer-normalized norm nonlinearity."""

import numbers

import keras

from tfequivariant import ops as tfe_ops
from tfequivariant.layers._activations import get_activation, serialize_activation
from tfequivariant.layers.self_interaction import parse_irreps

__all__ = ["SE3NormNonlinearity"]


@keras.saving.register_keras_serializable(package="tfequivariant")
class SE3NormNonlinearity(keras.layers.Layer):
    """Norm nonlinearity of the SE(3)-Transformer (NVIDIA's ``NormSE3``).

    For every irrep type ``(l, p)``, with channels ``f_c`` of that type and their
    norms ``n_c = |f_c|`` over ``m``:

    ``out_c = phi(gamma_c (n_c - mu) / sqrt(sigma^2 + epsilon) + beta_c) f_c / n_c``,

    ``mu`` and ``sigma^2`` the mean and (biased) variance of ``n_c`` over the
    channels of that type (a layer normalization of the norms, as
    ``keras.layers.LayerNormalization`` / ``torch.nn.LayerNorm`` with a learned
    scale and offset per channel). Where ``n_c = 0`` the output is 0 (the
    direction ``f_c / n_c`` is taken as 0), with finite gradients.

    Channels are grouped by irrep type, not by block: ``"1x1o+2x0e+1x1o"``
    normalizes its two ``1o`` channels together, exactly as ``"2x1o"`` would, so
    the layer does not depend on how the irreps are written (NVIDIA groups by
    degree; with parity, ``1o`` and ``1e`` are different types). A type with a
    single channel normalizes to 0, so its output is ``phi(beta_c) f_c / n_c``.

    Scalars are included: for ``0e`` and ``0o`` the norm is ``|x|`` and the
    direction ``sign(x)``, so ``out = phi(LN(|x|)) sign(x)`` keeps each scalar's
    parity (norms are even, directions carry the parity). Norms are invariant
    under rotations and reflections, so any ``phi`` gives an equivariant layer;
    output irreps equal input irreps.

    Args:
        irreps: irreps of the features.
        activation: ``phi``, a Keras activation name or callable (default
            ``"relu"``, as in NVIDIA's implementation).
        epsilon: added to the variance in the layer normalization (default
            ``1e-5``, PyTorch's ``LayerNorm`` default).
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        features: ``[..., irreps.dim]``.

    Returns:
        ``[..., irreps.dim]``.

    Example:
        >>> tuple(SE3NormNonlinearity("4x0e+2x1o")(keras.ops.ones((3, 10))).shape)
        (3, 10)

    References:
        Fuchs, Worrall, Fischer, Welling, "SE(3)-Transformers: 3D Roto-Translation
        Equivariant Attention Networks", NeurIPS 2020; NVIDIA DeepLearningExamples,
        ``SE3Transformer/se3_transformer/model/layers/norm.py`` (``NormSE3``).
    """

    def __init__(self, irreps, activation="relu", epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.irreps_in = parse_irreps(irreps, "irreps")
        self.irreps_out = self.irreps_in
        self.activation = get_activation(activation, "activation")
        if self.activation is None:
            raise ValueError("activation must be a Keras activation name or a callable. Received: None")
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon > 0:
            raise ValueError(f"epsilon must be a float > 0. Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)
        self._types = []
        for mul, ir in self.irreps_in:
            if mul > 0 and ir not in self._types:
                self._types.append(ir)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"features must have last dimension irreps.dim = {self.irreps_in.dim} "
                f"({self.irreps_in}). Received shape: {tuple(input_shape)}"
            )
        self.gammas, self.betas = {}, {}
        for ir in self._types:
            channels = self.irreps_in.count(ir)
            self.gammas[str(ir)] = self.add_weight(name=f"gamma_{ir}", shape=(channels,), initializer="ones")
            self.betas[str(ir)] = self.add_weight(name=f"beta_{ir}", shape=(channels,), initializer="zeros")

    def call(self, features):
        ops = keras.ops
        x = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        lead = tuple(ops.shape(x)[:-1])
        blocks = self.irreps_in.split(x)
        results = {}
        for ir in self._types:
            parts = [b for b, (mul, ir_b) in zip(blocks, self.irreps_in) if ir_b == ir and mul > 0]
            f = ops.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0]  # [..., C, 2l+1]
            norm = tfe_ops.safe_norm(f, axis=-1)  # [..., C]
            mean = ops.mean(norm, axis=-1, keepdims=True)
            var = ops.mean(ops.square(norm - mean), axis=-1, keepdims=True)
            normalized = (norm - mean) / ops.sqrt(var + self.epsilon)
            gamma = ops.cast(self.gammas[str(ir)], self.compute_dtype)
            beta = ops.cast(self.betas[str(ir)], self.compute_dtype)
            scale = self.activation(normalized * gamma + beta)
            # f / |f| with 0 where |f| = 0; the where keeps the gradient finite there.
            safe = ops.where(norm > 0, norm, ops.ones_like(norm))
            results[ir] = f * (scale / safe)[..., None]
        out, offsets = [], {}
        for mul, ir in self.irreps_in:
            if mul == 0:
                continue
            start = offsets.get(ir, 0)
            offsets[ir] = start + mul
            out.append(ops.reshape(results[ir][..., start : start + mul, :], lead + (mul * ir.dim,)))
        if not out:
            return ops.zeros(lead + (0,), dtype=self.compute_dtype)
        return ops.concatenate(out, axis=-1) if len(out) > 1 else out[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps": str(self.irreps_in),
            "activation": serialize_activation(self.activation),
            "epsilon": self.epsilon,
        }
