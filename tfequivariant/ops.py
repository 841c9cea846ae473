"""Small numerical building blocks shared by the layers (``keras.ops`` only).

Everything here survives XLA, SavedModel and TFLite builtins (DESIGN.md
section 3): gathers, unsorted segment reductions with an explicit
``num_segments``, and square roots made safe at zero.
"""

import keras

__all__ = ["safe_sqrt", "safe_norm", "segment_sum", "segment_max", "num_nodes", "gather", "receiver_slots"]


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


def gather(x, indices):
    """Rows ``x[indices]`` without wrapping negative indices.

    ``keras.ops.take`` maps ``-1`` to the last row, which would turn a bad
    sender index into silently wrong numbers wherever TensorFlow's own bounds
    checks survive (CPU, SavedModel, TFLite). This gather keeps them, so a
    negative or too large node index raises there. (Under XLA indices are
    clamped whatever the op: validate at the boundary.)
    """
    import tensorflow as tf

    return tf.gather(x, indices, axis=0)


def segment_sum(data, segment_ids, num_segments):
    """Unsorted segment sum with an explicit ``num_segments`` (never counts ids)."""
    return keras.ops.segment_sum(data, segment_ids, num_segments=num_segments, sorted=False)


def segment_max(data, segment_ids, num_segments):
    """Unsorted segment max with an explicit ``num_segments``; empty segments get the dtype's lowest value."""
    return keras.ops.segment_max(data, segment_ids, num_segments=num_segments, sorted=False)


def num_nodes(positions):
    """Number of nodes as a (possibly dynamic) scalar, for ``num_segments``."""
    return keras.ops.shape(positions)[0]


def receiver_slots(receivers, num_nodes, max_neighbors=None, edge_mask=None):
    """Padded neighbour layout: ``slots[i, k]`` is the k-th edge received by node i.

    Edges are listed per receiver, in edge order; empty slots hold ``E`` (one past the last
    edge), so gathering from the edge rows with one zero row appended gives
    zeros there. Edges with ``edge_mask == 0`` take no slot (padding edges,
    which are self-loops on one padding node, would otherwise pile up on it).
    ``K = max_neighbors`` if given (static, what XLA needs; every node must then
    receive at most K unmasked edges: validate it at the boundary, since XLA
    drops out-of-range scatters silently while eager/``tf.function`` raise), else
    the largest in-degree (at least 1), computed at run time.

    Edges sorted by receiver (what ``edges_from_ragged``, ``radius_graph`` and
    ``merge_graphs`` give; masked padding edges at the end) need no sort: an
    edge's slot is its index minus its receiver's first edge. Other orders take a
    stable sort of the receivers, chosen at run time (``cond``), which costs more
    than the rest of the layout (32k edges: 5 ms in ``tf.function``, 14 ms under
    XLA on 2 CPU cores).

    Returns:
        ``[num_nodes, K]`` int32.
    """
    ops = keras.ops
    receivers = ops.cast(receivers, "int32")
    num_edges = ops.shape(receivers)[0]
    rows = num_nodes
    if edge_mask is not None:
        # masked edges go to one extra row, dropped at the end
        keep = ops.greater(edge_mask, 0)
        receivers = ops.where(keep, receivers, ops.full_like(receivers, num_nodes))
        rows = num_nodes + 1
    counts = segment_sum(ops.ones_like(receivers), receivers, rows)
    starts = ops.cumsum(counts) - counts
    in_order = ops.all(ops.greater_equal(receivers[1:], receivers[:-1]))

    def by_sort():
        order = ops.cast(ops.argsort(receivers), "int32")  # TensorFlow's argsort is stable
        return order, ops.take(receivers, order, axis=0)

    order, sorted_receivers = ops.cond(in_order, lambda: (ops.arange(num_edges, dtype="int32"), receivers), by_sort)
    rank = ops.arange(num_edges, dtype="int32") - ops.take(starts, sorted_receivers, axis=0)
    if edge_mask is not None:
        rank = ops.where(ops.equal(sorted_receivers, num_nodes), ops.zeros_like(rank), rank)
    if max_neighbors is None:
        k = ops.maximum(ops.max(ops.concatenate([counts[:num_nodes], ops.ones((1,), "int32")])), 1)
    else:
        k = int(max_neighbors)
    indices = ops.stack([sorted_receivers, rank], axis=-1)
    slots = ops.scatter(indices, order - num_edges, (rows, k))
    return slots[:num_nodes] + num_edges
