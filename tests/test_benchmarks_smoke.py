"""benchmarks/run_all.py: the summary table from the benchmarks' JSON, and a smoke run.

The fast tests feed canned JSON dicts (the structure the three scripts' ``--json``
write) to the table assembly, so a parsing regression fails in a second; the
slow test runs ``run_all.py --quick --no-e3nn`` end to end (a few minutes).
"""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from _scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _load_run_all():
    return load_script(os.path.join(BENCH, "run_all.py"), "tfe_bench_run_all")


run_all = _load_run_all()


def _timing(ms):
    return {"n": 3, "median_ms": ms, "q1_ms": ms, "q3_ms": ms, "iqr_ms": 0.0, "min_ms": ms, "samples_ms": [ms] * 3}


def _sh_result(framework, mode, fwd_ms, bwd_ms, peak=1 << 20):
    return {"framework": framework, "mode": mode, "lmax": 2, "allocator": {"allocator": "glibc malloc"},
            "forward": {"timing": _timing(fwd_ms), "peak_extra_bytes": peak},
            "forward_backward": {"timing": _timing(bwd_ms), "peak_extra_bytes": 2 * peak}}


SH = {
    "args": {"n": 1000, "lmax": [2]},
    "results": [
        _sh_result("tf", "eager", 4.0, 9.0),
        _sh_result("tf", "function", 2.0, 5.0),
        _sh_result("tf", "xla", 1.0, 6.0, peak=3 << 20),
        _sh_result("torch", "eager", 3.0, 8.0),
        _sh_result("torch", "compile", 2.0, 10.0, peak=5 << 20),
        {"framework": "torch", "mode": "script", "lmax": 2, "error": "exit code 1:\nRuntimeError: boom"},
    ],
}


def _graph_result(label, pass_, ms, peak_mb=100.0, **extra):
    return {"label": label, "pass": pass_, "timing": _timing(ms), "median_ms": ms, "iqr_ms": 0.0, "reps": 3,
            "reduced": False, "peak_mb": peak_mb, "allocator": "glibc malloc", **extra}


CONV = {
    "graph": {"nodes": 60, "edges": 2000, "mean_degree": 33.3, "max_degree": 40},
    "flops": {"per_node_total": 2e9, "per_edge_total": 4e9},
    "results": [
        _graph_result("e3nn eager", "fwd", 100.0, 50.0, step_mb=40.0),
        _graph_result("e3nn eager", "fwdbwd", 300.0, 150.0),
        {"label": "e3nn compile", "pass": "fwd", "error": "BackendCompilerFailed: no compiler"},
        {"label": "e3nn compile", "pass": "fwdbwd", "error": "BackendCompilerFailed: no compiler"},
        _graph_result("tfe per_node eager", "fwd", 80.0),
        _graph_result("tfe per_node function", "fwd", 40.0),
        _graph_result("tfe per_node xla", "fwd", 20.0, 200.0, step_mb=12.0),
        _graph_result("tfe per_node eager", "fwdbwd", 240.0),
        _graph_result("tfe per_node function", "fwdbwd", 120.0, 300.0),
        {"label": "tfe per_node xla", "pass": "fwdbwd", "error": "exit code 1: / XlaRuntimeError"},
        _graph_result("tfe per_edge eager", "fwd", 50.0),
        _graph_result("tfe per_edge eager", "fwdbwd", 200.0),
        _graph_result("tfe per_node xla +SI", "fwd", 25.0),
        _graph_result("tfe per_node xla +SI", "fwdbwd", 100.0),
    ],
}

