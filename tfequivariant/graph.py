"""Graphs at the boundary: ragged adapters, radius graphs, batching, padding.

Every graph layer receives one graph per call as a ``dict`` of dense tensors
(DESIGN.md section 3): ``positions [N, 3]``, ``senders [E]`` and
``receivers [E]`` (int32; the message j -> i goes from ``senders`` to
``receivers``), and optionally ``edge_mask``, ``edge_attr``, ``edge_shifts``,
``node_graph_index`` and ``graph_sizes``. A batch is the disjoint union of its
graphs. This module builds such dicts from what data comes as, outside the
model:

* ragged neighbour lists -> ``senders``/``receivers``
  (:func:`edges_from_ragged`, :func:`edges_from_row_splits`);
* positions -> neighbour lists (:func:`radius_graph` in TensorFlow,
  :func:`radius_graph_numpy` with periodic boxes);
* single graphs -> merged batches (:func:`batch_graphs` for ``tf.data``,
  :func:`merge_graphs` for NumPy);
* merged batches -> fixed sizes for XLA (:func:`pad_to_sizes`,
  :class:`SizeBuckets`, :func:`pad_to_buckets`, :func:`buckets_for`);
* merged batches -> ``model.fit`` arguments (:func:`to_keras_inputs`);
* checks of indices, shapes and dtypes (:func:`validate_graph`).

Key names: besides the contract keys above, a key starting with ``node_`` is
per node (first dimension N), ``edge_`` per edge (first dimension E) and
``graph_`` per graph (first dimension G in a merged graph, no such dimension
in a single graph). ``node_graph_index`` and ``graph_sizes`` belong to merged
graphs only.

Padding follows tensorflow-gnn: one extra padding graph holds every padding
node, padding edges are self-loops on the first padding node, and
``node_mask``/``edge_mask``/``graph_mask`` are 0 on padding. No index is ever a
sentinel: every index points at a real (possibly padding) node, because XLA
clamps out-of-range gathers and GPU gathers return zeros instead of failing.

This module is TensorFlow-only on purpose: ragged tensors and ``tf.data`` stay
out of the layers, whose math is written with ``keras.ops``.
"""

import collections
import collections.abc
import math

import numpy as np
import tensorflow as tf

__all__ = [
    "SizeBucket",
    "SizeBuckets",
    "batch_graphs",
    "buckets_for",
    "edges_from_ragged",
    "edges_from_row_splits",
    "merge_graphs",
    "pad_to_buckets",
    "pad_to_sizes",
    "radius_graph",
    "radius_graph_numpy",
    "to_keras_inputs",
    "validate_graph",
]

_EDGE_KEYS = ("senders", "receivers")
_MERGED_KEYS = ("node_graph_index", "graph_sizes")
_PREFIXES = ("node_", "edge_", "graph_")

# These functions have no tensor-dependent Python control flow; skipping
# AutoGraph's conversion makes tracing them in tf.data/tf.function ~7x faster.
_no_autograph = tf.autograph.experimental.do_not_convert


# ----------------------------------------------------------------------------
# Small helpers: messages and checks that raise ValueError eagerly and become
# tf.debugging asserts inside tf.function / tf.data.
# ----------------------------------------------------------------------------


def _preview(x):
    x = np.asarray(x)
    body = np.array2string(x, threshold=20, edgeitems=4, separator=", ")
    return f"array(shape={x.shape}, dtype={x.dtype}): {body}"


def _describe(value):
    if isinstance(value, tf.RaggedTensor):
        return f"RaggedTensor(shape={value.shape}, dtype={value.dtype.name})"
    if tf.is_tensor(value):
        return f"Tensor(shape={value.shape}, dtype={value.dtype.name})"
    if isinstance(value, np.ndarray):
        return f"ndarray(shape={value.shape}, dtype={value.dtype})"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_size(name, value, minimum, where):
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _np_check_range(name, idx, upper, upper_what, where):
    """Raises ValueError when integer array ``idx`` leaves [0, upper)."""
    idx = np.asarray(idx)
    bad = (idx < 0) | (idx >= upper)
    if bad.any():
        bad_at = np.flatnonzero(bad)
        first = int(bad_at[0])
        raise ValueError(
            f"{where}: {name} contains {int(idx[first])} out of range [0, {upper}) "
            f"({upper_what}) at position {first} ({bad_at.size} bad value(s) in "
            f"total). Received: {name}={_preview(idx)}"
        )


def _np_check_splits(splits, num_values, where, name="neighbor_row_splits"):
    splits = np.asarray(splits)
    if splits.ndim != 1 or splits.size == 0:
        raise ValueError(
            f"{where}: {name} must be a non-empty vector [num_nodes + 1]. "
            f"Received: {name}={_preview(splits)}"
        )
    if splits[0] != 0 or splits[-1] != num_values or np.any(np.diff(splits) < 0):
        raise ValueError(
            f"{where}: {name} must start at 0, never decrease and end at the number of "
            f"neighbour values ({num_values}). Received: {name}={_preview(splits)}"
        )


def _static_rank(name, x, rank, where):
    if x.shape.rank is None:
        raise ValueError(f"{where}: {name} must have a known rank {rank}. Received: {_describe(x)}")
    if x.shape.rank != rank:
        raise ValueError(
            f"{where}: {name} must have rank {rank}. Received: {name} of shape {x.shape}"
        )


def _require_integer(name, x, where):
    if not (x.dtype.is_integer):
        raise ValueError(f"{where}: {name} must have an integer dtype. Received: {_describe(x)}")


def _require_float(name, x, where):
    if not x.dtype.is_floating:
        raise ValueError(f"{where}: {name} must have a floating dtype. Received: {_describe(x)}")


def _with_deps(deps, tensors):
    """Makes ``tensors`` (a nest) depend on the assert ops in ``deps``."""
    deps = [d for d in deps if d is not None]
    if not deps:
        return tensors
    with tf.control_dependencies(deps):
        return tf.nest.map_structure(tf.identity, tensors, expand_composites=True)


def _first_dim(x):
    return tf.shape(x, out_type=tf.int32)[0]


def _check_prefixed_keys(graph, where, allowed, single):
    for key in graph:
        if not isinstance(key, str):
            raise ValueError(f"{where}: graph keys must be strings. Received key: {key!r}")
        if key in allowed or key.startswith(_PREFIXES):
            if single and key in _MERGED_KEYS:
                raise ValueError(
                    f"{where}: key {key!r} belongs to merged graphs, but single "
                    f"graphs are expected here. Pass unmerged graphs (one graph "
                    f"per element). Received keys: {sorted(graph)}"
                )
            continue
        raise ValueError(
            f"{where}: key {key!r} is not a graph key. Use 'positions', "
            f"{' / '.join(repr(k) for k in allowed if k != 'positions')} or a name "
            f"starting with 'node_' (per node), 'edge_' (per edge) or 'graph_' "
            f"(per graph). Received keys: {sorted(graph)}"
        )
    if "positions" not in graph:
        raise ValueError(
            f"{where}: a graph needs 'positions' [num_nodes, 3]. Received keys: {sorted(graph)}"
        )


# ----------------------------------------------------------------------------
# Ragged adapters
# ----------------------------------------------------------------------------


@_no_autograph
def edges_from_ragged(neighbors, validate=True):
    """Converts a ragged neighbour list to ``(senders, receivers)``.

    Row ``i`` of ``neighbors`` lists the nodes that send messages to node
    ``i``, so ``receivers`` are the row ids and ``senders`` the flat values.
    Works eagerly, inside ``tf.function`` and inside ``tf.data.Dataset.map``;
    keep it out of models (ragged tensors break export and XLA).

    Args:
        neighbors: an integer ``tf.RaggedTensor`` of shape ``[N, (k)]``.
        validate: check that every neighbour index is in ``[0, N)``. Eagerly
            a bad index raises ``ValueError``; in graph mode a
            ``tf.debugging`` assert fails when the tensors are computed.

    Returns:
        ``(senders, receivers)``, both int32 ``[E]``, ``E = k_0 + ... +
        k_{N-1}``, sorted by receiver.

    Example:
        >>> neighbors = tf.ragged.constant([[1, 2], [], [0]])
        >>> senders, receivers = edges_from_ragged(neighbors)
        >>> senders.numpy().tolist(), receivers.numpy().tolist()
        ([1, 2, 0], [0, 0, 2])
    """
    where = "edges_from_ragged"
    if not isinstance(neighbors, tf.RaggedTensor):
        raise ValueError(
            f"{where}: neighbors must be a tf.RaggedTensor [num_nodes, (k)]; for "
            f"dense values and row splits use edges_from_row_splits. "
            f"Received: neighbors={_describe(neighbors)}"
        )
    if neighbors.ragged_rank != 1 or neighbors.shape.rank != 2:
        raise ValueError(
            f"{where}: neighbors must have shape [num_nodes, (k)] (ragged_rank 1). "
            f"Received: neighbors={_describe(neighbors)} with ragged_rank "
            f"{neighbors.ragged_rank}"
        )
    _require_integer("neighbors", neighbors, where)
    senders = tf.cast(neighbors.values, tf.int32)
    receivers = tf.cast(neighbors.value_rowids(), tf.int32)
    num_nodes = tf.cast(neighbors.nrows(), tf.int32)
    if not validate:
        return senders, receivers
    if tf.executing_eagerly():
        _np_check_range(
            "neighbors", senders.numpy(), int(num_nodes), "the number of rows of neighbors", where
        )
        return senders, receivers
    deps = [
        tf.debugging.assert_non_negative(senders, message=f"{where}: negative neighbour index"),
        tf.debugging.assert_less(
            senders, num_nodes, message=f"{where}: neighbour index >= number of rows (nodes)"
        ),
    ]
    return _with_deps(deps, (senders, receivers))


