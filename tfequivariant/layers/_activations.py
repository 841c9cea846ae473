"""Activation helpers: resolving names and finding an activation's parity."""

import keras
import numpy as np


def get_activation(activation, name):
    """Resolve a Keras activation name or callable; ``None`` is the identity."""
    if activation is None:
        return None
    try:
        return keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(
            f"{name} must be a Keras activation name or a callable. Received: {name}={activation!r}"
        ) from None


def serialize_activation(activation):
    if activation is None:
        return None
    return keras.activations.serialize(activation)


def activation_parity(fn):
    """+1 if ``fn`` is even, -1 if odd, 0 if neither (checked numerically, as e3nn does)."""
    x = np.linspace(0.0, 10.0, 256)
    f_pos = keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(x)))
    f_neg = keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(-x)))
    scale = max(1.0, float(np.max(np.abs(f_pos))))
    if np.max(np.abs(f_pos - f_neg)) < 1e-6 * scale:
        return 1
    if np.max(np.abs(f_pos + f_neg)) < 1e-6 * scale:
        return -1
    return 0
