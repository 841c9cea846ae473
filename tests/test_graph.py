"""Tests of tfequivariant.graph against brute-force NumPy references."""

import collections
import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfequivariant import graph

F_NODE, F_EDGE, T_GRAPH = 4, 2, 3


# ---------------------------------------------------------------------------
# Helpers: random single graphs, datasets, and independent references.
# ---------------------------------------------------------------------------


def random_neighbor_lists(rng, n, max_k=4):
    """Random neighbour lists with isolated nodes and duplicate edges allowed."""
    if n == 0:
        return []
    return [rng.integers(0, n, size=rng.integers(0, max_k + 1)).tolist() for _ in range(n)]


def random_single(rng, n, max_k=4, neighbors=None):
    neighbors = random_neighbor_lists(rng, n, max_k) if neighbors is None else neighbors
    num_edges = sum(len(row) for row in neighbors)
    return {
        "positions": rng.normal(size=(n, 3)).astype(np.float32),
        "node_features": rng.normal(size=(n, F_NODE)).astype(np.float32),
        "node_targets": rng.normal(size=(n, 1)).astype(np.float32),
        "neighbors": neighbors,
        "edge_attr": rng.normal(size=(num_edges, F_EDGE)).astype(np.float32),
        "graph_targets": rng.normal(size=(T_GRAPH,)).astype(np.float32),
    }


def as_edge_form(single):
    """The same graph with senders/receivers instead of neighbour lists (NumPy reference)."""
    if "neighbors" not in single:
        return single
    out = {k: v for k, v in single.items() if k != "neighbors"}
    rows = single["neighbors"]
    out["senders"] = np.array([j for row in rows for j in row], dtype=np.int32)
    out["receivers"] = np.array([i for i, row in enumerate(rows) for _ in row], dtype=np.int32)
    return out


SINGLE_SIGNATURE = {
    "positions": tf.TensorSpec([None, 3], tf.float32),
    "node_features": tf.TensorSpec([None, F_NODE], tf.float32),
    "node_targets": tf.TensorSpec([None, 1], tf.float32),
    "neighbors": tf.RaggedTensorSpec(
        [None, None], tf.int32, ragged_rank=1, row_splits_dtype=tf.int64
    ),
    "edge_attr": tf.TensorSpec([None, F_EDGE], tf.float32),
    "graph_targets": tf.TensorSpec([T_GRAPH], tf.float32),
}


def ragged_dataset(singles):
    def gen():
        for g in singles:
            row_lengths = [len(row) for row in g["neighbors"]]
            values = np.array([j for row in g["neighbors"] for j in row], dtype=np.int32)
            yield {
                **g,
                "neighbors": tf.RaggedTensor.from_row_lengths(
                    values, np.array(row_lengths, np.int64)
                ),
            }

    return tf.data.Dataset.from_generator(gen, output_signature=SINGLE_SIGNATURE)


def to_numpy(g):
    return {k: np.asarray(v) for k, v in g.items()}


def edge_multiset(merged):
    """Real edges of a merged graph as (graph, local sender, local receiver, edge_attr) counts."""
    g = to_numpy(merged)
    sizes = g["graph_sizes"]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    real = g["edge_mask"] > 0 if "edge_mask" in g else np.ones(len(g["senders"]), bool)
    out = collections.Counter()
    for s, r, attr in zip(g["senders"][real], g["receivers"][real], g["edge_attr"][real]):
        gid = int(g["node_graph_index"][r])
        assert g["node_graph_index"][s] == gid, "an edge crosses graphs"
        out[(gid, int(s - offsets[gid]), int(r - offsets[gid]), tuple(np.round(attr, 5)))] += 1
    return out


def expected_edge_multiset(singles):
    out = collections.Counter()
    for gid, single in enumerate(singles):
        ref = as_edge_form(single)
        for s, r, attr in zip(ref["senders"], ref["receivers"], ref["edge_attr"]):
            out[(gid, int(s), int(r), tuple(np.round(attr, 5)))] += 1
    return out


def real_sizes(padded):
    g = to_numpy(padded)
    return int(g["node_mask"].sum()), int(g["edge_mask"].sum()), int(g["graph_mask"].sum())


# ---------------------------------------------------------------------------
# Ragged adapters
# ---------------------------------------------------------------------------


