"""The loop over node blocks with ``tables``: each block gathers its own rows and the backward
pass adds the gathered rows' gradients into the tables after the loop.

Checked against the same function evaluated on plain gathers of the whole input at once, with
repeated row indices (a row read by many slots), empty slots (the zero row), blocks on every
degree tier, and gradients with respect to the tables, the other per-receiver inputs and the
shared weights, in eager, ``tf.function`` and XLA.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfequivariant.layers._receiver_blocks import degree_order, map_blocks_by_degree, slot_tiers

MODES = ["eager", "function", "xla"]


def _run(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=mode == "xla")


def _values_and_gradients(compute, inputs, cotangent):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = compute(*inputs)
        loss = tf.reduce_sum(out * cotangent)
    grads = tape.gradient(loss, inputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [out] + [tf.convert_to_tensor(g) for g in grads]  # a plain gather's gradient is IndexedSlices


def _slot_graph(rng, num_rows, receivers, max_slots):
    """``slots [M, K]`` of row indices, the first ``degree`` slots of each receiver filled (rows
    repeat), the others the zero row ``num_rows``; receivers sorted by degree as the layers do."""
    degree = rng.integers(0, max_slots + 1, size=receivers)
    degree[0] = max_slots
    slots = np.full((receivers, max_slots), num_rows, np.int32)
    for m, d in enumerate(degree):
        slots[m, :d] = rng.integers(0, num_rows, size=d)
    return slots


@pytest.mark.parametrize("mode", MODES)
def test_tables_with_slots_equal_plain_gathers_with_gradients(mode):
    rng = np.random.default_rng(11)
    num_rows, width, receivers, max_slots, chunk, out_width = 7, 3, 12, 5, 2, 4
    rows = tf.constant(np.concatenate([rng.normal(size=(num_rows, width)), np.zeros((1, width))]))
    slots = _slot_graph(rng, num_rows, receivers, max_slots)
    order, _, block_slots = degree_order(tf.constant(slots), num_rows, chunk)
    slots = tf.gather(tf.constant(slots), order)
    assert len(set(np.asarray(block_slots).tolist())) >= 3  # blocks on several tiers
    per_slot = tf.constant(rng.normal(size=(receivers, max_slots)))  # a float input with a slot axis
    per_node = tf.constant(rng.normal(size=(receivers, width)))  # one without
    w = tf.constant(rng.normal(size=(width, out_width)))
    cotangent = tf.constant(rng.normal(size=(receivers, out_width)))

    def block(x, e, q, w):  # [C, T, D] rows, [C, T], [C, D] -> [C, out]; empty slots (zero rows) add 0
        return tf.reduce_sum(tf.tanh(tf.einsum("ctd,do->cto", x, w)) * e[:, :, None], axis=1) + q @ w

    def blocked(rows, e, q, w):
        return map_blocks_by_degree(block, (slots, e, q), (1, 1, None), (w,), chunk, out_width, rows.dtype,
                                    block_slots, max_slots, tables=(rows, None, None))

    def plain(rows, e, q, w):
        return block(tf.gather(rows, slots), e, q, w)

    inputs = [rows, per_slot, per_node, w]
    expected = [np.asarray(v) for v in _values_and_gradients(plain, inputs, cotangent)]
    got = list(_run(lambda *a: _values_and_gradients(blocked, list(a), cotangent), mode)(*inputs))
    # the zero row's gradient is not one: the slots a tier leaves out never read it, and the
    # layers drop it (with_zero_row's pad)
    got[1], expected[1] = np.asarray(got[1])[:num_rows], expected[1][:num_rows]
    for name, g, e in zip(["output", "d rows", "d per_slot", "d per_node", "d w"], got, expected):
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-12, atol=1e-12, err_msg=name)
        assert np.abs(e).max() > 1e-3, name
    assert len(slot_tiers(max_slots)) == 4


@pytest.mark.parametrize("mode", MODES)
def test_tables_without_slots_equal_plain_gathers_with_gradients(mode):
    """Chunks of edges (``SE3Attention(edge_chunk=...)`` under XLA): index tensors ``[M]`` into
    two tables (senders and receivers, repeated rows, padded entries on the zero row), one
    tier, float per-edge inputs, shared weights."""
    rng = np.random.default_rng(12)
    num_rows, width, edges, chunk, out_width = 6, 3, 10, 4, 2
    padded = -(-edges // chunk) * chunk
    rows = tf.constant(np.concatenate([rng.normal(size=(num_rows, width)), np.zeros((1, width))]))
    queries = tf.constant(np.concatenate([rng.normal(size=(num_rows, width)), np.zeros((1, width))]))
    senders = tf.constant(np.r_[rng.integers(0, num_rows, edges), [num_rows] * (padded - edges)].astype(np.int32))
    receivers = tf.constant(np.r_[rng.integers(0, num_rows, edges), [num_rows] * (padded - edges)].astype(np.int32))
    per_edge = tf.constant(rng.normal(size=(padded, width)))
    w = tf.constant(rng.normal(size=(width, out_width)))
    cotangent = tf.constant(rng.normal(size=(padded, out_width)))

    def block(x, q, y, w):  # [C, D] sender rows, [C, D] receiver rows, [C, D] -> [C, out]
        return tf.tanh((x * q + y) @ w) * tf.reduce_sum(x, axis=1, keepdims=True)

    def chunked(rows, queries, y, w):
        return map_blocks_by_degree(block, (senders, receivers, y), (None, None, None), (w,), chunk, out_width,
                                    rows.dtype, tf.ones(padded // chunk, tf.int32), 1, num_tiers=1,
                                    tables=(rows, queries, None))

    def plain(rows, queries, y, w):
        return block(tf.gather(rows, senders), tf.gather(queries, receivers), y, w)

    inputs = [rows, queries, per_edge, w]
    expected = [np.asarray(v) for v in _values_and_gradients(plain, inputs, cotangent)]
    got = [np.asarray(v) for v in _run(lambda *a: _values_and_gradients(chunked, list(a), cotangent), mode)(*inputs)]
    for name, g, e in zip(["output", "d rows", "d queries", "d per_edge", "d w"], got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=name)
        assert np.abs(e).max() > 1e-3, name
