"""Whether the graph being traced will be compiled by XLA.

Several layers choose their layout or add work only XLA needs (the harmonics'
output layout, the exact path for over-full neighbour lists, which replaces
the assertions XLA drops), so they share this one test.
"""

import keras


def in_xla_context():
    """Whether the op being traced will be compiled by XLA (``jit_compile=True``).

    False when executing eagerly and on backends other than TensorFlow.
    Private TensorFlow API: on any failure we assume no XLA, which callers
    must treat as the safe answer (a slower layout, or an assertion that runs).
    """
    if keras.backend.backend() != "tensorflow":
        return False
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util

        if tf.executing_eagerly():
            return False
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # pragma: no cover - depends on TensorFlow internals
        return False
