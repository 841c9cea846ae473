"""The ``RadialBasis`` layer: smooth radial basis functions of edge lengths."""

import math

import keras
import numpy as np

__all__ = ["RadialBasis", "polynomial_envelope"]

_BASES = ("gaussian", "bessel")


def polynomial_envelope(x, p=6):
    """Smooth cutoff ``u(x)`` on ``x = r / cutoff``: ``u(0) = 1``, ``u = u' = u'' = 0`` at 1.

    ``1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for ``x < 1``
    and 0 beyond (Klicpera et al., DimeNet, 2020).
    """
    ops = keras.ops
    xp = x**p
    u = 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
    return ops.where(ops.less(x, 1), u, ops.zeros_like(x))


@keras.saving.register_keras_serializable(package="tfequivariant")
class RadialBasis(keras.layers.Layer):
    """Radial basis functions of edge lengths, smoothly cut off at ``cutoff``.

    ``B_k(r) = b_k(r) u(r / cutoff)`` with ``u`` the polynomial envelope (value and
    first two derivatives zero at the cutoff) and

    * ``"gaussian"``: ``b_k(r) = exp(-((r - mu_k) / step)^2) / 1.12`` with
      ``mu_k = linspace(0, cutoff, num_basis)`` and ``step`` their spacing (the
      1.12 makes the mean square about one, as in e3nn's ``soft_one_hot_linspace``);
    * ``"bessel"``: ``b_k(r) = sqrt(2 / cutoff) sin(k pi r / cutoff) / r``, finite at
      ``r = 0`` (Klicpera et al. 2020).

    Args:
        num_basis: number of functions (default 16).
        cutoff: radius beyond which every function is exactly 0 (default 5.0).
        basis: ``"gaussian"`` (default) or ``"bessel"``.
        envelope_exponent: ``p`` of the polynomial envelope (default 6).
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        lengths: ``[...]`` non-negative edge lengths.

    Returns:
        ``[..., num_basis]``.

    Example:
        >>> tuple(RadialBasis(8, cutoff=3.0)(keras.ops.ones((5,))).shape)
        (5, 8)

    References:
        Klicpera, Groß, Günnemann, "Directional message passing for molecular
        graphs", ICLR 2020.
    """

    def __init__(self, num_basis=16, cutoff=5.0, basis="gaussian", envelope_exponent=6, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_basis, bool) or not isinstance(num_basis, (int, np.integer)) or num_basis < 1:
            raise ValueError(f"num_basis must be an int >= 1. Received: num_basis={num_basis!r}")
        if basis == "gaussian" and num_basis < 2:
            raise ValueError(f"A gaussian basis needs num_basis >= 2. Received: num_basis={num_basis!r}")
        try:
            cutoff = float(cutoff)
        except (TypeError, ValueError):
            raise ValueError(f"cutoff must be a positive number. Received: cutoff={cutoff!r}") from None
        if not (cutoff > 0 and math.isfinite(cutoff)):
            raise ValueError(f"cutoff must be a positive number. Received: cutoff={cutoff!r}")
        if basis not in _BASES:
            raise ValueError(f"basis must be one of {_BASES}. Received: basis={basis!r}")
        if isinstance(envelope_exponent, bool) or not isinstance(envelope_exponent, (int, np.integer)) or envelope_exponent < 2:
            raise ValueError(
                f"envelope_exponent must be an int >= 2. Received: envelope_exponent={envelope_exponent!r}"
            )
        self.num_basis = int(num_basis)
        self.cutoff = cutoff
        self.basis = basis
        self.envelope_exponent = int(envelope_exponent)

    def call(self, lengths):
        ops = keras.ops
        r = ops.cast(lengths, self.compute_dtype)[..., None]
        x = r / self.cutoff
        if self.basis == "gaussian":
            step = self.cutoff / (self.num_basis - 1)
            centers = ops.convert_to_tensor(
                np.linspace(0.0, self.cutoff, self.num_basis), dtype=self.compute_dtype
            )
            b = ops.exp(-ops.square((r - centers) / step)) / 1.12
        else:
            k = ops.convert_to_tensor(np.arange(1, self.num_basis + 1) * math.pi, dtype=self.compute_dtype)
            # sin(k x) / x, with its limit k at x = 0 (finite value and gradient).
            small = ops.less(x, 1e-4)
            x_safe = ops.where(small, ops.ones_like(x), x)
            ratio = ops.where(small, k * (1 - ops.square(k * x) / 6), ops.sin(k * x_safe) / x_safe)
            b = math.sqrt(2.0 / self.cutoff) / self.cutoff * ratio
        return b * polynomial_envelope(x, self.envelope_exponent)

    def compute_output_shape(self, lengths_shape):
        return tuple(lengths_shape) + (self.num_basis,)

    def get_config(self):
        return {
            **super().get_config(),
            "num_basis": self.num_basis,
            "cutoff": self.cutoff,
            "basis": self.basis,
            "envelope_exponent": self.envelope_exponent,
        }
