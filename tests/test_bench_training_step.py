"""benchmarks/bench_training_step.py: cases, example arguments, compile counting, table; a smoke run.

The fast tests check the driver's pure parts (no training); the slow test runs
``--quick`` end to end on the SE(3)-Transformer workloads (N-body and, when the
QM9 data are installed, QM9) and checks the JSON: steps timed in both modes,
no XLA compilation without XLA, one per distinct batch shape with it.
"""

import json
import os
import subprocess
import sys

import pytest

from _scripts import load_script

from tfequivariant.datasets import qm9

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
SCRIPT = os.path.join(BENCH, "bench_training_step.py")

bench = load_script(SCRIPT, "tfe_bench_training_step")


def test_cases_only_and_modes():
    assert bench.select_cases() == [(w, m) for w in bench.WORKLOADS for m in ("function", "xla")]
    assert bench.select_cases(["nbody"]) == [("nbody-se3", "function"), ("nbody-se3", "xla"),
                                             ("nbody-tfn", "function"), ("nbody-tfn", "xla")]
    assert bench.select_cases(["qm9-se3 xla", "nbody-tfn function"]) == [("nbody-tfn", "function"),
                                                                       ("qm9-se3", "xla")]
    # Padding without XLA only exists for QM9 (N-body batches have one shape).
    assert bench.select_cases(modes=("function-padded",)) == [("qm9-se3", "function-padded"),
                                                             ("qm9-tfn", "function-padded")]
    assert bench.select_cases(["nothing"]) == []
    assert bench.parse_list(["xla,function", " function-padded "], bench.MODES) == ["xla", "function",
                                                                                  "function-padded"]
    with pytest.raises(ValueError, match="bogus"):
        bench.parse_list(["xla,bogus"], bench.MODES, "mode")


def test_example_arguments_are_the_examples_defaults():
    examples = {name: load_script(path, f"tfe_bench_test_example_{name}") for name, path in bench.EXAMPLES.items()}
    for workload in bench.WORKLOADS:
        name, model = workload.split("-")
        ex = examples[name]
        reference = vars(ex.parse_args(["--model", model]))
        for mode in ("function", "xla", "function-padded"):
            args = vars(ex.parse_args(bench.example_argv(workload, mode)))
            assert args["model"] == model and args["jit_compile"] == (mode == "xla")
            # Only the size of the training set differs from the example's defaults.
            assert {k for k in args if args[k] != reference[k]} <= {"train", "jit_compile"}, workload
            quick = vars(ex.parse_args(bench.example_argv(workload, mode, quick=True, extra=["--seed", "3"])))
            assert quick["batch_size"] == reference["batch_size"] and quick["seed"] == 3
            assert quick["train"] < args["train"] and quick["channels"] < reference["channels"]
    assert examples["nbody"].parse_args([]).batch_size == 64 and examples["qm9"].parse_args([]).batch_size == 16


def test_count_xla_modules(tmp_path):
    names = [
        "module_0001.a_inference_one_step_on_data_12__.55.before_optimizations.txt",
        "module_0001.a_inference_one_step_on_data_12__.55.cpu_after_optimizations.txt",
        "module_0001.a_inference_one_step_on_data_12__.55.add_fusion_kernel_module.ir-no-opt.ll",
        "module_0002.a_inference_other_fn_3__.7.before_optimizations.txt",
        "module_0003.a_inference_one_step_on_data_99__.55.before_optimizations.txt",
    ]
    for n in names:
        (tmp_path / n).write_text("HloModule x")
    assert bench.count_xla_modules(str(tmp_path)) == {"train_step": 2, "all": 3}
    assert bench.count_xla_modules(str(tmp_path / "missing")) == {"train_step": 0, "all": 0}
    assert bench.count_xla_modules(None) is None


def _ok(ms, compilations, after=None, shapes=1, steps=20, batch=16):
    return {"example_argv": ["--model", "se3"], "batch_size": batch, "steps_per_epoch": steps,
            "distinct_batch_shapes": shapes, "epoch1_seconds": 12.345, "foreign_cores": 0.25,
            "timing": {"n": 3, "median_ms": ms, "q1_ms": ms - 1, "q3_ms": ms + 1, "iqr_ms": 2.0, "min_ms": ms - 1,
                       "samples_ms": [ms - 1, ms, ms + 1]},
            "steps_per_second": 1e3 / ms, "xla_compilations_epoch1": compilations,
            "xla_compilations_after_epoch1": after}