@_no_autograph
def edges_from_row_splits(neighbor_values, neighbor_row_splits, validate=True):
    """Converts a neighbour list given as values and row splits to edges.

    The dense pair form of :func:`edges_from_ragged`, for serving signatures
    that receive ``neighbor_values [E]`` and ``neighbor_row_splits [N + 1]``
    (row ``i`` is ``neighbor_values[splits[i]:splits[i + 1]]``, the senders of
    node ``i``). It uses only ``unsorted_segment_sum``, ``cumsum`` and slices,
    so it also works in a SavedModel, under XLA and as TFLite builtins (pass
    ``validate=False`` there: TFLite has no ``Assert``).

    Args:
        neighbor_values: integer ``[E]``, the senders of every edge.
        neighbor_row_splits: integer ``[N + 1]``, starting at 0, never
            decreasing, ending at ``E``.
        validate: check the row splits and that every value is in
            ``[0, N)``: eagerly a ``ValueError``, in graph mode
            ``tf.debugging`` asserts.

    Returns:
        ``(senders, receivers)``, both int32 ``[E]``.

    Example:
        >>> senders, receivers = edges_from_row_splits([1, 2, 0], [0, 2, 2, 3])
        >>> senders.numpy().tolist(), receivers.numpy().tolist()
        ([1, 2, 0], [0, 0, 2])
    """
    where = "edges_from_row_splits"
    values = tf.convert_to_tensor(neighbor_values)
    splits = tf.convert_to_tensor(neighbor_row_splits)
    if isinstance(neighbor_values, tf.RaggedTensor) or isinstance(
        neighbor_row_splits, tf.RaggedTensor
    ):
        raise ValueError(f"{where}: pass dense tensors; for a RaggedTensor use edges_from_ragged.")
    _static_rank("neighbor_values", values, 1, where)
    _static_rank("neighbor_row_splits", splits, 1, where)
    if values.shape[0] == 0 and values.dtype == tf.float32:
        values = tf.cast(values, tf.int32)  # an empty Python list converts to float32
    _require_integer("neighbor_values", values, where)
    _require_integer("neighbor_row_splits", splits, where)
    if splits.shape[0] == 0:
        raise ValueError(
            f"{where}: neighbor_row_splits needs num_nodes + 1 >= 1 entries. "
            f"Received: neighbor_row_splits={_describe(splits)}"
        )
    senders = tf.cast(values, tf.int32)
    splits = tf.cast(splits, tf.int32)
    num_edges = _first_dim(senders)
    num_nodes = _first_dim(splits) - 1
    deps = []
    if validate:
        if tf.executing_eagerly():
            _np_check_splits(splits.numpy(), int(num_edges), where)
            _np_check_range(
                "neighbor_values",
                senders.numpy(),
                int(num_nodes),
                "num_nodes = len(neighbor_row_splits) - 1",
                where,
            )
        else:
            msg = (
                f"{where}: neighbor_row_splits must start at 0, never decrease and end at "
                f"len(neighbor_values)"
            )
            deps = [
                tf.debugging.assert_equal(splits[0], 0, message=msg),
                tf.debugging.assert_equal(splits[-1], num_edges, message=msg),
                tf.debugging.assert_non_negative(splits[1:] - splits[:-1], message=msg),
                tf.debugging.assert_non_negative(
                    senders, message=f"{where}: negative neighbour index"
                ),
                tf.debugging.assert_less(
                    senders,
                    num_nodes,
                    message=f"{where}: neighbour index >= num_nodes = len(neighbor_row_splits) - 1",
                ),
            ]
    # Each inner boundary marks where the next row starts; a running count of
    # the boundaries passed is the row id (empty rows share a boundary).
    boundaries = splits[1:-1]
    marks = tf.math.unsorted_segment_sum(tf.ones_like(boundaries), boundaries, num_edges + 1)
    receivers = tf.cumsum(marks)[:num_edges]
    return _with_deps(deps, (senders, receivers))


# ----------------------------------------------------------------------------
# Radius graphs
# ----------------------------------------------------------------------------


@_no_autograph
def radius_graph(positions, cutoff, max_neighbors=None, self_loops=False):
    """Neighbour lists within a cutoff, by dense all-pairs distances.

    Row ``i`` holds the senders ``j`` with ``|x_j - x_i|^2 < cutoff^2``
    (``j != i`` unless ``self_loops``), in increasing ``j``. Costs
    ``O(N^2)`` memory: meant for small graphs (molecules) inside ``tf.data``
    or eagerly; use :func:`radius_graph_numpy` for large or periodic systems.

    Args:
        positions: float ``[N, 3]``.
        cutoff: the radius, a positive number (or a float scalar tensor).
        max_neighbors: ``None`` or an int >= 1: keep only the nearest ones
            per receiver, ties broken by the lower sender index.
        self_loops: include ``j == i``.

    Returns:
        An int32 ``tf.RaggedTensor`` ``[N, (k)]``; feed it to
        :func:`edges_from_ragged` or use it as ``neighbors`` in
        :func:`batch_graphs`.

    Example:
        >>> positions = tf.constant([[0.0, 0, 0], [1, 0, 0], [3, 0, 0]])
        >>> radius_graph(positions, cutoff=1.5).to_list()
        [[1], [0], []]
    """
    where = "radius_graph"
    if isinstance(positions, tf.RaggedTensor):
        raise ValueError(
            f"{where}: positions must be dense [N, 3]. Received: {_describe(positions)}"
        )
    positions = tf.convert_to_tensor(positions)
    _static_rank("positions", positions, 2, where)
    if positions.shape[1] not in (None, 3):
        raise ValueError(
            f"{where}: positions must have shape [N, 3]. Received shape {positions.shape}"
        )
    _require_float("positions", positions, where)
    if tf.is_tensor(cutoff):
        if cutoff.shape.rank != 0:
            raise ValueError(
                f"{where}: cutoff must be a scalar. Received: cutoff={_describe(cutoff)}"
            )
        if tf.executing_eagerly() and not float(cutoff) > 0:
            raise ValueError(f"{where}: cutoff must be > 0. Received: cutoff={float(cutoff)}")
    elif (
        not isinstance(cutoff, (int, float, np.integer, np.floating))
        or isinstance(cutoff, bool)
        or not cutoff > 0
        or not math.isfinite(cutoff)
    ):
        raise ValueError(
            f"{where}: cutoff must be a positive finite number. Received: cutoff={cutoff!r}"
        )
    if max_neighbors is not None:
        _check_size("max_neighbors", max_neighbors, 1, where)
    if not isinstance(self_loops, bool):
        raise ValueError(f"{where}: self_loops must be a bool. Received: self_loops={self_loops!r}")

    cutoff = tf.cast(cutoff, positions.dtype)
    num_nodes = _first_dim(positions)
    # dist2[i, j] = |x_j - x_i|^2: rows are receivers, columns senders.
    diff = positions[None, :, :] - positions[:, None, :]
    dist2 = tf.reduce_sum(diff * diff, axis=-1)
    within = dist2 < cutoff * cutoff
    if not self_loops:
        within = tf.logical_and(within, tf.logical_not(tf.eye(num_nodes, dtype=tf.bool)))
    if max_neighbors is not None:
        key = tf.where(within, dist2, tf.constant(np.inf, positions.dtype))
        order = tf.argsort(key, axis=1, stable=True)  # nearest first, ties by index
        rank = tf.argsort(order, axis=1, stable=True)  # rank of each sender in its row
        within = tf.logical_and(within, rank < max_neighbors)
    columns = tf.broadcast_to(tf.range(num_nodes)[None, :], tf.stack([num_nodes, num_nodes]))
    return tf.ragged.boolean_mask(columns, within)


