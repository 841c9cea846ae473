"""Scaling study: time and peak memory per edge of the convolution and the attention at 1k-100k nodes.

The performance issue asks for cost linear in the number of edges: the shared
workload of ``bench_point_convolution.py`` (``build_graph``: uniform nodes in a
periodic box at the density of 32 neighbours within 5.0, so the number of edges
grows linearly with the number of nodes; 1k nodes are about 32k edges, 100k nodes
about 3.2 million) at several sizes, with the time and the peak memory per edge
constant within 25 % from the smallest size to the largest.

Configurations (each size, forward and forward+backward):

* ``conv tfe per_node xla node_chunk=32``: ``PointConvolution(implementation="per_node",
  max_neighbors=<largest in-degree>, node_chunk=32)`` under ``tf.function(jit_compile=True)``
  (receivers in blocks of 32, recomputed in the backward pass, so memory stays linear; the
  fastest convolution in ``run_all.py``);
* ``conv tfe per_edge xla``: the per-edge formulation under XLA
  (it materializes ``[E, 3456]`` tensor-product weights: it stops fitting first);
* ``conv e3nn compile``: e3nn's convolution (``bench_point_convolution._e3nn_module``)
  under ``torch.compile``;
* ``attention tfe xla edge_chunk=1024``, ``attention tfe xla node_chunk=8`` (the two forms
  that bound the attention's memory: chunks of edges, blocks of receivers), ``attention
  e3nn compile``: ``bench_se3_attention.py``'s workload (per-edge ``[E, 6912]`` weights on
  both sides). ``--attention-modes xla`` adds the unchunked layer, which stops fitting first.

The workload, the layers, the steps and the measurement are the two benchmark
scripts' own functions, imported (``tf_worker``, ``e3nn_worker``, ``case_worker``):
every configuration runs in a fresh subprocess, ``--warmup`` untimed calls, then
``--reps`` timed calls, or fewer (at least 3, marked ``*``) when they would take
longer than ``--budget`` seconds; the median is reported. Peak memory is the
kernel's resident high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) above the RSS after building the inputs and the layer,
over the timed calls (``_common.PeakRSS``), the method of the other scripts.

"ns/edge" is the median time divided by the number of edges, "bytes/edge" the
peak memory divided by it; the "/ smallest" columns divide them by the same
configuration's value at the smallest size that ran: the issue's criterion is
that they stay within 1 +- 0.25 (``--tolerance``). Averages per edge fall with size when
a fixed part (the runtime, the compiled program, the weights) dominates the smallest
graph, so the summary also gives the cost per added edge, the slope between
consecutive sizes, and whether the slopes stay within the same tolerance of the first.

Memory guard: a background thread of this process polls the resident memory of
its children (``bench_se3_attention.ChildMemoryGuard``) and SIGKILLs a child above
``--max-rss-gb`` (default 20 GiB of the machine's 24), or any child when the
machine's MemAvailable falls below ``--min-available-gb``; such a configuration
is reported as "does not fit", one that runs longer than ``--timeout`` as
"timeout", and the study goes on. Larger sizes of a configuration that did not
fit (or timed out) are not run, nor is the forward+backward pass where the
forward did not fit; with ``--predict-factor F > 0`` a size whose memory or
run time, extrapolated linearly in the edges from the smaller sizes, exceeds F
times the limit is not run either (reported "does not fit (predicted ...)").

Outputs: a markdown table on stdout (``--markdown`` writes it with the run
details to a file), the raw results (``--json``, rewritten after every
configuration, so an interrupted study keeps what it measured), and a log-log
plot of time and peak memory against edges (``--plot PATH.png``, needs
matplotlib: the ``[examples]`` extra). ``--from-json`` re-makes the table and
the plot from a saved ``--json`` without running anything.

Examples:
    nice -n 19 python benchmarks/bench_scaling.py --json scaling.json --markdown scaling.md \\
        --plot scaling.png                       # 1k, 10k, 100k nodes (hours)
    python benchmarks/bench_scaling.py --nodes 1000 10000 --only conv
    python benchmarks/bench_scaling.py --quick --plot /tmp/s.png       # smoke test, minutes
    python benchmarks/bench_scaling.py --from-json scaling.json --plot scaling.png
"""

import argparse
import importlib.util
import json
import os
import shlex
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common  # noqa: E402
import bench_point_convolution as conv_bench  # noqa: E402  (the workload, TF/torch plumbing, _measure)
import bench_se3_attention as att_bench  # noqa: E402  (the attention workload and the memory guard)

PASSES = ("fwd", "fwdbwd")
PASS_NAMES = {"fwd": "forward", "fwdbwd": "forward+backward"}
WORKLOADS = ("conv", "attention")
WORKLOAD_NAMES = {"conv": "convolution (TFN)", "attention": "SE(3)-attention"}
MIN_REPS = 3  # _measure and case_worker time at least 3 calls
GIB = 2**30
MIB = 2**20
QUICK = {"nodes": [200, 400], "reps": 3, "warmup": 1, "budget": 5.0, "timeout": 900.0, "e3nn_mode": "eager"}
DEFAULTS = {"nodes": [1000, 10000, 100000], "reps": 10, "warmup": 2, "budget": 60.0, "timeout": 3600.0,
            "e3nn_mode": "compile"}