def test_public_names():
    assert sorted(graph.__all__) == [
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
    assert all(hasattr(graph, name) for name in graph.__all__)


def test_docstring_examples_run():
    result = doctest.testmod(graph, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 20 and result.failed == 0


def test_edges_from_ragged_eager_function_and_dataset():
    rows = [[1, 2], [], [0, 0, 3], [2]]
    neighbors = tf.ragged.constant(rows, dtype=tf.int64)
    expected_s = [1, 2, 0, 0, 3, 2]
    expected_r = [0, 0, 2, 2, 2, 3]

    s, r = graph.edges_from_ragged(neighbors)
    assert s.dtype == tf.int32 and r.dtype == tf.int32
    assert s.numpy().tolist() == expected_s and r.numpy().tolist() == expected_r

    s, r = tf.function(graph.edges_from_ragged)(neighbors)
    assert s.numpy().tolist() == expected_s and r.numpy().tolist() == expected_r

    ds = tf.data.Dataset.from_tensors(neighbors).map(graph.edges_from_ragged)
    s, r = next(iter(ds))
    assert s.numpy().tolist() == expected_s and r.numpy().tolist() == expected_r


@pytest.mark.parametrize(
    "rows", [[[1, 2], [], [0, 0, 3], [2]], [[], [], [1]], [[1], [0], [], []], [[], []], []]
)
def test_edges_from_row_splits_equals_ragged(rows):
    neighbors = (
        tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1)
        if rows
        else tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))
    )
    s_ref, r_ref = graph.edges_from_ragged(neighbors)
    values, splits = neighbors.values, neighbors.row_splits
    for fn in (
        graph.edges_from_row_splits,
        tf.function(graph.edges_from_row_splits),
        tf.function(
            lambda v, sp: graph.edges_from_row_splits(v, sp, validate=False), jit_compile=True
        ),
    ):
        s, r = fn(values, splits)
        assert s.numpy().tolist() == s_ref.numpy().tolist()
        assert r.numpy().tolist() == r_ref.numpy().tolist()


def test_edges_from_row_splits_in_saved_model(tmp_path):
    module = tf.Module()
    module.edges = tf.function(
        lambda v, sp: graph.edges_from_row_splits(v, sp),
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="neighbor_values"),
            tf.TensorSpec([None], tf.int64, name="neighbor_row_splits"),
        ],
    )
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    s, r = loaded.edges(tf.constant([1, 2, 0], tf.int32), tf.constant([0, 2, 2, 3], tf.int64))
    assert s.numpy().tolist() == [1, 2, 0] and r.numpy().tolist() == [0, 0, 2]
    with pytest.raises(tf.errors.InvalidArgumentError, match="neighbour index"):
        loaded.edges(tf.constant([1, 5, 0], tf.int32), tf.constant([0, 2, 2, 3], tf.int64))


def test_ragged_adapters_reject_bad_input():
    with pytest.raises(ValueError, match=r"neighbors contains 3 out of range \[0, 2\)"):
        graph.edges_from_ragged(tf.ragged.constant([[1], [3]]))
    with pytest.raises(ValueError, match=r"neighbors contains -1"):
        graph.edges_from_ragged(tf.ragged.constant([[-1], [0]]))
    with pytest.raises(ValueError, match="neighbors must be a tf.RaggedTensor"):
        graph.edges_from_ragged(tf.constant([[1], [0]]))
    with pytest.raises(ValueError, match="integer dtype"):
        graph.edges_from_ragged(tf.ragged.constant([[1.0], [0.0]]))
    with pytest.raises(ValueError, match="neighbor_row_splits must start at 0"):
        graph.edges_from_row_splits([0, 1], [0, 1, 3])
    with pytest.raises(ValueError, match="neighbor_values contains 2 out of range"):
        graph.edges_from_row_splits([0, 2], [0, 1, 2])
    ds = tf.data.Dataset.from_tensors(tf.ragged.constant([[1], [3]])).map(graph.edges_from_ragged)
    with pytest.raises(tf.errors.InvalidArgumentError, match="neighbour index"):
        next(iter(ds))


# ---------------------------------------------------------------------------
# Radius graphs
# ---------------------------------------------------------------------------


def brute_radius(positions, cutoff, max_neighbors=None, self_loops=False, box=None):
    """Rows of (sender, vector) pairs by explicit loops; minimum image with a box."""
    rows = []
    n = len(positions)
    for i in range(n):
        candidates = []
        for j in range(n):
            if j == i and not self_loops:
                continue
            v = positions[j] - positions[i]
            if box is not None:
                v = v - box * np.round(v / box)
            d2 = float(np.dot(v, v))
            if d2 < cutoff**2:
                candidates.append((d2, j, v))
        candidates.sort(key=lambda c: (c[0], c[1]))
        if max_neighbors is not None:
            candidates = candidates[:max_neighbors]
        rows.append(sorted((j, v) for _, j, v in candidates))
    return rows


@pytest.mark.parametrize(
    "max_neighbors,self_loops", [(None, False), (None, True), (3, False), (1, True)]
)
def test_radius_graph_matches_brute_force(max_neighbors, self_loops):
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 3, size=(40, 3))
    positions[5] = positions[4]  # a duplicate point: zero distance, ties by index
    expected = [
        [j for j, _ in row] for row in brute_radius(positions, 1.0, max_neighbors, self_loops)
    ]
    got = graph.radius_graph(
        tf.constant(positions), 1.0, max_neighbors=max_neighbors, self_loops=self_loops
    )
    assert got.dtype == tf.int32
    assert got.to_list() == expected
    fn = tf.function(
        lambda p: graph.radius_graph(p, 1.0, max_neighbors=max_neighbors, self_loops=self_loops)
    )
    assert fn(tf.constant(positions)).to_list() == expected
    ds = tf.data.Dataset.from_tensors(tf.constant(positions)).map(
        lambda p: graph.radius_graph(p, 1.0, max_neighbors=max_neighbors, self_loops=self_loops)
    )
    assert next(iter(ds)).to_list() == expected


