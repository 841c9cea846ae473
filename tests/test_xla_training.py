"""XLA training with padding buckets: bounded compilations, same steps as without XLA."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfequivariant import graph as tfe_graph
from tfequivariant.models import build_tensor_field_network

INPUT_KEYS = ("positions", "node_features", "senders", "receivers", "node_graph_index", "graph_sizes",
              "edge_mask")
CUTOFF = 2.0


def _graphs(count=24, seed=0):
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(count):
        n = int(rng.integers(4, 11))
        pos = rng.normal(size=(n, 3)).astype("float32")
        edges = tfe_graph.radius_graph_numpy(pos, CUTOFF)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        target = np.array([np.sum(np.exp(-d[np.triu_indices(n, 1)]))], "float32")
        graphs.append({
            "positions": pos,
            "node_features": np.ones((n, 1), "float32"),
            "senders": edges["senders"],
            "receivers": edges["receivers"],
            "graph_targets": target,
        })
    return graphs


def _max_in_degree(graphs):
    return max(int(np.bincount(g["receivers"], minlength=len(g["positions"])).max(initial=0)) for g in graphs)


def _model(graphs, jit):
    keras.utils.set_random_seed(0)
    model = build_tensor_field_network(
        "1x0e", "1x0e", channels=4, max_degree=1, num_layers=2, num_radial_basis=6, cutoff=CUTOFF,
        radial_hidden=(8,), readout="graph", edge_mask=True, max_neighbors=_max_in_degree(graphs),
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.MeanSquaredError(reduction="mean_with_sample_weight"),
        jit_compile=jit,
    )
    return model


def _dataset(graphs, buckets, batch_size=4):
    ds = tf.data.Dataset.from_generator(
        lambda: iter(graphs),
        output_signature={
            "positions": tf.TensorSpec((None, 3), tf.float32),
            "node_features": tf.TensorSpec((None, 1), tf.float32),
            "senders": tf.TensorSpec((None,), tf.int32),
            "receivers": tf.TensorSpec((None,), tf.int32),
            "graph_targets": tf.TensorSpec((1,), tf.float32),
        },
    )
    ds = tfe_graph.pad_to_buckets(tfe_graph.batch_graphs(ds, batch_size), buckets)
    return ds.map(lambda g: tfe_graph.to_keras_inputs(g, "graph_targets", input_keys=INPUT_KEYS))


_COUNT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_xla_training import _dataset, _graphs, _model
from tfequivariant import graph as tfe_graph
graphs = _graphs()
buckets = tfe_graph.buckets_for(graphs, batch_size=4, num_buckets=3)
model = _model(graphs, jit=True)
history = model.fit(_dataset(graphs, buckets), epochs=3, verbose=0)
print("LOSSES", history.history["loss"])
"""


def test_xla_fit_compiles_at_most_once_per_bucket(tmp_path):
    graphs = _graphs()
    buckets = tfe_graph.buckets_for(graphs, batch_size=4, num_buckets=3)
    shapes = {tuple(tuple(v.shape) for v in x.values()) for x, _, _ in _dataset(graphs, buckets)}
    print(f"{len(buckets)} buckets {list(buckets)}; {len(shapes)} distinct padded batch shapes")
    assert len(shapes) <= len(buckets)
    # Count real XLA compilations of the train step: XLA dumps one module per
    # compilation (TensorFlow fixes XLA_FLAGS at start-up, hence the subprocess).
    dump = tmp_path / "xla_dump"
    env = {**os.environ, "XLA_FLAGS": f"--xla_dump_to={dump}", "TF_CPP_MIN_LOG_LEVEL": "3"}
    script = _COUNT_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = eval(result.stdout.split("LOSSES", 1)[1].strip())
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    compiled = [f.name for f in dump.iterdir()
                if "one_step_on_data" in f.name and f.name.endswith("before_optimizations.txt")]
    print(f"train step compiled {len(compiled)} time(s) in 3 epochs over {len(shapes)} bucket shapes")
    assert 1 <= len(compiled) <= len(buckets)


def test_xla_step_equals_plain_step_on_padded_batches():
    graphs = _graphs(count=8, seed=1)
    buckets = tfe_graph.buckets_for(graphs, batch_size=4, num_buckets=2)
    batch = next(iter(_dataset(graphs, buckets)))
    updated = []
    for jit in (False, True):
        model = _model(graphs, jit)
        model.train_on_batch(*batch)
        updated.append([np.array(w) for w in model.trainable_weights])
    for a, b in zip(*updated):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_padding_does_not_change_the_loss():
    graphs = _graphs(count=4, seed=2)
    model = _model(graphs, jit=False)
    merged = tfe_graph.merge_graphs(graphs)
    merged["edge_mask"] = np.ones(len(merged["senders"]), "float32")
    plain = tfe_graph.to_keras_inputs(merged, "graph_targets", input_keys=INPUT_KEYS)
    padded = tfe_graph.to_keras_inputs(
        tfe_graph.pad_to_sizes(merged, num_nodes=64, num_edges=512, num_graphs=7), "graph_targets",
        input_keys=INPUT_KEYS,
    )
    loss_plain = model.evaluate(tf.data.Dataset.from_tensors(plain), verbose=0)
    loss_padded = model.evaluate(tf.data.Dataset.from_tensors(padded), verbose=0)
    assert loss_plain == pytest.approx(loss_padded, rel=1e-5)
