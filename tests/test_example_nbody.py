"""The N-body example at a CI-sized budget: learning happened (well below predicting zero)."""

import json
import os

import numpy as np
import pytest

from _scripts import load_script

from tfequivariant.datasets import nbody

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "nbody.py")


def _load_example():
    return load_script(EXAMPLE, "nbody_example")


def test_nbody_example_learns_at_a_tiny_budget(tmp_path):
    example = _load_example()
    args = ["--model", "se3", "--train", "384", "--test", "200", "--epochs", "4", "--batch-size", "32",
            "--lr", "5e-3", "--channels", "4", "--no-jit-compile", "--no-export", "--quiet",
            "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    results = example.main(args)
    # "chance": predicting no change at all (dx = dv = 0) on the same test set
    test = nbody.load("test", 200, cache_dir=str(tmp_path / "cache"))
    targets = np.stack([e["node_targets"] for e in nbody.make_examples(test, frame=19)])
    zero = nbody.mse_report(np.zeros_like(targets), targets)
    se3 = results["se3"]
    print(f"zero predictor x {zero['mse_x_mean']:.4f} v {zero['mse_v_mean']:.4f}; "
          f"se3 x {se3['mse_x_mean']:.4f} v {se3['mse_v_mean']:.4f}; "
          f"baseline x {results['baseline']['mse_x_mean']:.4f} v {results['baseline']['mse_v_mean']:.4f}")
    # Measured at this budget: x 0.18 and v 0.24 against 0.25 and 0.26 for predicting zero
    # (the constant-velocity baseline, 0.13 / 0.26, takes longer budgets to beat).
    assert se3["mse_x_mean"] < 0.85 * zero["mse_x_mean"]
    assert se3["mse_v_mean"] < zero["mse_v_mean"]
    assert se3["equivariance_error"] < 1e-4
    report = json.loads((tmp_path / "nbody_report.json").read_text())
    assert set(report) >= {"budget", "baseline", "se3"}
    assert (tmp_path / "nbody_se3.keras").exists()


def test_nbody_example_help():
    example = _load_example()
    with pytest.raises(SystemExit) as info:
        example.parse_args(["--help"])
    assert info.value.code == 0