def test_table_from_canned_results():
    results = {
        "nbody-se3": {"function": _ok(200.0, {"train_step": 0, "all": 0}, {"train_step": 0, "all": 0}, batch=64),
                      "xla": _ok(50.0, {"train_step": 1, "all": 1}, {"train_step": 0, "all": 0}, batch=64)},
        "qm9-se3": {"function": _ok(100.0, {"train_step": 0, "all": 0}, shapes=20),
                    "xla": _ok(125.0, {"train_step": 2, "all": 3}, {"train_step": 1, "all": 1}, shapes=2),
                    "function-padded": {"example_argv": ["--model", "se3"], "error": "TypeError: boom"}},
        "qm9-tfn": {"xla": _ok(10.0, None)},
    }
    rows = [dict(zip(bench.HEADER, r)) for r in bench.table_rows(results)]
    assert all(len(r) == len(bench.HEADER) for r in rows) and len(rows) == 6
    nb_function, nb_xla, q_function, q_xla, q_padded, tfn = rows
    assert nb_function["workload"] == "nbody se3" and nb_function["batch"] == "64"
    assert nb_function["ms/step (median ± IQR)"] == "200.0 ± 1.0 (n=3)" and nb_function["steps/s"] == "5.00"
    assert nb_function["speed-up vs no XLA"] == "-" and nb_function["XLA compilations in epoch 1"] == "0"
    assert nb_xla["speed-up vs no XLA"] == "4.00x" and nb_xla["steps/s"] == "20.00"
    assert nb_xla["XLA compilations in epoch 1"] == "1" and nb_xla["batch shapes / steps per epoch"] == "1 / 20"
    assert nb_xla["epoch 1 s (incl. compile)"] == "12.3" and nb_xla["other load (cores)"] == "0.25"
    assert q_function["batch shapes / steps per epoch"] == "20 / 20"
    assert q_xla["speed-up vs no XLA"] == "0.80x" and q_xla["XLA compilations in epoch 1"] == "2 (3 modules), +1 later"
    assert q_padded["ms/step (median ± IQR)"] == "FAILED (below)" and q_padded["mode"] == bench.MODE_NAMES[
        "function-padded"]
    assert tfn["speed-up vs no XLA"] == "-" and tfn["XLA compilations in epoch 1"] == "not counted"
    text = bench.format_table(results)
    assert text.splitlines()[0].startswith("| workload") and "Failures:\n- qm9-se3 function-padded: TypeError: boom" in text


def test_short_error():
    stderr = ("exit code 1:\nTraceback (most recent call last):\n  File \"x.py\", line 3, in call\n"
              "TypeError: Exception encountered when calling PointConvolution.call().\n\n"
              "\x1b[1mExpected int32, but got None of type 'NoneType'.\x1b[0m\n\n"
              "Arguments received by PointConvolution.call():\n  • features=tf.Tensor(shape=(None, None))")
    assert bench.short_error(stderr) == ("TypeError: Exception encountered when calling PointConvolution.call(). "
                                         "Expected int32, but got None of type 'NoneType'.")
    assert bench.short_error("exit code -9:\n") == "exit code -9:"
    assert len(bench.short_error("ValueError: " + "x" * 1000)) == 300


def test_help_and_no_tensorflow_in_the_driver():
    out = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--quick", "--json", "--markdown", "--only", "--modes", "--steps", "--warmup", "--no-count"):
        assert flag in out, flag
    code = (f"import sys; sys.path.insert(0, {BENCH!r}); import bench_training_step; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    bad = subprocess.run([sys.executable, SCRIPT, "--modes", "eager"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown mode" in bad.stderr


def test_worker_answers_the_drivers_commands(capsys):
    """The worker's side of ``_common.Worker``: ``settle`` (which ``interleaved_timings`` sends
    after the warm-up) is answered and the next ``call`` still runs a step; ``finish`` and a
    closed pipe end the steps. (Session 16's ``settle`` once ended every timed run here.)"""
    import io

    stdin = io.StringIO("call step\nsettle step\ncall step\nfinish\n")
    assert bench.next_call(stdin) and bench.next_call(stdin)
    assert not bench.next_call(stdin) and not bench.next_call(stdin)
    out = capsys.readouterr().out
    assert out.count('"settled": false') == 1


@pytest.mark.slow
def test_quick_run(tmp_path):
    have_qm9 = qm9._locate_data_dir() is not None
    workloads = ["nbody-se3"] + (["qm9-se3"] if have_qm9 else [])
    out_json, out_md = tmp_path / "steps.json", tmp_path / "steps.md"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--only", *workloads, "--json", str(out_json), "--markdown", str(out_md)],
        capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out_json.read_text())
    assert list(data["results"]) == workloads
    for workload, by_mode in data["results"].items():
        assert list(by_mode) == ["function", "xla"]
        for mode, r in by_mode.items():
            assert "error" not in r, r
            assert r["timing"]["n"] == bench.QUICK_STEPS and r["steps_per_second"] > 0
            assert r["jit_compile"] == (mode == "xla") and r["batch_size"] == (64 if "nbody" in workload else 16)
            first, after = r["xla_compilations_epoch1"], r["xla_compilations_after_epoch1"]
            if mode == "function":
                assert first == {"train_step": 0, "all": 0} and after == {"train_step": 0, "all": 0}
            else:
                # One compilation of the train step per batch shape of the epoch, nothing else.
                assert first["train_step"] == first["all"] == r["distinct_batch_shapes"] >= 1
        if workload.startswith("nbody"):
            assert by_mode["xla"]["distinct_batch_shapes"] == 1 and by_mode["xla"]["buckets"] is None
        else:
            xla = by_mode["xla"]
            total = xla["xla_compilations_epoch1"]["train_step"] + xla["xla_compilations_after_epoch1"]["train_step"]
            assert len(xla["buckets"]) <= 3 and total <= len(xla["buckets"])
            assert by_mode["function"]["buckets"] is None  # the example pads only under XLA
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == bench.HEADER and len(rows) == 1 + 2 * len(workloads)
    text = out_md.read_text()
    assert "--quick smoke run" in text and "LD_PRELOAD" in text and "examples/nbody.py --model se3 --jit-compile" in text