def test_radius_graph_ties_broken_by_index():
    # Nodes 1..4 all at distance 1 from node 0: max_neighbors=2 keeps the two lowest indices.
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1]], np.float32)
    got = graph.radius_graph(positions, 1.5, max_neighbors=2).to_list()
    assert got[0] == [1, 2]


def test_radius_graph_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        graph.radius_graph(np.zeros((3, 3), np.float32), -1.0)
    with pytest.raises(ValueError, match=r"positions must have shape \[N, 3\]"):
        graph.radius_graph(np.zeros((3, 2), np.float32), 1.0)
    with pytest.raises(ValueError, match="max_neighbors must be an int >= 1"):
        graph.radius_graph(np.zeros((3, 3), np.float32), 1.0, max_neighbors=0)


@pytest.mark.parametrize("box", [4.0, (4.0, 5.0, 6.0)])
@pytest.mark.parametrize("max_neighbors", [None, 4])
def test_radius_graph_numpy_periodic_matches_minimum_image(box, max_neighbors):
    rng = np.random.default_rng(1)
    box_arr = np.broadcast_to(np.asarray(box, float), (3,))
    positions = rng.uniform(0, 1, size=(60, 3)) * box_arr
    positions[:10] += box_arr * rng.integers(-2, 3, size=(10, 3))  # some positions outside the box
    cutoff = 1.6
    edges = graph.radius_graph_numpy(positions, cutoff, box=box, max_neighbors=max_neighbors)
    assert edges["senders"].dtype == np.int32 and edges["receivers"].dtype == np.int32
    assert edges["edge_shifts"].shape == (len(edges["senders"]), 3)
    expected = brute_radius(positions, cutoff, max_neighbors, box=box_arr)
    expected_pairs = [(j, i) for i, row in enumerate(expected) for j, _ in row]
    got_pairs = list(zip(edges["senders"].tolist(), edges["receivers"].tolist()))
    assert got_pairs == sorted(
        expected_pairs, key=lambda p: (p[1], p[0])
    )  # sorted by receiver, sender
    expected_vectors = {(j, i): v for i, row in enumerate(expected) for j, v in row}
    s, r = edges["senders"], edges["receivers"]
    vectors = positions[s] - positions[r] + edges["edge_shifts"]
    np.testing.assert_allclose(
        vectors, np.array([expected_vectors[p] for p in got_pairs]), atol=1e-9
    )
    images = edges["edge_shifts"] / box_arr
    np.testing.assert_allclose(images, np.round(images), atol=1e-12)
    assert len(got_pairs) > 100  # the test graph is not trivially small


def test_radius_graph_numpy_open_boundaries_and_self_loops():
    rng = np.random.default_rng(2)
    positions = rng.uniform(0, 3, size=(30, 3)).astype(np.float32)
    edges = graph.radius_graph_numpy(positions, 1.0, self_loops=True)
    expected = brute_radius(positions.astype(np.float64), 1.0, self_loops=True)
    got = list(zip(edges["senders"].tolist(), edges["receivers"].tolist()))
    assert got == [(j, i) for i, row in enumerate(expected) for j, _ in row]
    assert edges["edge_shifts"].dtype == np.float32 and not edges["edge_shifts"].any()
    # The TensorFlow path gives the same edges.
    s, r = graph.edges_from_ragged(
        graph.radius_graph(positions.astype(np.float64), 1.0, self_loops=True)
    )
    assert list(zip(s.numpy().tolist(), r.numpy().tolist())) == got


def test_radius_graph_numpy_rejects_ambiguous_box():
    with pytest.raises(ValueError, match="cutoff must be < box / 2"):
        graph.radius_graph_numpy(np.zeros((2, 3)), 2.0, box=4.0)
    with pytest.raises(ValueError, match="box must be a positive scalar"):
        graph.radius_graph_numpy(np.zeros((2, 3)), 1.0, box=(4.0, -1.0, 4.0))
    with pytest.raises(ValueError, match="positions must be a real array"):
        graph.radius_graph_numpy(np.zeros((2, 2)), 1.0)


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------


def edge_case_singles():
    rng = np.random.default_rng(3)
    return [
        random_single(rng, 5),
        random_single(rng, 3, neighbors=[[], [], []]),  # no edges at all
        random_single(rng, 4, neighbors=[[1, 1, 1], [0], [], []]),  # duplicates, isolated nodes
        random_single(rng, 1, neighbors=[[0]]),  # a self-loop
        random_single(rng, 6),
        random_single(rng, 2, neighbors=[[], []]),
        random_single(rng, 7),
        random_single(rng, 0),  # an empty graph
    ]