STATUS_OK, STATUS_NOFIT, STATUS_TIMEOUT, STATUS_ERROR = "ok", "does not fit", "timeout", "error"


# -- configurations ------------------------------------------------------------------------
def series_list(conv_modes, attention_modes, e3nn_mode, have_e3nn, only=""):
    """The configurations as dicts: workload, label, worker kind, cfg fields.

    ``conv_modes``: "impl:mode" strings (e.g. "per_node:xla", or "per_node@500:xla" for
    ``node_chunk=500``); ``attention_modes``: TF modes ("xla@16": ``node_chunk=16``, "xla@e2048": ``edge_chunk=2048``);
    ``only``: comma list of substrings, a configuration runs if its "workload label" has one.
    """
    out = []
    for spec in conv_modes:
        impl, mode = spec.split(":")
        impl, _, chunk = impl.partition("@")  # "per_node@500": PointConvolution(node_chunk=500)
        label = f"tfe {impl} {mode}" + (f" node_chunk={chunk}" if chunk else "")
        out.append({"workload": "conv", "label": label, "kind": "conv-tf",
                    "cfg": {"impl": impl, "mode": mode, "si": False, "node_chunk": int(chunk) if chunk else None}})
    if have_e3nn and e3nn_mode:
        out.append({"workload": "conv", "label": f"e3nn {e3nn_mode}", "kind": "conv-e3nn", "cfg": {"mode": e3nn_mode}})
    for spec in attention_modes:
        mode, chunks = att_bench.split_mode(spec)  # "xla@16": node_chunk=16, "xla@e2048": edge_chunk=2048
        out.append({"workload": "attention", "label": f"tfe {mode}" + att_bench.chunk_label(chunks),
                    "kind": "att-tf", "cfg": {"mode": mode, **chunks}})
    if have_e3nn and e3nn_mode:
        out.append({"workload": "attention", "label": f"e3nn {e3nn_mode}", "kind": "att-e3nn",
                    "cfg": {"mode": e3nn_mode}})
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    return [s for s in out if not wanted or any(w in f"{s['workload']} {s['label']}" for w in wanted)]


def graph_stats(nodes):
    """Edges, degrees and forward GFLOP of the shared workload at ``nodes`` (the graph is dropped)."""
    g = conv_bench.build_graph(nodes)
    edges = int(len(g["senders"]))
    conv_flops = conv_bench.flop_counts(nodes, edges, g["max_degree"])
    return {"nodes": nodes, "edges": edges, "box": float(g["box"]), "mean_degree": g["mean_degree"],
            "max_degree": g["max_degree"],
            "gflop_forward": {
                "conv per_node (useful)": conv_flops["per_node_total"] / 1e9,
                "conv per_node (as executed, K = max in-degree)": conv_flops["per_node_padded_total"] / 1e9,
                "conv per_edge": conv_flops["per_edge_total"] / 1e9,
                "attention per_edge": att_bench.flop_counts(nodes, edges)["per_edge_total"] / 1e9}}


