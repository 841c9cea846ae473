"""Charged N-body SE(3)-Transformer trained with the same code on one device, several devices or hosts.

The model, data and targets are those of ``examples/nbody.py``; what changes
is only where the steps run:

* ``--strategy none``: the default strategy (one device);
* ``--strategy mirrored``: ``tf.distribute.MirroredStrategy`` over
  ``--num-devices`` GPUs, or, without GPUs, over that many logical CPUs
  (the CPU split before TensorFlow starts: a way to try the code path);
* ``--strategy multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy``,
  one process per worker. Give every process the same ``--workers`` list and
  its own ``--worker-index``, or set ``TF_CONFIG`` yourself.

Each replica merges and pads its own share of the global batch
(``tfequivariant.distribute.distributed_graph_dataset``: sharded by worker,
``--batch-size / replicas`` graphs per replica, padded to fixed sizes with
padding weighted 0), and the loss is ``GlobalWeightedMean``, so that a step
on R replicas is the single-device step on the global batch.

Run:
    python examples/distributed_nbody.py --strategy none
    python examples/distributed_nbody.py --strategy mirrored --num-devices 2
    # two workers (two shells, or two hosts with their addresses):
    python examples/distributed_nbody.py --strategy multiworker --workers localhost:12345,localhost:12346 --worker-index 0
    python examples/distributed_nbody.py --strategy multiworker --workers localhost:12345,localhost:12346 --worker-index 1
"""

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", choices=["none", "mirrored", "multiworker"], default="mirrored")
    p.add_argument("--num-devices", type=int, default=None,
                   help="mirrored: devices to use (default: all GPUs, or 2 logical CPUs without GPUs)")
    p.add_argument("--workers", default=None,
                   help="multiworker: comma-separated host:port of every worker (else TF_CONFIG is read)")
    p.add_argument("--worker-index", type=int, default=None, help="multiworker: this process's index in --workers")
    p.add_argument("--train", type=int, default=3000, help="training trajectories")
    p.add_argument("--test", type=int, default=1000, help="test trajectories (fixed test set)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (graphs per step over all replicas)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--channels", type=int, default=8, help="hidden channels per degree")
    p.add_argument("--max-degree", type=int, default=2)
    p.add_argument("--layers", type=int, default=2, help="attention blocks")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="XLA-compile the step (default: only with --strategy none; XLA failed under "
                        "MirroredStrategy on logical CPUs)")
    p.add_argument("--test-frame", type=int, default=19, help="fixed start frame f0 of the test set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="saved_models", help="where the chief writes the model and report")
    p.add_argument("--cache-dir", default=None, help="simulation cache (default ~/.cache/tfequivariant)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = p.parse_args(argv)
    if args.strategy == "multiworker" and args.workers is not None and args.worker_index is None:
        p.error("--workers needs --worker-index")
    if args.workers is not None and args.strategy != "multiworker":
        p.error("--workers goes with --strategy multiworker")
    return args


def make_strategy(args):
    """Configures devices / the cluster (before TensorFlow starts) and returns (strategy, worker index)."""
    import tensorflow as tf

    if args.strategy == "none":
        return tf.distribute.get_strategy(), 0
    if args.strategy == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            count = len(gpus) if args.num_devices is None else args.num_devices
            return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(count)]), 0
        count = 2 if args.num_devices is None else args.num_devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(count)]), 0
    if args.workers is not None:
        workers = [w.strip() for w in args.workers.split(",") if w.strip()]
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": args.worker_index}}
        )
    if "TF_CONFIG" not in os.environ:
        raise SystemExit("--strategy multiworker needs --workers and --worker-index, or TF_CONFIG")
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    return tf.distribute.MultiWorkerMirroredStrategy(), index


