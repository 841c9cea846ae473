"""benchmarks/bench_scaling.py: per-edge ratios, verdicts, what not to run, the memory guard, a smoke run.

The fast tests feed canned results to the pure functions and run the guard on a
tiny worker that only allocates NumPy memory (no TensorFlow, a few seconds); the
slow tests run the script itself (``--quick``; and a guard limit below
TensorFlow's import size, so every configuration is killed or skipped).
"""

import json
import os
import subprocess
import sys

import pytest

from _scripts import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
SCRIPT = os.path.join(BENCH, "bench_scaling.py")

sc = load_script(SCRIPT, "tfe_bench_scaling")

MIB = 2**20
GIB = 2**30


def _timing(ms):
    return {"n": 3, "median_ms": ms, "q1_ms": ms, "q3_ms": ms, "iqr_ms": 0.0, "min_ms": ms, "samples_ms": [ms] * 3}


def _ok(workload, label, nodes, edges, pass_, ms, peak_mb, base=600.0, warm=None):
    return {"workload": workload, "label": label, "nodes": nodes, "edges": edges, "pass": pass_, "status": "ok",
            "reason": "", "timing": _timing(ms), "median_ms": ms, "iqr_ms": 0.0, "reps": 3, "reduced": False,
            "peak_mb": peak_mb, "warm_peak_mb": warm if warm is not None else peak_mb, "base_rss_mb": base}


def _bad(workload, label, nodes, edges, pass_, status, reason):
    return {"workload": workload, "label": label, "nodes": nodes, "edges": edges, "pass": pass_, "status": status,
            "reason": reason}


def _canned():
    conv, att = "conv", "attention"
    return [
        # linear: 1 us/edge and 1000 B/edge at every size -> ratios 1
        _ok(conv, "tfe per_node xla", 1000, 32000, "fwd", 32.0, 32000 * 1000 / MIB),
        _ok(conv, "tfe per_node xla", 10000, 320000, "fwd", 320.0, 320000 * 1000 / MIB),
        _ok(conv, "tfe per_node xla", 100000, 3200000, "fwd", 3200.0, 3200000 * 1000 / MIB),
        # time per edge 1.2x, memory per edge 1.5x at 10k; 100k killed by the guard
        _ok(conv, "tfe per_node xla", 1000, 32000, "fwdbwd", 100.0, 100.0),
        _ok(conv, "tfe per_node xla", 10000, 320000, "fwdbwd", 1200.0, 1500.0),
        _bad(conv, "tfe per_node xla", 100000, 3200000, "fwdbwd", "does not fit",
             "killed by the memory guard: RSS 20.1 GiB > per-process limit 20.0 GiB"),
        _ok(att, "e3nn compile", 1000, 32000, "fwd", 50.0, 200.0),
        _bad(att, "e3nn compile", 10000, 320000, "fwd", "timeout", "timed out after 60 s"),
    ]


def test_add_ratios_and_table():
    results = sc.add_ratios(_canned())
    by = {(r["label"], r["pass"], r["nodes"]): r for r in results}
    for n in (1000, 10000, 100000):
        r = by[("tfe per_node xla", "fwd", n)]
        assert r["ns_per_edge"] == pytest.approx(1000.0)
        assert r["bytes_per_edge"] == pytest.approx(1000.0)
        assert r["ratio_ns"] == pytest.approx(1.0) and r["ratio_bytes"] == pytest.approx(1.0)
    r = by[("tfe per_node xla", "fwdbwd", 10000)]
    assert r["ratio_ns"] == pytest.approx(1.2) and r["ratio_bytes"] == pytest.approx(1.5)
    assert r["ratio_reference_nodes"] == 1000
    assert by[("tfe per_node xla", "fwdbwd", 100000)]["ratio_ns"] is None

    table, summary, notes = sc.render(results, 0.25)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == sc.TABLE_HEADER
    rows = [dict(zip(header, [c.strip() for c in line.strip("|").split("|")])) for line in lines[1:]]
    assert len(rows) == len(results)
    # grouped by workload, configuration, pass, size
    assert [(r["implementation / mode"], r["pass"], r["nodes"]) for r in rows][:4] == [
        ("tfe per_node xla", "forward", "1,000"), ("tfe per_node xla", "forward", "10,000"),
        ("tfe per_node xla", "forward", "100,000"), ("tfe per_node xla", "forward+backward", "1,000")]
    killed = rows[5]
    assert killed["median ms (± IQR)"] == "does not fit (killed)" and killed["ns/edge"] == "-"
    assert rows[4]["ns/edge ÷ smallest"] == "1.20" and rows[4]["bytes/edge ÷ smallest"] == "1.50"
    assert rows[0]["ns/edge"] == "1,000" and rows[0]["edges"] == "32,000"
    assert rows[-1]["median ms (± IQR)"] == "timeout"

    s = [[c.strip() for c in line.strip("|").split("|")] for line in summary.splitlines() if line.startswith("| ")]
    assert "within ±25%" in s[0][4]
    verdicts = {(r[1], r[2]): (r[4], r[6]) for r in s[1:]}
    assert verdicts[("tfe per_node xla", "forward")] == ("yes (max 0 %)", "yes (max 0 %)")
    assert verdicts[("tfe per_node xla", "forward+backward")] == (
        "no: N=100000 does not fit; measured yes (max 20 %)", "no: N=100000 does not fit; measured no (max 50 %)")
    assert verdicts[("e3nn compile", "forward")][0] == "- (N=10000 timeout)"
    assert len(notes) == 2 and any("RSS 20.1 GiB" in n for n in notes)