# -- workers (one configuration, in a fresh subprocess) -------------------------------------
def worker_main(kind, cfg):
    _common.quiet_tensorflow()
    if kind == "conv-tf":
        _common.emit_result(conv_bench.tf_worker(cfg))
    elif kind == "conv-e3nn":
        _common.emit_result(conv_bench.e3nn_worker(cfg))
    elif kind == "att-tf":
        att_bench.case_worker("tf", cfg)  # emits its result itself
    elif kind == "att-e3nn":
        att_bench.case_worker("e3nn", cfg)
    elif kind == "test-alloc":  # for the tests of the guard: hold `mb` MiB for `seconds`
        import numpy as np

        block = np.ones(int(cfg["mb"] * MIB) // 8)
        time.sleep(cfg.get("seconds", 5.0))
        _common.emit_result({"held_mb": block.nbytes / MIB})
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")


# -- memory guard -----------------------------------------------------------------------------
def mem_available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class ScalingGuard:
    """``bench_se3_attention.ChildMemoryGuard`` (per child RSS limit) plus a machine-wide floor.

    The second thread kills the largest child of this process when the machine's
    MemAvailable drops below ``floor`` bytes (other users' memory counts too: the
    machine is shared). ``kills`` maps pid -> reason for both.
    """

    def __init__(self, per_child, floor, period=0.1):
        self.per_child, self.floor = per_child, floor
        # Children run one at a time: the total limit is the per-process one.
        self.guard = att_bench.ChildMemoryGuard(per_child, per_child, period=period)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    @property
    def kills(self):
        return self.guard.kills

    def _run(self, period):
        while not self._stop.is_set():
            if self.floor > 0:
                avail = mem_available_bytes()
                if avail < self.floor:
                    rss = {pid: self.guard._rss(pid) for pid in self.guard._children() if pid not in self.kills}
                    if rss:
                        pid = max(rss, key=rss.get)
                        self.guard._kill(pid, f"machine MemAvailable {avail / GIB:.1f} GiB < floor "
                                              f"{self.floor / GIB:.1f} GiB (child RSS {rss[pid] / GIB:.1f} GiB)")
            self._stop.wait(period)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.guard.stop()


def classify(raw, guard_reason=None):
    """``(status, reason)`` of a worker's result dict (``run_isolated``'s) and the guard's kill, if any."""
    if guard_reason:
        return STATUS_NOFIT, "killed by the memory guard: " + guard_reason
    err = raw.get("error")
    if err is None:
        return STATUS_OK, ""
    if err.startswith("timed out"):
        return STATUS_TIMEOUT, err
    if err.startswith("exit code -9"):
        return STATUS_NOFIT, "SIGKILL not sent by the guard (the kernel's OOM killer?)"
    low = err.lower()
    if any(s in low for s in ("resourceexhausted", "out of memory", "memoryerror", "bad_alloc",
                              "not enough memory", "can't allocate", "cannot allocate memory")):
        return STATUS_NOFIT, "allocation failed: " + _short(err)
    return STATUS_ERROR, _short(err)


def _short(err):
    return " / ".join(line.strip() for line in str(err).strip().splitlines()[-3:] if line.strip())[:400]


def run_config(kind, cfg, guard, timeout):
    """Run one configuration in a fresh subprocess under ``guard``; its result dict with status/reason."""
    before = dict(guard.kills) if guard else {}
    argv = [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(cfg)]
    t0 = time.time()
    with _common.ForeignLoad() as load:
        raw = _common.run_isolated(argv, env=att_bench.WORKER_ENV, timeout=timeout)
    new = [v for k, v in (guard.kills if guard else {}).items() if k not in before]
    status, reason = classify(raw, new[-1] if new else None)
    out = {k: v for k, v in raw.items() if k != "error"} if status == STATUS_OK else {}
    out.update({"status": status, "reason": reason, "wall_s": time.time() - t0, "foreign_cores": load.cores})
    return out


# -- what not to run --------------------------------------------------------------------------
def _total_rss_mb(r):
    """Resident memory of the whole worker at its peak: RSS after the inputs + peak above it."""
    base = r.get("base_rss_mb", r.get("rss_inputs_mb")) or 0.0
    warm = r.get("warm_peak_mb", r.get("peak_with_warmup_mb")) or 0.0
    return base + max(r.get("peak_mb") or 0.0, warm)


def extrapolate(points, x):
    """Linear extrapolation in ``x`` from ``[(x_i, y_i)]`` (sorted by x): through the last two
    points (slope clamped at >= 0), or proportional (``y x / x_1``) from a single point."""
    if not points:
        return None
    if len(points) == 1:
        x1, y1 = points[0]
        return y1 * x / x1
    (x1, y1), (x2, y2) = points[-2], points[-1]
    slope = max(0.0, (y2 - y1) / (x2 - x1)) if x2 != x1 else 0.0
    return y2 + slope * (x - x2)


def plan(history, key, pass_, nodes, edges, *, limit_bytes, timeout_s, warmup, factor):
    """Decide whether to run ``(key, pass_)`` at ``nodes``: None (run it) or ``(status, reason)``.

    ``history`` maps ``(key, pass, nodes)`` to finished results (with ``status``/``edges``).
    Not run: sizes above one that did not fit or timed out; the forward+backward where the
    forward at this size did not fit or timed out; with ``factor > 0``, a size whose peak
    RSS or run time ((warmup + 1 + 3) calls), extrapolated from the smaller sizes that ran,
    exceeds ``factor`` times the memory limit or the timeout.
    """
    def what(status):
        return "did not fit" if status == STATUS_NOFIT else "timed out"

    smaller = sorted(((n, r) for (k, p, n), r in history.items() if k == key and p == pass_ and n < nodes),
                     key=lambda nr: nr[0])
    for n, r in smaller:
        if r["status"] in (STATUS_NOFIT, STATUS_TIMEOUT):
            return r["status"], f"not run: N={n} already {what(r['status'])}"
    if pass_ == "fwdbwd":
        f = history.get((key, "fwd", nodes))
        if f is not None and f["status"] in (STATUS_NOFIT, STATUS_TIMEOUT):
            return f["status"], f"not run: the forward at this size {what(f['status'])}"
    if factor > 0:
        ok = [(r["edges"], r) for _, r in smaller if r["status"] == STATUS_OK]
        mem = extrapolate([(e, _total_rss_mb(r) * MIB) for e, r in ok], edges)
        if mem is not None and mem > factor * limit_bytes:
            return STATUS_NOFIT, (f"not run: predicted peak RSS {mem / GIB:.1f} GiB > {factor:g} x the "
                                  f"{limit_bytes / GIB:.1f} GiB limit")
        call_s = extrapolate([(e, r["median_ms"] / 1e3) for e, r in ok], edges)
        if call_s is not None and timeout_s and call_s * (warmup + 1 + MIN_REPS) > factor * timeout_s:
            return STATUS_TIMEOUT, (f"not run: predicted {call_s:.0f} s per call x {warmup + 1 + MIN_REPS} calls "
                                    f"> {factor:g} x the {timeout_s:.0f} s timeout")
    return None


# -- per-edge figures, ratios, verdicts ---------------------------------------------------------
def per_edge(r):
    """``(ns per edge, bytes per edge)`` of an ok result, else ``(None, None)``."""
    if r.get("status") != STATUS_OK:
        return None, None
    return r["median_ms"] * 1e6 / r["edges"], r["peak_mb"] * MIB / r["edges"]


def add_ratios(results):
    """Set ``ns_per_edge``, ``bytes_per_edge`` and their ratios to the same configuration's
    values at its smallest measured size (``ratio_ns``, ``ratio_bytes``) on every result."""
    groups = {}
    for r in results:
        groups.setdefault((r["workload"], r["label"], r["pass"]), []).append(r)
    for rows in groups.values():
        rows.sort(key=lambda r: r["nodes"])
        ref = next((r for r in rows if r.get("status") == STATUS_OK), None)
        ref_ns, ref_b = per_edge(ref) if ref else (None, None)
        for r in rows:
            ns, b = per_edge(r)
            r["ns_per_edge"], r["bytes_per_edge"] = ns, b
            r["ratio_ns"] = ns / ref_ns if ns is not None and ref_ns else None
            r["ratio_bytes"] = b / ref_b if b is not None and ref_b and ref_b > 0 else None
            r["ratio_reference_nodes"] = ref["nodes"] if ref else None
    return results


def verdict(ratios, tolerance=0.25):
    """"yes"/"no" for "constant within tolerance" from ``[(nodes, ratio or None, status)]`` by size."""
    missing = [f"N={n} {s}" for n, q, s in ratios if q is None]
    measured = [q for _, q, _ in ratios if q is not None]
    if len(measured) < 2:
        return "-" + (f" ({', '.join(missing)})" if missing else "")
    dev = max(abs(q - 1.0) for q in measured)
    text = ("yes" if dev <= tolerance else "no") + f" (max {100 * dev:.0f} %)"
    if missing:
        text = f"no: {', '.join(missing)}; measured " + text
    return text


# -- tables ----------------------------------------------------------------------------------------
def _fmt(v, digits=2):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def status_cell(r):
    s = r.get("status")
    if s == STATUS_OK:
        return _common.format_ms(r["timing"]) + ("*" if r.get("reduced") else "")
    if s == STATUS_NOFIT:
        reason = r.get("reason", "")
        if "predicted" in reason:
            return "does not fit (predicted)"
        if "not run" in reason:
            return "does not fit (skipped)"
        if "MemAvailable" in reason:  # the floor: other processes' memory counted too
            return "killed (machine memory low)"
        return "does not fit (killed)" if "guard" in reason else "does not fit"
    if s == STATUS_TIMEOUT:
        return "timeout (predicted)" if "predicted" in r.get("reason", "") else (
            "timeout (skipped)" if "not run" in r.get("reason", "") else "timeout")
    return "error"


TABLE_HEADER = ["workload", "implementation / mode", "nodes", "edges", "pass", "median ms (± IQR)", "ns/edge",
                "ns/edge ÷ smallest", "peak MB", "bytes/edge", "bytes/edge ÷ smallest", "reps"]


def ordered(results):
    """Results grouped for reading: by workload, configuration (first appearance), pass, size."""
    labels = list(dict.fromkeys((r["workload"], r["label"]) for r in results))
    rank = {w: i for i, w in enumerate(WORKLOADS)}
    return sorted(results, key=lambda r: (rank.get(r["workload"], len(rank)), labels.index((r["workload"], r["label"])),
                                          PASSES.index(r["pass"]), r["nodes"]))


def table_rows(results):
    rows = []
    for r in ordered(results):
        ok = r.get("status") == STATUS_OK
        rows.append([WORKLOAD_NAMES.get(r["workload"], r["workload"]), r["label"], f"{r['nodes']:,}",
                     f"{r['edges']:,}", PASS_NAMES[r["pass"]], status_cell(r), _fmt(r.get("ns_per_edge"), 1),
                     _fmt(r.get("ratio_ns")), f"{r['peak_mb']:,.0f}" if ok else "-", _fmt(r.get("bytes_per_edge"), 0),
                     _fmt(r.get("ratio_bytes")), r.get("reps", "-") if ok else "-"])
    return rows


SUMMARY_HEADER = ["workload", "implementation / mode", "pass", "ns/edge by size", "time/edge within ±{tol}%",
                  "bytes/edge by size", "memory/edge within ±{tol}%", "ns per added edge",
                  "time/added edge within ±{tol}%", "bytes per added edge", "memory/added edge within ±{tol}%"]


def added_edge_costs(rs):
    """The cost of each added edge between consecutive sizes of one configuration.

    Peak memory (and to a lesser degree time) is a fixed part (the runtime, the compiled
    program, the weights) plus a part that grows with the graph; the average per edge then
    falls with size even when the growth is exactly linear. The slope between two sizes,
    ``(cost(E2) - cost(E1)) / (E2 - E1)``, is the per-edge cost without the fixed part.
    ``rs`` sorted by size; returns ``[(nodes, ns per added edge, bytes per added edge, status)]``,
    one per size after the first, ``None`` where either end was not measured.
    """
    out = []
    for a, b in zip(rs, rs[1:]):
        if a.get("status") == STATUS_OK and b.get("status") == STATUS_OK and b["edges"] > a["edges"]:
            de = b["edges"] - a["edges"]
            out.append((b["nodes"], (b["median_ms"] - a["median_ms"]) * 1e6 / de,
                        (b["peak_mb"] - a["peak_mb"]) * MIB / de, STATUS_OK))
        else:
            bad = b if b.get("status") != STATUS_OK else a
            out.append((bad["nodes"], None, None, bad.get("status", "?")))
    return out


def _slope_ratios(slopes, index):
    """``[(nodes, ratio to the first measured slope or None, status)]`` for :func:`verdict`."""
    ref = next((s[index] for s in slopes if s[index] is not None), None)
    return [(s[0], s[index] / ref if s[index] is not None and ref else None, s[3]) for s in slopes]


def summary_rows(results, tolerance):
    groups = {}
    for r in ordered(results):
        groups.setdefault((r["workload"], r["label"], r["pass"]), []).append(r)
    rows = []
    for (workload, label, pass_), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["nodes"])
        by_size = lambda key: ", ".join(  # noqa: E731
            f"{_fmt(r.get(key), 0 if key == 'bytes_per_edge' else 1)}" if r.get(key) is not None else "×" for r in rs)
        slopes = added_edge_costs(rs)
        by_step = lambda i, digits: ", ".join(  # noqa: E731
            _fmt(s[i], digits) if s[i] is not None else "×" for s in slopes) or "-"
        rows.append([WORKLOAD_NAMES.get(workload, workload), label, PASS_NAMES[pass_], by_size("ns_per_edge"),
                     verdict([(r["nodes"], r.get("ratio_ns"), r["status"]) for r in rs], tolerance),
                     by_size("bytes_per_edge"),
                     verdict([(r["nodes"], r.get("ratio_bytes"), r["status"]) for r in rs], tolerance),
                     by_step(1, 1), verdict(_slope_ratios(slopes, 1), tolerance),
                     by_step(2, 0), verdict(_slope_ratios(slopes, 2), tolerance)])
    return rows