ATTENTION = {
    "graph": {"nodes": 60, "edges": 1930, "mean_degree": 32.2, "max_degree": 43},
    "flops": {"per_edge_total": 1e9, "per_node_total": 0.5e9},
    "results": [
        _graph_result("e3nn eager", "fwd", 200.0, 70.0),
        _graph_result("e3nn compile:max-autotune", "fwd", 100.0, 90.0),
        _graph_result("e3nn eager", "fwdbwd", 500.0, 200.0),
        _graph_result("tfe eager", "fwd", 400.0),
        _graph_result("tfe function", "fwd", 150.0, 110.0),
        _graph_result("tfe xla", "fwd", 250.0),
        _graph_result("tfe eager", "fwdbwd", 900.0),
        _graph_result("tfe function", "fwdbwd", 1000.0, 800.0),
        {"label": "tfe xla", "pass": "fwdbwd",
         "error": "killed by the memory guard: RSS 6.1 GiB > per-process limit 6.0 GiB"},
    ],
}


def _rows_by_key(rows):
    return {(r[0], r[1]): dict(zip(run_all.HEADER, r)) for r in rows}


def test_summary_rows_from_canned_json():
    outcomes = {"sh": {"data": SH}, "conv": {"data": CONV}, "attention": {"data": ATTENTION}}
    rows, notes = run_all.summary_rows(outcomes, strict=True)
    assert all(len(r) == len(run_all.HEADER) for r in rows)
    t = _rows_by_key(rows)
    sh = "spherical harmonics lmax=2, 1,000 vectors"
    conv = "PointConvolution, N=60, E=2000"
    att = "SE3Attention, N=60, E=1930"
    assert list(t) == [
        (sh, "forward"), (sh, "forward+backward"),
        (conv + ", per_node", "forward"), (conv + ", per_node", "forward+backward"),
        (conv + ", per_edge", "forward"), (conv + ", per_edge", "forward+backward"),
        (conv + ", per_node +SI", "forward"), (conv + ", per_node +SI", "forward+backward"),
        (att, "forward"), (att, "forward+backward"),
    ]

    row = t[(sh, "forward")]
    assert [row["tfe eager ms"], row["tfe tf.function ms"], row["tfe XLA ms"]] == ["4.00", "2.00", "1.00"]
    assert row["e3nn best ms (mode)"] == "2.00 (torch.compile)"
    assert row["tfe best / e3nn best"] == "0.50 (XLA / torch.compile)"
    assert row["peak tfe"] == "3.0 MiB" and row["peak e3nn"] == "5.0 MiB"
    gbs = 1000 * (12 + 4 * 9) / 1e-3 / 1e9  # forward bytes (12 B in, 4 (lmax+1)^2 B out) over 1 ms
    assert row["rate tfe"] == f"{gbs:.2f} GB/s"
    row = t[(sh, "forward+backward")]
    assert row["e3nn best ms (mode)"] == "8.00 (eager)"
    assert row["tfe best / e3nn best"] == "0.62 (tf.function / eager)"
    assert row["rate tfe"] == "-" and row["rate e3nn"] == "-"  # bytes are defined for the forward only

    row = t[(conv + ", per_node", "forward")]
    assert row["tfe XLA ms"] == "20.0"
    assert row["e3nn best ms (mode)"] == "100.0 (eager)"  # compile failed: not the best
    assert row["tfe best / e3nn best"] == "0.20 (XLA / eager)"
    assert row["peak tfe"] == "200.0 MiB" and row["peak e3nn"] == "50.0 MiB"
    assert row["step tfe"] == "12.0 MiB" and row["step e3nn"] == "40.0 MiB"
    assert row["rate tfe"] == "100.0 GFLOP/s"  # per_node useful FLOPs 2e9 / 20 ms
    assert row["rate e3nn"] == "40.0 GFLOP/s"  # per_edge FLOPs 4e9 / 100 ms
    row = t[(conv + ", per_node", "forward+backward")]
    assert row["tfe XLA ms"] == "error"
    assert row["tfe best / e3nn best"] == "0.40 (tf.function / eager)"
    assert row["step tfe"] == "-" and row["step e3nn"] == "-"  # not measured (pooling allocator, older JSON)
    assert row["rate tfe"] == "50.0 GFLOP/s"  # 3 x 2e9 / 120 ms
    assert row["rate e3nn"] == "40.0 GFLOP/s"  # 3 x 4e9 / 300 ms
    row = t[(conv + ", per_edge", "forward")]
    assert row["tfe tf.function ms"] == "-" and row["rate tfe"] == "80.0 GFLOP/s"  # 4e9 / 50 ms
    assert t[(conv + ", per_node +SI", "forward")]["tfe eager ms"] == "-"

    row = t[(att, "forward")]
    assert row["e3nn best ms (mode)"] == "100.0 (torch.compile(max-autotune))"
    assert row["tfe best / e3nn best"] == "1.50 (tf.function / torch.compile(max-autotune))"
    assert row["rate tfe"].endswith("GFLOP/s")
    row = t[(att, "forward+backward")]
    assert row["tfe XLA ms"] == "killed"
    assert row["tfe best / e3nn best"] == "1.80 (eager / eager)"
    assert row["rate tfe"] == "3.3 GFLOP/s"  # 3 x 1e9 / 900 ms

    text = "\n".join(notes)
    assert "RuntimeError: boom" in text and "BackendCompilerFailed" in text and "memory guard" in text


