"""Run the three benchmarks and print one summary table.

Runs ``bench_spherical_harmonics.py``, ``bench_point_convolution.py`` and
``bench_se3_attention.py`` one after another, each as its own subprocess that
writes a JSON file (``--json``), then prints ONE table with a forward and a
forward+backward row per workload:

* the tfequivariant median (ms) in eager, ``tf.function`` and XLA mode;
* e3nn's median in its best mode, and which mode that is;
* the ratio tfequivariant best / e3nn best (below 1: tfequivariant is faster);
* the peak resident memory of each side's best mode;
* the achieved rate of each side's best mode: GFLOP/s for the convolution and
  the attention (the scripts' FLOP counts; forward+backward counted as 3x the
  forward), GB/s for the harmonics (forward only: the script defines bytes
  moved for the forward pass alone).

Every number comes from the JSON the benchmark wrote; the definitions are the
benchmarks' own (see their ``--help``). A benchmark that fails, is killed or
times out becomes a ``FAILED`` row with the reason, and the other rows still
print; a single mode that failed inside a benchmark shows ``error``/``killed``
in its cell, with the reason under the table. The raw JSON files and the full
console output of each benchmark are kept in ``--out-dir``.

Usage:
    python benchmarks/run_all.py                        # full sizes (long: an hour or more on 2 cores)
    python benchmarks/run_all.py --quick --no-e3nn      # smoke run, a few minutes
    python benchmarks/run_all.py --only conv --nodes 500 --reps 5 --markdown /tmp/conv.md
    python benchmarks/run_all.py --out-dir runs/today --reuse conv attention   # rerun sh only
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        python benchmarks/run_all.py --markdown /tmp/summary_tcmalloc.md

``--quick`` runs tiny sizes (20,000 vectors at lmax 2; 60-node graphs; 3 timed
calls; one warm-up; e3nn in eager mode only, since torch.compile's compile time
would dominate a smoke run; the convolution without its extra
``self_interaction=True`` runs and without waiting for a quiet machine). Its
numbers say nothing about performance. The size options (``--n``, ``--lmax``,
``--nodes``, ``--reps``, ``--warmup``) and the raw pass-through strings
(``--sh-args``, ``--conv-args``, ``--attention-args``) are appended after the
``--quick`` settings, so they override them.

``--reuse NAME ...`` takes those benchmarks' results from the JSON an earlier run
left in ``--out-dir`` instead of running them again (to rerun one benchmark that
failed or was disturbed and still print the one table); the table's notes and the
markdown say which results were reused and when their JSON was written.
"""

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common  # noqa: E402
from bench_spherical_harmonics import forward_bytes as sh_forward_bytes  # noqa: E402

BENCHMARKS = {  # name -> (script, title)
    "sh": ("bench_spherical_harmonics.py", "spherical harmonics"),
    "conv": ("bench_point_convolution.py", "PointConvolution"),
    "attention": ("bench_se3_attention.py", "SE3Attention"),
}
QUICK_ARGS = {
    "sh": ["--n", "20000", "--lmax", "2", "--repeat", "3", "--warmup", "1", "--torch-modes", "eager"],
    "conv": ["--nodes", "60", "--reps", "3", "--warmup", "1", "--budget", "5", "--quiet-wait", "0",
             "--retries", "0", "--si-modes", "", "--e3nn-modes", "eager", "--node-chunks", "8"],
    "attention": ["--nodes", "60", "--reps", "3", "--warmup", "1", "--budget", "5", "--e3nn-modes", "eager",
                  "--max-rss-gb", "4"],  # the receiver blocks' XLA compile of 4 slot tiers, forward+backward: > 2 GB
}
QUICK_TIMEOUT_S = 1200.0
PASSES = ("fwd", "fwdbwd")
PASS_NAMES = {"fwd": "forward", "fwdbwd": "forward+backward"}
TFE_MODES = ("eager", "function", "xla")
MODE_NAMES = {("tfe", "eager"): "eager", ("tfe", "function"): "tf.function", ("tfe", "xla"): "XLA",
              ("tfe", "xla_pool"): "XLA+TF pool",
              ("e3nn", "eager"): "eager", ("e3nn", "script"): "TorchScript", ("e3nn", "compile"): "torch.compile"}