def main(argv=None):
    args = parse_args(argv)
    strategy, worker = make_strategy(args)  # first: devices are fixed when TensorFlow starts

    import keras
    import tensorflow as tf

    import tfequivariant as tfe
    from tfequivariant import graph as tfe_graph
    from tfequivariant.datasets import nbody
    from tfequivariant.distribute import GlobalWeightedMean, distributed_graph_dataset, prepare_distributed_fit

    chief = worker == 0
    say = print if chief else (lambda *a, **k: None)
    keras.utils.set_random_seed(args.seed)
    replicas = strategy.num_replicas_in_sync
    if args.batch_size % replicas:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {replicas} replicas")
    per_replica = args.batch_size // replicas
    # N-body graphs: 5 nodes and 20 edges each, plus one padding node and graph.
    sizes = (5 * per_replica + 1, 20 * per_replica, per_replica + 1)
    jit = args.strategy == "none" if args.jit_compile is None else args.jit_compile
    input_keys = ["positions", "node_features", "senders", "receivers", "edge_attr", "edge_mask"]
    say(f"strategy {type(strategy).__name__}: {replicas} replica(s), worker {worker}; global batch "
        f"{args.batch_size} = {per_replica} graphs per replica, padded to {sizes}; jit_compile={jit}")

    t0 = time.time()
    train = nbody.load("train", args.train, cache_dir=args.cache_dir)
    test = nbody.load("test", args.test, cache_dir=args.cache_dir)
    test_examples = nbody.make_examples(test, frame=args.test_frame)
    val_examples = test_examples[: max(args.batch_size, 256 // args.batch_size * args.batch_size)]
    say(f"data: {args.train} training / {args.test} test trajectories ({time.time() - t0:.1f} s)")

    def train_graphs(ctx):
        # The same sequence on every worker (same seed); known length, so shards are equal.
        return nbody.tf_dataset(train, seed=args.seed).apply(tf.data.experimental.assert_cardinality(args.train))

    # Repeated datasets with explicit step counts: with several replicas per worker, Keras
    # would otherwise count replica batches as steps (see distributed_graph_dataset).
    common = dict(target_key="node_targets", sizes=sizes, input_keys=input_keys, repeat=True)
    steps = args.train // args.batch_size
    train_ds = distributed_graph_dataset(
        strategy, train_graphs, args.batch_size, shuffle_buffer=4096, seed=args.seed, **common
    )
    validation = {}
    if len(val_examples) >= args.batch_size:
        validation = dict(
            validation_data=distributed_graph_dataset(
                strategy, lambda ctx: nbody.tf_dataset(val_examples), args.batch_size, **common
            ),
            validation_steps=len(val_examples) // args.batch_size,
        )
    with strategy.scope():
        model = tfe.models.build_se3_transformer(
            "1x1o", "2x1o", channels=args.channels, max_degree=args.max_degree, num_layers=args.layers,
            num_heads=args.heads, num_radial_basis=16, cutoff=10.0, radial_hidden=(32,), max_neighbors=4,
            avg_num_neighbors=4.0, edge_attr_dim=1, edge_mask=True,
        )
        schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(1, steps * args.epochs), alpha=0.05)
        model.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss=GlobalWeightedMean(keras.losses.MeanSquaredError()),
            jit_compile=jit,
        )
    prepare_distributed_fit(model)
    say(f"SE(3)-Transformer: {model.count_params():,} parameters")
    t1 = time.time()
    history = model.fit(
        train_ds, epochs=args.epochs, steps_per_epoch=steps, shuffle=False, verbose=0 if args.quiet or not chief else 2,
        **validation,
    )
    train_time = time.time() - t1

    # Evaluation and saving need no communication: every worker holds the same weights.
    preds = []
    for start in range(0, len(test_examples), 256):
        merged = tfe_graph.merge_graphs(test_examples[start : start + 256])
        preds.append(np.asarray(model({k: merged[k] for k in input_keys}, training=False)))
    targets = np.stack([e["node_targets"] for e in test_examples])
    report = nbody.mse_report(np.concatenate(preds).reshape(targets.shape), targets)
    baseline = nbody.constant_velocity_baseline(test, frame=args.test_frame)
    report.update(
        strategy=args.strategy, replicas=replicas, train_seconds=round(train_time, 1),
        loss=[float(x) for x in history.history["loss"]],
        val_loss=[float(x) for x in history.history.get("val_loss", [])],
    )
    if chief:
        os.makedirs(args.output_dir, exist_ok=True)
        path = os.path.join(args.output_dir, f"distributed_nbody_{args.strategy}.keras")
        model.save(path)
        with open(os.path.join(args.output_dir, f"distributed_nbody_{args.strategy}.json"), "w") as f:
            json.dump({"baseline": baseline, **report}, f, indent=2)
        print(f"saved {path}")
    say(
        f"RESULT: {args.strategy} ({replicas} replicas) test MSE x {report['mse_x_mean']:.4f} / v "
        f"{report['mse_v_mean']:.4f} vs constant-velocity baseline {baseline['mse_x_mean']:.4f} / "
        f"{baseline['mse_v_mean']:.4f}; training {train_time:.1f} s"
    )
    return report


if __name__ == "__main__":
    main()
