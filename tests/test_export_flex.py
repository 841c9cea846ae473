"""to_tflite refuses a model that would need Flex (select TF) ops, naming the op."""

import keras
import pytest
import tensorflow as tf

from tfequivariant import export


class _SortedSegmentMax(keras.layers.Layer):
    # Sorted tf.math.segment_max has no TFLite builtin (DESIGN.md section 3).
    def call(self, features, positions):
        ids = tf.range(tf.shape(positions)[0])
        return tf.math.segment_max(features, ids)


def test_flex_op_is_named_in_the_error(tmp_path):
    inputs = {
        "positions": keras.Input(shape=(3,), name="positions"),
        "node_features": keras.Input(shape=(2,), name="node_features"),
        "senders": keras.Input(shape=(), dtype="int32", name="senders"),
        "receivers": keras.Input(shape=(), dtype="int32", name="receivers"),
    }
    model = keras.Model(inputs, _SortedSegmentMax()(inputs["node_features"], inputs["positions"]))
    path = export.export_saved_model(model, tmp_path / "flex", version=1)
    with pytest.raises(ValueError, match="SegmentMax"):
        export.to_tflite(path, tmp_path / "flex.tflite")