HEADER = ["workload", "pass", "tfe eager ms", "tfe tf.function ms", "tfe XLA ms", "e3nn best ms (mode)",
          "tfe best / e3nn best", "peak tfe", "peak e3nn", "step tfe", "step e3nn", "rate tfe", "rate e3nn"]


def mode_name(side, mode):
    if side == "e3nn" and mode.startswith("compile:"):
        return f"torch.compile({mode.split(':', 1)[1]})"
    return MODE_NAMES.get((side, mode), mode)


# -- JSON -> records ------------------------------------------------------------------------
# A record is one (workload, pass, side, mode) measurement:
#   {"group", "variant", "pass", "side", "mode", "median_ms", "reduced", "peak_bytes", "step_bytes", "rate", "unit",
#    "error"}
# "group" is what e3nn is compared within (one lmax, the convolution graph, the attention graph);
# "variant" separates tfequivariant rows of one group (per_node / per_edge convolution).
def _record(group, variant, pass_, side, mode, r, rate_of=None, unit=None, peak_bytes=None, step_bytes=None):
    rec = {"group": group, "variant": variant, "pass": pass_, "side": side, "mode": mode, "median_ms": None,
           "reduced": False, "alone": False, "peak_bytes": None, "step_bytes": None, "rate": None, "unit": unit,
           "error": None}
    if r is None or "error" in r:
        rec["error"] = "missing" if r is None else str(r["error"])
        return rec
    rec["median_ms"] = float(r["timing"]["median_ms"]) if "timing" in r else float(r["median_ms"])
    rec["reduced"] = bool(r.get("reduced", False))
    rec["alone"] = bool(r.get("retried_alone", False))  # attention: measured again alone after a memory-guard kill
    rec["peak_bytes"] = peak_bytes
    rec["step_bytes"] = step_bytes
    if rate_of is not None and rec["median_ms"] > 0:
        rec["rate"] = rate_of / (rec["median_ms"] / 1e3) / 1e9
    return rec


def records_sh(data):
    """Records of ``bench_spherical_harmonics.py --json``: one group per lmax."""
    n = int(data["args"]["n"])
    out = []
    for r in data["results"]:
        lmax, side = int(r["lmax"]), "tfe" if r["framework"] == "tf" else "e3nn"
        group = f"{BENCHMARKS['sh'][1]} lmax={lmax}, {n:,} vectors"
        for pass_, key in (("fwd", "forward"), ("fwdbwd", "forward_backward")):
            res = r if "error" in r else r.get(key)
            peak = None if res is None or "error" in res else res.get("peak_extra_bytes")
            step = None if res is None or "error" in res else res.get("step_extra_bytes")
            nbytes = sh_forward_bytes(n, lmax) if pass_ == "fwd" else None
            out.append(_record(group, "", pass_, side, r["mode"], res, nbytes, "GB/s", peak, step))
    return out


def _split_label(label):
    """``"e3nn compile"`` -> ("e3nn", "compile", ""); ``"tfe per_node xla +SI"`` -> ("tfe", "xla", "per_node +SI")."""
    side, rest = label.split(" ", 1)
    if side == "e3nn":
        return "e3nn", rest, ""
    parts = rest.split()
    mode = next((p for p in parts if p in TFE_MODES), parts[-1])
    return "tfe", mode, " ".join(p for p in parts if p != mode)


def _records_graph(data, name, flops_key):
    g = data["graph"]
    group = f"{BENCHMARKS[name][1]}, N={g['nodes']}, E={g['edges']}"
    out = []
    for r in data["results"]:
        side, mode, variant = _split_label(r["label"])
        pass_ = r["pass"]
        useful = data["flops"][flops_key(variant)] * (3 if pass_ == "fwdbwd" else 1)
        peak, step = (None if v is None or v != v else v * 2**20 for v in (r.get("peak_mb"), r.get("step_mb")))
        out.append(_record(group, variant, pass_, side, mode, r, useful, "GFLOP/s", peak, step))
    return out


