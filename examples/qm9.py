"""QM9 molecular properties (SE(3)-Transformer paper, Table 3): SE(3)-Transformer and TFN.

Each molecule is a graph: atoms with one-hot element features (H, C, N, O,
F: ``5x0e``), edges between atoms closer than 5 Angstrom, the relative
positions entering the filters. The model predicts one target per molecule:

* an invariant (HOMO by default): the network gives 32 invariant scalars per
  atom, pooled over the molecule (mean for HOMO, LUMO, gap and the rotational
  constants; for extensive properties the sum divided by the mean atom count),
  then a 2-layer MLP head (``--head-width 0``: the network outputs the
  target itself);
* the dipole vector computed from the Mulliken charges (``--target
  dipole_vector``, ``1x1o``): a vector per atom, summed over the molecule, no
  MLP (which would break equivariance), so the prediction rotates with the
  molecule.

Targets are standardised with the training mean and standard deviation (the
vector only scaled: a shift would break equivariance); the loss is the L1
loss, which the reference QM9 training script minimises (``--loss mse`` for the
mean squared error), with padding weighted 0.

The report gives the test MAE in the paper's units (meV for HOMO, LUMO, gap;
D, bohr^3, cal/(mol K) for mu, alpha, Cv) next to the MAE of predicting the
training mean, and each model's equivariance error. Reference MAEs (the
SE(3)-Transformer public repository's table, full budget: 110k molecules,
100 epochs on a GPU): HOMO 35.0, LUMO 33.0, gap 53.0 meV, mu 0.051 D,
alpha 0.142 bohr^3, Cv 0.054 cal/(mol K). The default budget here is a few
thousand molecules and a few epochs (minutes on 2 CPU cores), so expect
several times the reference error.

The data come from the ``qm9pack`` package (``pip install
"tfequivariant[qm9]"``); the first run parses its CSV files (about 15 s) and
caches them (``--cache-dir``, default ``~/.cache/tfequivariant/qm9``).

Run:
    python examples/qm9.py                                  # HOMO, SE(3)-Transformer, small budget
    python examples/qm9.py --target dipole_vector --model both
    # full budget (GPU; the reference run's sizes: 7 layers, 32 channels, degrees 0..3, 8 heads)
    python examples/qm9.py --target homo --train 110000 --valid 10000 --test 0 --epochs 100 \\
        --batch-size 32 --lr 1e-3 --channels 32 --max-degree 3 --layers 7 --heads 8 --jit-compile
"""

import argparse
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

import tfequivariant as tfe
from tfequivariant import graph as tfe_graph
from tfequivariant.datasets import qm9
from tfequivariant.testing import CARTESIAN_POINTS, equivariance_error

INPUT_KEYS = ("positions", "node_features", "senders", "receivers", "edge_mask", "node_graph_index", "graph_sizes")