def radius_graph_numpy(positions, cutoff, box=None, max_neighbors=None, self_loops=False):
    """Edges within a cutoff with ``scipy.spatial.cKDTree``, optionally periodic.

    With a ``box``, distances follow the minimum-image convention and each
    edge carries the image offset: for every edge,
    ``positions[senders] - positions[receivers] + edge_shifts`` is the
    minimum-image vector from receiver to sender, and ``edge_shifts`` is an
    integer multiple of the box lengths. Positions outside ``[0, box)`` are
    wrapped into the box for the search; the shifts refer to the positions as
    given, so the identity above holds whether or not you wrap them yourself.

    Args:
        positions: array ``[N, 3]``.
        cutoff: positive radius; an edge needs distance ``< cutoff``.
        box: ``None`` (open boundaries), or the lengths of an orthorhombic
            periodic box, a positive scalar or a length-3 sequence. Must
            exceed ``2 * cutoff`` in every direction, so that at most one
            image of a node is within the cutoff.
        max_neighbors: ``None`` or an int >= 1: keep the nearest ones per
            receiver, ties broken by the lower sender index.
        self_loops: include ``(i, i)`` edges (shift zero).

    Returns:
        A dict with ``senders`` int32 ``[E]``, ``receivers`` int32 ``[E]``
        and ``edge_shifts`` ``[E, 3]`` (the positions' float dtype; zeros
        without a box), sorted by receiver, then sender.

    Example:
        >>> positions = np.array([[0.5, 0, 0], [9.5, 0, 0], [5, 5, 5]])
        >>> edges = radius_graph_numpy(positions, cutoff=2.0, box=10.0)
        >>> edges["senders"].tolist(), edges["receivers"].tolist()
        ([1, 0], [0, 1])
        >>> (positions[1] - positions[0] + edges["edge_shifts"][0]).tolist()
        [-1.0, 0.0, 0.0]
    """
    from scipy.spatial import cKDTree

    where = "radius_graph_numpy"
    if tf.is_tensor(positions):
        positions = positions.numpy()
    positions = np.asarray(positions)
    if (
        positions.ndim != 2
        or positions.shape[1] != 3
        or not (
            np.issubdtype(positions.dtype, np.floating)
            or np.issubdtype(positions.dtype, np.integer)
        )
    ):
        raise ValueError(
            f"{where}: positions must be a real array [N, 3]. Received: {_preview(positions)}"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError(f"{where}: positions must be finite. Received: {_preview(positions)}")
    if (
        isinstance(cutoff, bool)
        or not isinstance(cutoff, (int, float, np.integer, np.floating))
        or not cutoff > 0
        or not math.isfinite(cutoff)
    ):
        raise ValueError(
            f"{where}: cutoff must be a positive finite number. Received: cutoff={cutoff!r}"
        )
    if max_neighbors is not None:
        _check_size("max_neighbors", max_neighbors, 1, where)
    if not isinstance(self_loops, bool):
        raise ValueError(f"{where}: self_loops must be a bool. Received: self_loops={self_loops!r}")
    dtype = positions.dtype if np.issubdtype(positions.dtype, np.floating) else np.float64
    pos = positions.astype(np.float64)
    cutoff = float(cutoff)
    num_nodes = pos.shape[0]

    if box is not None:
        box_arr = np.asarray(box, dtype=np.float64)
        if box_arr.ndim == 0:
            box_arr = np.full(3, float(box_arr))
        if box_arr.shape != (3,) or not np.all(np.isfinite(box_arr)) or not np.all(box_arr > 0):
            raise ValueError(
                f"{where}: box must be a positive scalar or 3 positive lengths. "
                f"Received: box={box!r}"
            )
        if cutoff >= box_arr.min() / 2:
            raise ValueError(
                f"{where}: cutoff must be < box / 2 in every direction, otherwise "
                f"the minimum image is ambiguous (a node could see several images "
                f"of another). Use a larger box (replicate the cell) or a smaller "
                f"cutoff. Received: cutoff={cutoff}, box={box_arr.tolist()}"
            )
        search = np.mod(pos, box_arr)
        search = np.where(search >= box_arr, search - box_arr, search)  # mod can round up to box
        tree = cKDTree(search, boxsize=box_arr)
    else:
        box_arr = None
        search = pos
        tree = cKDTree(search)

    # cKDTree keeps distance <= r; search a hair wider, then apply the strict < cutoff.
    pairs = tree.query_pairs(cutoff * (1 + 1e-9), output_type="ndarray").astype(np.int64)
    senders = np.concatenate([pairs[:, 0], pairs[:, 1]])
    receivers = np.concatenate([pairs[:, 1], pairs[:, 0]])
    if self_loops:
        senders = np.concatenate([senders, np.arange(num_nodes)])
        receivers = np.concatenate([receivers, np.arange(num_nodes)])
    vectors = search[senders] - search[receivers]
    if box_arr is not None:
        vectors = vectors - box_arr * np.round(vectors / box_arr)
    dist2 = np.sum(vectors * vectors, axis=1)
    keep = dist2 < cutoff * cutoff
    senders, receivers, vectors, dist2 = senders[keep], receivers[keep], vectors[keep], dist2[keep]

    if max_neighbors is not None and senders.size:
        order = np.lexsort((senders, dist2, receivers))
        senders, receivers, vectors = senders[order], receivers[order], vectors[order]
        starts = np.searchsorted(receivers, receivers, side="left")
        keep = np.arange(receivers.size) - starts < max_neighbors
        senders, receivers, vectors = senders[keep], receivers[keep], vectors[keep]

    order = np.lexsort((senders, receivers))
    senders, receivers, vectors = senders[order], receivers[order], vectors[order]
    if box_arr is not None:
        shifts = vectors - (pos[senders] - pos[receivers])
        shifts = box_arr * np.round(shifts / box_arr)  # exact multiples of the box
    else:
        shifts = np.zeros_like(vectors)
    return {
        "senders": senders.astype(np.int32),
        "receivers": receivers.astype(np.int32),
        "edge_shifts": shifts.astype(dtype),
    }


# ----------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------


def _standardize_single(example, validate):
    """One graph -> int32 senders/receivers, checked sizes, a scalar graph_sizes."""
    where = "batch_graphs"
    _check_prefixed_keys(example, where, ("positions", "neighbors") + _EDGE_KEYS, single=True)
    out = {}
    positions = example["positions"]
    if isinstance(positions, tf.RaggedTensor):
        raise ValueError(
            f"{where}: positions must be dense [n, 3]. Received: {_describe(positions)}"
        )
    _static_rank("positions", positions, 2, where)
    _require_float("positions", positions, where)
    out["positions"] = positions
    num_nodes = _first_dim(positions)
    deps = []

    has_neighbors = "neighbors" in example
    has_edges = [k in example for k in _EDGE_KEYS]
    if has_neighbors and any(has_edges):
        raise ValueError(
            f"{where}: give either 'neighbors' or 'senders' and 'receivers', not both. "
            f"Received keys: {sorted(example)}"
        )
    if has_neighbors:
        neighbors = example["neighbors"]
        senders, receivers = edges_from_ragged(neighbors, validate=validate)
        if validate:
            deps.append(
                tf.debugging.assert_equal(
                    tf.cast(neighbors.nrows(), tf.int32),
                    num_nodes,
                    message=f"{where}: neighbors must have one row per node (rows of positions)",
                )
            )
    elif all(has_edges):
        for key in _EDGE_KEYS:
            if isinstance(example[key], tf.RaggedTensor):
                raise ValueError(
                    f"{where}: {key} must be dense [e]. Received: {_describe(example[key])}"
                )
            _static_rank(key, example[key], 1, where)
            _require_integer(key, example[key], where)
        senders = tf.cast(example["senders"], tf.int32)
        receivers = tf.cast(example["receivers"], tf.int32)
        if validate:
            deps.append(
                tf.debugging.assert_equal(
                    _first_dim(senders),
                    _first_dim(receivers),
                    message=f"{where}: senders and receivers must have the same length",
                )
            )
            for name, idx in (("senders", senders), ("receivers", receivers)):
                deps.append(
                    tf.debugging.assert_non_negative(
                        idx, message=f"{where}: negative index in {name}"
                    )
                )
                deps.append(
                    tf.debugging.assert_less(
                        idx, num_nodes, message=f"{where}: {name} index >= number of nodes"
                    )
                )
    else:
        raise ValueError(
            f"{where}: a graph needs edges: 'neighbors' (RaggedTensor [n, (k)]) or both "
            f"'senders' and 'receivers' ([e] int32; empty for a graph without edges). "
            f"Received keys: {sorted(example)}"
        )
    out["senders"], out["receivers"] = senders, receivers
    num_edges = _first_dim(senders)

    for key, value in example.items():
        if not key.startswith(_PREFIXES):
            continue
        if isinstance(value, tf.RaggedTensor):
            raise ValueError(f"{where}: {key} must be a dense tensor. Received: {_describe(value)}")
        if value.shape.rank is None:
            raise ValueError(f"{where}: {key} must have a known rank. Received: {_describe(value)}")
        if key.startswith(("node_", "edge_")):
            if value.shape.rank == 0:
                raise ValueError(
                    f"{where}: {key} must have a first dimension of size "
                    f"{'n (nodes)' if key.startswith('node_') else 'e (edges)'}. "
                    f"Received: {_describe(value)}"
                )
            count = num_nodes if key.startswith("node_") else num_edges
            if validate:
                deps.append(
                    tf.debugging.assert_equal(
                        _first_dim(value),
                        count,
                        message=f"{where}: the first dimension of {key} must be the number of "
                        f"{'nodes' if key.startswith('node_') else 'edges'}",
                    )
                )
        out[key] = value
    out["graph_sizes"] = num_nodes
    return _with_deps(deps, out)


def _uniform_to_tensor(rt, key):
    """A ragged tensor whose inner rows are uniform but statically unknown -> dense."""
    dense = rt.to_tensor()
    check = tf.debugging.assert_equal(
        tf.size(dense),
        tf.size(rt.flat_values),
        message=f"batch_graphs: all inner dimensions of {key} must agree between graphs",
    )
    with tf.control_dependencies([check]):
        return tf.identity(dense)


def _merge_leading(x, key):
    """[G, (n), ...] (ragged or dense) -> ([n_0 + ... + n_{G-1}, ...], graph id per row)."""
    if isinstance(x, tf.RaggedTensor):
        values = x.values
        if isinstance(values, tf.RaggedTensor):
            values = _uniform_to_tensor(values, key)
        return values, tf.cast(x.value_rowids(), tf.int32)
    shape = tf.shape(x, out_type=tf.int32)
    values = tf.reshape(x, tf.concat([[shape[0] * shape[1]], shape[2:]], axis=0))
    return values, tf.repeat(tf.range(shape[0]), shape[1])


def _merge_batch(batch):
    graph_sizes = tf.cast(batch["graph_sizes"], tf.int32)
    offsets = tf.cumsum(graph_sizes, exclusive=True)
    positions, node_graph_index = _merge_leading(batch["positions"], "positions")
    out = {"positions": positions}
    senders, edge_graph = _merge_leading(batch["senders"], "senders")
    receivers, _ = _merge_leading(batch["receivers"], "receivers")
    edge_offsets = tf.gather(offsets, edge_graph)
    out["senders"] = senders + edge_offsets
    out["receivers"] = receivers + edge_offsets
    for key, value in batch.items():
        if key.startswith(("node_", "edge_")):
            out[key], _ = _merge_leading(value, key)
        elif key.startswith("graph_") and key != "graph_sizes":
            out[key] = (
                _uniform_to_tensor(value, key) if isinstance(value, tf.RaggedTensor) else value
            )
    out["node_graph_index"] = node_graph_index
    out["graph_sizes"] = graph_sizes
    _add_masks(out, tf.ones)
    return out


def _add_masks(graph, ones):
    """Adds all-ones node_mask/edge_mask/graph_mask where missing (tf.ones or np.ones)."""
    dtype = graph["positions"].dtype
    if not tf.as_dtype(dtype).is_floating:
        dtype = "float32"
    for mask, ref in (
        ("node_mask", "positions"),
        ("edge_mask", "senders"),
        ("graph_mask", "graph_sizes"),
    ):
        if mask not in graph:
            ref_value = graph[ref]
            length = tf.shape(ref_value)[:1] if tf.is_tensor(ref_value) else ref_value.shape[:1]
            graph[mask] = ones(length, dtype=dtype)


def batch_graphs(dataset, batch_size, drop_remainder=False, validate=True):
    """Batches a dataset of single graphs into merged graphs (disjoint unions).

    Each element of ``dataset`` is a dict: ``positions [n, 3]``; edges as
    ``neighbors`` (``RaggedTensor [n, (k)]``, row i = senders to i) or
    ``senders``/``receivers`` ``[e]``; any ``node_*`` ``[n, ...]``,
    ``edge_*`` ``[e, ...]`` and ``graph_*`` (per graph, no batch dim; put
    labels here, e.g. ``graph_targets [T]``).

    Each output element is one merged graph: ``positions``, ``node_*`` and
    ``edge_*`` concatenated; ``senders``/``receivers`` offset by the node
    counts of the graphs before; ``graph_*`` stacked to ``[G, ...]``; plus
    ``node_graph_index [N]`` and ``graph_sizes [G]`` (int32) and
    ``node_mask [N]``, ``edge_mask [E]``, ``graph_mask [G]`` (ones, the
    positions' dtype; kept as given when the elements carry them). A
    ``neighbors`` input becomes ``senders``/``receivers``.

    Built from ``Dataset.ragged_batch`` and two ``map`` s, so it works with
    shuffling, prefetching, ``distribute_datasets_from_function``, and
    parallel maps (order is kept).

    Args:
        dataset: a ``tf.data.Dataset`` of single-graph dicts.
        batch_size: graphs per batch, an int >= 1.
        drop_remainder: drop the last smaller batch.
        validate: add ``tf.debugging`` asserts on every element: index ranges,
            ``len(senders) == len(receivers)``, first dims of ``node_*`` and
            ``edge_*``. Cheap; turn off only for trusted data.

    Returns:
        A ``tf.data.Dataset`` of merged graph dicts.

    Example:
        >>> graphs = [{"positions": np.zeros((n, 3), "float32"),
        ...            "senders": np.arange(n, dtype="int32")[::-1].copy(),
        ...            "receivers": np.arange(n, dtype="int32")} for n in (2, 3)]
        >>> ds = tf.data.Dataset.from_generator(lambda: iter(graphs), output_signature={
        ...     "positions": tf.TensorSpec([None, 3]),
        ...     "senders": tf.TensorSpec([None], tf.int32),
        ...     "receivers": tf.TensorSpec([None], tf.int32)})
        >>> batch = next(iter(batch_graphs(ds, batch_size=2)))
        >>> batch["senders"].numpy().tolist(), batch["graph_sizes"].numpy().tolist()
        ([1, 0, 4, 3, 2], [2, 3])
    """
    where = "batch_graphs"
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"{where}: dataset must be a tf.data.Dataset (for a list of graphs in memory use "
            f"merge_graphs, or build a dataset with tf.data.Dataset.from_generator). "
            f"Received: {_describe(dataset)}"
        )
    if not isinstance(dataset.element_spec, collections.abc.Mapping):
        raise ValueError(
            f"{where}: dataset elements must be dicts of one graph each (put labels under "
            f"'graph_*' or 'node_*' keys). Received element_spec: {dataset.element_spec}"
        )
    batch_size = _check_size("batch_size", batch_size, 1, where)
    if not isinstance(drop_remainder, bool):
        raise ValueError(f"{where}: drop_remainder must be a bool. Received: {drop_remainder!r}")
    _check_prefixed_keys(
        dataset.element_spec, where, ("positions", "neighbors") + _EDGE_KEYS, single=True
    )
    autotune = tf.data.AUTOTUNE
    dataset = dataset.map(
        _no_autograph(lambda g: _standardize_single(g, validate)), num_parallel_calls=autotune
    )
    dataset = dataset.ragged_batch(
        batch_size, drop_remainder=drop_remainder, row_splits_dtype=tf.int32
    )
    return dataset.map(_no_autograph(_merge_batch), num_parallel_calls=autotune)


