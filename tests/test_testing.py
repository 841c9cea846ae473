"""The test utilities must pass equivariant functions and catch the others."""

import numpy as np
import pytest
import tensorflow as tf

from tfequivariant import Irreps, spherical_harmonics
from tfequivariant.testing import (
    CARTESIAN_POINTS,
    DEFAULT_TOLERANCES,
    assert_equivariant,
    assert_normalized,
    equivariance_error,
)


def cross(a, b):
    return tf.linalg.cross(tf.convert_to_tensor(a), tf.convert_to_tensor(b))


def scalar_times_vector(s, v):
    # "1x0e" times "2x1o": each vector scaled by the scalar.
    return s * v


def pairwise_differences(pos):
    senders, receivers = [0, 1, 2, 3], [1, 2, 3, 0]
    pos = tf.convert_to_tensor(pos)
    return tf.gather(pos, senders) - tf.gather(pos, receivers)


# --- equivariant functions pass --------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_equivariant_functions_pass(dtype):
    tol = DEFAULT_TOLERANCES[dtype]
    assert assert_equivariant(lambda x: x, "2x0e+1o+2e", "2x0e+1o+2e", dtype=dtype) <= tol
    assert assert_equivariant(cross, ["1o", "1o"], "1e", dtype=dtype) <= tol
    assert assert_equivariant(scalar_times_vector, ["0e", "1o"], "1o", dtype=dtype) <= tol
    assert assert_equivariant(
        lambda v: spherical_harmonics([0, 1, 2, 3], v), "1o", Irreps.spherical_harmonics(3), dtype=dtype
    ) <= tol
    # several outputs
    two_outputs = lambda a, b: [cross(a, b), a + b]  # noqa: E731
    assert assert_equivariant(two_outputs, ["1o", "1o"], ["1e", "1o"], dtype=dtype) <= tol


def test_inputs_have_the_requested_dtype():
    seen = []

    def fn(x):
        seen.append(np.asarray(x).dtype)
        return x

    assert_equivariant(fn, "1o", "1o", dtype="float32")
    assert seen and all(d == np.float32 for d in seen)


def test_float32_errors_are_measured_in_float32():
    # A float32 function is not float64-exact but passes the float32 tolerance.
    def fn(v):
        return spherical_harmonics(list(range(7)), tf.cast(v, tf.float32))

    irreps_out = Irreps.spherical_harmonics(6)
    err = equivariance_error(fn, "1o", irreps_out, dtype="float32")
    assert DEFAULT_TOLERANCES["float64"] < err < DEFAULT_TOLERANCES["float32"]
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(fn, "1o", irreps_out, dtype="float64")


# --- non-equivariant functions fail ----------------------------------------------
def test_reversed_vector_fails():
    fn = lambda x: x[:, ::-1]  # noqa: E731
    assert equivariance_error(fn, "1o", "1o") > 0.1
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(fn, "1o", "1o")
    with pytest.raises(AssertionError):
        assert_equivariant(fn, "1o", "1o", dtype="float32")


def test_parity_is_checked():
    # A vector declared as a pseudovector: right under rotations, wrong under inversion.
    identity = lambda x: x  # noqa: E731
    with pytest.raises(AssertionError):
        assert_equivariant(identity, "1o", "1e")
    assert assert_equivariant(identity, "1o", "1e", do_parity=False) <= 1e-12
    # The cross product of two vectors is a pseudovector, not a vector.
    with pytest.raises(AssertionError):
        assert_equivariant(cross, ["1o", "1o"], "1o")
    assert assert_equivariant(cross, ["1o", "1o"], "1o", do_parity=False) <= 1e-9
    # Odd scalars: |x| is 0e, not 0o.
    norm = lambda x: tf.norm(x, axis=-1, keepdims=True)  # noqa: E731
    assert_equivariant(norm, "1o", "0e")
    with pytest.raises(AssertionError):
        assert_equivariant(norm, "1o", "0o")


def test_wrong_degree_fails():
    # Five numbers of a 2e read as a vector and two scalars.
    with pytest.raises(AssertionError):
        assert_equivariant(lambda x: x, "2e", "1e+2x0e")


def test_one_bad_output_among_several_fails():
    with pytest.raises(AssertionError):
        assert_equivariant(lambda a: [a, a[:, ::-1]], "1o", ["1o", "1o"])


def test_nan_output_fails():
    with pytest.raises(AssertionError):
        assert_equivariant(lambda x: x * np.nan, "1o", "1o")