def test_added_edge_costs_separate_the_fixed_part():
    conv = "conv"
    # 2 us and 1000 B per edge on top of 300 ms and 400 MiB fixed: the averages per edge fall
    # (no within 25 %), the slopes are exactly the per-edge parts (yes)
    fixed = [_ok(conv, "tfe blocks", n, e, "fwd", 300.0 + 2e-3 * e, 400.0 + e * 1000 / MIB)
             for n, e in ((1000, 32000), (10000, 320000), (100000, 3200000))]
    # the slope grows by 30 % from the first step to the second: no
    growing = [_ok(conv, "tfe growing", 1000, 32000, "fwdbwd", 32.0, 100.0),
               _ok(conv, "tfe growing", 10000, 320000, "fwdbwd", 32.0 + 0.288e6 * 1e-3, 100.0 + 288000 * 500 / MIB),
               _ok(conv, "tfe growing", 100000, 3200000, "fwdbwd", 32.0 + 0.288e6 * 1e-3 + 2.88e6 * 1.3e-3,
                   100.0 + (288000 * 500 + 2880000 * 500) / MIB)]
    missing = [_ok(conv, "tfe missing", 1000, 32000, "fwd", 32.0, 100.0),
               _bad(conv, "tfe missing", 10000, 320000, "fwd", "does not fit", "killed by the memory guard")]

    slopes = sc.added_edge_costs(fixed)
    assert [s[0] for s in slopes] == [10000, 100000]
    assert [s[1] for s in slopes] == [pytest.approx(2000.0), pytest.approx(2000.0)]
    assert [s[2] for s in slopes] == [pytest.approx(1000.0), pytest.approx(1000.0)]
    assert sc.added_edge_costs(missing) == [(10000, None, None, "does not fit")]

    _, summary, _ = sc.render(fixed + growing + missing, 0.25)
    lines = [line for line in summary.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r["implementation / mode"]: r for r in
            (dict(zip(header, [c.strip() for c in line.strip("|").split("|")])) for line in lines[1:])}
    r = rows["tfe blocks"]
    assert r["memory/edge within ±25%"].startswith("no")
    assert r["ns per added edge"] == "2,000, 2,000" and r["bytes per added edge"] == "1,000, 1,000"
    assert r["time/added edge within ±25%"] == "yes (max 0 %)"
    assert r["memory/added edge within ±25%"] == "yes (max 0 %)"
    r = rows["tfe growing"]
    assert r["ns per added edge"] == "1,000, 1,300" and r["time/added edge within ±25%"] == "no (max 30 %)"
    assert r["memory/added edge within ±25%"] == "yes (max 0 %)"
    r = rows["tfe missing"]
    assert r["ns per added edge"] == "×" and r["time/added edge within ±25%"] == "- (N=10000 does not fit)"