def _to_numpy(value, key, where):
    if isinstance(value, tf.RaggedTensor):
        raise ValueError(f"{where}: {key} must be dense. Received: {_describe(value)}")
    if tf.is_tensor(value):
        return value.numpy()
    return np.asarray(value)


def _single_to_numpy(graph, index):
    where = f"merge_graphs (graph {index})"
    if not isinstance(graph, collections.abc.Mapping):
        raise ValueError(f"{where}: each graph must be a dict. Received: {_describe(graph)}")
    _check_prefixed_keys(graph, where, ("positions", "neighbors") + _EDGE_KEYS, single=True)
    out = {}
    positions = _to_numpy(graph["positions"], "positions", where)
    if (
        positions.ndim != 2
        or positions.shape[1] != 3
        or not np.issubdtype(positions.dtype, np.floating)
    ):
        raise ValueError(
            f"{where}: positions must be float [n, 3]. Received: {_preview(positions)}"
        )
    out["positions"] = positions
    num_nodes = positions.shape[0]
    if "neighbors" in graph:
        if any(k in graph for k in _EDGE_KEYS):
            raise ValueError(
                f"{where}: give either 'neighbors' or 'senders' and 'receivers', not both. "
                f"Received keys: {sorted(graph)}"
            )
        neighbors = graph["neighbors"]
        if not isinstance(neighbors, tf.RaggedTensor):
            if not isinstance(neighbors, collections.abc.Sequence):
                raise ValueError(
                    f"{where}: neighbors must be a RaggedTensor or a list of lists. "
                    f"Received: {_describe(neighbors)}"
                )
            lengths = [len(row) for row in neighbors]
            flat = np.concatenate(
                [np.asarray(row, dtype=np.int64).reshape(-1) for row in neighbors]
                + [np.zeros(0, np.int64)]
            )
            neighbors = tf.RaggedTensor.from_row_lengths(flat, np.asarray(lengths, np.int64))
        if int(neighbors.nrows()) != num_nodes:
            raise ValueError(
                f"{where}: neighbors must have one row per node ({num_nodes}). "
                f"Received: {int(neighbors.nrows())} rows"
            )
        senders, receivers = (t.numpy() for t in edges_from_ragged(neighbors))
    elif all(k in graph for k in _EDGE_KEYS):
        senders = _to_numpy(graph["senders"], "senders", where)
        receivers = _to_numpy(graph["receivers"], "receivers", where)
        for name, idx in (("senders", senders), ("receivers", receivers)):
            if idx.size == 0 and idx.dtype == np.float64:
                idx = idx.astype(np.int32)  # np.asarray([]) is float64
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(
                    f"{where}: {name} must be an integer vector [e]. Received: {_preview(idx)}"
                )
            _np_check_range(f"{name} of graph {index}", idx, num_nodes, "number of nodes", where)
            if name == "senders":
                senders = idx
            else:
                receivers = idx
        if senders.shape != receivers.shape:
            raise ValueError(
                f"{where}: senders and receivers must have the same length. Received: "
                f"senders {senders.shape}, receivers {receivers.shape}"
            )
    else:
        raise ValueError(
            f"{where}: a graph needs 'neighbors' or both 'senders' and 'receivers'. "
            f"Received keys: {sorted(graph)}"
        )
    out["senders"], out["receivers"] = senders.astype(np.int32), receivers.astype(np.int32)
    for key, value in graph.items():
        if not key.startswith(_PREFIXES):
            continue
        value = _to_numpy(value, key, where)
        if key.startswith(("node_", "edge_")):
            count = num_nodes if key.startswith("node_") else senders.shape[0]
            if value.ndim == 0 or value.shape[0] != count:
                raise ValueError(
                    f"{where}: the first dimension of {key} must be the number of "
                    f"{'nodes' if key.startswith('node_') else 'edges'} ({count}). "
                    f"Received: {_preview(value)}"
                )
        out[key] = value
    return out