def records_conv(data):
    """Records of ``bench_point_convolution.py --json``; per_node and so2 rates use their own FLOP counts."""
    return _records_graph(data, "conv", lambda v: "per_node_total" if "per_node" in v
                          else "so2_total" if "so2" in v else "per_edge_total")


def records_attention(data):
    """Records of ``bench_se3_attention.py --json`` (per-edge FLOPs, both sides)."""
    return _records_graph(data, "attention", lambda v: "per_edge_total")


PARSERS = {"sh": records_sh, "conv": records_conv, "attention": records_attention}


# -- records -> table -----------------------------------------------------------------------
def _fmt_ms(rec):
    if rec is None:
        return "-"
    if rec["error"] is not None:
        return "killed" if "kill" in rec["error"] else "error"
    v = rec["median_ms"]
    return ((f"{v:.1f}" if v >= 10 else f"{v:.2f}") + ("*" if rec["reduced"] else "")
            + (" (alone)" if rec.get("alone") else ""))


def _fmt_rate(rec):
    if rec is None or rec["rate"] is None:
        return "-"
    return f"{rec['rate']:.1f} {rec['unit']}" if rec["rate"] >= 1 else f"{rec['rate']:.2f} {rec['unit']}"


def _best(recs):
    ok = [r for r in recs if r["error"] is None]
    return min(ok, key=lambda r: r["median_ms"]) if ok else None


def summary_rows(outcomes, strict=False):
    """The summary table's rows and the notes to print under it.

    Args:
        outcomes: dict benchmark name (``sh``, ``conv``, ``attention``) -> ``{"data": <its JSON>}``
            or ``{"error": <why it has no results>, "log": <optional path>}``, in row order.
        strict: re-raise a JSON that cannot be parsed instead of turning it into a FAILED row.

    Returns:
        ``(rows, notes)``: rows are lists of cells in ``HEADER`` order.
    """
    rows, notes = [], []

    def failed(name, reason, log=None):
        first = " ".join(str(reason).split())
        rows.append([BENCHMARKS[name][1], "FAILED", first if len(first) <= 100 else first[:97] + "..."]
                    + [""] * (len(HEADER) - 3))
        notes.append(f"{BENCHMARKS[name][1]} FAILED: {first}" + (f" (log: {log})" if log else ""))

    for name, outcome in outcomes.items():
        if "error" in outcome:
            failed(name, outcome["error"], outcome.get("log"))
            continue
        try:
            recs = PARSERS[name](outcome["data"])
        except Exception as e:
            if strict:
                raise
            failed(name, f"could not read its JSON: {type(e).__name__}: {e}", outcome.get("log"))
            continue
        if not recs:
            failed(name, "its JSON holds no results")
            continue
        for r in recs:
            if r["error"] is not None:
                label = " ".join(p for p in (r["group"], r["variant"], r["side"], mode_name(r["side"], r["mode"]),
                                             PASS_NAMES[r["pass"]]) if p)
                notes.append(f"{label}: {' '.join(r['error'].split())[:300]}")
        groups = list(dict.fromkeys(r["group"] for r in recs))
        for group in groups:
            in_group = [r for r in recs if r["group"] == group]
            variants = list(dict.fromkeys(r["variant"] for r in in_group if r["side"] == "tfe"))
            for variant in variants or [""]:
                for pass_ in PASSES:
                    tfe = [r for r in in_group if r["side"] == "tfe" and r["variant"] == variant and r["pass"] == pass_]
                    e3 = [r for r in in_group if r["side"] == "e3nn" and r["pass"] == pass_]
                    if not tfe and not e3:
                        continue
                    by_mode = {r["mode"]: r for r in tfe}
                    tb, eb = _best(tfe), _best(e3)
                    if eb is not None:
                        e3_cell = f"{_fmt_ms(eb)} ({mode_name('e3nn', eb['mode'])})"
                    else:
                        e3_cell = "-" if not e3 else _fmt_ms(e3[0])
                    if tb is not None and eb is not None:
                        ratio = (f"{tb['median_ms'] / eb['median_ms']:.2f} "
                                 f"({mode_name('tfe', tb['mode'])} / {mode_name('e3nn', eb['mode'])})")
                    else:
                        ratio = "-"
                    workload = group + (f", {variant}" if variant else "")
                    rows.append([workload, PASS_NAMES[pass_]]
                                + [_fmt_ms(by_mode.get(m)) for m in TFE_MODES]
                                + [e3_cell, ratio,
                                   _common.format_bytes(tb["peak_bytes"]) if tb else "-",
                                   _common.format_bytes(eb["peak_bytes"]) if eb else "-",
                                   _common.format_bytes(tb["step_bytes"]) if tb else "-",
                                   _common.format_bytes(eb["step_bytes"]) if eb else "-",
                                   _fmt_rate(tb), _fmt_rate(eb)])
    return rows, notes


