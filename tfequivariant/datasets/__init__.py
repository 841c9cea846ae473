"""Datasets for equivariant graph networks, as single-graph dicts.

Every example is one graph in the convention of :mod:`tfequivariant.graph`
(``positions``, ``senders``, ``receivers``, ``node_*``, ``edge_*``,
``graph_*`` keys), so a list of them goes to ``graph.merge_graphs`` and a
``tf.data`` dataset of them to ``graph.batch_graphs``.

* :mod:`~tfequivariant.datasets.nbody`: the charged 5-body simulation of the
  SE(3)-Transformer paper (predict positions and velocities 1000 steps later).
* :mod:`~tfequivariant.datasets.tetris`: the 8 tetris shapes of the Tensor
  Field Networks paper, with a chiral pair.
* :mod:`~tfequivariant.datasets.qm9`: the 130,831 molecules of QM9 with their
  DFT properties and a Mulliken dipole vector, read from the ``qm9pack``
  package (the ``qm9`` extra); loaded on first access.

The simulators and shapes are NumPy only; TensorFlow is imported by the
``tf_dataset`` helpers alone.
"""

import importlib

from tfequivariant.datasets import nbody, tetris

__all__ = ["nbody", "qm9", "tetris"]


def __getattr__(name):
    # qm9 loads on first use: it needs no optional package to import, but most
    # users of nbody or tetris never touch it.
    if name == "qm9":
        return importlib.import_module("tfequivariant.datasets.qm9")
    raise AttributeError(f"module 'tfequivariant.datasets' has no attribute {name!r}")