def test_failed_benchmark_row_and_the_others_still_print():
    outcomes = {
        "sh": {"error": "killed by SIGKILL (out of memory?)", "log": "/tmp/x/sh.log"},
        "conv": {"data": {"graph": {"nodes": 1}}},  # malformed: no flops, no results
        "attention": {"data": ATTENTION},
    }
    rows, notes = run_all.summary_rows(outcomes)
    assert rows[0][:3] == ["spherical harmonics", "FAILED", "killed by SIGKILL (out of memory?)"]
    assert rows[1][:2] == ["PointConvolution", "FAILED"] and "could not read its JSON" in rows[1][2]
    assert [r[1] for r in rows[2:]] == ["forward", "forward+backward"]
    assert any("/tmp/x/sh.log" in n for n in notes)
    with pytest.raises(KeyError):
        run_all.summary_rows({"conv": outcomes["conv"]}, strict=True)


def test_no_e3nn_rows_and_markdown():
    sh = {"args": {"n": 1000}, "results": [r for r in SH["results"] if r["framework"] == "tf"]}
    rows, notes = run_all.summary_rows({"sh": {"data": sh}}, strict=True)
    assert len(rows) == 2 and not notes
    assert rows[0][5:7] == ["-", "-"] and rows[0][8] == "-"
    text = run_all.format_summary(rows, notes, e3nn_skipped=True)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and "e3nn skipped" in text


def test_commands_quick_no_e3nn_and_overrides():
    args = argparse.Namespace(
        only=["sh", "conv", "attention"], quick=True, no_e3nn=True, n=500, lmax=[1, 3], nodes=None, reps=4,
        warmup=None, sh_args="", conv_args="--si-modes xla", attention_args="")
    cmds = run_all.build_commands(args)
    assert list(cmds) == ["sh", "conv", "attention"]
    sh = cmds["sh"]
    assert sh[1].endswith("bench_spherical_harmonics.py") and "--frameworks" in sh
    assert sh[-7:] == ["--n", "500", "--lmax", "1", "3", "--repeat", "4"]  # after --quick's, so they win
    assert "--no-e3nn" in cmds["conv"] and cmds["conv"][-2:] == ["--si-modes", "xla"]
    assert "--torch-modes" not in sh and "--e3nn-modes" not in cmds["conv"] + cmds["attention"]
    assert cmds["attention"][cmds["attention"].index("--nodes") + 1] == "60"