def render(results, tolerance):
    add_ratios(results)
    table = _common.markdown_table(TABLE_HEADER, table_rows(results))
    tol = f"{100 * tolerance:.0f}"
    summary = _common.markdown_table([h.replace("{tol}", tol) for h in SUMMARY_HEADER],
                                     summary_rows(results, tolerance))
    notes = [f"- {WORKLOAD_NAMES.get(r['workload'], r['workload'])}, {r['label']}, N={r['nodes']:,}, "
             f"{PASS_NAMES[r['pass']]}: {r['status']}: {r['reason']}" for r in results if r.get("status") != STATUS_OK]
    return table, summary, notes


# -- plot --------------------------------------------------------------------------------------------
def require_matplotlib():
    """Import matplotlib (Agg) or exit with the install hint."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[examples]' (or pip install matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(results, graphs, path, limit_bytes, title=None):
    """Log-log: median time (top) and peak memory (bottom) against edges, one column per workload,
    one line per implementation/mode and pass (e3nn in grey/black); x: not measured at that size."""
    plt = require_matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator
    from matplotlib.transforms import blended_transform_factory

    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in results)]
    fig, axes = plt.subplots(2, len(workloads), figsize=(6.4 * len(workloads), 10), squeeze=False, sharex=True)
    edges_all = sorted({g["edges"] for g in graphs})
    tfe_colors = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"] * 4)
    colors = {}
    for r in results:
        if r["label"] not in colors:
            colors[r["label"]] = "black" if r["label"].startswith("e3nn") else next(tfe_colors)
    style = {"fwd": ("-", "o"), "fwdbwd": ("--", "s")}
    for col, workload in enumerate(workloads):
        ax_t, ax_m = axes[0][col], axes[1][col]
        rs = [r for r in results if r["workload"] == workload]
        for label in dict.fromkeys(r["label"] for r in rs):
            for pass_ in PASSES:
                pts = sorted((r for r in rs if r["label"] == label and r["pass"] == pass_), key=lambda r: r["edges"])
                if not pts:
                    continue
                ls, mk = style[pass_]
                c = colors[label]
                ok = [r for r in pts if r["status"] == STATUS_OK]
                name = f"{label} {PASS_NAMES[pass_]}"
                if ok:
                    ax_t.plot([r["edges"] for r in ok], [r["median_ms"] for r in ok], ls=ls, marker=mk, color=c,
                              label=name)
                    ax_m.plot([r["edges"] for r in ok], [max(r["peak_mb"], 1e-3) for r in ok], ls=ls, marker=mk,
                              color=c, label=name)
                bad = [r for r in pts if r["status"] != STATUS_OK]
                if bad:
                    y = 0.96 if pass_ == "fwd" else 0.91
                    blend = blended_transform_factory(ax_t.transData, ax_t.transAxes)
                    ax_t.plot([r["edges"] for r in bad], [y] * len(bad), ls="none", marker="x", ms=9, mew=2,
                              color=c, transform=blend, clip_on=False)
                    nofit = [r for r in bad if r["status"] == STATUS_NOFIT]
                    if nofit:
                        ax_m.plot([r["edges"] for r in nofit], [limit_bytes / MIB] * len(nofit), ls="none",
                                  marker="x", ms=9, mew=2, color=c)
        for ax in (ax_t, ax_m):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            for e in edges_all:
                ax.axvline(e, color="0.85", lw=0.8, zorder=0)
        ax_m.axhline(limit_bytes / MIB, color="red", lw=1, ls=":")
        ax_m.text(edges_all[0], limit_bytes / MIB, f" memory guard {limit_bytes / GIB:.0f} GiB", color="red",
                  va="bottom", fontsize=8)
        # Reference: proportional to the edges, through the first measured point of the panel.
        for ax, key in ((ax_t, "median_ms"), (ax_m, "peak_mb")):
            first = sorted((r for r in rs if r["status"] == STATUS_OK), key=lambda r: r["edges"])
            if first and first[0][key] > 0:
                e0, y0 = first[0]["edges"], first[0][key]
                ax.plot([edges_all[0], edges_all[-1]], [y0 * edges_all[0] / e0, y0 * edges_all[-1] / e0],
                        color="0.5", lw=1, ls=":", label="∝ edges")
        ax_t.set_title(WORKLOAD_NAMES.get(workload, workload))
        ax_t.set_ylabel("median time per call (ms)")
        ax_m.set_ylabel("peak memory above inputs (MB)")
        ax_m.set_xlabel("edges")
        handles, labels = ax_t.get_legend_handles_labels()  # the same lines in both panels: one legend
        handles.append(Line2D([], [], ls="none", marker="x", color="0.3", mew=2))
        labels.append("not measured: does not fit / timeout")
        ax_m.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                    frameon=False)
        for ax in (ax_t, ax_m):  # ticks at the measured sizes only
            ax.xaxis.set_major_locator(FixedLocator(edges_all))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FixedFormatter([f"{e:,}" for e in edges_all]))
        top = ax_t.secondary_xaxis("top")
        top.xaxis.set_major_locator(FixedLocator(edges_all))
        top.xaxis.set_minor_locator(NullLocator())
        top.xaxis.set_major_formatter(FixedFormatter([f"N={g['nodes']:,}" for g in
                                                      sorted(graphs, key=lambda g: g["edges"])]))
        top.tick_params(labelsize=8)
    fig.suptitle(title or "Time and peak memory against edges (same density; log-log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# -- driver ------------------------------------------------------------------------------------------
def code_version():
    """Which tfequivariant the study measured: the commit, the modified files under tfequivariant/ and a
    hash of its Python sources (the working tree can differ from the commit). Read-only git calls."""
    import hashlib
    import subprocess

    root = os.path.dirname(HERE)
    pkg = os.path.join(root, "tfequivariant")
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())

    def git(*cmd):
        try:
            return subprocess.run(["git", "--no-optional-locks", *cmd], cwd=root, capture_output=True, text=True,
                                  timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    # porcelain lines are "XY path": not stripped, or the first line's leading blank shifts its path
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None,
            "modified": [line[3:] for line in git("status", "--porcelain", "--", "tfequivariant").splitlines()
                         if line.strip()],
            "tfequivariant_sha256": digest.hexdigest()[:16]}


def previous_results(path, graphs):
    """Measured results of an earlier run's ``--json`` (for ``--resume``), keyed by
    ``(workload, label, pass, nodes)``; only those on the same graphs (edge counts), and not the
    configurations that run skipped by rule ("not run": re-planned now)."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as fh:
        old = json.load(fh)
    edges = {g["nodes"]: g["edges"] for g in graphs}
    return {(r["workload"], r["label"], r["pass"], r["nodes"]): {**r, "resumed": True}
            for r in old.get("results", [])
            if edges.get(r["nodes"]) == r["edges"] and not r.get("reason", "").startswith("not run")}


