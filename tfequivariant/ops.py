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
    zero = ops.equal(x, 0)
    return ops.where(zero, ops.zeros_like(x), ops.sqrt(ops.where(zero, ops.ones_like(x), x)))


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


def receiver_slots(receivers, num_nodes, max_neighbors=None):
    """Padded neighbour layout: ``slots[i, k]`` is the k-th edge received by node i.

    Edges are listed per receiver (in sorted order of edge id); empty slots hold
    ``E`` (one past the last edge), so gathering from the edge rows with one
    zero row appended gives zeros there. ``K = max_neighbors`` if given (static,
    what XLA needs; every node must then receive at most K edges: validate it at
    the boundary, since XLA drops out-of-range scatters silently), else the
    largest in-degree (at least 1), computed at run time.

    Returns:
        ``[num_nodes, K]`` int32.
    """
    ops = keras.ops
    receivers = ops.cast(receivers, "int32")
    num_edges = ops.shape(receivers)[0]
    order = ops.cast(ops.argsort(receivers), "int32")
    sorted_receivers = ops.take(receivers, order, axis=0)
    counts = segment_sum(ops.ones_like(receivers), receivers, num_nodes)
    starts = ops.cumsum(counts) - counts
    rank = ops.arange(num_edges, dtype="int32") - ops.take(starts, sorted_receivers, axis=0)
    if max_neighbors is None:
        k = ops.maximum(ops.max(ops.concatenate([counts, ops.ones((1,), "int32")])), 1)
    else:
        k = int(max_neighbors)
    indices = ops.stack([sorted_receivers, rank], axis=-1)
    slots = ops.scatter(indices, order - num_edges, (num_nodes, k))
    return slots + num_edges
