"""tf.distribute training: one step on 2 replicas equals the single-device step on the global batch.

TensorFlow fixes its devices at start-up, so every run under a strategy is a
subprocess executing this file as a script (``python test_distribute.py
run <json config>``): ``MirroredStrategy`` over 2 logical CPUs, and
``MultiWorkerMirroredStrategy`` over 2 local worker processes (``TF_CONFIG``
with free 127.0.0.1 ports). Each run does one SGD step with
:class:`GlobalWeightedMean`, one with Keras' ``mean_with_sample_weight`` (the
naive reduction, to show that the test can tell them apart: the two replicas
hold graphs of different sizes, 8 vs 11 and 7 vs 12 real nodes). The
GlobalWeightedMean step is the first of a short ``model.fit`` (2 epochs of 4
steps; under MirroredStrategy on a repeated dataset with ``steps_per_epoch``,
under MultiWorkerMirroredStrategy one finite pass per epoch), whose losses
and final weights are compared with the same fit on one device. The
single-device reference step runs in the test process on the merged,
unpadded global batch with ``mean_with_sample_weight``.

Tolerance: float32 weights after one SGD step (lr 0.5), compared as the
update ``w1 - w0``: ``max |update_dist - update_ref| <= 1e-5 * max |update_ref|``
(measured 1.4e-7 to 3.3e-7; Keras' ``mean_with_sample_weight`` misses by 0.17
under MirroredStrategy and 0.28 under MultiWorkerMirroredStrategy); after the
8 steps of the fit ``<= 1e-4`` (measured ~4e-7); losses ``rtol=1e-5``.
Run time on 2 busy cores: ~2 min for the file (the MultiWorkerMirroredStrategy
test ~55 s, MirroredStrategy ~45 s); the example run is marked slow (~30-60 s).
"""

import json
import os
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from _scripts import load_script

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
#: Graph sizes: global batch 0 is graphs 0-3. MirroredStrategy gives the
#: replicas graphs {0, 1} (8 nodes) and {2, 3} (11); 2 workers shard to
#: {0, 2} (7) and {1, 3} (12).
SIZES = (3, 5, 4, 7, 2, 6, 5, 3, 4, 6, 3, 5, 7, 2, 4, 6)
GLOBAL_BATCH = 4
#: Padded sizes of a replica batch (2 graphs of at most 7 nodes) and of the
#: single-device batch of the fit comparison (4 graphs).
REPLICA_SIZES = (16, 96, 3)
SINGLE_SIZES = (32, 176, 5)
#: The naive step pads to buckets: the replicas' batches then differ in shape
#: ({0, 1}: 8 nodes -> 10 rows, {2, 3}: 11 -> 16; workers {0, 2}: 7 -> 10, {1, 3}: 12 -> 16).
NAIVE_BUCKETS = [(10, 64, 3), REPLICA_SIZES]
INPUT_KEYS = ("positions", "node_features", "senders", "receivers", "edge_mask")
LEARNING_RATE = 0.5
RTOL = 1e-5
SUBPROCESS_TIMEOUT = 240


# ----------------------------------------------------------------------------
# Shared by the test process and the subprocesses
# ----------------------------------------------------------------------------


def make_graphs(sizes=SIZES, seed=0):
    """Fully connected graphs: velocity in (1x1o), (v / 2, x - mean x) out (2x1o)."""
    rng = np.random.default_rng(seed)
    graphs = []
    for n in sizes:
        x = rng.normal(size=(n, 3)).astype("float32")
        v = (0.5 * rng.normal(size=(n, 3))).astype("float32")
        receivers, senders = np.nonzero(~np.eye(n, dtype=bool))
        graphs.append(
            {
                "positions": x,
                "node_features": v,
                "senders": senders.astype("int32"),
                "receivers": receivers.astype("int32"),
                "node_targets": np.concatenate([0.5 * v, x - x.mean(0)], axis=1).astype("float32"),
            }
        )
    return graphs


def graphs_dataset(graphs):
    import tensorflow as tf

    signature = {
        "positions": tf.TensorSpec([None, 3], tf.float32),
        "node_features": tf.TensorSpec([None, 3], tf.float32),
        "senders": tf.TensorSpec([None], tf.int32),
        "receivers": tf.TensorSpec([None], tf.int32),
        "node_targets": tf.TensorSpec([None, 6], tf.float32),
    }
    ds = tf.data.Dataset.from_generator(lambda: iter(graphs), output_signature=signature)
    return ds.apply(tf.data.experimental.assert_cardinality(len(graphs)))