def merge_graphs(graphs):
    """Merges single graphs into one graph (their disjoint union), in NumPy.

    The eager counterpart of :func:`batch_graphs`, with the same input rules
    and output keys; ``neighbors`` may also be a list of lists. Use it in
    tests, for serving requests and for small in-memory datasets.

    Args:
        graphs: a non-empty sequence of single-graph dicts (NumPy arrays,
            tensors or lists), all with the same keys.

    Returns:
        A dict of NumPy arrays: ``positions``, ``senders``, ``receivers``
        (int32, offset), ``node_*``/``edge_*`` concatenated, ``graph_*``
        stacked, ``node_graph_index`` and ``graph_sizes`` (int32) and the
        masks ``node_mask``, ``edge_mask``, ``graph_mask`` (ones unless given).

    Example:
        >>> g = {"positions": np.zeros((2, 3), "float32"), "neighbors": [[1], []]}
        >>> merged = merge_graphs([g, g])
        >>> merged["senders"].tolist(), merged["receivers"].tolist()
        ([1, 3], [0, 2])
        >>> merged["node_graph_index"].tolist()
        [0, 0, 1, 1]
    """
    where = "merge_graphs"
    if isinstance(graphs, collections.abc.Mapping) or not isinstance(
        graphs, collections.abc.Iterable
    ):
        raise ValueError(
            f"{where}: graphs must be a sequence of graph dicts. Received: {_describe(graphs)}"
        )
    singles = [_single_to_numpy(g, i) for i, g in enumerate(graphs)]
    if not singles:
        raise ValueError(
            f"{where}: graphs must contain at least one graph. Received an empty sequence."
        )
    keys = set(singles[0])
    for i, g in enumerate(singles[1:], start=1):
        if set(g) != keys:
            raise ValueError(
                f"{where}: every graph must have the same keys. Graph 0 has {sorted(keys)}, "
                f"graph {i} has {sorted(g)}."
            )
    sizes = np.array([g["positions"].shape[0] for g in singles], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    out = {}
    for key in sorted(keys):
        values = [g[key] for g in singles]
        if key in _EDGE_KEYS:
            out[key] = np.concatenate([v + o for v, o in zip(values, offsets)]).astype(np.int32)
        elif key.startswith("graph_"):
            try:
                out[key] = np.stack(values)
            except ValueError as e:
                raise ValueError(
                    f"{where}: {key} must have the same shape in every graph. "
                    f"Received shapes: {[v.shape for v in values]}"
                ) from e
        else:
            try:
                out[key] = np.concatenate(values)
            except ValueError as e:
                raise ValueError(
                    f"{where}: {key} must have the same trailing shape in every graph. "
                    f"Received shapes: {[v.shape for v in values]}"
                ) from e
    out["node_graph_index"] = np.repeat(np.arange(len(singles), dtype=np.int32), sizes)
    out["graph_sizes"] = sizes
    _add_masks(out, np.ones)
    return out


# ----------------------------------------------------------------------------
# Padding
# ----------------------------------------------------------------------------


def _merged_to_tensors(graph, where):
    if not isinstance(graph, collections.abc.Mapping):
        raise ValueError(f"{where}: graph must be a dict. Received: {_describe(graph)}")
    _check_prefixed_keys(graph, where, ("positions",) + _EDGE_KEYS, single=False)
    for key in ("senders", "receivers", "graph_sizes"):
        if key not in graph:
            raise ValueError(
                f"{where}: a merged graph needs {key!r} (make one with batch_graphs or "
                f"merge_graphs). Received keys: {sorted(graph)}"
            )
    out = {}
    for key, value in graph.items():
        if isinstance(value, tf.RaggedTensor):
            raise ValueError(f"{where}: {key} must be dense. Received: {_describe(value)}")
        value = tf.convert_to_tensor(value)
        if value.shape.rank is None or value.shape.rank == 0:
            raise ValueError(
                f"{where}: {key} needs a known rank >= 1. Received: {_describe(value)}"
            )
        out[key] = value
    for key in ("senders", "receivers", "graph_sizes", "node_graph_index"):
        if key in out:
            _require_integer(key, out[key], where)
            out[key] = tf.cast(out[key], tf.int32)
    _require_float("positions", out["positions"], where)
    return out


def _pad_rows(x, count, value=0):
    rank = x.shape.rank
    paddings = tf.concat(
        [tf.reshape(tf.stack([0, count]), [1, 2]), tf.zeros([rank - 1, 2], tf.int32)], 0
    )
    return tf.pad(x, paddings, constant_values=tf.cast(value, x.dtype))


def _pad(graph, num_nodes, num_edges, num_graphs, where):
    """Pads a merged graph (dict of tensors) to the given (python or tensor) sizes."""
    n = _first_dim(graph["positions"])
    e = _first_dim(graph["senders"])
    g = _first_dim(graph["graph_sizes"])
    limits = (
        ("nodes", n, num_nodes, "num_nodes - 1 (one padding node is always needed)", 1),
        ("edges", e, num_edges, "num_edges", 0),
        ("graphs", g, num_graphs, "num_graphs - 1 (one padding graph is always needed)", 1),
    )
    deps = []
    for what, real, size, bound, reserve in limits:
        static = tf.get_static_value(real)
        if isinstance(size, int) and (static is not None or tf.executing_eagerly()):
            real_value = int(static if static is not None else real)
            if real_value > size - reserve:
                raise ValueError(
                    f"{where}: the graph has {real_value} real {what}, more than {bound} = "
                    f"{size - reserve}. Use larger sizes or smaller batches. "
                    f"Received: num_nodes={num_nodes}, num_edges={num_edges}, "
                    f"num_graphs={num_graphs}"
                )
        else:
            deps.append(
                tf.debugging.assert_less_equal(
                    real,
                    size - reserve,
                    message=f"{where}: more real {what} than {bound}; "
                    f"use larger sizes or smaller batches",
                )
            )
    with tf.control_dependencies(deps):  # fail with the message above, not inside tf.pad
        n, e, g = tf.identity(n), tf.identity(e), tf.identity(g)
    pad_nodes, pad_edges, pad_graphs = num_nodes - n, num_edges - e, num_graphs - g
    out = {}
    for key, value in graph.items():
        if key == "positions" or (key.startswith("node_") and key != "node_graph_index"):
            out[key] = _pad_rows(value, pad_nodes)
        elif key in _EDGE_KEYS:
            out[key] = _pad_rows(value, pad_edges, n)  # self-loops on the first padding node
        elif key.startswith("edge_"):
            out[key] = _pad_rows(value, pad_edges)
        elif key.startswith("graph_") and key != "graph_sizes":
            out[key] = _pad_rows(value, pad_graphs)
    node_graph_index = graph.get("node_graph_index")
    if node_graph_index is None:
        node_graph_index = tf.repeat(tf.range(g), graph["graph_sizes"])
    out["node_graph_index"] = _pad_rows(node_graph_index, pad_nodes, g)
    out["graph_sizes"] = tf.concat(
        [
            graph["graph_sizes"],
            tf.reshape(pad_nodes, [1]),
            tf.zeros(tf.reshape(pad_graphs - 1, [1]), tf.int32),
        ],
        0,
    )
    dtype = graph["positions"].dtype
    for mask, real, pad in (
        ("node_mask", n, pad_nodes),
        ("edge_mask", e, pad_edges),
        ("graph_mask", g, pad_graphs),
    ):
        if mask not in graph:
            out[mask] = _pad_rows(tf.ones(tf.reshape(real, [1]), dtype), pad)
    return out


@_no_autograph
def pad_to_sizes(graph, num_nodes, num_edges, num_graphs):
    """Pads a merged graph to fixed sizes, tensorflow-gnn style.

    One extra padding graph (index ``G``, the number of real graphs) holds all
    ``num_nodes - N`` padding nodes; ``num_graphs - G - 1`` further padding
    graphs are empty. Padding edges are self-loops on the first padding node
    (index ``N``). Padding rows get zeros in ``positions``, ``node_*``,
    ``edge_*`` (``edge_shifts`` too) and ``graph_*``, and 0 in
    ``node_mask``/``edge_mask``/``graph_mask`` (created as ones on the real
    part if missing). ``sum(graph_sizes) == num_nodes`` and
    ``node_graph_index`` stays consistent, so per-graph readouts with
    ``unsorted_segment_sum(..., num_segments=num_graphs)`` give the real
    graphs unchanged. Every output has a static first dimension, so XLA sees
    fixed shapes. Works eagerly and inside ``tf.data`` maps.

    Padding edges have zero length: layers must use a safe norm (DESIGN.md).

    Args:
        graph: a merged graph (from :func:`batch_graphs` or
            :func:`merge_graphs`): needs ``positions``, ``senders``,
            ``receivers`` and ``graph_sizes``.
        num_nodes: padded node count, an int >= 1; real nodes must be
            ``<= num_nodes - 1``.
        num_edges: padded edge count, an int >= 0; real edges must be
            ``<= num_edges``.
        num_graphs: padded graph count, an int >= 1; real graphs must be
            ``<= num_graphs - 1``.

    Returns:
        A dict of tensors with the input keys plus ``node_graph_index`` and
        the three masks. Too-large graphs raise ``ValueError`` eagerly (or
        when the shapes are static) and fail a ``tf.debugging`` assert
        (``InvalidArgumentError``) in ``tf.data``.

    Example:
        >>> merged = merge_graphs([{"positions": np.ones((2, 3), "float32"),
        ...                         "senders": np.array([0], "int32"),
        ...                         "receivers": np.array([1], "int32")}])
        >>> padded = pad_to_sizes(merged, num_nodes=4, num_edges=3, num_graphs=3)
        >>> padded["senders"].numpy().tolist(), padded["edge_mask"].numpy().tolist()
        ([0, 2, 2], [1.0, 0.0, 0.0])
        >>> padded["graph_sizes"].numpy().tolist(), padded["node_graph_index"].numpy().tolist()
        ([2, 2, 0], [0, 0, 1, 1])
    """
    where = "pad_to_sizes"
    num_nodes = _check_size("num_nodes", num_nodes, 1, where)
    num_edges = _check_size("num_edges", num_edges, 0, where)
    num_graphs = _check_size("num_graphs", num_graphs, 1, where)
    padded = _pad(_merged_to_tensors(graph, where), num_nodes, num_edges, num_graphs, where)
    sizes = {"node": num_nodes, "edge": num_edges, "graph": num_graphs}
    out = {}
    for key, value in padded.items():
        if key == "positions":
            rows = num_nodes
        elif key in _EDGE_KEYS:
            rows = num_edges
        else:
            rows = sizes[key.split("_", 1)[0]]
        out[key] = tf.ensure_shape(value, [rows] + value.shape.as_list()[1:])
    return out


SizeBucket = collections.namedtuple("SizeBucket", ["num_nodes", "num_edges", "num_graphs"])
SizeBucket.__doc__ = """Padded sizes of one bucket: a batch fits when it has at most
``num_nodes - 1`` nodes, ``num_edges`` edges and ``num_graphs - 1`` graphs."""


class SizeBuckets(tuple):
    """A few padded sizes; each batch is padded to the smallest that fits.

    Under XLA every distinct input shape compiles once, so padding to a few
    buckets bounds the compiles by ``len(buckets)`` while wasting less than
    one worst-case size. Buckets are kept sorted by
    ``(num_nodes, num_edges, num_graphs)`` and the first one that fits wins;
    with nested buckets (each at least as large as the previous in all three
    sizes, as :func:`buckets_for` makes them) that is the smallest fitting
    one. A batch that fits no bucket raises an error, never truncates.

    Args:
        buckets: an iterable of ``(num_nodes, num_edges, num_graphs)``
            triples (or :class:`SizeBucket`), ints with ``num_nodes >= 1``,
            ``num_edges >= 0``, ``num_graphs >= 1``.

    Example:
        >>> buckets = SizeBuckets([(64, 512, 9), (32, 256, 9)])
        >>> buckets[0]
        SizeBucket(num_nodes=32, num_edges=256, num_graphs=9)
        >>> buckets.index_for(num_nodes=40, num_edges=100, num_graphs=8)
        1
    """

    def __new__(cls, buckets):
        where = "SizeBuckets"
        if isinstance(buckets, (str, bytes)) or not isinstance(buckets, collections.abc.Iterable):
            raise ValueError(
                f"{where}: buckets must be an iterable of (num_nodes, num_edges, num_graphs). "
                f"Received: buckets={buckets!r}"
            )
        items = []
        for b in buckets:
            if not isinstance(b, collections.abc.Sequence) or len(b) != 3:
                raise ValueError(
                    f"{where}: each bucket must be (num_nodes, num_edges, num_graphs). "
                    f"Received bucket: {b!r}"
                )
            items.append(
                SizeBucket(
                    _check_size("num_nodes", b[0], 1, f"{where} bucket {tuple(b)}"),
                    _check_size("num_edges", b[1], 0, f"{where} bucket {tuple(b)}"),
                    _check_size("num_graphs", b[2], 1, f"{where} bucket {tuple(b)}"),
                )
            )
        if not items:
            raise ValueError(
                f"{where}: buckets must contain at least one bucket. Received: buckets={buckets!r}"
            )
        return super().__new__(cls, sorted(set(items)))

    def __repr__(self):
        return f"SizeBuckets({[tuple(b) for b in self]})"

    def index_for(self, num_nodes, num_edges, num_graphs):
        """The index of the first bucket that fits real sizes; ValueError if none."""
        for i, b in enumerate(self):
            if (
                num_nodes <= b.num_nodes - 1
                and num_edges <= b.num_edges
                and num_graphs <= b.num_graphs - 1
            ):
                return i
        raise ValueError(
            f"SizeBuckets: a batch with {num_nodes} nodes, {num_edges} edges and "
            f"{num_graphs} graphs fits no bucket (a bucket holds num_nodes - 1 nodes, "
            f"num_edges edges and num_graphs - 1 graphs). Add a larger bucket (see "
            f"buckets_for) or use smaller batches. Buckets: {self!r}"
        )

    @_no_autograph
    def pad(self, graph):
        """Pads a merged graph to the smallest fitting bucket.

        Eagerly the output has the bucket's static shapes (a ``ValueError`` if
        no bucket fits); in ``tf.data`` the shapes are only known at run time
        and a batch that fits no bucket fails a ``tf.debugging`` assert
        (``InvalidArgumentError``).
        """
        where = "SizeBuckets.pad"
        tensors = _merged_to_tensors(graph, where)
        n, e, g = (_first_dim(tensors[k]) for k in ("positions", "senders", "graph_sizes"))
        if tf.executing_eagerly():
            bucket = self[self.index_for(int(n), int(e), int(g))]
            return pad_to_sizes(tensors, *bucket)
        table = tf.constant([list(b) for b in self], tf.int32)
        fits = (n <= table[:, 0] - 1) & (e <= table[:, 1]) & (g <= table[:, 2] - 1)
        check = tf.debugging.Assert(
            tf.reduce_any(fits),
            [
                f"SizeBuckets: a batch fits no bucket; add a larger bucket (see buckets_for) "
                f"or use smaller batches. Buckets: {self!r}. Batch nodes, edges, graphs:",
                n,
                e,
                g,
            ],
        )
        with tf.control_dependencies([check]):
            index = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
        sizes = table[index]
        return _pad(tensors, sizes[0], sizes[1], sizes[2], where)


def pad_to_buckets(dataset, buckets):
    """Pads every merged graph of a dataset to its smallest fitting bucket.

    Args:
        dataset: a ``tf.data.Dataset`` of merged graphs (from
            :func:`batch_graphs`).
        buckets: a :class:`SizeBuckets` or an iterable of
            ``(num_nodes, num_edges, num_graphs)`` triples.

    Returns:
        A ``tf.data.Dataset`` of padded graphs with at most ``len(buckets)``
        distinct shapes (the element_spec shows ``None`` for the padded
        dimensions, as several sizes flow through one dataset). Iterating
        raises ``InvalidArgumentError`` on a batch that fits no bucket.

    Example:
        >>> g = {"positions": np.zeros((3, 3), "float32"),
        ...      "senders": np.array([0, 1], "int32"), "receivers": np.array([1, 2], "int32")}
        >>> ds = tf.data.Dataset.from_tensors(merge_graphs([g, g]))
        >>> padded = next(iter(pad_to_buckets(ds, [(8, 8, 3), (16, 16, 5)])))
        >>> padded["positions"].shape.as_list(), padded["senders"].shape.as_list()
        ([8, 3], [8])
    """
    where = "pad_to_buckets"
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"{where}: dataset must be a tf.data.Dataset. Received: {_describe(dataset)}"
        )
    if not isinstance(buckets, SizeBuckets):
        buckets = SizeBuckets(buckets)
    return dataset.map(buckets.pad, num_parallel_calls=tf.data.AUTOTUNE)


