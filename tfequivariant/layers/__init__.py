"""Keras 3 layers of tfequivariant (TensorFlow backend)."""

from tfequivariant.layers.spherical_harmonics import SphericalHarmonics

__all__ = ["SphericalHarmonics"]