def test_reuse_rebuilds_the_table_from_earlier_json(tmp_path, capsys):
    # --reuse runs nothing for those benchmarks: the table comes from the JSON in --out-dir.
    for name, data in (("sh", SH), ("conv", CONV), ("attention", ATTENTION)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    md = tmp_path / "summary.md"
    rc = run_all.main(["--out-dir", str(tmp_path), "--reuse", "sh", "conv,attention", "--markdown", str(md)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "reused " + str(tmp_path / "sh.json") in out and "bench_" not in out.split("| workload")[0]
    rows = _rows_by_key(run_all.summary_rows({"sh": {"data": SH}, "conv": {"data": CONV},
                                              "attention": {"data": ATTENTION}})[0])
    assert all(f"| {w}" in out for w, _ in rows)
    text = md.read_text()
    assert "Reused from an earlier run (--reuse):" in text and "attention.json (written " in text
    with pytest.raises(SystemExit):
        run_all.main(["--reuse", "sh"])  # no --out-dir
    with pytest.raises(SystemExit):
        run_all.main(["--out-dir", str(tmp_path / "empty"), "--reuse", "sh"])  # no earlier JSON
    err = capsys.readouterr().err
    assert "--reuse needs the --out-dir" in err and "no earlier result at" in err


def test_run_benchmark_failure_reasons(tmp_path):
    log = str(tmp_path / "log")
    rc, reason, _ = run_all.run_benchmark(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], log)
    assert rc < 0 and reason.startswith("killed by SIGKILL")
    rc, reason, _ = run_all.run_benchmark([sys.executable, "-c", "import sys; sys.exit('bad input')"], log)
    assert rc == 1 and reason == "exit code 1: bad input"
    rc, reason, _ = run_all.run_benchmark([sys.executable, "-c", "import time; time.sleep(60)"], log, timeout=1)
    assert reason.startswith("timed out after 1 s")


def test_bench_scripts_offer_json():
    for script in ("bench_spherical_harmonics.py", "bench_point_convolution.py", "bench_se3_attention.py"):
        out = subprocess.run([sys.executable, os.path.join(BENCH, script), "--help"], capture_output=True,
                             text=True, check=True).stdout
        assert "--json" in out, script


def _worker_environments(monkeypatch, conv):
    """Stub the convolution benchmark's subprocess runner; returns worker kind -> the environment
    ``_run_worker`` would start it with."""
    envs = {}

    def fake_run_isolated(argv, env=None, timeout=None):
        envs[argv[argv.index("--worker") + 1]] = env
        return {}

    monkeypatch.setattr(conv._common, "run_isolated", fake_run_isolated)
    return envs


def test_conv_bench_tf_pool_label_and_environment(monkeypatch):
    # --tf-pool: the tfequivariant workers get TensorFlow's pooling CPU allocator, e3nn's do not,
    # and run_all files the "+pool" rows as their own variant
    conv = load_script(os.path.join(BENCH, "bench_point_convolution.py"), "tfe_bench_conv_pool")
    label = conv._label("tf", "per_node", "xla", False, tf_pool=True)
    assert label == "tfe per_node xla +pool"
    assert run_all._split_label(label) == ("tfe", "xla", "per_node +pool")
    envs = _worker_environments(monkeypatch, conv)
    conv._run_worker("tf", {"tf_pool": True}, 1)
    conv._run_worker("e3nn", {"tf_pool": True}, 1)
    assert envs["tf"]["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    assert "TF_CPU_ALLOCATOR_USE_BFC" not in envs["e3nn"]
    envs.clear()
    conv._run_worker("tf", {"tf_pool": False}, 1)
    assert "TF_CPU_ALLOCATOR_USE_BFC" not in envs["tf"]
    assert "--tf-pool" in subprocess.run([sys.executable, os.path.join(BENCH, "bench_point_convolution.py"), "--help"],
                                         capture_output=True, text=True, check=True).stdout


def test_sh_bench_xla_pool_mode_sets_tf_pool_in_its_worker_only(tmp_path):
    # xla_pool is XLA with TensorFlow's pooling CPU allocator: the variable must reach that
    # worker and no other, and both modes must compute the same harmonics
    out = tmp_path / "sh.json"
    subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_spherical_harmonics.py"), "--frameworks", "tf", "--tf-modes",
         "eager", "xla_pool", "--lmax", "1", "--n", "2000", "--repeat", "2", "--warmup", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"})
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"eager", "xla_pool"}
    assert results["eager"]["TF_CPU_ALLOCATOR_USE_BFC"] is None
    assert results["xla_pool"]["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    for key in ("forward", "forward_backward"):
        np.testing.assert_allclose(results["xla_pool"][key]["sample"], results["eager"][key]["sample"], atol=1e-5)
        assert results["xla_pool"][key]["timing"]["n"] == 2
    records = run_all.records_sh(json.loads(out.read_text()))
    assert {run_all.mode_name(r["side"], r["mode"]) for r in records} == {"eager", "XLA+TF pool"}


@pytest.mark.slow
def test_run_all_quick_no_e3nn(tmp_path):
    md = tmp_path / "summary.md"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run_all.py"), "--quick", "--no-e3nn", "--out-dir", str(tmp_path),
         "--markdown", str(md)],
        capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" not in proc.stdout
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| ")]
    header, rows = rows[0], rows[1:]
    assert header == run_all.HEADER
    # workload -> the modes that have a median: every default row of the three scripts
    expected = {"spherical harmonics lmax=2, 20,000 vectors": (2, 3, 4),
                "PointConvolution, N=60, per_node": (2, 3, 4),
                "PointConvolution, N=60, per_edge": (2, 3, 4),
                "PointConvolution, N=60, per_node node_chunk=8": (4,),  # XLA only
                "PointConvolution, N=60, so2": (3, 4),  # tf.function and XLA
                "SE3Attention, N=60": (2, 3, 4),
                "SE3Attention, N=60, edge_chunk=1024": (3, 4),  # tf.function and XLA
                "SE3Attention, N=60, node_chunk=8": (4,),  # XLA only
                "SE3Attention, N=60, so2": (3, 4)}
    got = {}
    for r in rows:  # the workload without its edge count (the random graph's), e.g. "SE3Attention, N=60"
        got.setdefault(re.sub(r", E=\d+", "", r[0]), []).append(r)
    assert set(got) == set(expected), sorted(got)
    for key, timed in expected.items():
        assert sorted(r[1] for r in got[key]) == ["forward", "forward+backward"], key
        for cells in got[key]:
            for i in (2, 3, 4):  # tfe eager, tf.function, XLA medians
                assert re.fullmatch(r"[0-9.]+\*?" if i in timed else "-", cells[i]), cells
            assert cells[5] == "-" and cells[6] == "-"  # no e3nn
            assert cells[7].endswith("iB")
    text = md.read_text()
    assert "date (`date -u`)" in text and "LD_PRELOAD" in text and "load average" in text
    assert text.count("| forward") == 2 * len(expected)


def test_conv_bench_so2_flops_and_label():
    conv = load_script(os.path.join(BENCH, "bench_point_convolution.py"), "tfe_bench_conv_so2")
    label = conv._label("tf", "so2", "xla", False)
    assert label == "tfe so2 xla" and run_all._split_label(label) == ("tfe", "xla", "so2")
    assert conv.useful_flops_key(label) == "so2_total"
    flops = conv.flop_counts(1000, 31912, 51)
    # the same radial layers as per_edge; at lmax 2 the dense frame matrices plus the rotations cost
    # about what the Clebsch-Gordan products do (its gain is fewer, larger operations)
    assert flops["so2"]["radial_output"] == flops["per_edge"]["radial_output"]
    assert 1.0 < flops["so2"]["frame_products"] / flops["per_edge"]["tensor_product"] < 1.3
    assert flops["so2_total"] == pytest.approx(flops["per_edge_total"], rel=0.02)
    data = {"graph": {"nodes": 1000, "edges": 31912}, "flops": flops,
            "results": [{"label": label, "pass": "fwd", "median_ms": 100.0, "peak_mb": 1.0}]}
    (rec,) = run_all.records_conv(data)
    assert rec["variant"] == "so2" and rec["rate"] == pytest.approx(flops["so2_total"] / 0.1 / 1e9)


def test_conv_bench_node_chunk_labels_and_parsing():
    # --node-chunks adds per_node XLA runs with PointConvolution(node_chunk=...); run_all must file
    # them as their own variant, not mix them into the unblocked per_node row
    conv = load_script(os.path.join(BENCH, "bench_point_convolution.py"), "tfe_bench_conv_chunks")
    label = conv._label("tf", "per_node", "xla", False, node_chunk=8)
    assert label == "tfe per_node xla node_chunk=8"
    assert run_all._split_label(label) == ("tfe", "xla", "per_node node_chunk=8")
    assert conv._node_chunks("8, 16,") == [8, 16] and conv._node_chunks("") == []
    for bad in ("0", "-4", "2.5", "eight"):
        with pytest.raises(SystemExit, match="--node-chunks"):
            conv._node_chunks(bad)


@pytest.mark.slow  # about a minute: two XLA compiles in fresh processes
def test_conv_bench_node_chunk_runs_reach_the_layer(tmp_path):
    # a real run: the worker reports the blocked layer's node_chunk, both passes, one variant
    out = tmp_path / "conv.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_point_convolution.py"), "--nodes", "40", "--no-e3nn",
         "--node-chunks", "16", "--only", "node_chunk", "--si-modes", "", "--reps", "1", "--warmup", "0",
         "--quiet-wait", "0", "--retries", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["label"], r["pass"]) for r in results] == [
        ("tfe per_node xla node_chunk=16", "fwd"), ("tfe per_node xla node_chunk=16", "fwdbwd")]
    assert all("error" not in r and r["median_ms"] > 0 and r["node_chunk"] == 16 for r in results), results
    assert {r["variant"] for r in run_all.records_conv(json.loads(out.read_text()))} == {"per_node node_chunk=16"}