def build_model():
    from tfequivariant.models import build_se3_transformer

    return build_se3_transformer(
        "1x1o", "2x1o", channels=2, max_degree=1, num_layers=1, num_heads=1, num_radial_basis=4,
        radial_hidden=(4,), cutoff=5.0, edge_mask=True,
    )


def compile_model(model, loss_kind):
    import keras

    from tfequivariant.distribute import GlobalWeightedMean, prepare_distributed_fit

    mse = keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")
    loss = GlobalWeightedMean(keras.losses.MeanSquaredError()) if loss_kind == "global" else mse
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=loss, jit_compile=False)
    prepare_distributed_fit(model)


def _first_step_callback():
    """A Keras callback keeping the weights and logged loss after the first step."""
    import keras

    class FirstStep(keras.callbacks.Callback):
        weights, loss = None, None

        def on_train_batch_end(self, batch, logs=None):
            if self.weights is None:
                self.weights = self.model.get_weights()
                self.loss = float(np.asarray(logs["loss"]))

    return FirstStep()


def train_runs(strategy, initial, graphs, sizes, naive_buckets=None, repeat=False, fit_epochs=2):
    """SGD from ``initial`` with GlobalWeightedMean over all graphs (fixed ``sizes``).

    Keeps the weights and loss after the first step, the loss history and the
    final weights. With ``naive_buckets``, also one step on the first global
    batch with Keras' ``mean_with_sample_weight``, padded to those buckets
    (replicas then hold differently shaped batches). ``repeat``: the
    repeated dataset with ``steps_per_epoch`` (else one finite pass per epoch).
    """
    from tfequivariant.distribute import distributed_graph_dataset

    def data(count, **padding):
        return distributed_graph_dataset(
            strategy, lambda ctx: graphs_dataset(graphs[:count]), GLOBAL_BATCH, "node_targets",
            input_keys=list(INPUT_KEYS), repeat=repeat, **padding,
        )

    def steps(count):
        return {"steps_per_epoch": count // GLOBAL_BATCH} if repeat else {}

    out = {}
    with strategy.scope():
        model = build_model()
        model.set_weights(initial)
        compile_model(model, "global")
    first = _first_step_callback()
    start = time.time()
    history = model.fit(data(len(graphs), sizes=sizes), epochs=fit_epochs, callbacks=[first], shuffle=False,
                        verbose=0, **steps(len(graphs)))
    out["fit_seconds"] = np.array(time.time() - start)
    out["fit_loss"] = np.array(history.history["loss"])
    out["global_loss"] = np.array(first.loss)
    for i, (w1, wn) in enumerate(zip(first.weights, model.get_weights())):
        out[f"global_w{i}"], out[f"final_w{i}"] = w1, wn
    if naive_buckets is not None:
        with strategy.scope():
            model.set_weights(initial)
            compile_model(model, "naive")
        model.fit(data(GLOBAL_BATCH, buckets=naive_buckets), epochs=1, shuffle=False, verbose=0, **steps(GLOBAL_BATCH))
        for i, w in enumerate(model.get_weights()):
            out[f"naive_w{i}"] = w
    return out


def _script_main(config):
    """Subprocess entry: configure devices/cluster first, then train and save an npz."""
    import tensorflow as tf

    if config["strategy"] == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * config["num_devices"]
        )
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(config["num_devices"])])
    else:
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": config["workers"]}, "task": {"type": "worker", "index": config["index"]}}
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    initial = [v for _, v in sorted(np.load(config["initial"]).items(), key=lambda kv: int(kv[0][1:]))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_runs(strategy, initial, make_graphs(), REPLICA_SIZES, naive_buckets=NAIVE_BUCKETS,
                         repeat=config["strategy"] == "mirrored")
    out["ran_out_of_data_warnings"] = np.array(sum("ran out of data" in str(w.message) for w in caught))
    out["num_replicas"] = np.array(strategy.num_replicas_in_sync)
    np.savez(config["output"], **out)


# ----------------------------------------------------------------------------
# Test-process side
# ----------------------------------------------------------------------------


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _command(config):
    return [sys.executable, os.path.abspath(__file__), "run", json.dumps(config)]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Initial weights (saved for the subprocesses) and the single-device runs."""
    import keras
    import tensorflow as tf

    tmp = tmp_path_factory.mktemp("distribute")
    keras.utils.set_random_seed(0)
    initial = build_model().get_weights()
    path = tmp / "initial.npz"
    np.savez(path, **{f"w{i}": w for i, w in enumerate(initial)})
    graphs = make_graphs()
    # The plain single-device step of examples/nbody.py on the merged, unpadded global batch.
    from tfequivariant import graph as tfe_graph

    merged = tfe_graph.merge_graphs(graphs[:GLOBAL_BATCH])
    inputs, targets, weights = tfe_graph.to_keras_inputs(merged, "node_targets", input_keys=list(INPUT_KEYS))
    model = build_model()
    model.set_weights(initial)
    mse = keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")  # right on one device
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=mse, jit_compile=False)
    model.fit(tf.data.Dataset.from_tensors((inputs, targets, weights)), epochs=1, shuffle=False, verbose=0)
    step = model.get_weights()
    # The same step and fit through the padded single-device pipeline (the default strategy).
    padded = train_runs(tf.distribute.get_strategy(), initial, graphs, SINGLE_SIZES)
    return {"initial": initial, "initial_path": str(path), "step": step, "padded": padded, "tmp": tmp}


def _updates_error(weights, ref_step, initial):
    """max |(w - w0) - (ref - w0)| / max |ref - w0| over all weights."""
    diff = max(float(np.max(np.abs(w - r))) for w, r in zip(weights, ref_step))
    scale = max(float(np.max(np.abs(r - w0))) for r, w0 in zip(ref_step, initial))
    return diff / scale


def _weights(run, kind, count):
    return [run[f"{kind}_w{i}"] for i in range(count)]


def _check_run(run, reference, label):
    initial, ref_step, single = reference["initial"], reference["step"], reference["padded"]
    count = len(initial)
    err_global = _updates_error(_weights(run, "global", count), ref_step, initial)
    err_naive = _updates_error(_weights(run, "naive", count), ref_step, initial)
    err_final = _updates_error(_weights(run, "final", count), _weights(single, "final", count), initial)
    print(
        f"{label}: first step, max weight-update error: GlobalWeightedMean {err_global:.2e}, "
        f"Keras mean_with_sample_weight {err_naive:.2e} (relative to max |update|); after "
        f"{2 * len(SIZES) // GLOBAL_BATCH} steps {err_final:.2e}; first-step loss "
        f"{float(run['global_loss']):.7f} vs {float(single['global_loss']):.7f} on one device; "
        f"epoch losses {run['fit_loss'].tolist()} vs {single['fit_loss'].tolist()}; "
        f"fit {float(run['fit_seconds']):.1f} s"
    )
    assert int(run["num_replicas"]) == 2
    assert int(run["ran_out_of_data_warnings"]) == 0  # Keras saw the true number of steps
    assert err_global <= RTOL
    assert err_naive > 1e-3  # the replicas' different sizes make the naive reduction visibly wrong
    assert err_final <= 10 * RTOL  # 8 steps: rounding differences grow a little
    # With equal padded sizes on every replica the logged loss is the global one too.
    np.testing.assert_allclose(run["global_loss"], single["global_loss"], rtol=1e-5)
    losses = run["fit_loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    np.testing.assert_allclose(losses, single["fit_loss"], rtol=1e-5)


def test_single_device_pipeline_step_equals_plain_step(reference):
    """Padding to fixed sizes with weight 0 changes nothing on one device."""
    initial, padded = reference["initial"], reference["padded"]
    err = _updates_error(_weights(padded, "global", len(initial)), reference["step"], initial)
    print(f"single device, padded pipeline + GlobalWeightedMean vs plain step: update error {err:.2e}")
    assert err <= RTOL
    assert padded["fit_loss"][-1] < padded["fit_loss"][0]


def test_mirrored_strategy_two_logical_cpus(reference):
    output = reference["tmp"] / "mirrored.npz"
    config = {"strategy": "mirrored", "num_devices": 2, "initial": reference["initial_path"], "output": str(output)}
    start = time.time()
    result = subprocess.run(_command(config), env=_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    print(f"MirroredStrategy subprocess: {time.time() - start:.1f} s")
    _check_run(dict(np.load(output)), reference, "MirroredStrategy, 2 logical CPUs")


def test_multi_worker_mirrored_strategy_two_local_workers(reference):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    outputs = [reference["tmp"] / f"worker{i}.npz" for i in range(2)]
    logs = [open(reference["tmp"] / f"worker{i}.log", "w+") for i in range(2)]
    procs, timed_out = [], False
    start = time.time()
    try:
        for i in range(2):
            config = {"strategy": "multiworker", "workers": workers, "index": i,
                      "initial": reference["initial_path"], "output": str(outputs[i])}
            procs.append(subprocess.Popen(_command(config), env=_env(), stdout=logs[i], stderr=subprocess.STDOUT))
        deadline = time.time() + SUBPROCESS_TIMEOUT
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        timed_out = True  # a worker waiting for a dead peer blocks in a collective
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
    print(f"MultiWorkerMirroredStrategy, 2 workers: {time.time() - start:.1f} s")
    for i, proc in enumerate(procs):
        assert not timed_out and proc.returncode == 0, (
            f"worker {i} {'timed out' if timed_out else 'failed'}:\n{texts[i][-4000:]}"
        )
    runs = [dict(np.load(path)) for path in outputs]
    _check_run(runs[0], reference, "MultiWorkerMirroredStrategy, 2 local workers")
    # Both workers hold the same weights (synchronous training).
    for kind in ("global", "final"):
        for a, b in zip(_weights(runs[0], kind, len(reference["initial"])),
                        _weights(runs[1], kind, len(reference["initial"]))):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# In-process checks of the helper (no devices to configure)
# ----------------------------------------------------------------------------


def test_pipeline_shards_pads_and_groups():
    import tensorflow as tf

    from tfequivariant.distribute import graph_dataset_fn

    graphs = make_graphs()
    fn = graph_dataset_fn(lambda ctx: graphs_dataset(graphs[:10]), 4, "node_targets",
                          sizes=REPLICA_SIZES, input_keys=list(INPUT_KEYS))
    # Worker 1 of 2, one replica each: graphs 1, 3 | 5, 7 (10 graphs -> 8 kept, 2 steps).
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    batches = list(fn(ctx))
    assert [float(w.numpy().sum()) for _, _, w in batches] == [SIZES[1] + SIZES[3], SIZES[5] + SIZES[7]]
    inputs, targets, weights = batches[0]
    assert inputs["positions"].shape == (16, 3) and inputs["senders"].shape == (96,)
    assert sorted(inputs) == sorted(INPUT_KEYS)
    assert targets.shape == (16, 6) and weights.shape == (16,)
    # One worker, two replicas: 9 graphs -> 8 kept -> 4 batches of 2, two whole groups.
    fn = graph_dataset_fn(lambda ctx: graphs_dataset(graphs[:9]), 4, "node_targets", sizes=REPLICA_SIZES)
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    sums = [float(w.numpy().sum()) for _, _, w in fn(ctx)]
    assert sums == [8.0, 11.0, 8.0, 8.0]
    # shard=False (the dataset is this worker's share): 9 -> 8 graphs, 4 steps of one replica.
    fn = graph_dataset_fn(lambda ctx: graphs_dataset(graphs[:9]), 4, "node_targets", sizes=REPLICA_SIZES,
                          shard=False)
    two_workers = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    assert len(list(fn(two_workers))) == 4
    # Unknown cardinality (no take): 7 graphs -> 3 batches of 2 -> one group of 2 replicas.
    unknown = graphs_dataset(graphs[:7]).filter(lambda g: True)
    fn = graph_dataset_fn(lambda ctx: unknown, 4, "node_targets", buckets=[(10, 64, 3), REPLICA_SIZES])
    shapes = [tuple(x["positions"].shape) for x, _, _ in fn(ctx)]
    assert shapes == [(10, 3), (16, 3)]  # 8 and 11 real nodes: one bucket each


def test_argument_errors():
    import tensorflow as tf

    from tfequivariant.distribute import GlobalWeightedMean, distributed_graph_dataset, graph_dataset_fn

    def make(ctx):
        return graphs_dataset(make_graphs()[:4])

    with pytest.raises(ValueError, match="exactly one of sizes"):
        graph_dataset_fn(make, 4, "node_targets")
    with pytest.raises(ValueError, match="exactly one of sizes"):
        graph_dataset_fn(make, 4, "node_targets", sizes=(8, 8, 3), buckets=[(8, 8, 3)])
    with pytest.raises(ValueError, match="global_batch_size"):
        graph_dataset_fn(make, 0, "node_targets", sizes=(8, 8, 3))
    with pytest.raises(ValueError, match="sizes must be"):
        graph_dataset_fn(make, 4, "node_targets", sizes=(8, 8))
    with pytest.raises(ValueError, match="num_graphs >= 5"):
        graph_dataset_fn(make, 4, "node_targets", sizes=(64, 256, 3))(tf.distribute.InputContext())
    with pytest.raises(ValueError, match="not divisible|divisible"):
        ctx = tf.distribute.InputContext(num_replicas_in_sync=3)
        graph_dataset_fn(make, 4, "node_targets", sizes=(64, 256, 5))(ctx)
    with pytest.raises(ValueError, match="strategy must be"):
        distributed_graph_dataset("mirrored", make, 4, "node_targets", sizes=(64, 256, 5))
    with pytest.raises(ValueError, match="loss must be"):
        GlobalWeightedMean(3)


def test_global_weighted_mean_on_one_device_is_mean_with_sample_weight():
    import keras

    from tfequivariant.distribute import GlobalWeightedMean

    rng = np.random.default_rng(1)
    y, p = rng.normal(size=(7, 6)).astype("float32"), rng.normal(size=(7, 6)).astype("float32")
    w = np.array([1, 1, 0, 1, 0.5, 1, 0], "float32")
    expected = keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")(y, p, sample_weight=w)
    for loss in ("mean_squared_error", keras.losses.MeanSquaredError(), keras.losses.mean_squared_error):
        np.testing.assert_allclose(float(GlobalWeightedMean(loss)(y, p, sample_weight=w)), float(expected), rtol=1e-6)
    np.testing.assert_allclose(float(GlobalWeightedMean()(y, p)), float(np.mean((y - p) ** 2)), rtol=1e-6)
    restored = GlobalWeightedMean.from_config(GlobalWeightedMean(keras.losses.MeanAbsoluteError()).get_config())
    np.testing.assert_allclose(float(restored(y, p, w)), float(
        keras.losses.MeanAbsoluteError(reduction="mean_with_sample_weight")(y, p, sample_weight=w)), rtol=1e-6)


EXAMPLE = os.path.join(HERE, os.pardir, "examples", "distributed_nbody.py")


def _load_example():
    return load_script(EXAMPLE, "distributed_nbody_example")


def test_distributed_nbody_example_help():
    example = _load_example()
    with pytest.raises(SystemExit) as info:
        example.parse_args(["--help"])
    assert info.value.code == 0
    args = example.parse_args(["--strategy", "multiworker", "--workers", "a:1,b:2", "--worker-index", "1"])
    assert args.worker_index == 1
    with pytest.raises(SystemExit):
        example.parse_args(["--strategy", "mirrored", "--workers", "a:1"])


@pytest.mark.slow
def test_distributed_nbody_example_mirrored(tmp_path):
    """The example trains under MirroredStrategy on 2 logical CPUs at a tiny budget (~30-60 s)."""
    command = [sys.executable, EXAMPLE, "--strategy", "mirrored", "--num-devices", "2", "--train", "256",
               "--test", "100", "--epochs", "2", "--batch-size", "32", "--channels", "4", "--max-degree", "1",
               "--layers", "1", "--quiet", "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "RESULT: mirrored (2 replicas)" in result.stdout
    report = json.loads((tmp_path / "distributed_nbody_mirrored.json").read_text())
    print(f"distributed N-body example: losses {report['loss']}, test MSE x {report['mse_x_mean']:.4f}")
    assert report["replicas"] == 2 and report["loss"][-1] < report["loss"][0]
    assert (tmp_path / "distributed_nbody_mirrored.keras").exists()


def test_docstring_examples():
    import doctest

    import tfequivariant.distribute as module

    result = doctest.testmod(module, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "run":
    _script_main(json.loads(sys.argv[2]))