def test_verdict():
    assert sc.verdict([(1000, 1.0, "ok"), (10000, 1.25, "ok")]) == "yes (max 25 %)"
    assert sc.verdict([(1000, 1.0, "ok"), (10000, 0.7, "ok")]) == "no (max 30 %)"
    assert sc.verdict([(1000, 1.0, "ok"), (10000, 1.1, "ok")], tolerance=0.05) == "no (max 10 %)"
    assert sc.verdict([(1000, 1.0, "ok")]) == "-"


def test_classify():
    assert sc.classify({"median_ms": 1.0}) == ("ok", "")
    status, reason = sc.classify({"error": "exit code -9:\n"}, "RSS 20.1 GiB > per-process limit 20.0 GiB")
    assert status == "does not fit" and reason.startswith("killed by the memory guard: RSS 20.1")
    assert sc.classify({"error": "timed out after 5 s"})[0] == "timeout"
    assert sc.classify({"error": "exit code -9:\n"})[0] == "does not fit"  # the kernel's OOM killer
    assert sc.classify({"error": "exit code 1:\ntensorflow.ResourceExhaustedError: OOM"})[0] == "does not fit"
    torch_oom = "RuntimeError: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried"
    assert sc.classify({"error": torch_oom})[0] == "does not fit"  # e3nn_worker reports it as a result
    status, reason = sc.classify({"error": "exit code 1:\nTraceback\nValueError: bad shape"})
    assert status == "error" and "ValueError: bad shape" in reason


def test_extrapolate():
    assert sc.extrapolate([], 5.0) is None
    assert sc.extrapolate([(10.0, 3.0)], 100.0) == pytest.approx(30.0)  # proportional from one point
    assert sc.extrapolate([(10.0, 3.0), (20.0, 5.0)], 100.0) == pytest.approx(21.0)  # last two points
    assert sc.extrapolate([(10.0, 5.0), (20.0, 4.0)], 100.0) == pytest.approx(4.0)  # slope clamped at 0


def test_plan_what_not_to_run():
    key = ("conv", "tfe per_node xla")
    kw = {"limit_bytes": 20 * GIB, "timeout_s": 3600.0, "warmup": 2, "factor": 1.5}
    small = _ok(*key, 1000, 32000, "fwd", 100.0, 400.0, base=600.0)
    history = {(key, "fwd", 1000): small}
    assert sc.plan(history, key, "fwd", 10000, 320000, **kw) is None  # predicted 0.6 + 4 GB, 1 s per call
    assert sc.plan({}, key, "fwd", 1000, 32000, **kw) is None

    # 3 GB at 32k edges -> ~30 GiB at 320k > 1.5 x 20 GiB
    big = _ok(*key, 1000, 32000, "fwdbwd", 100.0, 3000.0, base=600.0)
    status, reason = sc.plan({(key, "fwdbwd", 1000): big}, key, "fwdbwd", 10000, 320000, **kw)
    assert status == "does not fit" and "predicted peak RSS" in reason
    assert sc.plan({(key, "fwdbwd", 1000): big}, key, "fwdbwd", 10000, 320000, **{**kw, "factor": 0}) is None
    # 500 s per call x (2 + 1 + 3) calls at 10x the edges > 1.5 x 3600 s
    slow = _ok(*key, 1000, 32000, "fwd", 100e3, 10.0)
    status, reason = sc.plan({(key, "fwd", 1000): slow}, key, "fwd", 10000, 320000, **kw)
    assert status == "timeout" and "predicted" in reason

    killed = _bad(*key, 10000, 320000, "fwd", "does not fit", "killed by the memory guard: ...")
    history = {(key, "fwd", 1000): small, (key, "fwd", 10000): killed}
    assert sc.plan(history, key, "fwd", 100000, 3200000, **kw)[0] == "does not fit"  # larger than a kill
    status, reason = sc.plan(history, key, "fwdbwd", 10000, 320000, **kw)  # the forward did not fit
    assert status == "does not fit" and "forward" in reason
    assert sc.plan(history, ("conv", "other"), "fwd", 100000, 3200000, **kw) is None  # other configurations run
    timed_out = _bad(*key, 10000, 320000, "fwdbwd", "timeout", "timed out after 3600 s")
    assert sc.plan({(key, "fwdbwd", 10000): timed_out}, key, "fwdbwd", 100000, 3200000, **kw)[0] == "timeout"