@pytest.mark.slow  # about a minute: a chunked attention traced and compiled in fresh processes
def test_attention_bench_chunk_modes(tmp_path):
    # "xla@16" runs SE3Attention(node_chunk=16) under XLA and "function@e64" SE3Attention(edge_chunk=64)
    # under tf.function: their own labels, their own run_all variants, and the worker builds the
    # chunked layer (checked on a real, tiny run against the unchunked one)
    att = load_script(os.path.join(BENCH, "bench_se3_attention.py"), "tfe_bench_att_chunks")
    assert att.split_mode("xla@16") == ("xla", {"node_chunk": 16})
    assert att.split_mode("function@e2048") == ("function", {"edge_chunk": 2048})
    assert att.split_mode("function") == ("function", {})
    assert att.split_mode("xla@so2") == ("xla", {"implementation": "so2"})
    assert att.split_mode("function@e64+so2") == ("function", {"edge_chunk": 64, "implementation": "so2"})
    assert att._label("tf", "function@e64+so2") == "tfe function edge_chunk=64 so2"
    assert run_all._split_label("tfe xla so2") == ("tfe", "xla", "so2")
    for bad in ("xla@0", "xla@x", "xla@-1", "xla@e", "xla@e0", "xla@ex", "xla@so3", "xla@16+"):
        with pytest.raises(SystemExit, match="node_chunk"):
            att.split_mode(bad)
    for mode, label, variant in (("xla@16", "tfe xla node_chunk=16", "node_chunk=16"),
                                 ("function@e64", "tfe function edge_chunk=64", "edge_chunk=64")):
        assert att._label("tf", mode) == label
        assert run_all._split_label(label) == ("tfe", mode.split("@")[0], variant)
    cfg = att._cfg("tf", "xla@16", "fwd", {"nodes": 40}, None, str(tmp_path))
    assert (cfg["mode"], cfg["node_chunk"]) == ("xla", 16) and "edge_chunk" not in cfg
    cfg = att._cfg("tf", "function@e64", "fwd", {"nodes": 40}, None, str(tmp_path))
    assert (cfg["mode"], cfg["edge_chunk"]) == ("function", 64) and "node_chunk" not in cfg
    out = tmp_path / "att.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_se3_attention.py"), "--nodes", "40", "--no-e3nn",
         "--tf-modes", "function,function@16,function@e64,function@so2", "--passes", "fwd", "--reps", "1", "--warmup", "0",
         "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {(r["label"], r["pass"]) for r in data["results"]} == {
        ("tfe function", "fwd"), ("tfe function node_chunk=16", "fwd"), ("tfe function edge_chunk=64", "fwd"),
        ("tfe function so2", "fwd")}
    assert all("error" not in r for r in data["results"]), data["results"]
    dumps = {r["label"]: np.load(r["dump"]) for r in data["results"]}
    for chunked in ("tfe function node_chunk=16", "tfe function edge_chunk=64", "tfe function so2"):
        np.testing.assert_allclose(dumps[chunked]["out"], dumps["tfe function"]["out"], rtol=1e-4, atol=1e-4)


