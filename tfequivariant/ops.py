"""Small numerical building blocks shared by the layers (``keras.ops`` only).

Everything here survives XLA, SavedModel and TFLite builtins (DESIGN.md
section 3): gathers, unsorted segment reductions with an explicit
``num_segments``, and square roots made safe at zero.
"""

import keras

__all__ = ["safe_sqrt", "safe_norm", "segment_sum", "segment_max", "num_nodes"]


def safe_sqrt(x):
    """``sqrt(x)`` with value 0 and gradient 0 at ``x == 0`` (no NaN, no inf).

    ``tf.sqrt``'s gradient at 0 is infinite, and a masked-out zero times an
    infinite gradient is NaN; the double ``where`` keeps both branches finite.
    NaN input still gives NaN.
    """
    ops = keras.ops
    positive = ops.greater(x, 0)
    ones = ops.ones_like(x)
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ones)), ops.zeros_like(x))


def safe_norm(x, axis=-1, keepdims=False):
    """Euclidean norm along ``axis``, 0 with finite (zero) gradient for zero vectors."""
    return safe_sqrt(keras.ops.sum(x * x, axis=axis, keepdims=keepdims))


def segment_sum(data, segment_ids, num_segments):
    """Unsorted segment sum with an explicit ``num_segments`` (never counts ids)."""
    return keras.ops.segment_sum(data, segment_ids, num_segments=num_segments, sorted=False)


def segment_max(data, segment_ids, num_segments):
    """Unsorted segment max with an explicit ``num_segments``; empty segments get the dtype's lowest value."""
    return keras.ops.segment_max(data, segment_ids, num_segments=num_segments, sorted=False)


def num_nodes(positions):
    """Number of nodes as a (possibly dynamic) scalar, for ``num_segments``."""
    return keras.ops.shape(positions)[0]