def _sizes_of(dataset_or_sizes, where):
    """(num_nodes, num_edges) per single graph, as int64 [M, 2]."""
    if isinstance(dataset_or_sizes, tf.data.Dataset):
        dataset = dataset_or_sizes
        if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(f"{where}: the dataset is infinite; pass it before .repeat().")
        spec = dataset.element_spec
        if not isinstance(spec, collections.abc.Mapping) or "positions" not in spec:
            raise ValueError(
                f"{where}: dataset elements must be single-graph dicts with 'positions'. "
                f"Received element_spec: {spec}"
            )
        if "graph_sizes" in spec:
            raise ValueError(f"{where}: pass the dataset of single graphs, before batch_graphs.")

        def count(g):
            n = tf.shape(g["positions"], out_type=tf.int64)[0]
            if "neighbors" in g:
                e = tf.cast(tf.shape(g["neighbors"].values)[0], tf.int64)
            elif "senders" in g:
                e = tf.shape(g["senders"], out_type=tf.int64)[0]
            else:
                e = tf.constant(0, tf.int64)
            return tf.stack([n, e])

        rows = list(dataset.map(_no_autograph(count)).as_numpy_iterator())
        return np.array(rows, dtype=np.int64).reshape(-1, 2)
    if (
        isinstance(dataset_or_sizes, collections.abc.Sequence)
        and dataset_or_sizes
        and isinstance(dataset_or_sizes[0], collections.abc.Mapping)
    ):
        merged_sizes = []
        for g in dataset_or_sizes:
            single = _single_to_numpy(g, len(merged_sizes))
            merged_sizes.append((single["positions"].shape[0], single["senders"].shape[0]))
        return np.array(merged_sizes, dtype=np.int64)
    sizes = np.asarray(dataset_or_sizes)
    if (
        sizes.ndim != 2
        or sizes.shape[1] != 2
        or not np.issubdtype(sizes.dtype, np.integer)
        or np.any(sizes < 0)
    ):
        raise ValueError(
            f"{where}: dataset_or_sizes must be a dataset of single graphs, a list of graph "
            f"dicts or non-negative integer sizes [num_graphs, 2] = (num_nodes, num_edges). "
            f"Received: {_describe(dataset_or_sizes)}"
        )
    return sizes.astype(np.int64)