def test_partly_nan_output_fails():
    def fn(x):
        x = np.array(x)
        x[0, 0] = np.nan  # e.g. a zero-length edge normalized without care
        return x

    assert not np.isfinite(equivariance_error(fn, "1o", "1o"))


def test_small_outputs_are_measured_relative_to_their_scale():
    # The error is relative to max |f(x)|: a tiny non-equivariant output still fails.
    with pytest.raises(AssertionError):
        assert_equivariant(lambda x: 1e-3 * x[:, ::-1], "1o", "1o")
    assert equivariance_error(lambda x: 1e-12 * x[:, ::-1], "1o", "1o") > 0.1
    assert equivariance_error(lambda x: 1e-12 * x, "1o", "1o") < DEFAULT_TOLERANCES["float64"]


# --- translations and points -------------------------------------------------------
def test_pairwise_differences_are_translation_invariant():
    assert assert_equivariant(pairwise_differences, CARTESIAN_POINTS, "1o") <= 1e-12
    assert assert_equivariant(pairwise_differences, CARTESIAN_POINTS, "1o", dtype="float32") <= 2e-4


def test_positions_are_not_vectors_under_translation():
    identity = lambda p: p  # noqa: E731
    with pytest.raises(AssertionError):
        assert_equivariant(identity, CARTESIAN_POINTS, "1o")
    assert assert_equivariant(identity, CARTESIAN_POINTS, "1o", do_translation=False) <= 1e-12
    # declared as points, they are translated back
    assert assert_equivariant(identity, CARTESIAN_POINTS, CARTESIAN_POINTS) <= 1e-12
    # a shifted copy of the positions is a point too; the centroid as well
    assert assert_equivariant(lambda p: p + 0.0, CARTESIAN_POINTS, CARTESIAN_POINTS) <= 1e-12
    centroid = lambda p: tf.reduce_mean(p, axis=0, keepdims=True)  # noqa: E731
    assert assert_equivariant(centroid, CARTESIAN_POINTS, CARTESIAN_POINTS) <= 1e-12


def test_translation_invariant_scalar():
    def sq_distances(pos):
        d = pairwise_differences(pos)
        return tf.reduce_sum(d * d, axis=-1, keepdims=True)

    assert_equivariant(sq_distances, CARTESIAN_POINTS, "0e")
    with pytest.raises(AssertionError):  # not invariant without differences
        assert_equivariant(lambda p: tf.reduce_sum(p * p, -1, keepdims=True), CARTESIAN_POINTS, "0e")


def test_invariant_inputs_pass_through():
    senders = np.array([0, 1, 2, 3, 4, 5], np.int32)
    receivers = np.array([1, 2, 3, 4, 5, 0], np.int32)
    seen = []

    def edge_vectors(pos, s, r):
        seen.append((s, r))
        return tf.gather(pos, s) - tf.gather(pos, r)

    rng = np.random.default_rng(0)
    pos = rng.normal(size=(6, 3))
    assert_equivariant(edge_vectors, [CARTESIAN_POINTS, None, None], "1o", [pos, senders, receivers])
    assert all(s is senders and r is receivers for s, r in seen)


def test_argument_errors():
    with pytest.raises(ValueError, match="args_in"):
        equivariance_error(lambda p, s: p, [CARTESIAN_POINTS, None], CARTESIAN_POINTS)
    with pytest.raises(ValueError, match="args_in"):
        equivariance_error(lambda a: a, ["1o", "1o"], "1o", [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="outputs"):
        equivariance_error(lambda a: [a, a], "1o", "1o")


def test_deterministic_with_seed():
    fn = lambda x: x[:, ::-1]  # noqa: E731
    assert equivariance_error(fn, "1o", "1o", seed=3) == equivariance_error(fn, "1o", "1o", seed=3)


# --- assert_normalized -------------------------------------------------------------
def test_assert_normalized():
    ms = assert_normalized(lambda x: x, "8x0e+4x1o")
    assert ms.shape == (20,)
    np.testing.assert_allclose(ms, 1.0, atol=0.1)
    # An orthogonal mixing keeps unit variance.
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(12, 12)))[0]
    assert_normalized(lambda x: x @ q.T, "4x1o")
    with pytest.raises(AssertionError, match="mean square"):
        assert_normalized(lambda x: 3 * x, "4x0e")
    with pytest.raises(AssertionError, match="mean square"):
        assert_normalized(lambda x: 0.1 * x, "4x0e")