#: Test MAEs of the SE(3)-Transformer public repository's table (display units).
REFERENCE_MAE = {"homo": 35.0, "lumo": 33.0, "gap": 53.0, "mu": 0.051, "alpha": 0.142, "cv": 0.054}
#: Orbital energies and rotational constants do not grow with the molecule: mean pooling.
_MEAN_POOLED = ("homo", "lumo", "gap", "rot_a", "rot_b", "rot_c")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Run:" + __doc__.split("Run:", 1)[1])
    p.add_argument("--model", choices=["se3", "tfn", "both"], default="se3", help="which model(s) to train")
    p.add_argument("--target", type=str.lower, choices=list(qm9.TARGETS), default="homo", help="the target to learn")
    p.add_argument("--train", type=int, default=4000, help="training molecules (a random prefix of the 110k split)")
    p.add_argument("--valid", type=int, default=500, help="validation molecules, evaluated every epoch")
    p.add_argument("--test", type=int, default=2000, help="test molecules (0: the whole 10,831-molecule split)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first LIMIT molecules of the files (QM9 order: small molecules; for quick tests)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (cosine decay)")
    p.add_argument("--loss", choices=["mae", "mse"], default="mae")
    p.add_argument("--channels", type=int, default=8, help="hidden channels per degree")
    p.add_argument("--max-degree", type=int, default=1, help="hidden lmax (2 is ~4x slower on CPU)")
    p.add_argument("--layers", type=int, default=2, help="attention blocks (SE3) / gated convolutions + 1 (TFN)")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--cutoff", type=float, default=5.0, help="edge and filter cutoff in Angstrom")
    p.add_argument("--head-width", type=int, default=32,
                   help="invariant targets: pool this many scalars per molecule into a 2-layer MLP (0: pool the "
                   "target itself); the dipole vector is always pooled directly")
    p.add_argument("--pooling", choices=["auto", "sum", "mean", "max"], default="auto",
                   help="per-molecule readout; auto: mean for HOMO/LUMO/gap/rotational constants, else sum")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=False,
                   help="XLA-compile the training step, batches padded to 3 size buckets")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling (the split is fixed)")
    p.add_argument("--output-dir", default="saved_models", help="where models, curves and reports go")
    p.add_argument("--cache-dir", default=None, help="parsed-data cache (default ~/.cache/tfequivariant/qm9)")
    p.add_argument("--data-dir", default=None, help="directory of the QM9 CSV files (default: the installed qm9pack)")
    p.add_argument("--no-save", action="store_true", help="do not save the trained models")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("train", "valid", "epochs", "batch_size", "channels", "layers", "heads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(args, name)}")
    if args.target == "dipole_vector" and args.pooling == "max":
        p.error("--pooling max takes invariant targets only: a componentwise max of vectors is not equivariant")
    return args


def pooling_for(args):
    if args.pooling != "auto":
        return args.pooling
    return "mean" if args.target in _MEAN_POOLED else "sum"


def compile_model(model, args, steps):
    """Adam with cosine decay over ``steps * epochs``, the chosen loss weighted by the padding mask."""
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=steps * args.epochs, alpha=0.05)
    loss_class = keras.losses.MeanAbsoluteError if args.loss == "mae" else keras.losses.MeanSquaredError
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=loss_class(reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
        jit_compile=args.jit_compile,
    )


def build_model(name, args, avg_num_neighbors, avg_num_atoms):
    """The equivariant network pooled per molecule; for invariant targets, an MLP head on pooled scalars.

    A sum over atoms is divided by the mean number of atoms (a constant), so
    that outputs start at the scale of the standardised targets.
    """
    vector = args.target == "dipole_vector"
    head = args.head_width > 0 and not vector
    irreps_out = f"{args.head_width}x0e" if head else qm9.target_irreps(args.target)
    common = dict(
        channels=args.channels,
        max_degree=args.max_degree,
        num_radial_basis=16,
        cutoff=args.cutoff,
        radial_hidden=(32,),
        avg_num_neighbors=avg_num_neighbors,
        readout="graph",
        pooling=pooling_for(args),
        max_neighbors=qm9.MAX_ATOMS - 1 if args.jit_compile else None,
    )
    if name == "se3":
        core = tfe.models.SE3Transformer(
            qm9.NODE_FEATURES_IRREPS, irreps_out, num_layers=args.layers, num_heads=args.heads, name="se3_transformer", **common
        )
    else:
        core = tfe.models.TensorFieldNetwork(qm9.NODE_FEATURES_IRREPS, irreps_out, num_layers=args.layers + 1,
                                             name="tensor_field_network", **common)
    inputs = tfe.models.graph_inputs(len(qm9.ELEMENTS), readout="graph", edge_mask=True)
    out = core(inputs)
    if pooling_for(args) == "sum":
        out = keras.layers.Rescaling(1.0 / avg_num_atoms, name="per_atom_scale")(out)
    if head:
        # Invariant features of the molecule -> the target: as in the reference QM9 models.
        out = keras.layers.Dense(args.head_width, activation="silu", name="head_hidden")(out)
        out = keras.layers.Dense(1, name="head_out")(out)
    return keras.Model(inputs, out, name=f"qm9_{name}")