def buckets_for(dataset_or_sizes, batch_size, num_buckets=3, round_to=8, seed=0):
    """Picks padding buckets from the sizes of the graphs a dataset batches.

    The last bucket covers the worst batch that any shuffle can produce (the
    ``batch_size`` largest node counts plus one padding node, and the
    ``batch_size`` largest edge counts), so no batch is ever rejected. The
    others sit at the ``k / num_buckets`` quantiles of the batch totals of a
    few seeded random shuffles. All sizes are rounded up to multiples of
    ``round_to``; every bucket has ``batch_size + 1`` graphs, and buckets are
    nested (a later one is at least as large in every size).

    Args:
        dataset_or_sizes: a finite ``tf.data.Dataset`` of single graphs (as
            for :func:`batch_graphs`; iterated once), a list of graph dicts,
            or integer sizes ``[num_graphs, 2]`` = ``(num_nodes, num_edges)``.
        batch_size: graphs per batch, as given to :func:`batch_graphs`.
        num_buckets: how many buckets at most (equal ones are merged).
        round_to: round node and edge counts up to multiples of this.
        seed: seed of the simulated shuffles.

    Returns:
        A :class:`SizeBuckets`.

    Example:
        >>> sizes = [(n, 2 * n) for n in range(1, 21)]
        >>> buckets_for(sizes, batch_size=4, num_buckets=2)
        SizeBuckets([(48, 88, 5), (80, 152, 5)])
    """
    where = "buckets_for"
    batch_size = _check_size("batch_size", batch_size, 1, where)
    num_buckets = _check_size("num_buckets", num_buckets, 1, where)
    round_to = _check_size("round_to", round_to, 1, where)
    if not _is_int(seed):
        raise ValueError(f"{where}: seed must be an int. Received: seed={seed!r}")
    sizes = _sizes_of(dataset_or_sizes, where)
    if sizes.shape[0] == 0:
        raise ValueError(
            f"{where}: need at least one graph to choose buckets from. Received no graphs."
        )

    def round_up(x):
        return int(-(-int(x) // round_to) * round_to)

    count = sizes.shape[0]
    worst = np.sort(sizes, axis=0)[::-1][:batch_size].sum(axis=0)
    last = SizeBucket(round_up(worst[0] + 1), round_up(worst[1]), batch_size + 1)
    buckets = [last]
    if num_buckets > 1:
        rng = np.random.default_rng(seed)
        batches_per_epoch = -(-count // batch_size)
        repeats = min(100, max(1, -(-2000 // batches_per_epoch)))
        starts = np.arange(0, count, batch_size)
        totals = np.concatenate(
            [np.add.reduceat(sizes[rng.permutation(count)], starts, axis=0) for _ in range(repeats)]
        )
        for k in range(1, num_buckets):
            q_nodes, q_edges = np.quantile(totals, k / num_buckets, axis=0, method="higher")
            buckets.append(
                SizeBucket(
                    min(round_up(q_nodes + 1), last.num_nodes),
                    min(round_up(q_edges), last.num_edges),
                    batch_size + 1,
                )
            )
    return SizeBuckets(buckets)


# ----------------------------------------------------------------------------
# Keras plumbing and validation
# ----------------------------------------------------------------------------


@_no_autograph
def to_keras_inputs(graph, target_key, weight_key=None, input_keys=None):
    """Splits a merged (possibly padded) graph into ``model.fit`` arguments.

    Returns ``(inputs, targets, sample_weight)``: ``targets = graph[target_key]``
    and ``sample_weight`` is the mask of the target's kind, ``node_mask`` for
    ``node_*`` targets, ``edge_mask`` for ``edge_*`` and ``graph_mask`` for
    ``graph_*`` (ones when the mask is missing), times ``graph[weight_key]``
    if given. Padding therefore has weight 0; pair it with a loss reduction
    that divides by the weights (``reduction="mean_with_sample_weight"``) so
    padded and unpadded batches give the same loss. Use it as
    ``dataset.map(lambda g: to_keras_inputs(g, "graph_targets"))``.

    Keep a trailing axis on targets and predictions (``[G, 1]`` for one
    number per graph): Keras losses average over the last axis, so a model
    output of shape ``[G]`` is averaged over all graphs, padding included,
    before the weights apply.

    Args:
        graph: a merged graph dict (tensors or arrays).
        target_key: the key of the targets, starting with ``node_``,
            ``edge_`` or ``graph_``.
        weight_key: optional key of per-item weights of the same kind
            (first dimension equal to the target's); removed from the inputs.
        input_keys: optional keys to keep in ``inputs`` (all others,
            including other targets, are dropped); by default every key but
            ``target_key`` and ``weight_key`` (masks stay: layers use them).

    Returns:
        ``(inputs, targets, sample_weight)``, ``sample_weight`` float
        ``[len(targets)]``.

    Example:
        >>> g = {"positions": np.zeros((3, 3), "float32"),
        ...      "node_targets": np.ones((3, 1), "float32"),
        ...      "node_mask": np.array([1, 1, 0], "float32")}
        >>> inputs, targets, weights = to_keras_inputs(g, "node_targets")
        >>> sorted(inputs), weights.numpy().tolist()
        (['node_mask', 'positions'], [1.0, 1.0, 0.0])
    """
    where = "to_keras_inputs"
    if not isinstance(graph, collections.abc.Mapping):
        raise ValueError(f"{where}: graph must be a dict. Received: {_describe(graph)}")
    if not isinstance(target_key, str) or target_key not in graph:
        raise ValueError(
            f"{where}: target_key must be a key of graph. Received: target_key={target_key!r}, "
            f"keys {sorted(graph)}"
        )
    kind = target_key.split("_", 1)[0] + "_"
    if kind not in _PREFIXES or target_key.endswith("_mask"):
        raise ValueError(
            f"{where}: target_key must start with 'node_', 'edge_' or 'graph_' (and not be a "
            f"mask). Received: target_key={target_key!r}"
        )
    targets = tf.convert_to_tensor(graph[target_key])
    mask_key = kind + "mask"
    if mask_key in graph:
        sample_weight = tf.convert_to_tensor(graph[mask_key])
        if not sample_weight.dtype.is_floating:
            sample_weight = tf.cast(sample_weight, tf.float32)
    else:
        sample_weight = tf.ones(tf.shape(targets)[:1], tf.float32)
    if weight_key is not None:
        if (
            not isinstance(weight_key, str)
            or weight_key not in graph
            or not weight_key.startswith(kind)
        ):
            raise ValueError(
                f"{where}: weight_key must be a key of graph starting with {kind!r} like the "
                f"target. Received: weight_key={weight_key!r}, keys {sorted(graph)}"
            )
        weights = tf.convert_to_tensor(graph[weight_key])
        if weights.shape.rank != 1:
            raise ValueError(
                f"{where}: {weight_key} must be a vector, one weight per {kind[:-1]}. "
                f"Received: {_describe(weights)}"
            )
        sample_weight = sample_weight * tf.cast(weights, sample_weight.dtype)
    excluded = {target_key, weight_key}
    if input_keys is None:
        inputs = {k: v for k, v in graph.items() if k not in excluded}
    else:
        if isinstance(input_keys, str) or not all(isinstance(k, str) for k in input_keys):
            raise ValueError(
                f"{where}: input_keys must be a list of key names. Received: {input_keys!r}"
            )
        missing = [k for k in input_keys if k not in graph or k in excluded]
        if missing:
            raise ValueError(
                f"{where}: input_keys {missing} are not input keys of graph. "
                f"Received keys: {sorted(graph)}, target_key={target_key!r}"
            )
        inputs = {k: graph[k] for k in input_keys}
    return inputs, targets, sample_weight


def _validate_arrays(arrays, max_neighbors=None):
    """All checks of validate_graph on NumPy arrays; ragged neighbours are (values, splits)."""
    where = "validate_graph"
    if "positions" not in arrays:
        raise ValueError(
            f"{where}: a graph needs 'positions' [N, 3]. Received keys: {sorted(arrays)}"
        )
    positions = arrays["positions"]
    if not np.issubdtype(positions.dtype, np.floating):
        raise ValueError(
            f"{where}: positions must have a float dtype. Received: {_preview(positions)}"
        )
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(
            f"{where}: positions must have shape [N, 3]. Received: {_preview(positions)}"
        )
    if not np.all(np.isfinite(positions)):
        raise ValueError(
            f"{where}: positions contains non-finite values. Received: {_preview(positions)}"
        )
    num_nodes = positions.shape[0]

    def integer_vector(key):
        value = arrays[key]
        if not np.issubdtype(value.dtype, np.integer):
            raise ValueError(
                f"{where}: {key} must have an integer dtype (int32). Received: {_preview(value)}"
            )
        if value.ndim != 1:
            raise ValueError(f"{where}: {key} must be a vector. Received: {_preview(value)}")
        return value

    num_edges = None
    if "neighbors" in arrays:
        values, splits = arrays["neighbors"]
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"{where}: neighbors must have an integer dtype. Received: {_preview(values)}"
            )
        if len(splits) - 1 != num_nodes:
            raise ValueError(
                f"{where}: neighbors must have one row per node ({num_nodes}). "
                f"Received: {len(splits) - 1} rows"
            )
        _np_check_range("neighbors", values, num_nodes, "N = rows of positions", where)
        num_edges = len(values)
    if any(k in arrays for k in _EDGE_KEYS):
        for key in _EDGE_KEYS:
            if key not in arrays:
                raise ValueError(
                    f"{where}: senders and receivers go together; {key} is missing. "
                    f"Received keys: {sorted(arrays)}"
                )
        senders, receivers = integer_vector("senders"), integer_vector("receivers")
        if senders.shape != receivers.shape:
            raise ValueError(
                f"{where}: senders and receivers must have the same length. Received: "
                f"senders of length {senders.shape[0]}, receivers of length {receivers.shape[0]}"
            )
        for key, idx in (("senders", senders), ("receivers", receivers)):
            _np_check_range(key, idx, num_nodes, "N = rows of positions", where)
        num_edges = senders.shape[0]

    for key, value in arrays.items():
        if key.startswith("edge_"):
            if num_edges is None:
                raise ValueError(
                    f"{where}: {key} is per edge but the graph has no senders/receivers."
                )
            if value.ndim == 0 or value.shape[0] != num_edges:
                raise ValueError(
                    f"{where}: the first dimension of {key} must be the number of edges "
                    f"E = {num_edges}. Received: {_preview(value)}"
                )
        elif key.startswith("node_") and key != "node_graph_index":
            if value.ndim == 0 or value.shape[0] != num_nodes:
                raise ValueError(
                    f"{where}: the first dimension of {key} must be the number of nodes "
                    f"N = {num_nodes}. Received: {_preview(value)}"
                )
    for key in ("edge_mask", "node_mask", "graph_mask"):
        if key in arrays and (
            arrays[key].ndim != 1 or not np.issubdtype(arrays[key].dtype, np.floating)
        ):
            raise ValueError(
                f"{where}: {key} must be a float vector. Received: {_preview(arrays[key])}"
            )
    if max_neighbors is not None and num_edges is not None:
        if "neighbors" in arrays and not any(k in arrays for k in _EDGE_KEYS):
            receivers = np.repeat(np.arange(num_nodes), np.diff(arrays["neighbors"][1]))
        else:
            receivers = arrays["receivers"]
        if "edge_mask" in arrays:  # masked (padding) edges take no neighbour slot
            receivers = receivers[arrays["edge_mask"] > 0]
        degree = np.bincount(receivers.astype(np.int64), minlength=num_nodes)
        if degree.size and degree.max() > max_neighbors:
            over = np.flatnonzero(degree > max_neighbors)
            raise ValueError(
                f"{where}: node {int(over[0])} receives {int(degree[over[0]])} edges, more than "
                f"max_neighbors={max_neighbors} ({over.size} such node(s), largest in-degree "
                f"{int(degree.max())}); layers with this static bound raise for it, except under XLA, "
                "where they take the extra edges in a slow per-edge loop. Raise "
                "max_neighbors or cap the neighbour lists "
                "(radius_graph(..., max_neighbors=K))."
            )
    if "edge_shifts" in arrays:
        shifts = arrays["edge_shifts"]
        if shifts.ndim != 2 or shifts.shape[1] != 3 or not np.issubdtype(shifts.dtype, np.floating):
            raise ValueError(
                f"{where}: edge_shifts must be float [E, 3]. Received: {_preview(shifts)}"
            )

    num_graphs = None
    if "graph_sizes" in arrays:
        sizes = integer_vector("graph_sizes")
        if np.any(sizes < 0):
            raise ValueError(
                f"{where}: graph_sizes must be non-negative. "
                f"Received: graph_sizes={_preview(sizes)}"
            )
        if sizes.sum() != num_nodes:
            raise ValueError(
                f"{where}: graph_sizes must sum to the number of nodes N = {num_nodes}; it sums "
                f"to {int(sizes.sum())}. Received: graph_sizes={_preview(sizes)}"
            )
        num_graphs = sizes.shape[0]
    elif "graph_mask" in arrays:
        num_graphs = arrays["graph_mask"].shape[0]
    if "node_graph_index" in arrays:
        index = integer_vector("node_graph_index")
        if index.shape[0] != num_nodes:
            raise ValueError(
                f"{where}: node_graph_index must have one entry per node (N = {num_nodes}). "
                f"Received: node_graph_index={_preview(index)}"
            )
        if num_graphs is not None:
            _np_check_range("node_graph_index", index, num_graphs, "G = len(graph_sizes)", where)
        elif np.any(index < 0):
            _np_check_range(
                "node_graph_index", index, np.iinfo(np.int64).max, "non-negative", where
            )
        if "graph_sizes" in arrays:
            counts = np.bincount(index, minlength=num_graphs)
            if np.any(counts != arrays["graph_sizes"]):
                raise ValueError(
                    f"{where}: node_graph_index disagrees with graph_sizes: it counts "
                    f"{counts.tolist()[:20]} nodes per graph. Received: graph_sizes="
                    f"{_preview(arrays['graph_sizes'])}"
                )
    if num_graphs is not None and ("graph_sizes" in arrays or "node_graph_index" in arrays):
        for key, value in arrays.items():
            if key.startswith("graph_") and (value.ndim == 0 or value.shape[0] != num_graphs):
                raise ValueError(
                    f"{where}: the first dimension of {key} must be the number of graphs "
                    f"G = {num_graphs}. Received: {_preview(value)}"
                )


@_no_autograph
def validate_graph(graph, max_neighbors=None):
    """Checks a graph dict's dtypes, shapes and indices; returns it unchanged.

    Run it at the boundary, outside XLA (inside a compiled model bad indices
    are silently clamped or read as zeros). It checks: ``positions`` float
    ``[N, 3]`` and finite; ``senders``/``receivers`` integer vectors of equal
    length with values in ``[0, N)`` (or ``neighbors`` rows and values);
    first dims of ``edge_*`` (E), ``node_*`` (N) and, in merged graphs,
    ``graph_*`` (G); masks float vectors; ``edge_shifts`` float ``[E, 3]``;
    ``graph_sizes`` non-negative with ``sum == N``; ``node_graph_index`` in
    ``[0, G)`` and counting ``graph_sizes`` nodes per graph; with
    ``max_neighbors``, that no node receives more edges (those with
    ``edge_mask > 0`` when a mask is given). Other keys are ignored.

    Eagerly a failure raises ``ValueError`` naming the key, the problem and
    what was received. Inside ``tf.function``/``tf.data`` the same checks run
    through ``tf.numpy_function`` (so not in a SavedModel) and the message
    arrives in a ``tf.errors`` exception when the data flows.

    Args:
        graph: a dict of tensors, NumPy arrays or lists (``neighbors`` may be
            a ``tf.RaggedTensor``).
        max_neighbors: ``None`` or the static neighbour bound ``K`` the graph's
            convolutions are built with (``PointConvolution(max_neighbors=K)``,
            ``SE3Attention(..., max_neighbors=K)``): a node with more incoming
            edges makes the layers raise, except under XLA, where they take the
            extra edges in a slow per-edge loop instead.

    Returns:
        ``graph``, unchanged (in graph mode: the same values, made to depend
        on the checks).

    Example:
        >>> graph = {"positions": np.zeros((2, 3), "float32"),
        ...          "senders": np.array([0, 2], "int32"), "receivers": np.array([1, 0], "int32")}
        >>> try:
        ...     validate_graph(graph)
        ... except ValueError as e:
        ...     print(str(e)[:54])
        validate_graph: senders contains 2 out of range [0, 2)
    """
    where = "validate_graph"
    if not isinstance(graph, collections.abc.Mapping):
        raise ValueError(f"{where}: graph must be a dict. Received: {_describe(graph)}")
    if max_neighbors is not None:
        _check_size("max_neighbors", max_neighbors, 1, where)
        max_neighbors = int(max_neighbors)
    names, flat, layout = [], [], []
    for key, value in graph.items():
        if isinstance(value, tf.RaggedTensor):
            if value.ragged_rank != 1:
                raise ValueError(
                    f"{where}: {key} must be ragged [N, (k)]. Received: {_describe(value)}"
                )
            names.append(key)
            layout.append(2)
            flat += [value.values, value.row_splits]
        elif tf.is_tensor(value) or isinstance(
            value, (np.ndarray, list, tuple, int, float, np.generic)
        ):
            names.append(key)
            layout.append(1)
            flat.append(value)

    def check(*arrays):
        arrays = [np.asarray(a) for a in arrays]
        d, i = {}, 0
        for name, width in zip(names, layout):
            d[name] = arrays[i] if width == 1 else (arrays[i], arrays[i + 1])
            i += width
        _validate_arrays(d, max_neighbors)
        return np.bool_(True)

    if tf.executing_eagerly():
        check(*[a.numpy() if tf.is_tensor(a) else a for a in flat])
        return graph
    ok = tf.numpy_function(check, [tf.convert_to_tensor(a) for a in flat], tf.bool, stateful=True)
    return _with_deps([ok], dict(graph))