def test_series_and_only():
    all_ = sc.series_list(["per_node:xla", "per_edge:function"], ["xla", "function"], "compile", True)
    names = [f"{s['workload']} {s['label']}" for s in all_]
    assert names == ["conv tfe per_node xla", "conv tfe per_edge function", "conv e3nn compile",
                     "attention tfe xla", "attention tfe function", "attention e3nn compile"]
    assert all_[0]["cfg"] == {"impl": "per_node", "mode": "xla", "si": False, "node_chunk": None}
    chunked = sc.series_list(["per_node@500:xla"], [], "compile", False)
    assert [s["label"] for s in chunked] == ["tfe per_node xla node_chunk=500"]
    assert chunked[0]["cfg"] == {"impl": "per_node", "mode": "xla", "si": False, "node_chunk": 500}
    att_chunked = sc.series_list([], ["xla@16", "function@e1024"], "compile", False)
    assert [s["label"] for s in att_chunked] == ["tfe xla node_chunk=16", "tfe function edge_chunk=1024"]
    assert att_chunked[0]["cfg"] == {"mode": "xla", "node_chunk": 16}
    assert att_chunked[1]["cfg"] == {"mode": "function", "edge_chunk": 1024}
    with pytest.raises(SystemExit, match="xla@16"):
        sc.series_list([], ["xla@0"], "compile", False)
    no_e3nn = sc.series_list(["per_node:xla"], ["xla"], "compile", False)
    assert [s["label"] for s in no_e3nn] == ["tfe per_node xla", "tfe xla"]
    only = sc.series_list(["per_node:xla"], ["xla"], "compile", True, only="per_node, attention e3nn")
    assert [f"{s['workload']} {s['label']}" for s in only] == ["conv tfe per_node xla", "attention e3nn compile"]


def test_guard_kills_and_timeout_are_results_not_crashes():
    guard = sc.ScalingGuard(150 * MIB, 0)
    try:
        killed = sc.run_config("test-alloc", {"mb": 400, "seconds": 20}, guard, timeout=60)
        fine = sc.run_config("test-alloc", {"mb": 10, "seconds": 0}, guard, timeout=60)
    finally:
        guard.stop()
    assert killed["status"] == "does not fit", killed
    assert "memory guard" in killed["reason"] and "per-process limit 0.1 GiB" in killed["reason"]
    assert killed["wall_s"] < 20
    assert fine["status"] == "ok" and fine["held_mb"] == pytest.approx(10.0, abs=0.01)
    slow = sc.run_config("test-alloc", {"mb": 1, "seconds": 30}, None, timeout=1)
    assert slow["status"] == "timeout" and slow["reason"].startswith("timed out")


