"""Tests of ``tfequivariant.ops``: safe square roots and segment sums with explicit sizes.

DESIGN.md section 3: ``tf.linalg.norm`` of a zero vector has NaN gradients, and
``keras.ops.segment_sum`` without ``num_segments`` silently drops trailing empty
segments (isolated nodes at the end). The helpers here are the package's answer
to both; these tests pin that answer against plain NumPy / TensorFlow.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfequivariant import ops as tfe_ops

DTYPES = ["float32", "float64"]


def _value_and_grad(fn, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        total = tf.reduce_sum(y)
    return y.numpy(), tape.gradient(total, x).numpy()


# --- safe_sqrt -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_sqrt_equals_sqrt_on_positive_inputs(dtype):
    x = np.random.default_rng(0).uniform(1e-6, 1e3, size=(257,)).astype(dtype)
    y, grad = _value_and_grad(tfe_ops.safe_sqrt, x)
    rtol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(y, np.sqrt(x), rtol=rtol)
    np.testing.assert_allclose(grad, 0.5 / np.sqrt(x), rtol=rtol)
    assert y.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_sqrt_zero_has_zero_value_and_zero_gradient(dtype):
    x = np.array([0.0, 4.0, 0.0], dtype)
    y, grad = _value_and_grad(tfe_ops.safe_sqrt, x)
    np.testing.assert_array_equal(y, [0.0, 2.0, 0.0])
    np.testing.assert_array_equal(grad, [0.0, 0.25, 0.0])
    # plain sqrt has an infinite gradient there: the reason the helper exists
    _, plain_grad = _value_and_grad(tf.sqrt, x)
    assert np.isinf(plain_grad[0])


def test_safe_sqrt_zero_gradient_under_xla():
    @tf.function(jit_compile=True)
    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tfe_ops.safe_sqrt(x)
        return y, tape.gradient(y, x)

    y, grad = value_and_grad(tf.constant([0.0, 9.0]))
    np.testing.assert_array_equal(y.numpy(), [0.0, 3.0])
    np.testing.assert_allclose(grad.numpy(), [0.0, 1.0 / 6.0], rtol=1e-6)


def test_safe_sqrt_propagates_nan():
    y = tfe_ops.safe_sqrt(tf.constant([np.nan, 1.0])).numpy()
    assert np.isnan(y[0]), f"safe_sqrt(NaN) = {y[0]}"
    assert y[1] == 1.0


# --- safe_norm -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_norm_equals_norm_on_nonzero_vectors(dtype):
    v = np.random.default_rng(1).normal(size=(64, 5)).astype(dtype)
    y, grad = _value_and_grad(tfe_ops.safe_norm, v)
    rtol = 2e-6 if dtype == "float32" else 1e-13
    norm = np.linalg.norm(v.astype(np.float64), axis=-1)
    np.testing.assert_allclose(y, norm, rtol=rtol)
    np.testing.assert_allclose(grad, v / norm[:, None], rtol=rtol, atol=rtol)


def test_safe_norm_axis_and_keepdims():
    v = np.random.default_rng(2).normal(size=(4, 3, 5)).astype("float64")
    y = keras.ops.convert_to_numpy(tfe_ops.safe_norm(v, axis=1, keepdims=True))
    np.testing.assert_allclose(y, np.linalg.norm(v, axis=1, keepdims=True), rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_safe_norm_zero_vector_has_zero_value_and_zero_gradient(dtype):
    v = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], dtype)
    y, grad = _value_and_grad(tfe_ops.safe_norm, v)
    np.testing.assert_array_equal(y, [0.0, 5.0])
    np.testing.assert_array_equal(grad[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(grad[1], [0.6, 0.0, 0.8], rtol=1e-6)
    # tf.linalg.norm gives NaN there (DESIGN.md section 3)
    _, plain_grad = _value_and_grad(lambda x: tf.linalg.norm(x, axis=-1), v)
    assert np.isnan(plain_grad[0]).all()


def test_safe_norm_propagates_nan():
    y = tfe_ops.safe_norm(tf.constant([[np.nan, 1.0, 1.0]])).numpy()
    assert np.isnan(y[0]), f"safe_norm([NaN, 1, 1]) = {y[0]}"


# --- segment_sum / segment_max -------------------------------------------------------
def test_segment_sum_keeps_trailing_empty_segments():
    data = tf.constant([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    ids = tf.constant([1, 0, 1], tf.int32)  # unsorted, segments 2..5 empty
    out = keras.ops.convert_to_numpy(tfe_ops.segment_sum(data, ids, 6))
    expected = np.zeros((6, 2), np.float32)
    np.add.at(expected, ids.numpy(), data.numpy())
    np.testing.assert_array_equal(out, expected)


def test_keras_segment_sum_without_num_segments_drops_trailing_segments():
    """Pins the DESIGN.md fact the helper guards against (Keras 3 on TensorFlow).

    Ids [0, 1, 1] of a 4-node graph: keras counts 2 segments instead of 4. If this
    test starts failing, Keras changed and DESIGN.md section 3 needs updating.
    """
    data = tf.constant([1.0, 2.0, 3.0])
    ids = tf.constant([0, 1, 1], tf.int32)
    assert keras.ops.segment_sum(data, ids).shape[0] == 2
    np.testing.assert_array_equal(tfe_ops.segment_sum(data, ids, 4).numpy(), [1.0, 5.0, 0.0, 0.0])


def test_segment_sum_with_dynamic_num_nodes_under_xla():
    @tf.function(jit_compile=True)
    def per_node(data, ids, positions):
        return tfe_ops.segment_sum(data, ids, tfe_ops.num_nodes(positions))

    out = per_node(tf.constant([1.0, 2.0, 3.0]), tf.constant([2, 0, 2]), tf.zeros((5, 3)))
    np.testing.assert_array_equal(out.numpy(), [2.0, 0.0, 4.0, 0.0, 0.0])


def test_segment_max_unsorted_with_empty_segments():
    data = tf.constant([1.0, -2.0, 3.0, -5.0])
    ids = tf.constant([1, 0, 1, 0], tf.int32)
    out = tfe_ops.segment_max(data, ids, 4).numpy()
    np.testing.assert_array_equal(out[:2], [-2.0, 3.0])
    np.testing.assert_array_equal(out[2:], [np.finfo(np.float32).min] * 2)


def test_num_nodes():
    assert int(tfe_ops.num_nodes(tf.zeros((7, 3)))) == 7


# --- receiver_slots ------------------------------------------------------------------
def _slots_reference(receivers, num_nodes, k, edge_mask=None):
    """Per receiver, its unmasked edges in edge order, then E (empty slots)."""
    e = len(receivers)
    slots = np.full((num_nodes, k), e, np.int32)
    filled = np.zeros(num_nodes, int)
    for i, r in enumerate(receivers):
        if edge_mask is None or edge_mask[i] > 0:
            slots[r, filled[r]] = i
            filled[r] += 1
    return slots


def _slot_cases():
    rng = np.random.default_rng(3)
    unsorted = rng.integers(0, 7, 40)
    in_order = np.sort(unsorted)
    mask_tail = np.r_[np.ones(36), np.zeros(4)]  # padding edges at the end (merge_graphs, pad_graph)
    mask_mid = (np.arange(40) % 5 != 2).astype(float)
    return {
        "sorted": (in_order, None),
        "unsorted": (unsorted, None),
        "sorted-padding-masked": (np.r_[in_order[:36], [6, 6, 6, 6]], mask_tail),
        "sorted-masked-in-the-middle": (in_order, mask_mid),
        "unsorted-masked": (unsorted, mask_mid),
        "one-unsorted-pair": (np.r_[in_order[:20], in_order[21], in_order[20], in_order[22:]], None),
        "reversed": (in_order[::-1].copy(), None),
        "one-edge": (np.array([4]), None),
        "no-edges": (np.zeros(0, int), None),
    }


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("case", list(_slot_cases()))
def test_receiver_slots_list_each_receivers_edges_in_edge_order(case, mode):
    """Against a NumPy loop, for edges sorted by receiver (the path without a sort, also with
    masked padding edges at the end) and in any other order (the sorted path), masks included."""
    receivers, mask = _slot_cases()[case]
    num_nodes = 8  # node 7 receives nothing
    reference = _slots_reference(receivers, num_nodes, 12, mask)
    k = max(1, int(reference.__ne__(len(receivers)).sum(axis=1).max()))
    args = [tf.constant(receivers, tf.int32)] + ([] if mask is None else [tf.constant(mask, tf.float32)])

    def slots(r, m=None):
        return tfe_ops.receiver_slots(r, num_nodes, None if mode == "eager" else 12, m)

    if mode != "eager":
        slots = tf.function(slots, jit_compile=mode == "xla")
    got = keras.ops.convert_to_numpy(slots(*args))
    expected = reference[:, :k] if mode == "eager" else reference  # eager: K = the largest in-degree
    np.testing.assert_array_equal(got, expected)
