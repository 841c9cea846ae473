"""Receivers with their padded incoming edges, whole or in blocks (``node_chunk``).

Shared by ``PointConvolution``'s per-node form and ``SE3Attention``'s receiver
blocks: the ``[N, K]`` slot layout with its sender indices, the zero row that
empty slots gather, the padding of the node count to whole blocks, and the
loop over blocks that recomputes each block in the backward pass.
"""

from tfequivariant import ops as tfe_ops

__all__ = ["receiver_layout", "with_zero_row", "pad_to_blocks", "map_blocks"]


def receiver_layout(graph, num_nodes, max_neighbors):
    """``slots [N, K]`` (edge indices; empty -> ``E``) and ``sender_slots [N, K]`` (empty -> ``N``).

    Gathering edge rows (nodes rows) padded by ``with_zero_row`` with these gives
    zeros in the empty slots; edges with ``edge_mask == 0`` take no slot.
    """
    import tensorflow as tf

    slots = tfe_ops.receiver_slots(graph["receivers"], num_nodes, max_neighbors, graph.get("edge_mask"))
    senders = tf.concat([tf.cast(graph["senders"], "int32"), tf.reshape(tf.cast(num_nodes, "int32"), (1,))], axis=0)
    return slots, tfe_ops.gather(senders, slots)


def with_zero_row(rows):
    """``rows`` with one zero row appended (what empty slots gather)."""
    import tensorflow as tf

    # tf.pad, not a concat with a zero row: the gradient of a gather is IndexedSlices, which
    # concat's gradient splits with tf.where, and XLA's bounds analysis of that Where took
    # minutes at 10k nodes (pad's gradient makes the slices dense instead)
    return tf.pad(rows, [[0, 1], [0, 0]])


def pad_to_blocks(num_nodes, num_edges, chunk, slots, sender_slots, *node_rows):
    """Rows padded from ``num_nodes`` to a whole number of blocks of ``chunk`` receivers.

    The extra receivers have only empty slots (``num_edges`` and ``num_nodes``, as in
    ``receiver_layout``); extra rows of ``node_rows`` (per-receiver tensors) are zeros.
    """
    import tensorflow as tf

    num_blocks = (num_nodes + chunk - 1) // chunk
    pad = [[0, num_blocks * chunk - num_nodes], [0, 0]]
    return (tf.pad(slots, pad, constant_values=num_edges), tf.pad(sender_slots, pad, constant_values=num_nodes),
            *(tf.pad(rows, pad) for rows in node_rows))


def map_blocks(block, per_receiver, shared, chunk, width, dtype):
    """``block`` over blocks of ``chunk`` rows (receivers or edges), one after another,
    recomputed in the backward pass.

    Args:
        block: ``block(*per_receiver_block, *shared) -> [chunk, width]``.
        per_receiver: tensors whose leading dimension is a whole number of blocks.
        shared: tensors every block receives whole (weights, passed explicitly so
            that ``tf.recompute_grad`` differentiates them).
        chunk: rows per block.
        width: the static width of ``block``'s output (kept when there is no block).
        dtype: the output dtype.

    Returns:
        ``[num_blocks * chunk, width]``. Memory is that of one block (``tf.recompute_grad``),
        which also has no gradients of gradients.
    """
    import tensorflow as tf

    def blocks(rows):  # [num_blocks * chunk, ...] -> [num_blocks, chunk, ...]
        return tf.reshape(rows, tf.concat([[-1, chunk], tf.shape(rows)[1:]], axis=0))

    recomputed = tf.recompute_grad(block)
    out = tf.map_fn(lambda e: recomputed(*e, *shared), tuple(blocks(rows) for rows in per_receiver),
                    fn_output_signature=tf.TensorSpec((chunk, width), dtype))
    return tf.reshape(out, (-1, width))