def test_markdown_and_plot_from_json(tmp_path):
    pytest.importorskip("matplotlib")
    results = _canned()
    state = {
        "machine": {"allocator": "glibc malloc", "date": "today", "cpu_model": "cpu", "cpus_usable": 2,
                    "memory_gib": 23.5, "python": "3.11", "load_average_1_5_15": [0, 0, 0]},
        "command": "python benchmarks/bench_scaling.py", "elapsed_s": 60.0,
        "args": {"reps": 10, "warmup": 2, "budget": 60.0, "timeout": 3600.0, "predict_factor": 1.5},
        "limits": {"max_rss_bytes": 20 * GIB, "min_available_bytes": GIB, "mem_available_start_bytes": 22 * GIB},
        "graphs": [{"nodes": n, "edges": 32 * n, "mean_degree": 32.0, "max_degree": 50} for n in (1000, 10000, 100000)],
        "results": results,
    }
    src = tmp_path / "in.json"
    src.write_text(json.dumps(state))
    md, png = tmp_path / "out.md", tmp_path / "out.png"
    assert sc.main(["--from-json", str(src), "--markdown", str(md), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "![time and peak memory against edges](out.png)" in text
    assert "does not fit (killed)" in text and "20.0 GiB" in text


@pytest.mark.slow
def test_quick_smoke(tmp_path):
    out_json, md, png = tmp_path / "s.json", tmp_path / "s.md", tmp_path / "s.png"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--json", str(out_json), "--markdown", str(md), "--plot", str(png)],
        capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out_json.read_text())
    assert [g["nodes"] for g in data["graphs"]] == [200, 400]
    labels = {(r["workload"], r["label"]) for r in data["results"]}
    assert {("conv", "tfe per_node xla node_chunk=32"), ("conv", "tfe per_edge xla"),
            ("attention", "tfe xla edge_chunk=1024"), ("attention", "tfe xla node_chunk=8")} <= labels
    assert len(data["results"]) == len(labels) * 2 * 2  # two sizes, two passes
    for r in data["results"]:
        if r["label"].startswith("tfe"):
            assert r["status"] == "ok", r
            assert r["peak_mb"] > 0 and r["median_ms"] > 0
    assert png.stat().st_size > 10_000
    assert "| convolution (TFN) | tfe per_node xla node_chunk=32" in proc.stdout
    assert "ns/edge ÷ smallest" in md.read_text()


@pytest.mark.slow
def test_guard_limit_below_tensorflow(tmp_path):
    """A limit TensorFlow's import alone exceeds: every configuration is killed or skipped, no crash."""
    out_json = tmp_path / "g.json"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--only", "conv tfe per_node", "--max-rss-gb", "0.25",
         "--json", str(out_json)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out_json.read_text())["results"]
    assert [(r["nodes"], r["pass"], r["status"]) for r in results] == [
        (200, "fwd", "does not fit"), (200, "fwdbwd", "does not fit"),
        (400, "fwd", "does not fit"), (400, "fwdbwd", "does not fit")]
    assert "memory guard" in results[0]["reason"] and "not run" in results[1]["reason"]
    assert "does not fit (killed)" in proc.stdout and "does not fit (skipped)" in proc.stdout


def test_resume_keeps_measured_results_only(tmp_path):
    graphs = [{"nodes": 1000, "edges": 32000}, {"nodes": 10000, "edges": 320000}]
    old = _canned() + [
        _bad("conv", "tfe per_edge function", 10000, 320000, "fwdbwd", "does not fit", "not run: predicted 50 GiB"),
        _ok("conv", "tfe per_edge function", 10000, 999, "fwd", 1.0, 1.0),  # another graph: not kept
    ]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"results": old}))
    kept = sc.previous_results(str(path), graphs)
    assert set(kept) == {("conv", "tfe per_node xla", "fwd", 1000), ("conv", "tfe per_node xla", "fwd", 10000),
                         ("conv", "tfe per_node xla", "fwdbwd", 1000), ("conv", "tfe per_node xla", "fwdbwd", 10000),
                         ("attention", "e3nn compile", "fwd", 1000), ("attention", "e3nn compile", "fwd", 10000)}
    assert all(r["resumed"] for r in kept.values())
    assert sc.previous_results(str(tmp_path / "missing.json"), graphs) == {}


def test_status_cells():
    guard = {"status": "does not fit", "reason": "killed by the memory guard: RSS 20.1 GiB > per-process limit"}
    floor = {"status": "does not fit", "reason": "killed by the memory guard: machine MemAvailable 0.9 GiB < floor"}
    assert sc.status_cell(guard) == "does not fit (killed)"
    assert sc.status_cell(floor) == "killed (machine memory low)"
    assert sc.status_cell({"status": "does not fit", "reason": "not run: predicted peak RSS 36 GiB"}) == (
        "does not fit (predicted)")
    assert sc.status_cell({"status": "does not fit", "reason": "not run: N=1000 already did not fit"}) == (
        "does not fit (skipped)")
    assert sc.status_cell({"status": "timeout", "reason": "timed out after 3600 s"}) == "timeout"
    assert sc.status_cell({"status": "error", "reason": "ValueError"}) == "error"


def test_code_version_keeps_the_whole_path_of_every_modified_file(monkeypatch):
    # git's porcelain lines start with a two-letter status that may begin with a blank
    porcelain = " M tfequivariant/layers/_receiver_blocks.py\nM  tfequivariant/ops.py\n?? tfequivariant/new.py\n"

    def fake_run(argv, **kwargs):
        out = porcelain if "status" in argv else "08a4e6c\n"
        return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    code = sc.code_version()
    assert code["commit"] == "08a4e6c"
    assert code["modified"] == ["tfequivariant/layers/_receiver_blocks.py", "tfequivariant/ops.py",
                                "tfequivariant/new.py"]