def keras_dataset(examples, batch_size, shuffle, seed, buckets=None):
    ds = qm9.tf_dataset(examples)
    if shuffle:
        ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    ds = tfe_graph.batch_graphs(ds, batch_size, drop_remainder=shuffle)
    if buckets is not None:
        ds = tfe_graph.pad_to_buckets(ds, buckets)
    ds = ds.map(lambda g: tfe_graph.to_keras_inputs(g, "graph_targets", input_keys=INPUT_KEYS))
    return ds.prefetch(tf.data.AUTOTUNE)


def predict(model, examples, batch_size=128):
    preds = []
    for start in range(0, len(examples), batch_size):
        merged = tfe_graph.merge_graphs(examples[start : start + batch_size])
        preds.append(np.asarray(model({k: merged[k] for k in INPUT_KEYS}, training=False)))
    return np.concatenate(preds, axis=0)


def errors(pred, true, target):
    """Mean absolute error in display units (vector: mean Euclidean error and per-component MAE)."""
    diff = qm9.to_display_units(np.asarray(pred, np.float64) - true, target)
    if target == "dipole_vector":
        return {"mae": float(np.mean(np.linalg.norm(diff, axis=1))), "mae_component": float(np.mean(np.abs(diff)))}
    return {"mae": float(np.mean(np.abs(diff)))}


