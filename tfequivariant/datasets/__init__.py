"""Datasets for equivariant graph networks, as single-graph dicts.

Every example is one graph in the convention of :mod:`tfequivariant.graph`
(``positions``, ``senders``, ``receivers``, ``node_*``, ``edge_*``,
``graph_*`` keys), so a list of them goes to ``graph.merge_graphs`` and a
``tf.data`` dataset of them to ``graph.batch_graphs``.

* :mod:`~tfequivariant.datasets.nbody`: the charged 5-body simulation of the
  SE(3)-Transformer paper (predict positions and velocities 1000 steps later).
* :mod:`~tfequivariant.datasets.tetris`: the 8 tetris shapes of the Tensor
  Field Networks paper, with a chiral pair.

The simulators and shapes are NumPy only; TensorFlow is imported by the
``tf_dataset`` helpers alone.
"""

from tfequivariant.datasets import nbody, tetris

__all__ = ["nbody", "tetris"]
