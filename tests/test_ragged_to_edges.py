"""RaggedToEdges: ragged neighbour lists inside a functional model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfequivariant.layers import PointConvolution, RaggedToEdges


def _ragged():
    return tf.ragged.constant([[1, 2], [], [0, 1]], dtype=tf.int32)


def test_eager_edges_match_rows():
    senders, receivers = RaggedToEdges()(_ragged())
    assert senders.numpy().tolist() == [1, 2, 0, 1]
    assert receivers.numpy().tolist() == [0, 0, 2, 2]
    assert senders.dtype == tf.int32 and receivers.dtype == tf.int32


def test_config_round_trip():
    layer = RaggedToEdges(validate=False, name="r2e")
    clone = RaggedToEdges.from_config(layer.get_config())
    assert clone.validate is False and clone.name == "r2e"


def test_functional_model_with_ragged_input_saves_and_reloads(tmp_path):
    neighbors = keras.Input(shape=(None,), dtype="int32", ragged=True, name="neighbors")
    positions = keras.Input(shape=(3,), name="positions")
    features = keras.Input(shape=(4,), name="features")
    senders, receivers = RaggedToEdges()(neighbors)
    graph = {"positions": positions, "senders": senders, "receivers": receivers}
    out = PointConvolution("4x0e", "4x0e+1x1o", num_radial_basis=4, radial_hidden=(8,))(features, graph)
    model = keras.Model([features, positions, neighbors], out)
    rng = np.random.default_rng(0)
    inputs = [
        tf.constant(rng.normal(size=(3, 4)).astype("float32")),
        tf.constant(rng.normal(size=(3, 3)).astype("float32")),
        _ragged(),
    ]
    y = model(inputs)
    assert y.shape == (3, 7)
    # node 1 receives nothing: only the self-interaction term remains
    conv = model.layers[-1]
    skip = conv.skip(inputs[0]).numpy()
    np.testing.assert_allclose(y.numpy()[1], skip[1], atol=1e-6)
    path = tmp_path / "ragged.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(inputs).numpy(), y.numpy(), atol=1e-6)


def test_out_of_range_neighbour_raises():
    with pytest.raises(ValueError, match="neighbors"):
        RaggedToEdges()(tf.ragged.constant([[3], [0]], dtype=tf.int32))


def test_dense_input_is_rejected():
    with pytest.raises(ValueError, match="RaggedTensor"):
        RaggedToEdges()(tf.constant([[1, 0]], dtype=tf.int32))