def test_worker_killed_between_calls_is_a_failed_worker_not_a_crash():
    """A serving worker killed between two calls (what the attention benchmark's memory guard
    does) makes the next call raise RuntimeError with the worker's error set, which the timing
    loop records as that configuration's failure; it used to escape as BrokenPipeError and end
    the whole benchmark."""
    common = load_script(os.path.join(BENCH, "_common.py"), "tfe_bench_common_worker")
    script = ("import sys\n"
              f"print({common.RESULT_MARKER!r} + '{{}}', flush=True)\n"
              "for line in sys.stdin:\n"
              f"    print({common.RESULT_MARKER!r} + '{{\"seconds\": 0.5}}', flush=True)\n")
    worker = common.Worker([sys.executable, "-c", script])
    assert worker.call("step") == 0.5
    worker.kill()
    with pytest.raises(RuntimeError, match="exit code"):
        for _ in range(3):  # the first write may still land in the pipe's buffer
            worker.call("step")
    assert worker.error is not None
    timings, _ = common.interleaved_timings({"dead": worker}, ["step"], warmup=0, repeat=2)
    assert timings == {}


def test_settle_separates_a_steps_own_memory_from_what_warm_up_left_behind(tmp_path):
    """serve's memory record: the first call keeps 192 MiB alive (a compiled program, say) and
    touches a 128 MiB transient, every call a 64 MiB temporary. "peak" and "timed" count the kept
    memory, "step" (above the RSS after settle) only the temporary: it would count the kept
    192 MiB with the wrong baseline and the 128 MiB transient without the mark's reset."""
    common = load_script(os.path.join(BENCH, "_common.py"), "tfe_bench_common_settle")
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {BENCH!r})\n"
        "import numpy as np\n"
        "import _common\n"
        "kept = []\n"
        "def step():\n"
        "    if not kept:\n"
        "        kept.append(np.ones(24 * 2**20))\n"
        "        float(np.ones(16 * 2**20).sum())  # a warm-up transient: compilation, say\n"
        "    return float(np.ones(8 * 2**20).sum())\n"
        "_common.serve({'step': step})\n")
    worker = common.Worker([sys.executable, str(script)], env={"LD_PRELOAD": os.environ.get("LD_PRELOAD", "")})
    timings, _ = common.interleaved_timings({"w": worker}, ["step"], warmup=2, repeat=3)
    assert timings[("w", "step")].n == 3
    mem = worker.finish()["memory"]["step"]
    mib = 2**20
    assert mem["peak_extra_bytes"] >= 250 * mib and mem["timed_extra_bytes"] >= 250 * mib
    assert 56 * mib <= mem["step_extra_bytes"] <= 120 * mib


