"""The ``SphericalHarmonics`` layer."""

import keras

from tfequivariant.spherical_harmonics import _NORMALIZATIONS, sh_irreps, spherical_harmonics

__all__ = ["SphericalHarmonics"]


@keras.saving.register_keras_serializable(package="tfequivariant")
class SphericalHarmonics(keras.layers.Layer):
    """Real spherical harmonics of vectors, in e3nn's convention.

    ``Y^l(x)`` for each requested degree, concatenated in e3nn's layout; see
    ``tfequivariant.spherical_harmonics`` for the convention.

    Args:
        irreps_out: degrees to compute: an int lmax (meaning ``0..lmax``), an
            ``Irreps`` or its string (``"1x0e+1x1o+1x2e"``).
        normalize: normalize the vectors first (default True).
        normalization: ``"integral"`` (default), ``"component"`` or ``"norm"``.
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``).

    Call arguments:
        vectors: ``[..., 3]`` float tensor.

    Returns:
        ``[..., irreps_out.dim]`` tensor.

    Example:
        >>> layer = SphericalHarmonics(2, normalization="component")
        >>> tuple(layer(keras.ops.ones((4, 3))).shape)
        (4, 9)
    """

    def __init__(self, irreps_out, normalize=True, normalization="integral", **kwargs):
        super().__init__(**kwargs)
        if isinstance(irreps_out, int) and not isinstance(irreps_out, bool):
            if irreps_out < 0:
                raise ValueError(f"irreps_out as an int is lmax >= 0. Received: irreps_out={irreps_out}")
            irreps_out = list(range(irreps_out + 1))
        try:
            self._ls, self.irreps_out, _ = sh_irreps(irreps_out)
        except ValueError as e:
            raise ValueError(f"Invalid irreps_out for SphericalHarmonics: {e}") from None
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {_NORMALIZATIONS}. Received: normalization={normalization!r}"
            )
        self.irreps_in = None
        self.normalize = bool(normalize)
        self.normalization = normalization

    def call(self, vectors):
        return spherical_harmonics(
            str(self.irreps_out), vectors, normalize=self.normalize, normalization=self.normalization
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.irreps_out.dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps_out": str(self.irreps_out),
            "normalize": self.normalize,
            "normalization": self.normalization,
        }