def format_summary(rows, notes, e3nn_skipped=False, reused=None):
    """The table (markdown) and the lines under it (``reused``: name -> where its JSON came from)."""
    lines = [_common.markdown_table(HEADER, rows), ""]
    lines.append("Medians in ms (* = fewer timed calls than asked: time budget; (alone) = killed by the "
                 "attention benchmark's memory guard while all its workers of the pass were alive, then "
                 "measured with no other worker alive). Ratio: tfequivariant's best "
                 "mode / e3nn's best mode, below 1 means tfequivariant is faster. Peak: resident memory of "
                 "each side's best mode above its RSS before the first call (harmonics: warm-up included; "
                 "convolution, attention: timed calls only). Step: the peak of the timed calls above "
                 "the RSS of the warmed-up process after its allocator returned its free pages (what one "
                 "call needs on top of the compiled program, weights and inputs). Rate: forward bytes "
                 "(harmonics) or FLOPs (forward+backward = 3x forward) over the median, as each benchmark "
                 "defines them.")
    if e3nn_skipped:
        lines.append("e3nn skipped (--no-e3nn).")
    if reused:
        lines += ["", "Reused from an earlier run (--reuse):"] + [f"- {n}: {w}" for n, w in reused.items()]
    if notes:
        lines += ["", "Failures:"] + [f"- {n}" for n in notes]
    return "\n".join(lines)


# -- running the benchmarks ------------------------------------------------------------------
def _last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def run_benchmark(cmd, log_path, timeout=None, verbose=False):
    """Run one benchmark (its own process group); return ``(returncode, reason or None, seconds)``.

    Its combined stdout and stderr go to ``log_path`` (and to our stdout with ``verbose``).
    On a timeout or Ctrl-C its whole process group (it and its workers) is killed.
    """
    t0 = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, start_new_session=True, cwd=os.path.dirname(HERE))

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if verbose:
                    sys.stdout.write("    " + line)
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()

        def kill_group():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()

        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group()
            reader.join(5)
            return proc.returncode, f"timed out after {timeout:.0f} s (killed)", time.time() - t0
        except KeyboardInterrupt:
            kill_group()
            reader.join(5)
            return proc.returncode, "interrupted (Ctrl-C)", time.time() - t0
        reader.join(30)
    if rc < 0:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = f"signal {-rc}"
        return rc, f"killed by {sig}" + (" (out of memory?)" if -rc == signal.SIGKILL else ""), time.time() - t0
    if rc != 0:
        return rc, f"exit code {rc}: {_last_line(log_path)}", time.time() - t0
    return rc, None, time.time() - t0


