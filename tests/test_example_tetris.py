"""CI-sized run of examples/tetris.py: both models learn, and parity acts as the docstring says.

The example's ``run`` trains both models for 100 steps on the 8 canonical
shapes and tests them on 80 rotated+translated shapes. Measured with this
budget: the O(3) model scored 87.5% (seeds 0-4, 60 steps already), the
chirality-aware model 100% with the chiral pair separated (seeds 0-7; at 60
steps one seed in five still confused the pair). The thresholds below leave
room under those numbers and sit far above chance (1/8). The mirror
properties are exact up to float32 round-off.
"""

import pathlib

import numpy as np
import pytest

from _scripts import load_script
import tensorflow as tf

from tfequivariant import so3
from tfequivariant.datasets import tetris

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "tetris.py"

# 100 steps on the 8 canonical shapes (the example runs 200), 10 test copies per shape.
TINY_FLAGS = ["--quiet", "--epochs", "1", "--steps-per-epoch", "100", "--test-copies", "10", "--seed", "0"]

MIN_ACCURACY = {"o3": 0.75, "chiral": 0.9}  # on rotated+translated test shapes (chance: 0.125)
MIN_CHIRAL_PAIR_ACCURACY = 0.9  # chirality-aware model on the two mirror-image classes
MIRROR_TOLERANCE = 1e-5  # relative, float32: what an exact invariance leaves under a reflection


def _load_example():
    return load_script(EXAMPLE, "tetris_example")


@pytest.fixture(scope="module")
def example():
    return _load_example()


@pytest.fixture(scope="module")
def results(example):
    return example.run(example.parse_args(TINY_FLAGS))


def _canonical_and_improper(example):
    """One batch of the 8 canonical shapes, and the same batch under a random
    improper rotation (rotation times inversion) plus a translation."""
    batches = example.batched(tetris.tf_dataset(1, rotate=False, translate=False), example.NUM_CLASSES)
    inputs, _, _ = next(iter(batches))
    improper = -so3.rand_matrix(seed=1)
    positions = inputs["positions"] @ tf.constant(improper.T, tf.float32) + tf.constant([0.3, -1.2, 2.0])
    return inputs, dict(inputs, positions=positions)


def test_help_runs(example):
    with pytest.raises(SystemExit) as info:
        example.parse_args(["--help"])
    assert info.value.code == 0


def test_both_models_learn(results):
    for kind, minimum in MIN_ACCURACY.items():
        assert results[kind]["accuracy"] >= minimum, (kind, results[kind]["accuracy"])


def test_chiral_model_separates_the_pair(results):
    r = results["chiral"]
    assert r["chiral_pair_accuracy"] >= MIN_CHIRAL_PAIR_ACCURACY, r["chiral_pair_accuracy"]
    # a reflection moves its logits (the pseudoscalar term changes sign)
    assert r["mirror_logit_change"] > 1e-2


def test_o3_model_gives_mirror_images_identical_logits(example, results):
    r = results["o3"]
    assert r["mirror_logit_change"] < MIRROR_TOLERANCE  # the example's test shapes, reflected y -> -y
    inputs, transformed = _canonical_and_improper(example)
    logits, logits_transformed = (np.asarray(r["model"](x)) for x in (inputs, transformed))
    scale = np.abs(logits).max()
    np.testing.assert_allclose(logits_transformed, logits, atol=MIRROR_TOLERANCE * scale)
    # chiral_2 is chiral_1 reflected: the two classes get the same logits
    first, second = tetris.CHIRAL_PAIR
    np.testing.assert_allclose(logits[first], logits[second], atol=MIRROR_TOLERANCE * scale)


def test_chiral_model_tfn_stays_o3_equivariant(example, results):
    # The TFN inside the chirality-aware model is exactly O(3)-equivariant:
    # under an improper rotation its 8 even scalars stay, its pseudoscalar flips sign.
    inputs, transformed = _canonical_and_improper(example)
    model = results["chiral"]["model"]
    out, out_transformed = (np.asarray(model.readout(x)) for x in (inputs, transformed))
    n = out.shape[-1] - 1
    scale = np.abs(out).max()
    np.testing.assert_allclose(out_transformed[:, :n], out[:, :n], atol=MIRROR_TOLERANCE * scale)
    np.testing.assert_allclose(out_transformed[:, n], -out[:, n], atol=MIRROR_TOLERANCE * scale)
    # the pseudoscalar vanishes on the six achiral shapes and not on the chiral pair
    achiral = [k for k in range(8) if k not in tetris.CHIRAL_PAIR]
    assert np.abs(out[achiral, n]).max() < MIRROR_TOLERANCE * scale
    assert np.abs(out[list(tetris.CHIRAL_PAIR), n]).min() > 1e-3 * scale