def model_equivariance(model, example, irreps_out):
    single = tfe_graph.merge_graphs([example])
    inputs = {k: single[k] for k in INPUT_KEYS}

    def fn(positions):
        return model({**inputs, "positions": positions})

    return equivariance_error(fn, [CARTESIAN_POINTS], irreps_out, args_in=[inputs["positions"]], dtype="float32")


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    target, unit = args.target, qm9.DISPLAY_UNITS[args.target]

    t0 = time.time()
    data = qm9.load(limit=args.limit, cache_dir=args.cache_dir, directory=args.data_dir)
    splits = qm9.split_indices(len(data["num_atoms"]))
    train_idx = splits["train"][: args.train]
    valid_idx = splits["valid"][: args.valid]
    test_idx = splits["test"] if args.test <= 0 else splits["test"][: args.test]
    shift, scale = qm9.standardization(data, target, train_idx)
    make = lambda idx: qm9.make_examples(data, idx, target, cutoff=args.cutoff, shift=shift, scale=scale)  # noqa: E731
    train_examples, valid_examples, test_examples = make(train_idx), make(valid_idx), make(test_idx)
    num_edges = sum(len(e["senders"]) for e in train_examples)
    num_nodes = sum(len(e["positions"]) for e in train_examples)
    avg_num_neighbors = num_edges / num_nodes
    avg_num_atoms = num_nodes / len(train_examples)
    test_true = qm9.target_values(data, target, test_idx)
    train_mean = qm9.target_values(data, target, train_idx).mean(axis=0)
    baseline = errors(np.broadcast_to(train_mean, test_true.shape), test_true, target)
    valid_baseline = errors(
        np.broadcast_to(train_mean, (len(valid_idx), test_true.shape[1])), qm9.target_values(data, target, valid_idx), target
    )
    print(
        f"data: {len(data['num_atoms'])} molecules loaded, {len(train_idx)} train / {len(valid_idx)} valid / "
        f"{len(test_idx)} test, mean in-degree {avg_num_neighbors:.1f} at {args.cutoff} A ({time.time() - t0:.1f} s)"
    )

    buckets = None
    if args.jit_compile:
        sizes = [(len(e["positions"]), len(e["senders"])) for e in train_examples + valid_examples]
        buckets = tfe_graph.buckets_for(sizes, args.batch_size, num_buckets=3)
        print(f"XLA size buckets (nodes, edges, graphs): {buckets}")
    train_ds = keras_dataset(train_examples, args.batch_size, True, args.seed, buckets)
    valid_ds = keras_dataset(valid_examples, args.batch_size, False, args.seed, buckets)
    steps = max(1, len(train_examples) // args.batch_size)
    # Validation MAE in display units per epoch: the standardised MAE times scale (and the unit factor).
    to_display = float(qm9.to_display_units(scale[0], target))

    names = ["se3", "tfn"] if args.model == "both" else [args.model]
    results, histories = {}, {}
    irreps_out = qm9.target_irreps(target)
    for name in names:
        model = build_model(name, args, avg_num_neighbors, avg_num_atoms)
        compile_model(model, args, steps)
        print(f"\n{name}: {model.count_params():,} parameters, pooling={pooling_for(args)}, jit_compile={args.jit_compile}")
        t1 = time.time()
        history = model.fit(train_ds, validation_data=valid_ds, epochs=args.epochs, verbose=0 if args.quiet else 1)
        train_time = time.time() - t1
        pred = predict(model, test_examples) * scale + shift
        report = errors(pred, test_true, target)
        report["valid_mae_per_epoch"] = [v * to_display for v in history.history["val_mae"]]
        report["equivariance_error"] = float(model_equivariance(model, test_examples[0], irreps_out))
        report["train_seconds"] = round(train_time, 1)
        report["parameters"] = int(model.count_params())
        results[name] = report
        histories[name] = history.history
        print(
            f"{name}: test MAE {report['mae']:.4g} {unit} (training mean: {baseline['mae']:.4g} {unit}), "
            f"equivariance error {report['equivariance_error']:.1e}, {train_time:.0f} s"
        )
        if not args.no_save:
            path = os.path.join(args.output_dir, f"qm9_{target}_{name}.keras")
            model.save(path)
            print(f"saved {path}")

    budget = f"{len(train_idx)} molecules x {args.epochs} epochs, batch {args.batch_size}"
    reference = REFERENCE_MAE.get(target)
    print(f"\nTest set: {len(test_idx)} molecules; target {target} [{unit}]; budget {budget}")
    print(f"{'model':<26}{'test MAE':>12}{'equiv. err':>12}{'train s':>10}")
    print(f"{'training mean':<26}{baseline['mae']:12.4g}{'-':>12}{'-':>10}")
    for name, r in results.items():
        label = {"se3": "SE(3)-Transformer", "tfn": "Tensor Field Network"}[name]
        print(f"{label:<26}{r['mae']:12.4g}{r['equivariance_error']:12.1e}{r['train_seconds']:10.0f}")
    if reference is not None:
        print(f"{'reference (full budget)':<26}{reference:12.4g}")
    summary = {
        "target": target,
        "unit": unit,
        "budget": budget,
        "limit": args.limit,
        "training_mean": baseline,
        "training_mean_valid": valid_baseline,
        "reference_mae": reference,
        **results,
    }
    with open(os.path.join(args.output_dir, f"qm9_{target}_report.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    valid_line = valid_baseline["mae_component" if target == "dipole_vector" else "mae"]
    _plot(histories, to_display, valid_line, reference,
          target, unit, os.path.join(args.output_dir, f"qm9_{target}_learning_curve.png"))
    best = min(results, key=lambda n: results[n]["mae"])
    ref_text = f"; reference {reference:g} {unit} at the full budget" if reference is not None else ""
    print(
        f"RESULT: {best} test MAE {target} {results[best]['mae']:.4g} {unit} vs {baseline['mae']:.4g} {unit} "
        f"predicting the training mean ({budget}{ref_text})"
    )
    return summary


def _plot(histories, to_display, valid_baseline, reference, target, unit, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'tfequivariant[examples]'): no learning-curve plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, h in histories.items():
        epochs = np.arange(1, len(h["mae"]) + 1)
        ax.plot(epochs, np.asarray(h["mae"]) * to_display, label=f"{name} train")
        ax.plot(epochs, np.asarray(h["val_mae"]) * to_display, "--", label=f"{name} validation")
    if valid_baseline is not None:
        ax.axhline(valid_baseline, color="gray", lw=1, label="training mean (validation)")
    if reference is not None:
        ax.axhline(reference, color="gray", ls=":", lw=1, label="reference, full budget")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"MAE [{unit}]" + (" per component" if target == "dipole_vector" else ""))
    ax.set_title(f"QM9 {target}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"learning curve: {path}")


if __name__ == "__main__":
    main()