def build_commands(args):
    """Benchmark name -> argv (without ``--json``), in run order."""
    cmds = {}
    for name in args.only:
        script, _ = BENCHMARKS[name]
        argv = [sys.executable, os.path.join(HERE, script)]
        if args.quick:
            quick = QUICK_ARGS[name]
            if args.no_e3nn:  # drop the e3nn mode choice: no e3nn process runs
                i = next(i for i, a in enumerate(quick) if a in ("--torch-modes", "--e3nn-modes"))
                quick = quick[:i] + quick[i + 2:]
            argv += quick
        if args.no_e3nn:
            argv += ["--frameworks", "tf"] if name == "sh" else ["--no-e3nn"]
        if name == "sh":
            argv += ["--n", str(args.n)] if args.n else []
            argv += ["--lmax", *map(str, args.lmax)] if args.lmax else []
            argv += ["--repeat", str(args.reps)] if args.reps else []
        else:
            argv += ["--nodes", str(args.nodes)] if args.nodes else []
            argv += ["--reps", str(args.reps)] if args.reps else []
        argv += ["--warmup", str(args.warmup)] if args.warmup is not None else []
        argv += shlex.split(getattr(args, f"{name}_args") or "")
        cmds[name] = argv
    return cmds


def date_utc():
    try:
        return subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")


def machine_lines():
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    return (f"{_common.cpu_model()}, {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable), "
            f"{mem_kb / 2**20:.1f} GiB memory")


def allocators_seen(outcomes):
    """The allocators the benchmark processes report as loaded."""
    seen = set()
    for outcome in outcomes.values():
        for r in outcome.get("data", {}).get("results", []):
            a = r.get("allocator")
            if isinstance(a, dict):
                a = a.get("allocator")
            if a:
                seen.add(a)
    return sorted(seen)