def test_batch_graphs_round_trip_and_equals_merge_graphs():
    singles = edge_case_singles()
    ds = graph.batch_graphs(ragged_dataset(singles), batch_size=3)
    batches = [to_numpy(b) for b in ds]
    assert len(batches) == 3
    expected_keys = {
        "positions",
        "node_features",
        "node_targets",
        "senders",
        "receivers",
        "edge_attr",
        "graph_targets",
        "node_graph_index",
        "graph_sizes",
        "node_mask",
        "edge_mask",
        "graph_mask",
    }
    for i, batch in enumerate(batches):
        chunk = singles[3 * i : 3 * i + 3]
        assert set(batch) == expected_keys
        graph.validate_graph(batch)
        assert edge_multiset(batch) == expected_edge_multiset(chunk)
        padded = graph.pad_to_sizes(
            batch, len(batch["positions"]) + 3, len(batch["senders"]) + 5, 5
        )
        assert edge_multiset(padded) == expected_edge_multiset(chunk)
        np.testing.assert_array_equal(
            batch["positions"], np.concatenate([g["positions"] for g in chunk])
        )
        np.testing.assert_array_equal(
            batch["node_targets"], np.concatenate([g["node_targets"] for g in chunk])
        )
        np.testing.assert_array_equal(
            batch["graph_targets"], np.stack([g["graph_targets"] for g in chunk])
        )
        assert batch["graph_sizes"].tolist() == [len(g["positions"]) for g in chunk]
        assert batch["senders"].dtype == np.int32 and batch["node_graph_index"].dtype == np.int32
        for mask in ("node_mask", "edge_mask", "graph_mask"):
            assert batch[mask].dtype == np.float32 and np.all(batch[mask] == 1)
        for form in (chunk, [as_edge_form(g) for g in chunk]):
            merged = graph.merge_graphs(form)
            assert set(merged) == expected_keys
            for key in expected_keys:
                np.testing.assert_array_equal(merged[key], batch[key], err_msg=key)
                assert merged[key].dtype == batch[key].dtype, key