def test_step_memory_is_not_reported_under_tensorflows_pooling_allocator(monkeypatch):
    # oneDNN's allocator (TensorFlow's default on x86) keeps freed blocks: a step figure would read ~0
    common = load_script(os.path.join(BENCH, "_common.py"), "tfe_bench_common_pool")
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert common.step_memory_measurable()  # e3nn workers
    monkeypatch.setitem(sys.modules, "tensorflow", object())
    assert not common.step_memory_measurable()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert common.step_memory_measurable()
    conv = load_script(os.path.join(BENCH, "bench_point_convolution.py"), "tfe_bench_conv_onednn")
    assert conv._label("tf", "per_node", "xla", False, node_chunk=32, no_onednn=True) == \
        "tfe per_node xla node_chunk=32 +no-onednn"
    envs = _worker_environments(monkeypatch, conv)
    conv._run_worker("tf", {"no_onednn": True}, 1)
    conv._run_worker("e3nn", {"no_onednn": True}, 1)
    assert envs["tf"]["TF_ENABLE_ONEDNN_OPTS"] == "0" and "TF_ENABLE_ONEDNN_OPTS" not in envs["e3nn"]


def test_attention_workers_killed_by_the_combined_cap_are_measured_again_alone(monkeypatch):
    """All workers of an attention pass are alive together; the memory guard kills the largest
    when together they exceed its cap. Such a configuration is measured again with no other
    worker alive (and marked), a kill by the per-process limit or an error is final."""
    att = load_script(os.path.join(BENCH, "bench_se3_attention.py"), "tfe_bench_att_retry")
    configs = [("e3nn", "eager"), ("tf", "eager"), ("tf", "xla"), ("tf", "function")]
    calls = []

    def ok(ms):
        return {"median_ms": ms, "iqr_ms": 0.0, "reps": 3, "peak_mb": 1.0, "foreign_cores": 0.0, "allocator": "x"}

    capped = "killed by the memory guard: " + att.TOTAL_CAP_KILL + " 15.0 GiB > limit 14.3 GiB"

    def group(cfgs, pass_, *args):
        calls.append([att._label(k, m) for k, m in cfgs])
        if len(cfgs) > 1:
            return {"e3nn eager": {"error": capped}, "tfe eager": {"error": capped},
                    "tfe xla": {"error": "killed by the memory guard: RSS 6.1 GiB > per-process limit 6.0 GiB"},
                    "tfe function": ok(1.0)}
        return {att._label(*cfgs[0]): ok(2.0)}

    monkeypatch.setattr(att, "_interleaved_group", group)
    results = att.run_interleaved(configs, {}, None, "/tmp", 10.0, passes=["fwd"])
    assert calls == [["e3nn eager", "tfe eager", "tfe xla", "tfe function"], ["e3nn eager"], ["tfe eager"]]
    assert results[("e3nn eager", "fwd")] == {**ok(2.0), "retried_alone": True}
    assert results[("tfe eager", "fwd")] == {**ok(2.0), "retried_alone": True}
    assert "per-process limit" in results[("tfe xla", "fwd")]["error"]
    assert results[("tfe function", "fwd")] == ok(1.0)
    # the guard's message is what the driver looks for
    assert "{TOTAL_CAP_KILL} {sum(rss.values())" in open(os.path.join(BENCH, "bench_se3_attention.py")).read()

    alone = dict(ATTENTION, results=[_graph_result("e3nn eager", "fwd", 200.0, retried_alone=True),
                                     _graph_result("tfe eager", "fwd", 400.0, retried_alone=True),
                                     _graph_result("tfe function", "fwd", 150.0)])
    rows, _ = run_all.summary_rows({"attention": {"data": alone}}, strict=True)
    row = _rows_by_key(rows)[("SE3Attention, N=60, E=1930", "forward")]
    assert row["tfe eager ms"] == "400.0 (alone)" and row["e3nn best ms (mode)"] == "200.0 (alone) (eager)"
    assert row["tfe tf.function ms"] == "150.0"
    full = {(r["label"], r["pass"]): {**r, "base_rss_mb": 500.0, "warm_peak_mb": 1.0, "foreign_cores": 0.0}
            for r in alone["results"]}
    table, _, _ = att._tables(full, alone["flops"])
    assert "(alone)" in table.split("tfe eager")[1].splitlines()[0]
