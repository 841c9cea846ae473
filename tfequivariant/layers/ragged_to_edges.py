"""The ``RaggedToEdges`` layer: ragged neighbour lists to flat edge lists inside a model."""

import keras

__all__ = ["RaggedToEdges"]


@keras.saving.register_keras_serializable(package="tfequivariant")
class RaggedToEdges(keras.layers.Layer):
    """Ragged neighbour lists ``[N, (k)]`` to ``(senders, receivers)`` int32 ``[E]``.

    Row ``i`` lists the nodes that send to node ``i``; receivers are the row ids.
    For functional models fed with ``keras.Input(shape=(None,), dtype="int32",
    ragged=True)``.

    Limits (measured, DESIGN.md section 3): a ragged tensor inside a model
    breaks ``model.export()``, makes XLA recompile for every neighbour layout and
    fails under ``MirroredStrategy`` ``fit``. For export, XLA and multi-device
    training convert at the boundary instead: ``tfequivariant.graph.edges_from_ragged``
    in ``tf.data``, or a serving signature taking ``neighbor_values`` and
    ``neighbor_row_splits`` (``tfequivariant.graph.edges_from_row_splits``).

    Args:
        validate: check that every index is in ``[0, N)`` (default True).
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        neighbors: integer ``tf.RaggedTensor`` ``[N, (k)]``.

    Returns:
        ``(senders, receivers)``.

    Example:
        >>> import tensorflow as tf
        >>> s, r = RaggedToEdges()(tf.ragged.constant([[1, 2], [], [0]]))
        >>> s.numpy().tolist(), r.numpy().tolist()
        ([1, 2, 0], [0, 0, 2])
    """

    def __init__(self, validate=True, **kwargs):
        super().__init__(**kwargs)
        self.validate = bool(validate)
        self.irreps_in = None
        self.irreps_out = None

    def call(self, neighbors):
        from tfequivariant.graph import edges_from_ragged

        return edges_from_ragged(neighbors, validate=self.validate)

    def compute_output_shape(self, neighbors_shape):
        return (None,), (None,)

    def compute_output_spec(self, neighbors):
        return (
            keras.KerasTensor((None,), dtype="int32"),
            keras.KerasTensor((None,), dtype="int32"),
        )

    def get_config(self):
        return {**super().get_config(), "validate": self.validate}
