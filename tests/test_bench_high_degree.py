"""benchmarks/bench_high_degree.py: workload, tables, and its main pieces on a tiny graph.

The fast tests run the script's check and timing functions in this process on
N = 40 nodes (no subprocesses, no XLA): the three PointConvolution
implementations agree with each other (and with e3nn, when installed) and the
per-degree tables come out of the timings. The slow test runs the script end
to end (fresh subprocesses, XLA included) at L = 2 and 3.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_high_degree.py")

bench = load_script(SCRIPT, "tfe_bench_high_degree")

TINY = {"nodes": 40, "mul": 4, "warmup": 1, "reps": 1, "budget_s": 5.0}


def _timing(ms):
    return {"n": 3, "median_ms": ms, "q1_ms": ms, "q3_ms": ms, "iqr_ms": 0.0, "min_ms": ms, "samples_ms": [ms] * 3}


def _result(ms, peak_mb=10.0):
    return {"timing": _timing(ms), "median_ms": ms, "iqr_ms": 0.0, "reps": 3, "reduced": False, "warmup_s": 1.0,
            "peak_mb": peak_mb, "peak_with_warmup_mb": peak_mb, "rss_inputs_mb": 100.0, "foreign_cores": 0.0,
            "allocator": "glibc malloc"}


def test_irreps_and_path_counts_match_the_layer():
    from tfequivariant.layers import PointConvolution

    assert bench.feature_irreps(3) == "8x0e+8x1o+8x2e+8x3o"
    assert bench.sh_irreps(2) == "1x0e+1x1o+1x2e"
    assert bench.irreps_dim(2) == 8 * 9
    for degree in (2, 3):
        irreps = bench.feature_irreps(degree)
        layer = PointConvolution(irreps, irreps, irreps_sh=degree, self_interaction=False)
        counts = bench.path_counts(degree)
        assert counts["weight_numel"] == layer.weight_numel
        assert counts["paths"] == len(layer.instructions)
    assert bench.path_counts(2)["weight_numel"] == 704 and bench.path_counts(6)["paths"] == 106
    g = bench.build_workload(40, 2, mul=4)
    assert g["features"].shape == g["cotangent"].shape == (40, 4 * 9)


def test_tables_ratios_and_failed_cells():
    results = {
        ("e3nn eager", "fwd"): _result(100.0), ("e3nn eager", "fwdbwd"): _result(300.0),
        ("e3nn script", "fwd"): _result(80.0), ("e3nn script", "fwdbwd"): {"error": "boom"},
        ("tfe per_edge function", "fwd"): _result(120.0), ("tfe per_edge function", "fwdbwd"): _result(400.0),
        ("tfe so2 function", "fwd"): _result(60.0), ("tfe so2 function", "fwdbwd"): _result(200.0),
        ("tfe so2 xla", "fwd"): _result(40.0), ("tfe so2 xla", "fwdbwd"): _result(250.0),
        ("tfe per_node xla", "fwd"): _result(20.0),
        ("tfe per_node xla", "fwdbwd"): {"error": "timed out after 400 s"},
        ("tfe per_node function", "fwd"): _result(30.0),
        ("tfe per_node function", "fwdbwd"): {"error": "killed by the memory guard: RSS 9 GiB > 8 GiB"},
        ("tfe per_node eager", "fwd"): _result(50.0),
        ("tfe per_node eager", "fwdbwd"): {"error": "skipped: L > 4", "skipped": True},
    }
    table, ratio_table, detail, ratios = bench.tables(results)
    assert ratios[("so2 best / e3nn best", "fwd")] == pytest.approx(40.0 / 80.0)
    assert ratios[("so2 best / e3nn best", "fwdbwd")] == pytest.approx(200.0 / 300.0)
    assert ratios[("so2 best / per_edge best", "fwd")] == pytest.approx(40.0 / 120.0)
    assert ratios[("per_node best / e3nn best", "fwd")] == pytest.approx(20.0 / 80.0)
    assert ("per_node best / e3nn best", "fwdbwd") not in ratios
    assert "0.50 (tfe so2 xla 40.0 / e3nn script 80.0)" in ratio_table
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()[2:]}
    assert rows["tfe per_node xla"][1] == "timed out"
    assert rows["tfe per_node function"][1] == "killed (memory)"
    assert rows["e3nn script"][1] == "error"
    assert rows["tfe per_node eager"][1] == "skipped"
    assert rows["tfe so2 xla"][4] == "0.50" and rows["tfe so2 function"][5] == "0.67"
    assert len(detail.splitlines()) == 2 + 12
    summary = bench.summary_table({2: {"edges": 1170, "paths": 11, "weight_numel": 704, "ratios": ratios}})
    assert "| 2 " in summary and "0.50" in summary


def test_cli_options():
    args = bench.parse_args(["--degrees", "2,3", "--tf-modes", "function", "--e3nn-modes", "eager,compile:max-autotune",
                             "--only", "so2"])
    assert args.degree_list == [2, 3] and args.e3nn_mode_list == ["eager", "compile:max-autotune"]
    assert bench.configurations(args, True) == [("tf", "so2", "function")]
    args = bench.parse_args([])
    assert args.degree_list == [2, 4, 6] and args.tf_mode_list == ["function", "xla"]
    assert [bench._label(*c) for c in bench.configurations(args, True)] == [
        "e3nn eager", "e3nn script", "tfe per_edge function", "tfe per_edge xla", "tfe so2 function",
        "tfe so2 xla", "tfe per_node function", "tfe per_node xla"]
    assert args.per_node_bwd_max_degree == 4
    for bad in (["--degrees", "0"], ["--tf-modes", "jit"], ["--passes", "bwd"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


@pytest.mark.parametrize("degree", [2, 3])
def test_tiny_graph_implementations_agree(degree):
    per_node_grads = degree == 2  # L=3: per_node output only, as above --per-node-bwd-max-degree
    report = bench.check_worker({**TINY, "degree": degree, "xla": False, "e3nn": False,
                                 "per_node_grads": per_node_grads})
    assert report["weight_numel"] == bench.path_counts(degree, TINY["mul"])["weight_numel"]
    assert set(report["so2_vs_per_edge"]) == {"out", *bench.GRADIENTS}
    assert set(report["per_node_vs_per_edge"]) == ({"out", *bench.GRADIENTS} if per_node_grads else {"out"})
    assert report["per_node_grads_checked"] == per_node_grads
    assert any("output only" in line for line in bench._check_lines(report)) != per_node_grads
    assert report["worst_relative"] < 1e-4


def test_tiny_graph_timings_give_the_table():
    results = {}
    for impl in bench.TF_IMPLEMENTATIONS:
        for pass_ in bench.PASSES:
            r = bench.tf_worker({**TINY, "degree": 2, "impl": impl, "mode": "function", "pass": pass_})
            # in this (long-lived) process the RSS may even drop below the baseline: no sign check
            assert r["reps"] == 1 and r["median_ms"] > 0 and np.isfinite(r["peak_mb"])
            results[(bench._label("tf", impl, "function"), pass_)] = r
    table, ratio_table, _, ratios = bench.tables(results)
    assert len(table.splitlines()) == 2 + 3
    assert set(ratios) == {("so2 best / per_edge best", p) for p in bench.PASSES}
    assert "so2 best / e3nn best" in ratio_table  # shown as "-" without e3nn


def test_tiny_graph_e3nn_agrees(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("e3nn")
    report = bench.check_worker({**TINY, "degree": 2, "xla": False, "e3nn": True,
                                 "weights": str(tmp_path / "w.npz")})
    assert report["instructions_match"]
    for impl in bench.TF_IMPLEMENTATIONS:
        assert set(report[f"{impl}_vs_e3nn"]) == {"out", *bench.GRADIENTS}
    assert report["worst_relative"] < 1e-4
    assert (tmp_path / "w.npz").exists()


@pytest.mark.slow  # a few minutes: a dozen fresh processes per degree, XLA compiles
def test_end_to_end_tiny(tmp_path):
    md, js = tmp_path / "summary.md", tmp_path / "results.json"
    argv = [sys.executable, SCRIPT, "--nodes", "40", "--degrees", "2,3", "--reps", "2", "--warmup", "1",
            "--e3nn-modes", "eager", "--per-node-bwd-max-degree", "2", "--quiet-wait", "0", "--retries", "0",
            "--markdown", str(md), "--json", str(js)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = md.read_text()
    assert "#### L = 2" in text and "#### L = 3" in text and "so2 best / per_edge best" in text
    data = json.loads(js.read_text())
    assert [d["degree"] for d in data["degrees"]] == [2, 3]
    for d in data["degrees"]:
        assert d["check"]["worst_relative"] < 1e-4
        labels = {(r["label"], r["pass"]) for r in d["results"] if "error" not in r}
        assert ("tfe so2 xla", "fwdbwd") in labels and ("tfe per_node xla", "fwd") in labels
        assert (("tfe per_node xla", "fwdbwd") in labels) == (d["degree"] == 2)