def test_batch_graphs_senders_receivers_dense_and_drop_remainder():
    singles = [as_edge_form(g) for g in edge_case_singles()]
    signature = {k: v for k, v in SINGLE_SIGNATURE.items() if k != "neighbors"}
    signature["senders"] = signature["receivers"] = tf.TensorSpec([None], tf.int32)
    ds = tf.data.Dataset.from_generator(lambda: iter(singles), output_signature=signature)
    batches = list(graph.batch_graphs(ds, batch_size=3, drop_remainder=True))
    assert len(batches) == 2
    for i, b in enumerate(batches):
        assert edge_multiset(b) == expected_edge_multiset(singles[3 * i : 3 * i + 3])
    # Statically shaped elements (no ragged dimension at all) batch through the dense path.
    fixed = {
        "positions": np.random.default_rng(0).normal(size=(6, 4, 3)).astype(np.float32),
        "senders": np.tile(np.array([1, 2, 3], np.int32), (6, 1)),
        "receivers": np.tile(np.array([0, 0, 1], np.int32), (6, 1)),
        "graph_energy": np.arange(6, dtype=np.float32),
    }
    b = to_numpy(next(iter(graph.batch_graphs(tf.data.Dataset.from_tensor_slices(fixed), 3))))
    assert b["senders"].tolist() == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert b["receivers"].tolist() == [0, 0, 1, 4, 4, 5, 8, 8, 9]
    assert (
        b["graph_energy"].tolist() == [0, 1, 2]
        and b["node_graph_index"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    )


def test_batching_rejects_bad_graphs():
    good = as_edge_form(random_single(np.random.default_rng(0), 3))
    with pytest.raises(ValueError, match="key 'weights' is not a graph key"):
        graph.merge_graphs([{**good, "weights": np.ones(3)}])
    with pytest.raises(ValueError, match="senders of graph 1 contains 9 out of range"):
        graph.merge_graphs([good, {**good, "senders": np.full_like(good["senders"], 9)}])
    with pytest.raises(ValueError, match="same keys"):
        graph.merge_graphs([good, {k: v for k, v in good.items() if k != "edge_attr"}])
    with pytest.raises(ValueError, match="first dimension of node_features"):
        graph.merge_graphs([{**good, "node_features": np.ones((2, 4))}])
    with pytest.raises(ValueError, match="belongs to merged graphs"):
        graph.merge_graphs([{**good, "graph_sizes": np.array(3)}])
    ds = tf.data.Dataset.from_tensors({**good, "extra": np.ones(3)})
    with pytest.raises(ValueError, match="key 'extra' is not a graph key"):
        graph.batch_graphs(ds, 2)
    bad = tf.data.Dataset.from_tensors(
        {
            **good,
            "senders": np.array([0, 7], np.int32),
            "receivers": np.array([0, 1], np.int32),
            "edge_attr": np.ones((2, F_EDGE), np.float32),
        }
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="senders index >= number of nodes"):
        next(iter(graph.batch_graphs(bad, 2)))


# ---------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------


def merged_example(seed=4):
    return graph.merge_graphs(
        edge_case_singles()[:4]
        if seed == 4
        else [random_single(np.random.default_rng(seed), n) for n in (3, 5, 2)]
    )


def test_pad_to_sizes_static_shapes_and_round_trip():
    merged = merged_example()
    n, e, g = len(merged["positions"]), len(merged["senders"]), len(merged["graph_sizes"])
    sizes = dict(num_nodes=n + 5, num_edges=e + 7, num_graphs=g + 3)
    padded = graph.pad_to_sizes(merged, **sizes)
    assert padded.keys() == merged.keys()
    for key, value in padded.items():
        rows = sizes[
            "num_"
            + (
                "nodes"
                if key == "positions"
                else "edges" if key in ("senders", "receivers") else key.split("_")[0] + "s"
            )
        ]
        assert value.shape[0] == rows, key
    p = to_numpy(padded)
    graph.validate_graph(p)
    assert real_sizes(p) == (n, e, g)
    assert edge_multiset(p) == edge_multiset(merged)
    # Padding edges: self-loops on the first padding node; padding nodes in the one padding graph.
    assert np.all(p["senders"][e:] == n) and np.all(p["receivers"][e:] == n)
    assert p["graph_sizes"].tolist() == merged["graph_sizes"].tolist() + [5, 0, 0]
    assert np.all(p["node_graph_index"][n:] == g)
    for key in ("positions", "node_features", "node_targets"):
        np.testing.assert_array_equal(p[key][:n], merged[key])
        assert not p[key][n:].any()
    assert not p["edge_attr"][e:].any() and not p["graph_targets"][g:].any()
    assert (
        p["node_mask"].tolist() == [1] * n + [0] * 5
        and p["graph_mask"].tolist() == [1] * g + [0] * 3
    )

    # Exactly full sizes (one padding node, no padding edge, one padding graph).
    tight = to_numpy(graph.pad_to_sizes(merged, n + 1, e, g + 1))
    assert tight["graph_sizes"].tolist() == merged["graph_sizes"].tolist() + [1]


def test_padded_readout_equals_unpadded():
    merged = merged_example(seed=5)
    g = len(merged["graph_sizes"])
    padded = graph.pad_to_sizes(merged, 20, 40, 6)

    def readout(x, num_graphs):
        values = x["node_features"] * x["node_mask"][:, None]
        return tf.math.unsorted_segment_sum(values, x["node_graph_index"], num_segments=num_graphs)

    unpadded = readout({k: tf.constant(v) for k, v in merged.items()}, g).numpy()
    padded_out = tf.function(readout, jit_compile=True)(padded, 6).numpy()
    np.testing.assert_allclose(padded_out[:g], unpadded, rtol=1e-6)
    assert not padded_out[g:].any()


def test_pad_to_sizes_in_dataset_and_too_large():
    merged = merged_example()
    n, e, g = len(merged["positions"]), len(merged["senders"]), len(merged["graph_sizes"])
    ds = tf.data.Dataset.from_tensors(merged).map(
        lambda x: graph.pad_to_sizes(x, n + 3, e + 2, g + 2)
    )
    assert ds.element_spec["positions"].shape.as_list() == [n + 3, 3]
    assert ds.element_spec["senders"].shape.as_list() == [e + 2]
    assert ds.element_spec["graph_targets"].shape.as_list() == [g + 2, T_GRAPH]
    assert edge_multiset(next(iter(ds))) == edge_multiset(merged)

    with pytest.raises(ValueError, match=r"\d+ real nodes, more than num_nodes - 1"):
        graph.pad_to_sizes(merged, n, e, g + 1)  # no room for the padding node
    with pytest.raises(ValueError, match="real edges, more than num_edges"):
        graph.pad_to_sizes(merged, n + 1, e - 1, g + 1)
    with pytest.raises(ValueError, match="real graphs, more than num_graphs - 1"):
        graph.pad_to_sizes(merged, n + 1, e, g)
    with pytest.raises(ValueError, match="num_edges must be an int >= 0"):
        graph.pad_to_sizes(merged, n + 1, -1, g + 1)
    ragged = tf.data.Dataset.from_generator(
        lambda: iter([merged]),
        output_signature={
            k: tf.TensorSpec([None] + list(v.shape[1:]), tf.as_dtype(v.dtype))
            for k, v in merged.items()
        },
    )
    too_small = ragged.map(lambda x: graph.pad_to_sizes(x, n, e, g + 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="more real nodes than num_nodes - 1"):
        next(iter(too_small))


def test_sample_weights_make_padding_invisible_to_the_loss():
    merged = merged_example(seed=6)
    n, g = len(merged["positions"]), len(merged["graph_sizes"])
    padded = to_numpy(graph.pad_to_sizes(merged, n + 6, len(merged["senders"]) + 4, g + 2))
    mse = keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")
    rng = np.random.default_rng(0)
    w_node = rng.normal(size=(F_NODE, 1)).astype(np.float32)

    def losses(x):
        out = {}
        inputs, targets, weights = graph.to_keras_inputs(x, "node_targets")
        assert "node_targets" not in inputs and "node_mask" in inputs
        out["node"] = float(mse(targets, inputs["node_features"] @ w_node, sample_weight=weights))
        inputs, targets, weights = graph.to_keras_inputs(x, "graph_targets")
        pred = tf.math.unsorted_segment_sum(
            inputs["node_features"][:, :T_GRAPH],
            inputs["node_graph_index"],
            tf.shape(inputs["graph_sizes"])[0],
        )
        out["graph"] = float(mse(targets, pred, sample_weight=weights))
        return out

    reference = losses(merged)
    np.testing.assert_allclose(list(losses(padded).values()), list(reference.values()), rtol=1e-6)
    perturbed = dict(padded)
    perturbed["node_targets"] = padded["node_targets"].copy()
    perturbed["node_targets"][n:] = 100.0
    perturbed["graph_targets"] = padded["graph_targets"].copy()
    perturbed["graph_targets"][g:] = -100.0
    perturbed["node_features"] = padded["node_features"].copy()
    perturbed["node_features"][n:] = 7.0  # even garbage padding features do not leak
    np.testing.assert_allclose(
        list(losses(perturbed).values()), list(reference.values()), rtol=1e-6
    )
    # Keras' default reduction divides by all rows, padding included: the reason for the weights.
    default = keras.losses.MeanSquaredError()
    inputs, targets, weights = graph.to_keras_inputs(padded, "node_targets")
    assert (
        abs(
            float(default(targets, inputs["node_features"] @ w_node, sample_weight=weights))
            - reference["node"]
        )
        > 1e-4
    )


def test_to_keras_inputs_weights_and_keys():
    merged = merged_example(seed=7)
    merged["node_weights"] = np.arange(len(merged["positions"]), dtype=np.float32)
    padded = graph.pad_to_sizes(merged, 16, 64, 5)
    inputs, targets, weights = graph.to_keras_inputs(
        padded,
        "node_targets",
        weight_key="node_weights",
        input_keys=["positions", "senders", "receivers"],
    )
    assert sorted(inputs) == ["positions", "receivers", "senders"]
    n = len(merged["positions"])
    np.testing.assert_array_equal(weights.numpy(), np.concatenate([np.arange(n), np.zeros(16 - n)]))
    with pytest.raises(ValueError, match="target_key must start with"):
        graph.to_keras_inputs(padded, "positions")
    with pytest.raises(ValueError, match="weight_key must be a key of graph starting with 'node_'"):
        graph.to_keras_inputs(padded, "node_targets", weight_key="graph_targets")


# ---------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------


def bucket_singles(count=40, seed=8):
    rng = np.random.default_rng(seed)
    return [random_single(rng, int(n)) for n in rng.integers(1, 12, size=count)]


def test_buckets_pick_smallest_fitting_and_bound_shapes():
    singles = bucket_singles()
    buckets = graph.buckets_for(ragged_dataset(singles), batch_size=4, num_buckets=3)
    assert 2 <= len(buckets) <= 3
    assert buckets == graph.buckets_for(singles, batch_size=4, num_buckets=3)  # list form agrees
    for small, large in zip(buckets, buckets[1:]):
        assert all(a <= b for a, b in zip(small, large))
    ds = graph.pad_to_buckets(
        graph.batch_graphs(ragged_dataset(singles).shuffle(40, seed=0), 4), buckets
    )
    shapes = set()
    real_edges = collections.Counter()
    for padded in ds:
        n, e, g = real_sizes(padded)
        fitting = [
            b
            for b in buckets
            if n <= b.num_nodes - 1 and e <= b.num_edges and g <= b.num_graphs - 1
        ]
        shape = (
            padded["positions"].shape[0],
            padded["senders"].shape[0],
            padded["graph_sizes"].shape[0],
        )
        assert shape == tuple(min(fitting))
        shapes.add(shape)
        real_edges[g] += e
    assert 1 < len(shapes) <= len(buckets)
    assert sum(real_edges.values()) == sum(len(as_edge_form(s)["senders"]) for s in singles)


def test_buckets_too_large_batch_raises():
    singles = bucket_singles(count=8)
    buckets = graph.SizeBuckets([(8, 8, 5)])
    ds = graph.pad_to_buckets(graph.batch_graphs(ragged_dataset(singles), 4), buckets)
    with pytest.raises(tf.errors.InvalidArgumentError, match="fits no bucket"):
        list(ds)
    merged = graph.merge_graphs(singles[:4])
    with pytest.raises(ValueError, match="fits no bucket"):
        buckets.pad(merged)
    # The worst-case bucket of buckets_for fits the four largest graphs together.
    largest = sorted(singles, key=lambda s: len(s["positions"]))[-4:]
    fitted = graph.buckets_for(
        [(len(s["positions"]), len(as_edge_form(s)["senders"])) for s in singles], 4
    )
    fitted.pad(graph.merge_graphs(largest))
    with pytest.raises(ValueError, match="num_edges must be an int >= 0"):
        graph.SizeBuckets([(8, -1, 2)])


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras on datasets of unknown length
def test_fit_with_xla_on_bucketed_padded_batches():
    singles = bucket_singles(count=16, seed=9)
    buckets = graph.buckets_for(singles, batch_size=4, num_buckets=2)
    keys = ["node_features", "node_graph_index", "graph_sizes"]

    class SumReadout(keras.layers.Layer):
        def call(self, values, node_graph_index, graph_sizes):
            return tf.math.unsorted_segment_sum(values, node_graph_index, tf.shape(graph_sizes)[0])

    inputs = {
        "node_features": keras.Input((F_NODE,), name="node_features"),
        "node_graph_index": keras.Input((), dtype="int32", name="node_graph_index"),
        "graph_sizes": keras.Input((), dtype="int32", name="graph_sizes"),
    }
    outputs = SumReadout()(
        keras.layers.Dense(T_GRAPH)(inputs["node_features"]),
        inputs["node_graph_index"],
        inputs["graph_sizes"],
    )
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.MeanSquaredError(reduction="mean_with_sample_weight"),
        jit_compile=True,
    )

    def fit_args(ds):
        return ds.map(lambda x: graph.to_keras_inputs(x, "graph_targets", input_keys=keys))

    batched = graph.batch_graphs(ragged_dataset(singles), 4)
    history = model.fit(fit_args(graph.pad_to_buckets(batched, buckets)), epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # Padding does not change the loss: evaluate one batch padded and unpadded (without XLA,
    # which would only add compiles here).
    model.compile(
        optimizer="sgd",
        loss=keras.losses.MeanSquaredError(reduction="mean_with_sample_weight"),
        jit_compile=False,
    )
    one = batched.take(1)
    padded_loss = model.evaluate(fit_args(graph.pad_to_buckets(one, buckets)), verbose=0)
    unpadded_loss = model.evaluate(fit_args(one), verbose=0)
    np.testing.assert_allclose(padded_loss, unpadded_loss, rtol=1e-5)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _bad(key, value):
    def make(g):
        g = dict(g)
        g[key] = value(g) if callable(value) else value
        return g

    return make


BAD_GRAPHS = {
    "negative sender": (
        "senders",
        _bad("senders", lambda g: np.concatenate([[-1], g["senders"][1:]])),
    ),
    "too large receiver": (
        "receivers",
        _bad(
            "receivers",
            lambda g: np.concatenate([g["receivers"][:-1], [len(g["positions"])]]).astype(np.int32),
        ),
    ),
    "mismatched lengths": ("senders and receivers", _bad("senders", lambda g: g["senders"][:-1])),
    "edge_attr length": ("edge_attr", _bad("edge_attr", lambda g: g["edge_attr"][:-1])),
    "edge_mask length": ("edge_mask", _bad("edge_mask", lambda g: g["edge_mask"][1:])),
    "edge_shifts shape": (
        "edge_shifts",
        _bad("edge_shifts", lambda g: np.zeros((len(g["senders"]), 2))),
    ),
    "float senders": ("senders", _bad("senders", lambda g: g["senders"].astype(np.float32))),
    "integer positions": (
        "positions",
        _bad("positions", lambda g: g["positions"].astype(np.int32)),
    ),
    "positions shape": ("positions", _bad("positions", lambda g: g["positions"][:, :2])),
    "nan positions": ("positions", _bad("positions", lambda g: g["positions"] * np.nan)),
    "node_features length": (
        "node_features",
        _bad("node_features", lambda g: g["node_features"][1:]),
    ),
    "node_graph_index range": (
        "node_graph_index",
        _bad("node_graph_index", lambda g: g["node_graph_index"] + 1),
    ),
    "node_graph_index order": (
        "node_graph_index",
        _bad(
            "node_graph_index",
            lambda g: np.sort((g["node_graph_index"] + 1) % len(g["graph_sizes"])).astype(np.int32),
        ),
    ),
    "graph_sizes sum": ("graph_sizes", _bad("graph_sizes", lambda g: g["graph_sizes"] + 1)),
    "graph_targets length": (
        "graph_targets",
        _bad("graph_targets", lambda g: g["graph_targets"][1:]),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_validate_graph_rejects(case):
    merged = merged_example(seed=10)
    merged["edge_shifts"] = np.zeros((len(merged["senders"]), 3), np.float32)
    assert graph.validate_graph(merged) is merged
    key, make_bad = BAD_GRAPHS[case]
    with pytest.raises(ValueError, match=f"validate_graph: .*{key}") as info:
        graph.validate_graph(make_bad(merged))
    assert "Received" in str(info.value) or "sum" in str(info.value)


def test_validate_graph_max_neighbors():
    """The static neighbour bound of the convolutions, checked at the boundary (under XLA a
    node with more incoming edges would lose the extra ones); masked edges take no slot."""
    merged = merged_example(seed=10)
    degree = np.bincount(merged["receivers"][merged["edge_mask"] > 0], minlength=len(merged["positions"]))
    k = int(degree.max())
    assert graph.validate_graph(merged, max_neighbors=k) is merged
    node = int(degree.argmax())
    with pytest.raises(ValueError, match=rf"validate_graph: node {node} receives {k} edges, more than "
                                         rf"max_neighbors={k - 1} \({int((degree > k - 1).sum())} such node"):
        graph.validate_graph(merged, max_neighbors=k - 1)
    # masking one edge of every node with k edges makes the graph fit k - 1
    mask = merged["edge_mask"].copy()
    for busy in np.flatnonzero(degree == k):
        mask[np.flatnonzero((merged["receivers"] == busy) & (mask > 0))[0]] = 0.0
    graph.validate_graph(dict(merged, edge_mask=mask), max_neighbors=k - 1)
    mask[mask == 0] = 1.0
    mask[0] = 0.0  # one other edge masked instead: still too many
    if degree[merged["receivers"][0]] < k:
        with pytest.raises(ValueError, match=f"more than max_neighbors={k - 1}"):
            graph.validate_graph(dict(merged, edge_mask=mask), max_neighbors=k - 1)
    # ragged neighbour lists: row i lists the senders to node i
    single = random_single(np.random.default_rng(0), 4, neighbors=[[1, 2, 3], [], [0], []])
    ragged = dict(single, neighbors=tf.ragged.constant(single["neighbors"]))
    graph.validate_graph(ragged, max_neighbors=3)
    with pytest.raises(ValueError, match="node 0 receives 3 edges, more than max_neighbors=2"):
        graph.validate_graph(ragged, max_neighbors=2)
    with pytest.raises(ValueError, match="max_neighbors must be an int >= 1. Received: max_neighbors=0"):
        graph.validate_graph(merged, max_neighbors=0)
    # inside tf.data
    bad_ds = tf.data.Dataset.from_tensors(merged).map(lambda g: graph.validate_graph(g, max_neighbors=k - 1))
    with pytest.raises(tf.errors.OpError, match=f"more than max_neighbors={k - 1}"):
        next(iter(bad_ds))


def test_validate_graph_messages_and_graph_mode():
    merged = merged_example(seed=10)
    n = len(merged["positions"])
    bad = dict(merged, senders=np.concatenate([[n + 2], merged["senders"][1:]]).astype(np.int32))
    with pytest.raises(
        ValueError, match=rf"senders contains {n + 2} out of range \[0, {n}\) .* position 0"
    ):
        graph.validate_graph(bad)
    with pytest.raises(ValueError, match="graph_sizes must sum to the number of nodes"):
        graph.validate_graph(
            dict(
                merged,
                graph_sizes=merged["graph_sizes"][:-1],
                graph_mask=merged["graph_mask"][:-1],
                graph_targets=merged["graph_targets"][:-1],
                node_graph_index=np.zeros(n, np.int32),
            )
        )
    # A single graph with a ragged neighbour list validates too.
    single = random_single(np.random.default_rng(0), 4, neighbors=[[1], [], [5], []])
    with pytest.raises(ValueError, match="neighbors contains 5 out of range"):
        graph.validate_graph(dict(single, neighbors=tf.ragged.constant(single["neighbors"])))
    # Inside tf.data the same checks run through numpy_function.
    good = tf.data.Dataset.from_tensors(merged).map(graph.validate_graph)
    assert edge_multiset(next(iter(good))) == edge_multiset(merged)
    bad_ds = tf.data.Dataset.from_tensors(bad).map(graph.validate_graph)
    with pytest.raises(tf.errors.OpError, match="senders contains"):
        next(iter(bad_ds))


def test_the_package_graph_builders_give_edges_sorted_by_receiver():
    """The layers' neighbour layout skips its sort for edges in receiver order
    (``ops.receiver_slots``): the package's own builders, merged and padded, give that order."""
    from tfequivariant.graph import edges_from_ragged, merge_graphs, pad_to_sizes, radius_graph, radius_graph_numpy

    rng = np.random.default_rng(4)
    positions = rng.uniform(0, 4, (30, 3)).astype("float32")
    graphs = [
        {"positions": positions, **radius_graph_numpy(positions, 1.5, box=4.0)},
        {"positions": positions, "neighbors": radius_graph(positions, 1.5)},
        {"positions": positions[:7], "neighbors": radius_graph(positions[:7], 3.0, max_neighbors=2)},
    ]
    receivers = [np.asarray(radius_graph_numpy(positions, 1.5)["receivers"]),
                 edges_from_ragged(graphs[1]["neighbors"])[1].numpy()]
    merged = merge_graphs([{k: v for k, v in g.items() if k != "edge_shifts"} for g in graphs])
    receivers.append(merged["receivers"])
    padded = pad_to_sizes(merged, 100, int(len(merged["receivers"])) + 9, 5)
    keep = padded["edge_mask"].numpy() > 0
    remapped = np.where(keep, padded["receivers"].numpy(), 100)  # masked edges, as receiver_slots sees them
    receivers.append(remapped)
    for r in receivers:
        assert len(r) > 20 and np.all(np.diff(r) >= 0), r