def _parse_only(values, option="--only"):
    """Benchmark names from ``--only``/``--reuse`` values (space or comma separated), in run order."""
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        raise argparse.ArgumentTypeError(f"{option}: unknown {bad}; choose from {list(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]  # run order: sh, conv, attention


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (numbers meaningless)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="run only these: sh, conv, attention (space or comma separated)")
    parser.add_argument("--no-e3nn", action="store_true", help="tfequivariant only (no torch/e3nn processes)")
    parser.add_argument("--n", type=int, help="harmonics: number of vectors (its default: 1,000,000)")
    parser.add_argument("--lmax", type=int, nargs="+", help="harmonics: degrees 0..lmax (its default: 2 3 6)")
    parser.add_argument("--nodes", type=int, help="convolution and attention: graph nodes (their default: 1000)")
    parser.add_argument("--reps", type=int, help="timed calls per configuration (harmonics --repeat, others --reps)")
    parser.add_argument("--warmup", type=int, help="untimed warm-up calls (all three)")
    parser.add_argument("--sh-args", default="", metavar="ARGS",
                        help="extra arguments for bench_spherical_harmonics.py as one string; write it "
                             "with '=' when it starts with '-': --sh-args='--torch-modes eager'")
    parser.add_argument("--conv-args", default="", metavar="ARGS",
                        help="extra arguments for bench_point_convolution.py, e.g. --conv-args='--quiet-wait 0'")
    parser.add_argument("--attention-args", default="", metavar="ARGS",
                        help="extra arguments for bench_se3_attention.py, e.g. --attention-args='--budget 60'")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help=f"kill a benchmark after this long (default: none; {QUICK_TIMEOUT_S:.0f} with --quick)")
    parser.add_argument("--out-dir", help="keep each benchmark's JSON and console log here (default: a new temp dir)")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="NAME",
                        help="take these benchmarks' results from the JSON of an earlier run in --out-dir "
                             "instead of running them (sh, conv, attention)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the table with date, machine, allocator and load averages to FILE")
    parser.add_argument("--verbose", action="store_true", help="echo the benchmarks' own output while they run")
    args = parser.parse_args(argv)
    try:
        args.only = _parse_only(args.only) if args.only else list(BENCHMARKS)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    try:
        args.reuse = _parse_only(args.reuse, "--reuse") if args.reuse else []
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.reuse and not args.out_dir:
        parser.error(f"--reuse needs the --out-dir of the earlier run. Received: --reuse {' '.join(args.reuse)}")
    for name in args.reuse:
        path = os.path.join(args.out_dir, f"{name}.json")
        if name not in args.only:
            parser.error(f"--reuse {name}: {name} is not among the benchmarks to report (--only {' '.join(args.only)})")
        if not os.path.exists(path):
            parser.error(f"--reuse {name}: no earlier result at {path}")
    timeout = args.timeout if args.timeout is not None else (QUICK_TIMEOUT_S if args.quick else None)
    if timeout is not None and timeout <= 0:
        timeout = None

    out_dir = args.out_dir or tempfile.mkdtemp(prefix="tfe_bench_")
    os.makedirs(out_dir, exist_ok=True)
    date_start, load_before = date_utc(), [round(v, 2) for v in os.getloadavg()]
    t_start = time.time()
    print(f"[run_all] {date_start}; load average {load_before}; JSON and logs in {out_dir}", flush=True)

    outcomes, commands, interrupted, reused = {}, {}, False, {}
    for name, cmd in build_commands(args).items():
        json_path = os.path.join(out_dir, f"{name}.json")
        log_path = os.path.join(out_dir, f"{name}.log")
        if name in args.reuse:
            written = datetime.datetime.fromtimestamp(os.path.getmtime(json_path), datetime.timezone.utc)
            reused[name] = f"{json_path} (written {written:%Y-%m-%d %H:%M} UTC)"
            try:
                with open(json_path) as f:
                    outcomes[name] = {"data": json.load(f), "log": log_path}
            except ValueError as e:
                outcomes[name] = {"error": f"reused JSON is unreadable: {type(e).__name__}: {e}"}
            print(f"[run_all] {name}: reused {reused[name]}", flush=True)
            continue
        cmd = cmd + ["--json", json_path]
        commands[name] = cmd
        if interrupted:
            outcomes[name] = {"error": "not run (interrupted)"}
            continue
        if os.path.exists(json_path):
            os.remove(json_path)
        print(f"[run_all] {name}: {shlex.join(cmd)}", flush=True)
        rc, reason, seconds = run_benchmark(cmd, log_path, timeout=timeout, verbose=args.verbose)
        interrupted = reason is not None and reason.startswith("interrupted")
        if reason is None:
            try:
                with open(json_path) as f:
                    outcomes[name] = {"data": json.load(f), "log": log_path}
            except (OSError, ValueError) as e:
                reason = f"finished but its JSON is unreadable: {type(e).__name__}: {e}"
        if reason is not None:
            outcomes[name] = {"error": reason, "log": log_path}
        status = "ok" if reason is None else f"FAILED: {reason}"
        print(f"[run_all] {name}: {status} after {seconds:.0f} s (log: {log_path})", flush=True)

    load_after = [round(v, 2) for v in os.getloadavg()]
    rows, notes = summary_rows(outcomes)
    summary = format_summary(rows, notes, e3nn_skipped=args.no_e3nn, reused=reused)
    print()
    print(summary)
    print(f"\nload average (1, 5, 15 min): before {load_before}, after {load_after}; "
          f"total {(time.time() - t_start) / 60:.1f} min")

    if args.markdown:
        preload = os.environ.get("LD_PRELOAD")
        seen = allocators_seen(outcomes)
        with open(args.markdown, "w") as f:
            f.write("## Benchmark summary" + (" (--quick smoke run: numbers meaningless)" if args.quick else "")
                    + "\n\n")
            f.write(f"- date (`date -u`): {date_start} (start), {date_utc()} (end)\n")
            f.write(f"- machine: {machine_lines()}\n")
            f.write(f"- allocator: LD_PRELOAD={preload or '(unset)'}; loaded in the benchmark "
                    f"processes: {', '.join(seen) if seen else 'not reported'}\n")
            f.write(f"- load average (1, 5, 15 min): before {load_before}, after {load_after}\n")
            own = ["python", "benchmarks/run_all.py"] + list(sys.argv[1:] if argv is None else argv)
            f.write(f"- command: `{shlex.join(own)}` (total {(time.time() - t_start) / 60:.1f} min)\n")
            for name, cmd in commands.items():
                sub = ["python", os.path.relpath(cmd[1], os.path.dirname(HERE))] + cmd[2:]
                f.write(f"- {name}: `{shlex.join(sub)}`\n")
            f.write("\n" + summary + "\n")
        print(f"wrote {args.markdown}")
    return 0 if all("data" in o for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
