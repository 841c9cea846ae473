"""Tetris: classify rotated 3D shapes with a Tensor Field Network, and see what parity does.

The experiment of the Tensor Field Networks paper (Thomas, Smidt et al. 2018):
eight shapes of four points (``tfequivariant.datasets.tetris``), a TFN trained
on the shapes in one position (or on rotated copies, ``--train-rotated``) and
tested on randomly rotated and translated copies. An invariant model has
nothing to learn about orientation: 200 steps on the 8 canonical shapes
classify every rotated copy.

Two models are trained. Both are ``TensorFieldNetwork`` s with graph readout,
exactly O(3)-equivariant inside; they differ in what the logits are made of.

* ``o3``: hidden irreps with the harmonics' parities (``8x0e+8x1o`` at the
  default ``--max-degree 1``; ``hidden_irreps(..., parity=True)``) and only
  even scalars out, ``8x0e`` = the logits. These are invariant under
  rotations *and reflections*. Classes 0 and 1 (``chiral_1``, ``chiral_2``)
  are mirror images, so every copy of one is a reflected copy of the other:
  both get the *same* logits, hence the same prediction, and one of the two
  is always wrong. The other six shapes are their own mirror images and are
  classified perfectly: 7/8 = 87.5% accuracy, 50% on the chiral pair.
* ``chiral``: the TFN also outputs a pseudoscalar ``p`` (``8x0e+1x0o``) and
  the logits are ``s + w * p`` (``s`` the 8 even scalars, ``w`` 8 learned
  numbers). ``p`` is rotation invariant and changes sign under a reflection,
  so the logits stay rotation invariant while a mirror image turns ``w * p``
  into ``-w * p``: exactly what tells the chiral pair apart. This readout is
  SE(3)- but not O(3)-invariant, on purpose, and ``p`` is 0 on the six
  achiral shapes (their mirror image is a rotated copy, so ``p = -p``).
  100% accuracy.

Reaching ``0o`` takes a hidden irrep of the "wrong" parity. From scalar
inputs, convolutions with the harmonics ``Y^l`` (parity ``(-1)^l``) make only
``0e, 1o, 2e, ...``; a second convolution makes ``1e`` (``1o x 1o -> 1e``, a
cross product) and a third ``0o`` (``1e x 1o -> 0o``, a triple product, like
the signed volume of the shape). So the chiral model has hidden irreps of
both parities (``8x0e+8x0o+8x1o+8x1e``) and at least 3 layers. An even-only
model (hidden ``0e+1e``, ``parity=False``) is no way out: the harmonics of an
edge are ``1o``, so scalar inputs never reach a ``1e`` at all.

``TensorFieldNetwork`` uses the same hidden irreps in every block, and its
first convolution must reach all of them from ``irreps_node_in``: ``1x0e``
cannot reach ``1e`` or ``0o`` in one step, so the chiral model feeds node
features ``1x0e+1x0o`` whose ``0o`` column is zero. Zero is a valid
pseudoscalar, so the network stays exactly O(3)-equivariant; the column only
makes the first block's paths exist.

Every tetris graph has 4 nodes and 12 edges, so batches of a fixed number of
graphs (``drop_remainder=True``; no padding, so all sample weights are 1) have
fixed shapes and ``--jit-compile`` (XLA, ``max_neighbors=3``) compiles once
per batch size. It works, but compiling costs more than it saves on this
small problem, so the default is ``jit_compile=False``.

Run: python examples/tetris.py [--model both|o3|chiral] [--epochs 4] [--seed 0] [--quiet]

References:
    Thomas, Smidt, Kearnes, Yang, Li, Kohlhoff, Riley, "Tensor field networks:
    Rotation- and translation-equivariant neural networks for 3D point
    clouds", arXiv:1802.08219 (2018).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfequivariant import graph as tfe_graph  # noqa: E402
from tfequivariant.datasets import tetris  # noqa: E402
from tfequivariant.irreps import Irreps  # noqa: E402
from tfequivariant.models import TensorFieldNetwork, hidden_irreps  # noqa: E402

NUM_CLASSES = len(tetris.CLASS_NAMES)
INPUT_KEYS = ["positions", "node_features", "senders", "receivers", "node_graph_index", "graph_sizes"]
MIRROR = np.diag([1.0, -1.0, 1.0]).astype(np.float32)  # y -> -y maps chiral_1 onto chiral_2


class TetrisClassifier(keras.Model):
    """A graph-readout TFN and the logits head (``s`` or ``s + w * p``, see the module docstring)."""

    def __init__(self, chiral, channels=8, max_degree=1, num_layers=3, pooling="sum", **kwargs):
        super().__init__(**kwargs)
        self.chiral = chiral
        if chiral:
            irreps_hidden = Irreps(
                [(channels, (l, p)) for l in range(max_degree + 1) for p in (1, -1)]
            )
            irreps_node_in, irreps_out = "1x0e+1x0o", f"{NUM_CLASSES}x0e+1x0o"
        else:
            irreps_hidden = hidden_irreps(channels, max_degree, parity=True)
            irreps_node_in, irreps_out = "1x0e", f"{NUM_CLASSES}x0e"
        self.tfn = TensorFieldNetwork(
            irreps_node_in,
            irreps_out,
            irreps_hidden=irreps_hidden,
            num_layers=num_layers,
            num_radial_basis=8,
            cutoff=4.0,  # every pair of points of a shape is within distance 3
            radial_hidden=(16,),
            avg_num_neighbors=3.0,
            readout="graph",
            pooling=pooling,
            max_neighbors=3,  # fully connected 4-node graphs; a static K for XLA
            name="tfn",
        )

    def build(self, input_shape):
        # Leading sizes None: TensorFieldNetwork.build runs on a dummy graph of the given
        # size whose edges all go to node 0, more than max_neighbors allows.
        shapes = {key: (None, *shape[1:]) for key, shape in input_shape.items()}
        if self.chiral:  # the TFN sees the node features with the zero 0o column
            shapes["node_features"] = (*shapes["node_features"][:-1], 2)
            self.pseudo_weight = self.add_weight(
                name="pseudo_weight", shape=(NUM_CLASSES,), initializer="random_normal"
            )
        self.tfn.build(shapes)

    def readout(self, inputs):
        """The TFN's per-graph output: ``[G, 8]`` scalars, plus the pseudoscalar column if chiral."""
        graph = dict(inputs)
        if self.chiral:
            x = graph["node_features"]  # the zero 0o column only makes 1e and 0o reachable
            graph["node_features"] = keras.ops.concatenate([x, keras.ops.zeros_like(x)], axis=-1)
        return self.tfn(graph)

    def call(self, inputs):
        out = self.readout(inputs)
        if not self.chiral:
            return out
        return out[:, :NUM_CLASSES] + out[:, NUM_CLASSES:] * self.pseudo_weight


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    add("--model", choices=("both", "o3", "chiral"), default="both", help="the models to train")
    add("--epochs", type=int, default=4, help="epochs (one progress bar each)")
    add("--steps-per-epoch", type=int, default=50, help="training steps per epoch")
    add("--batch-size", type=int, default=8, help="graphs per training batch")
    add("--learning-rate", type=float, default=1e-2, help="Adam learning rate")
    add("--channels", type=int, default=8, help="hidden channels per irrep")
    add("--max-degree", type=int, default=1, help="largest degree l of the hidden irreps and the filters")
    add("--num-layers", type=int, default=3, help="convolutions (the chiral model needs >= 3)")
    add("--pooling", choices=("sum", "mean"), default="sum", help="per-graph readout")
    add(
        "--train-rotated",
        action="store_true",
        help="train on rotated and translated copies instead of the 8 canonical shapes",
    )
    add("--train-copies", type=int, default=50, help="copies per shape with --train-rotated")
    add("--test-copies", type=int, default=100, help="rotated+translated test copies per shape")
    add(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the steps with XLA (works: fixed-shape batches compile once; slower overall at this size)",
    )
    add("--seed", type=int, default=0, help="seed of the weights and the data")
    add("--quiet", action="store_true", help="no Keras progress bar")
    args = parser.parse_args(argv)
    for name in ("epochs", "steps_per_epoch", "batch_size", "channels", "num_layers", "train_copies", "test_copies"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1. Received: {getattr(args, name)}")
    if args.model != "o3" and (args.num_layers < 3 or args.max_degree < 1):
        parser.error(
            "the chiral model needs --num-layers >= 3 and --max-degree >= 1 to reach its pseudoscalar "
            f"(0e -> 1o -> 1e -> 0o). Received: --num-layers {args.num_layers} --max-degree {args.max_degree}; "
            "use --model o3 for smaller models"
        )
    return args


def batched(dataset, batch_size):
    """Single graphs -> merged batches of ``batch_size`` graphs -> ``(inputs, targets, weights)``."""
    dataset = tfe_graph.batch_graphs(dataset, batch_size, drop_remainder=True)  # fixed shapes
    return dataset.map(
        lambda g: tfe_graph.to_keras_inputs(g, "graph_targets", input_keys=INPUT_KEYS),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def eval_batch_size(num_graphs, limit=200):
    """The largest divisor of ``num_graphs`` up to ``limit``: every test graph, no padding."""
    return max(b for b in range(1, min(num_graphs, limit) + 1) if num_graphs % b == 0)


def predict(model, dataset, num_graphs):
    return model.predict(batched(dataset, eval_batch_size(num_graphs)), verbose=0)


def train_and_test(kind, args):
    """Trains one model; returns its test metrics (accuracies, mirror behaviour)."""
    keras.utils.set_random_seed(args.seed)
    model = TetrisClassifier(
        kind == "chiral", args.channels, args.max_degree, args.num_layers, args.pooling, name=f"tetris_{kind}"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=args.jit_compile,
    )
    if args.train_rotated:
        train = tetris.tf_dataset(args.train_copies, rotate=True, translate=True, seed=args.seed)
        num_train = args.train_copies * NUM_CLASSES
    else:
        train = tetris.tf_dataset(1, rotate=False, translate=False)
        num_train = NUM_CLASSES
    train = train.shuffle(num_train, seed=args.seed, reshuffle_each_iteration=True).repeat()
    train = batched(train, args.batch_size).prefetch(tf.data.AUTOTUNE)
    start = time.perf_counter()
    # Create the weights and optimizer slots before fit: variables created while
    # Keras traces the train step make TensorFlow trace it a second time.
    model.build({key: spec.shape for key, spec in train.element_spec[0].items()})
    model.optimizer.build(model.trainable_variables)
    history = model.fit(
        train,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        shuffle=False,  # the dataset shuffles itself
        verbose=0 if args.quiet else 1,
    )
    train_seconds = time.perf_counter() - start

    # Test shapes: a different seed from training; copy c of class k is graph c * 8 + k.
    test_seed = args.seed + 1000
    num_test = args.test_copies * NUM_CLASSES
    test = tetris.tf_dataset(args.test_copies, rotate=True, translate=True, seed=test_seed)
    logits = predict(model, test, num_test)
    labels = np.tile(np.arange(NUM_CLASSES), args.test_copies)
    predicted = logits.argmax(-1)
    correct = predicted == labels
    per_class = correct.reshape(args.test_copies, NUM_CLASSES).mean(0)

    # The same test shapes reflected (y -> -y): chiral_1 and chiral_2 trade places.
    mirrored = test.map(lambda g: {**g, "positions": g["positions"] @ MIRROR})
    mirror_logits = predict(model, mirrored, num_test)
    mirror_labels = labels.copy()
    first, second = tetris.CHIRAL_PAIR
    mirror_labels[labels == first], mirror_labels[labels == second] = second, first
    pair = np.isin(labels, tetris.CHIRAL_PAIR)
    return {
        "kind": kind,
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class,
        "chiral_pair_accuracy": float(correct[pair].mean()),
        "other_accuracy": float(correct[~pair].mean()),
        "mirror_accuracy": float((mirror_logits.argmax(-1) == mirror_labels).mean()),
        # how far a reflection moves the logits, relative to their scale
        "mirror_logit_change": float(np.abs(mirror_logits - logits).max() / np.abs(logits).max()),
        "final_train_loss": float(history.history["loss"][-1]),
        "train_seconds": train_seconds,
        "num_test": num_test,
        "model": model,
    }


def run(args):
    """Trains the requested models; returns ``{kind: metrics}``."""
    kinds = ("o3", "chiral") if args.model == "both" else (args.model,)
    return {kind: train_and_test(kind, args) for kind in kinds}


def describe(r):
    per_class = " ".join(f"{n}={a:.0%}" for n, a in zip(tetris.CLASS_NAMES, r["per_class_accuracy"]))
    return (
        f"[{r['kind']}] test accuracy {r['accuracy']:.1%} on {r['num_test']} rotated+translated shapes "
        f"(chiral pair {r['chiral_pair_accuracy']:.1%}, other six {r['other_accuracy']:.1%}); "
        f"mirrored copies {r['mirror_accuracy']:.1%}; a reflection changes the logits by "
        f"{r['mirror_logit_change']:.1e} (relative); trained in {r['train_seconds']:.1f} s\n"
        f"    per class: {per_class}"
    )


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    results = run(args)
    for r in results.values():
        print(describe(r))
    parts = []
    if "o3" in results:
        r = results["o3"]
        parts.append(
            f"the O(3) model (0e logits) scores {r['accuracy']:.1%} (chiral pair {r['chiral_pair_accuracy']:.1%}: "
            f"mirror images get identical logits, relative change {r['mirror_logit_change']:.1e})"
        )
    if "chiral" in results:
        r = results["chiral"]
        parts.append(
            f"the chirality-aware model (0e + 0o logits) {r['accuracy']:.1%} "
            f"(chiral pair {r['chiral_pair_accuracy']:.1%})"
        )
    num_test = next(iter(results.values()))["num_test"]
    print(
        f"RESULT: on {num_test} rotated+translated test shapes, " + " and ".join(parts)
        + f"; {time.perf_counter() - start:.0f} s, jit_compile={args.jit_compile}"
    )


if __name__ == "__main__":
    main()