def _resolve(args):
    """Fill the options left unset from --quick's settings or the defaults."""
    src = QUICK if args.quick else DEFAULTS
    for k, v in src.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.nodes = sorted(set(args.nodes))
    return args


def _write_outputs(args, state, final=True):
    results, graphs = state["results"], state["graphs"]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: v for k, v in state.items()}, fh, indent=1, default=str)
    if not final:
        return
    table, summary, notes = render(results, args.tolerance)
    print("\n" + table + "\n\n" + summary)
    if notes:
        print("\n" + "\n".join(notes))
    if args.plot:
        plot(results, graphs, args.plot, state["limits"]["max_rss_bytes"])
        print(f"wrote {args.plot}")
    if args.markdown:
        m = state["machine"]
        lim = state["limits"]
        with open(args.markdown, "w") as fh:
            fh.write(f"### Scaling with the number of edges ({m['allocator']})\n\n")
            fh.write(f"- date: {m['date']}; machine: {m['cpu_model']}, {m['cpus_usable']} usable CPUs, "
                     f"{m['memory_gib']} GiB; Python {m['python']}; load average at start "
                     f"{m['load_average_1_5_15']}\n")
            fh.write(f"- command: `{state['command']}` (total {state.get('elapsed_s', 0) / 60:.1f} min"
                     + (f"; {sum(1 for r in results if r.get('resumed'))} results kept from an earlier run"
                        if any(r.get("resumed") for r in results) else "") + ")\n")
            code = state.get("code")
            hashes = sorted({r["code_sha256"] for r in results if r.get("code_sha256")})
            if len(hashes) > 1:
                fh.write(f"- **warning: the results come from {len(hashes)} different tfequivariant sources** "
                         f"(--resume across a code change; sha256 {', '.join(hashes)}; per result in the JSON)\n")
            if code:
                fh.write(f"- tfequivariant: commit {code['commit']}, modified files "
                         f"{', '.join(code['modified']) or 'none'}, sources sha256 {code['tfequivariant_sha256']}\n")
            fh.write("- graphs (same density): " + "; ".join(
                f"N={g['nodes']:,}: E={g['edges']:,}, in-degree mean {g['mean_degree']:.2f}, max {g['max_degree']}"
                for g in graphs) + "\n")
            fh.write(f"- up to {state['args']['reps']} timed calls after {state['args']['warmup']} warm-up calls "
                     f"(torch.compile: at least 3), fewer (>= 3, `*`) beyond {state['args']['budget']:g} s; "
                     f"timeout {state['args']['timeout']:g} s per configuration\n")
            fh.write(f"- memory guard: a process above {lim['max_rss_bytes'] / GIB:.1f} GiB RSS, or any when "
                     f"MemAvailable < {lim['min_available_bytes'] / GIB:.1f} GiB, is killed (MemAvailable at "
                     f"start {lim['mem_available_start_bytes'] / GIB:.1f} GiB); prediction factor "
                     f"{state['args']['predict_factor']:g}\n")
            fh.write("\n" + table + "\n\n" + summary + "\n")
            if notes:
                fh.write("\n" + "\n".join(notes) + "\n")
            if args.plot:
                rel = os.path.relpath(os.path.abspath(args.plot), os.path.dirname(os.path.abspath(args.markdown)))
                fh.write(f"\n![time and peak memory against edges]({rel})\n")
        print(f"wrote {args.markdown}")
    if args.json:
        print(f"wrote {args.json}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", help="graph sizes (default 1000 10000 100000)")
    parser.add_argument("--passes", default="fwd,fwdbwd", help="comma list of fwd, fwdbwd (default both)")
    parser.add_argument("--conv-modes", default="per_node@32:xla,per_edge:xla",
                        help="comma list of implementation[@node_chunk]:mode of PointConvolution (default "
                             "per_node@32:xla,per_edge:xla; modes eager, function, xla)")
    parser.add_argument("--attention-modes", default="xla@e1024,xla@8",
                        help="comma list of SE3Attention TF modes, mode@N for node_chunk=N, mode@eN for edge_chunk=N (default xla@e1024,xla@8; "
                             "empty to skip)")
    parser.add_argument("--e3nn-mode", help="e3nn's mode: compile (default), compile:<torch.compile mode>, eager; "
                                            "--quick: eager")
    parser.add_argument("--no-e3nn", action="store_true", help="skip e3nn even if importable")
    parser.add_argument("--only", default="", help="comma list; run only configurations whose 'workload label' "
                                                   "(e.g. 'conv tfe per_node xla', 'attention e3nn compile') "
                                                   "contains one of them")
    parser.add_argument("--reps", type=int, help="timed calls per configuration (default 10; --quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up calls (default 2, torch.compile at least 3; "
                                                   "--quick 1)")
    parser.add_argument("--budget", type=float, help="seconds of timed calls per configuration; beyond it fewer "
                                                     "reps (>= 3, marked *) (default 60; --quick 5)")
    parser.add_argument("--timeout", type=float, help="seconds per configuration subprocess, compilation "
                                                      "included (default 3600; --quick 900)")
    parser.add_argument("--max-rss-gb", type=float, default=20.0,
                        help="memory guard: kill a configuration above this RSS in GiB, reported 'does not fit' "
                             "(default 20 of the machine's 24)")
    parser.add_argument("--min-available-gb", type=float, default=1.0,
                        help="memory guard: kill the running configuration when the machine's MemAvailable falls "
                             "below this (GiB; default 1; 0 disables)")
    parser.add_argument("--predict-factor", type=float, default=1.5,
                        help="skip a size whose peak RSS or run time, extrapolated linearly in the edges from the "
                             "smaller sizes, exceeds this times the limit (default 1.5; 0: always try)")
    parser.add_argument("--tolerance", type=float, default=0.25,
                        help="'constant' means per-edge ratios to the smallest size within 1 +- this (default 0.25)")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="before each configuration wait up to this many seconds for other processes to use "
                             "< 0.3 cores (default 0: off)")
    parser.add_argument("--quick", action="store_true", help="smoke test: nodes 200 400, 3 reps, 1 warm-up, "
                                                             "budget 5 s, e3nn eager (numbers mean nothing)")
    parser.add_argument("--json", help="write raw results (rewritten after every configuration)")
    parser.add_argument("--markdown", help="write the tables and the run details to this file")
    parser.add_argument("--plot", help="write a log-log PNG of time and memory against edges (needs matplotlib)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the measured results of the --json file of an interrupted run (same sizes) and "
                             "run only the rest")
    parser.add_argument("--from-json", help="re-make the tables / markdown / plot from a saved --json; run nothing")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker_main(args.worker[0], json.loads(args.worker[1]))
        return 0
    if args.plot:
        require_matplotlib()  # fail now, not after hours of measuring
    if args.from_json:
        with open(args.from_json) as fh:
            state = json.load(fh)
        args.json = None
        _write_outputs(args, state)
        return 0

    args = _resolve(args)
    passes = [p.strip() for p in args.passes.split(",") if p.strip() in PASSES]
    have_e3nn = not args.no_e3nn and all(importlib.util.find_spec(m) is not None for m in ("torch", "e3nn"))
    series = series_list([m.strip() for m in args.conv_modes.split(",") if m.strip()],
                         [m.strip() for m in args.attention_modes.split(",") if m.strip()],
                         args.e3nn_mode, have_e3nn, args.only)
    if not series:
        parser.error("no configuration left (check --only, --conv-modes, --attention-modes)")

    t_start = time.time()
    machine = _common.machine_report()
    print(_common.format_report(machine, "Machine"), flush=True)
    avail = mem_available_bytes()
    limit = args.max_rss_gb * GIB
    floor = args.min_available_gb * GIB
    print(f"memory guard: {args.max_rss_gb:.1f} GiB RSS per configuration; MemAvailable floor "
          f"{args.min_available_gb:.1f} GiB (MemAvailable now {avail / GIB:.1f} GiB)", flush=True)
    if avail < limit + floor:
        print(f"warning: MemAvailable {avail / GIB:.1f} GiB < limit + floor: a configuration may be killed by the "
              f"floor before it reaches the limit (reported as such)", flush=True)

    graphs = []
    for n in args.nodes:
        g = graph_stats(n)
        graphs.append(g)
        print(f"graph N={n:,}: E={g['edges']:,}, box {g['box']:.2f}, in-degree mean {g['mean_degree']:.2f} "
              f"max {g['max_degree']}", flush=True)
    preload = os.environ.get("LD_PRELOAD")
    state = {
        "machine": machine,
        "command": " ".join(([f"LD_PRELOAD={preload}"] if preload else []) + ["python", "benchmarks/bench_scaling.py"])
                   + " " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "args": vars(args),
        "limits": {"max_rss_bytes": limit, "min_available_bytes": floor, "mem_available_start_bytes": avail},
        "code": code_version(),
        "graphs": graphs,
        "results": [],
    }
    print(f"tfequivariant: commit {state['code']['commit']}, modified {state['code']['modified'] or 'none'}, "
          f"sources sha256 {state['code']['tfequivariant_sha256']}", flush=True)
    previous = previous_results(args.json, graphs) if args.resume else {}
    if args.resume:
        print(f"--resume: {len(previous)} results kept from {args.json}", flush=True)
        stale = {r.get("code_sha256") for r in previous.values()} - {state["code"]["tfequivariant_sha256"], None}
        if stale:
            print(f"warning: kept results measured other tfequivariant sources ({', '.join(map(str, stale))})",
                  flush=True)
    guard = ScalingGuard(limit, floor)
    history = {}
    try:
        for g in graphs:  # size-major: the small sizes of every configuration first
            for s in series:
                for pass_ in passes:
                    key = (s["workload"], s["label"])
                    warmup = args.warmup
                    if s["kind"].endswith("e3nn") and s["cfg"]["mode"].startswith("compile"):
                        warmup = max(warmup, 3)  # compiled forward and backward settle after 2 calls
                    rec = {"workload": s["workload"], "label": s["label"], "nodes": g["nodes"], "edges": g["edges"],
                           "max_degree": g["max_degree"], "pass": pass_,
                           "code_sha256": state["code"]["tfequivariant_sha256"]}
                    skip = plan(history, key, pass_, g["nodes"], g["edges"], limit_bytes=limit,
                                timeout_s=args.timeout, warmup=warmup, factor=args.predict_factor)
                    if (*key, pass_, g["nodes"]) in previous:
                        rec = previous[(*key, pass_, g["nodes"])]
                    elif skip:
                        rec.update({"status": skip[0], "reason": skip[1]})
                    else:
                        if args.quiet_wait > 0:
                            _common.wait_for_quiet(timeout=args.quiet_wait)
                        cfg = {**s["cfg"], "nodes": g["nodes"], "pass": pass_, "warmup": warmup, "reps": args.reps,
                               "budget_s": args.budget}
                        rec.update(run_config(s["kind"], cfg, guard, args.timeout))
                    history[(key, pass_, g["nodes"])] = rec
                    state["results"].append(rec)
                    _print_progress(rec)
                    state["elapsed_s"] = time.time() - t_start
                    _write_outputs(args, state, final=False)
    finally:
        guard.stop()
    state["elapsed_s"] = time.time() - t_start
    _write_outputs(args, state)
    print(f"total {state['elapsed_s'] / 60:.1f} min")
    return 0


def _print_progress(r):
    head = (f"{r['workload']:9s} {r['label']:22s} N={r['nodes']:>7,} E={r['edges']:>9,} {r['pass']:6s} "
            + ("(earlier run) " if r.get("resumed") else ""))
    if r["status"] == STATUS_OK:
        ns, b = per_edge(r)
        print(head + f"median {r['median_ms']:10.1f} ms  reps {r['reps']:2d}  {ns:8.1f} ns/edge  peak "
              f"{r['peak_mb']:8.0f} MB  {b:8.0f} B/edge  wall {r['wall_s']:.0f} s  foreign load "
              f"{r['foreign_cores']:.2f} cores", flush=True)
    else:
        print(head + f"{r['status']}: {r['reason']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
