"""The 3D tetris shapes of the Tensor Field Networks paper (Thomas, Smidt et al. 2018).

Eight shapes of four points on the unit cubic grid, each a connected
polycube (every point has a grid neighbour at distance 1). A network must
classify randomly rotated and translated copies. Features invariant under
reflections as well as rotations (pairwise distances, say) cannot do it,
because of the chiral pair:

* ``chiral_1`` and ``chiral_2`` (classes 0 and 1) are mirror images: the
  reflection ``y -> -y`` maps one onto the other, but no rotation does. They
  have the same pairwise distances and signed volumes
  ``(p1 - p0) . ((p2 - p0) x (p3 - p0))`` of opposite sign, so telling them
  apart takes a pseudoscalar (an odd, ``0o``, feature): proper rotations
  keep the class, reflections swap the two.
* The other six (``square``, ``line``, ``corner``, ``L``, ``T``,
  ``zigzag``) are each congruent to their own mirror image.

Coordinates and class order are those of the TFN shape-classification demo
(also used by e3nn's tetris examples); classes 5-7 are named for what they
are (the TFN notebook labels them ``T``, ``zigzag``, ``L``; later e3nn
examples use ``L``, ``T``, ``zigzag`` as here).

Each example (:func:`make_dataset`) is a single-graph dict:

=================  =======  ==========  =====================================
key                dtype    shape       content
=================  =======  ==========  =====================================
``positions``      float32  ``[4, 3]``  the (rotated, translated) points
``senders``        int32    ``[12]``    fully connected, no self-loops
``receivers``      int32    ``[12]``
``node_features``  float32  ``[4, 1]``  ones (irreps ``1x0e``)
``graph_label``    int32    ``[]``      the class index 0-7
``graph_targets``  float32  ``[8]``     the class, one-hot
=================  =======  ==========  =====================================

Both labels are ``graph_*`` keys, so ``graph.to_keras_inputs`` leaves the one
that is not the target among the inputs; pass ``input_keys`` to keep it out
of the model.

References:
    Thomas, Smidt, Kearnes, Yang, Li, Kohlhoff, Riley, "Tensor field
    networks: Rotation- and translation-equivariant neural networks for 3D
    point clouds", arXiv:1802.08219 (2018).
"""

import numpy as np

from tfequivariant import so3
from tfequivariant.datasets.nbody import fully_connected_edges

__all__ = ["CHIRAL_PAIR", "CLASS_NAMES", "make_dataset", "shapes", "tf_dataset"]

#: Class names, in class-index order.
CLASS_NAMES = ("chiral_1", "chiral_2", "square", "line", "corner", "L", "T", "zigzag")

#: The class indices of the two mirror-image shapes.
CHIRAL_PAIR = (0, 1)

_SHAPES = (
    ((0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0)),  # chiral_1
    ((0, 0, 0), (0, 0, 1), (1, 0, 0), (1, -1, 0)),  # chiral_2: chiral_1 with y -> -y
    ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)),  # square
    ((0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3)),  # line
    ((0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)),  # corner (three axes from one point)
    ((0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)),  # L
    ((0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 1)),  # T
    ((0, 0, 0), (1, 0, 0), (1, 1, 0), (2, 1, 0)),  # zigzag (S/Z tetromino)
)


def shapes():
    """The 8 shapes in canonical (unrotated) position.

    Returns:
        ``(points, class_names)``: float32 ``[8, 4, 3]`` integer grid
        coordinates and a tuple of 8 names (:data:`CLASS_NAMES`).

    Example:
        >>> points, names = shapes()
        >>> points.shape, names[:2]
        ((8, 4, 3), ('chiral_1', 'chiral_2'))
    """
    return np.array(_SHAPES, dtype=np.float32), CLASS_NAMES


def _stacked(num_copies, rotate, translate, seed):
    where = "make_dataset"
    if isinstance(num_copies, (bool, np.bool_)) or not isinstance(num_copies, (int, np.integer)):
        raise ValueError(f"{where}: num_copies must be an int >= 1. Received: {num_copies!r}")
    if num_copies < 1:
        raise ValueError(f"{where}: num_copies must be an int >= 1. Received: {num_copies!r}")
    for name, value in (("rotate", rotate), ("translate", translate)):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be a bool. Received: {name}={value!r}")
    rng = np.random.default_rng(seed)
    points = np.array(_SHAPES, dtype=np.float64)
    num_classes = len(_SHAPES)
    count = num_copies * num_classes
    positions = np.tile(points, (num_copies, 1, 1))  # copy-major: graph c * 8 + k has class k
    if rotate:
        rotations = so3.rand_matrix(count, seed=rng)  # proper rotations only: a reflection
        positions = np.einsum("gij,gnj->gni", rotations, positions)  # would swap the chiral pair
    if translate:
        positions = positions + rng.uniform(-3.0, 3.0, size=(count, 1, 3))
    labels = np.tile(np.arange(num_classes, dtype=np.int32), num_copies)
    return {
        "positions": positions.astype(np.float32),
        "node_features": np.ones((count, 4, 1), dtype=np.float32),
        "graph_label": labels,
        "graph_targets": np.eye(num_classes, dtype=np.float32)[labels],
    }


def make_dataset(num_copies, rotate=True, translate=True, seed=0):
    """Randomly rotated and translated copies of the 8 shapes as single graphs.

    Args:
        num_copies: copies of each shape, an int >= 1.
        rotate: apply a uniformly random proper rotation (about the origin)
            to each copy.
        translate: then shift each copy by a vector uniform in
            ``[-3, 3]^3`` (the range of the TFN demo).
        seed: an int or ``numpy.random.Generator``.

    Returns:
        A list of ``8 * num_copies`` single-graph dicts (keys in the module
        docstring); graph ``c * 8 + k`` is copy ``c`` of class ``k``.

    Example:
        >>> graphs = make_dataset(2, seed=0)
        >>> len(graphs), int(graphs[9]["graph_label"]), tuple(graphs[9]["positions"].shape)
        (16, 1, (4, 3))
    """
    arrays = _stacked(num_copies, rotate, translate, seed)
    senders, receivers = fully_connected_edges(4)
    return [
        {
            **{key: value[g] for key, value in arrays.items()},
            "senders": senders.copy(),
            "receivers": receivers.copy(),
        }
        for g in range(arrays["positions"].shape[0])
    ]


def tf_dataset(num_copies, rotate=True, translate=True, seed=0):
    """The examples of :func:`make_dataset` as a ``tf.data.Dataset``, for ``graph.batch_graphs``.

    Args:
        num_copies, rotate, translate, seed: as in :func:`make_dataset`.

    Returns:
        A ``tf.data.Dataset`` of single-graph dicts with static shapes.

    Example:
        >>> from tfequivariant import graph
        >>> batch = next(iter(graph.batch_graphs(tf_dataset(1), batch_size=8)))
        >>> tuple(batch["graph_targets"].shape), tuple(batch["senders"].shape)
        ((8, 8), (96,))
    """
    import tensorflow as tf  # only the tf.data helper needs TensorFlow

    arrays = _stacked(num_copies, rotate, translate, seed)
    senders, receivers = fully_connected_edges(4)
    count = arrays["positions"].shape[0]
    arrays["senders"] = np.tile(senders, (count, 1))
    arrays["receivers"] = np.tile(receivers, (count, 1))
    return tf.data.Dataset.from_tensor_slices(arrays)
