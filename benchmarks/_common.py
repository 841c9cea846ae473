"""Shared helpers for the benchmarks: timing, peak memory, machine and allocator report.

Every benchmark in this folder follows DESIGN.md section 5 ("measure honestly"):

* time with warm-up runs excluded, report the median and the interquartile range;
* run each framework/mode in its own fresh subprocess (``run_isolated``), so thread
  pools, allocator caches and JIT caches of one case cannot slow down or help the
  next, and so that both frameworks run under the same ``LD_PRELOAD``;
* print the machine, the allocator actually loaded and the threading settings.

Peak memory: TensorFlow's ``tf.config.experimental.get_memory_info("CPU:0")`` raises
``ValueError: Allocator stats not available`` on CPU (TF 2.21) and PyTorch has no CPU
allocator statistics, so both are measured the same way, from the operating system:
``PeakRSS`` resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``,
Linux >= 4.0) and reads ``VmHWM`` afterwards; where that reset is not allowed it polls
the resident set size from a background thread (1 ms period) instead. It measures
resident memory, so memory an allocator keeps cached from earlier calls counts as
already present: measure from a baseline taken before the first call of the workload
(``PeakRSS(baseline=...)``) to count it.

Typical use inside a benchmark case (a subprocess)::

    base = rss_bytes()
    with PeakRSS(baseline=base) as mem:
        timing = time_callable(step, warmup=3, repeat=15)
    emit_result({"timing": timing.as_dict(), "peak_extra_bytes": mem.extra_bytes})

and in the driver::

    result = run_isolated([sys.executable, __file__, "--case", json.dumps(case)])
"""

import dataclasses
import datetime
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

RESULT_MARKER = "@@BENCH_RESULT@@ "


# -- timing -----------------------------------------------------------------------------
@dataclasses.dataclass
class Timing:
    """Wall-clock samples of one timed callable, in seconds."""

    samples: list

    def _ms(self, q):
        return 1e3 * float(np.quantile(np.asarray(self.samples), q))

    @property
    def n(self):
        return len(self.samples)

    @property
    def median_ms(self):
        return 1e3 * statistics.median(self.samples)

    @property
    def q1_ms(self):
        return self._ms(0.25)

    @property
    def q3_ms(self):
        return self._ms(0.75)

    @property
    def iqr_ms(self):
        return self.q3_ms - self.q1_ms

    @property
    def min_ms(self):
        return 1e3 * min(self.samples)

    def as_dict(self):
        return {
            "n": self.n,
            "median_ms": self.median_ms,
            "q1_ms": self.q1_ms,
            "q3_ms": self.q3_ms,
            "iqr_ms": self.iqr_ms,
            "min_ms": self.min_ms,
            "samples_ms": [1e3 * s for s in self.samples],
        }

    @classmethod
    def from_dict(cls, d):
        return cls([s / 1e3 for s in d["samples_ms"]])


def time_callable(fn, *, warmup=3, repeat=15, min_seconds=0.0, max_repeat=1000, sync=None):
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``repeat`` timed ones.

    Args:
        fn: callable without arguments; its result is passed to ``sync``.
        warmup: untimed calls first (tracing, compilation, allocator warm-up).
        repeat: minimum number of timed calls.
        min_seconds: keep timing until this much wall time has been spent (for fast
            callables), up to ``max_repeat`` calls.
        sync: optional ``sync(result)`` called inside the timed region, for
            frameworks that return before the work is done (GPU, async eager).

    Returns:
        ``Timing`` with one sample per timed call.
    """
    for _ in range(warmup):
        out = fn()
        if sync is not None:
            sync(out)
        del out
    samples = []
    start_all = time.perf_counter()
    while len(samples) < repeat or (
        time.perf_counter() - start_all < min_seconds and len(samples) < max_repeat
    ):
        t0 = time.perf_counter()
        out = fn()
        if sync is not None:
            sync(out)
        samples.append(time.perf_counter() - t0)
        del out
    return Timing(samples)


def format_ms(timing):
    """``"12.3 ± 0.4"``: median and IQR in milliseconds, or ``"-"``."""
    if timing is None:
        return "-"
    if isinstance(timing, dict):
        timing = Timing.from_dict(timing)
    digits = 1 if timing.median_ms >= 10 else 2
    return f"{timing.median_ms:.{digits}f} ± {timing.iqr_ms:.{digits}f}"


# -- memory -----------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss_bytes():
    """Kernel high-water mark of the resident set (``VmHWM``) since start or last reset."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss():
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory():
    """Hand the allocator's cached free pages back to the kernel.

    tcmalloc (``MallocExtension_ReleaseFreeMemory``, when it is mapped into the process) and
    glibc (``malloc_trim(0)``). Used before a "step memory" baseline (``serve``'s ``settle``),
    so that pages kept free from the warm-up calls do not hide the memory a step needs.
    """
    import ctypes

    gc.collect()
    lib = ctypes.CDLL(None)
    for name, args in (("MallocExtension_ReleaseFreeMemory", ()), ("malloc_trim", (ctypes.c_size_t(0),))):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn(*args)


TF_NO_ONEDNN_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def step_memory_measurable():
    """Whether a step's own memory shows in the RSS after ``release_free_memory``.

    Not in a TensorFlow process with oneDNN's operations on (TensorFlow's default on x86):
    its CPU allocator then pools large blocks and never hands them back, so a warmed-up
    process already holds the step's working memory and the step figure would read ~0.
    ``TF_ENABLE_ONEDNN_OPTS=0`` (``TF_NO_ONEDNN_ENV``) gives TensorFlow plain malloc.
    """
    if "tensorflow" not in sys.modules:
        return True
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false")


def settled_rss_bytes():
    """The RSS after ``release_free_memory``: the baseline of a step's own memory."""
    release_free_memory()
    return rss_bytes()


def step_extra_bytes(peak_bytes, settled_bytes):
    """A step's own memory: its calls' peak RSS above ``settled_rss_bytes()`` taken before
    them; None where this process's allocator keeps freed memory (``step_memory_measurable``)."""
    return peak_bytes - settled_bytes if step_memory_measurable() else None


class PeakRSS:
    """Context manager: peak resident memory inside the block, above a baseline.

    Args:
        baseline: bytes to subtract from the peak; default the RSS on entry. Pass the
            RSS taken before a workload's first call to count allocator caches and
            JIT artefacts that warm-up calls left behind.
        poll_interval: seconds between samples when ``VmHWM`` cannot be reset.

    Attributes (after the block):
        peak_bytes, extra_bytes (``peak_bytes - baseline``), method (``"VmHWM"`` or
        ``"polled RSS"``).
    """

    def __init__(self, baseline=None, poll_interval=1e-3):
        self.baseline = baseline
        self.poll_interval = poll_interval

    def __enter__(self):
        gc.collect()
        if self.baseline is None:
            self.baseline = rss_bytes()
        self._polled = 0
        self._stop = None
        if reset_peak_rss():
            self.method = "VmHWM"
        else:
            self.method = "polled RSS"
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self._polled = max(self._polled, rss_bytes())
            time.sleep(self.poll_interval)

    def __exit__(self, *exc):
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._polled, rss_bytes())
        else:
            self.peak_bytes = peak_rss_bytes()
        self.extra_bytes = self.peak_bytes - self.baseline
        return False


def tf_allocator_stats(device="CPU:0"):
    """TensorFlow's own allocator statistics, or None where TF has none (CPU, TF 2.21)."""
    import tensorflow as tf

    try:
        return dict(tf.config.experimental.get_memory_info(device))
    except (ValueError, RuntimeError):
        return None


# -- machine, allocator, threads ------------------------------------------------------------
def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# TensorFlow's pooling CPU allocator: freed buffers stay in TensorFlow's pool instead of going
# back to malloc (under glibc, a large buffer would be a fresh mmap, faulted in on every call).
TF_POOL_ENV = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}


def tf_pool_setting():
    """This process's ``TF_CPU_ALLOCATOR_USE_BFC`` (None when unset), for the workers' reports."""
    return os.environ.get("TF_CPU_ALLOCATOR_USE_BFC")


def allocator():
    """The malloc this process runs on: what ``LD_PRELOAD`` asked for *and* what is mapped."""
    preload = os.environ.get("LD_PRELOAD", "")
    loaded = set()
    with open("/proc/self/maps") as f:
        for line in f:
            m = re.search(r"/(lib(?:tcmalloc\w*|jemalloc|mimalloc)[^/\s]*)$", line.strip())
            if m:
                loaded.add(m.group(1))
    name = "glibc malloc" if not loaded else ", ".join(sorted(loaded))
    return {"allocator": name, "LD_PRELOAD": preload or None}


def load_average():
    return os.getloadavg()


def _busy_cpu_seconds():
    # First line of /proc/stat: user nice system idle iowait irq softirq steal ... (ticks)
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds(pids=()):
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children only
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    for pid in pids:  # live children (workers): utime + stime of all their threads
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


class ForeignLoad:
    """Context manager: CPU cores used by *other* processes during the block, on average.

    Machines shared with other work (other developers' tests, CI) make timings noisy;
    this says how much. Counts this process, its waited-for children and the live
    processes ``pids`` (e.g. a ``Worker``) as "own". Resolution: one clock tick (10 ms).
    """

    def __init__(self, pids=()):
        self.pids = tuple(pids)

    def __enter__(self):
        self._t0, self._busy0 = time.perf_counter(), _busy_cpu_seconds()
        self._own0 = _own_cpu_seconds(self.pids)
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t0
        busy = _busy_cpu_seconds() - self._busy0
        own = _own_cpu_seconds(self.pids) - self._own0
        self.cores = max(0.0, (busy - own) / wall) if wall > 0 else 0.0
        return False


def wait_for_quiet(max_foreign_cores=0.3, window=2.0, timeout=300.0):
    """Wait (up to ``timeout`` s) until other processes use < ``max_foreign_cores`` cores.

    Returns the last measured foreign load, so a caller can record that it gave up.
    """
    deadline = time.perf_counter() + timeout
    while True:
        with ForeignLoad() as load:
            time.sleep(window)
        if load.cores < max_foreign_cores or time.perf_counter() > deadline:
            return load.cores


def machine_report():
    """A dict describing the machine and the process environment (no framework imports)."""
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        **allocator(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1_5_15": [round(v, 2) for v in load_average()],
    }


def tf_threading_report():
    """TF versions and threading (0 means TF's default: one thread per usable core)."""
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def torch_threading_report():
    import torch

    report = {
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
    }
    try:
        import e3nn

        report["e3nn"] = e3nn.__version__
    except ImportError:
        pass
    return report


def format_report(report, title=None):
    lines = [title] if title else []
    width = max(len(k) for k in report)
    lines += [f"  {k:<{width}} : {v}" for k, v in report.items()]
    return "\n".join(lines)


# -- memory bandwidth reference ---------------------------------------------------------
def copy_bandwidth(nbytes=400 * 2**20, repeat=10, warmup=2):
    """Memory bandwidth of a NumPy copy between two preallocated arrays.

    Counts bytes read plus bytes written (``2 * nbytes`` per copy), the same
    accounting as the benchmarks' "achieved bytes/s".
    """
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    timing = time_callable(lambda: np.copyto(dst, src), warmup=warmup, repeat=repeat)
    return {
        "nbytes": int(src.nbytes),
        "timing": timing.as_dict(),
        "bytes_per_s": 2 * src.nbytes / (timing.median_ms / 1e3),
    }


# -- isolated cases -------------------------------------------------------------------------
def emit_result(result):
    """Print a case's result for ``run_isolated`` (one JSON line after a marker)."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_isolated(argv, env=None, timeout=None):
    """Run one benchmark case in a fresh process; return the dict it ``emit_result``-ed.

    The child inherits this process' environment (``LD_PRELOAD`` included) plus ``env``.
    On failure returns ``{"error": ...}`` with the end of the child's stderr, so one
    broken mode does not lose the whole table.
    """
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return {"error": f"exit code {proc.returncode}:\n{tail}"}


# -- interleaved workers --------------------------------------------------------------------
# On a machine shared with other work, the load changes from one minute to the next, so
# timings taken one mode after another are not comparable. Interleaving fixes that: every
# mode lives in its own warmed-up process and the driver asks each in turn for one timed
# call, so all modes see the same load; idle workers block on a pipe and use no CPU.
def serve(steps, finish=None):
    """Worker side: answer ``call NAME``, ``settle NAME`` and ``finish`` commands on stdin.

    Args:
        steps: dict ``name -> callable()``; ``call NAME`` times one call of it.
        finish: optional ``finish() -> dict`` merged into the final result.

    ``settle NAME`` (sent by ``interleaved_timings`` between a step's warm-up and its timed
    calls) hands the allocator's free pages back (``release_free_memory``), takes the RSS as
    the step's settled baseline and resets the high-water mark.

    The final result holds, per step name (``memory``):

    * ``peak_extra_bytes``: peak RSS over all of the step's calls (warm-up included) above the
      RSS before the first call of any step: what running the step costs the process,
      compilation and the compiled program included;
    * ``timed_extra_bytes``: the same peak over the calls after ``settle`` only;
    * ``step_extra_bytes``: the peak over the calls after ``settle`` above the settled RSS:
      the memory one call needs on top of the warmed-up process (compiled program, weights
      and inputs excluded). Absent when the step was never settled or where the process's
      allocator keeps freed memory (``step_memory_measurable``).
    """
    base = rss_bytes()
    memory, current, active, settled = {}, None, None, {}

    def close():
        active.__exit__(None, None, None)
        record = {"peak_extra_bytes": active.extra_bytes, "method": active.method}
        if current in settled:
            rss0, before = settled[current]
            record["peak_extra_bytes"] = max(active.peak_bytes, before) - base
            record["timed_extra_bytes"] = active.peak_bytes - base
            record["settled_rss_bytes"] = rss0
            step = step_extra_bytes(active.peak_bytes, rss0)
            if step is not None:
                record["step_extra_bytes"] = step
        memory[current] = record

    emit_result({"ready": True})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "call":
            name = cmd[1]
            if name != current:
                if active is not None:
                    close()
                current, active = name, PeakRSS(baseline=base).__enter__()
            t0 = time.perf_counter()
            out = steps[name]()
            seconds = time.perf_counter() - t0
            del out
            emit_result({"seconds": seconds})
        elif cmd[0] == "settle":
            name = cmd[1]
            if name == current and active is not None and active.method == "VmHWM":
                before = peak_rss_bytes()
                settled[name] = (settled_rss_bytes(), before)
                reset_peak_rss()
            emit_result({"settled": name in settled})
        elif cmd[0] == "finish":
            if active is not None:
                close()
            emit_result({"memory": memory, **(finish() if finish else {})})
            return


class Worker:
    """Driver side of ``serve``: a benchmark case kept alive in its own process."""

    def __init__(self, argv, env=None):
        import tempfile

        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        self.error = None
        self._read()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(RESULT_MARKER):
                return json.loads(line[len(RESULT_MARKER) :])
        self._died()

    def _died(self):
        self._stderr.seek(0)
        tail = "\n".join(self._stderr.read().strip().splitlines()[-15:])
        self.error = f"exit code {self.proc.wait()}:\n{tail}"
        raise RuntimeError(self.error)

    def _send(self, line):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except OSError:  # the worker is gone (e.g. killed by a memory guard between two calls)
            self._died()

    def call(self, name):
        """One call of step ``name``; returns its wall time in seconds."""
        self._send(f"call {name}")
        return self._read()["seconds"]

    def settle(self, name):
        """Release the worker's free pages and take its settled RSS for step ``name`` (see ``serve``)."""
        self._send(f"settle {name}")
        return bool(self._read().get("settled", False))

    def finish(self):
        self._send("finish")
        result = self._read()
        self.proc.wait()
        return result

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def interleaved_timings(workers, steps, warmup=3, repeat=10, pause=0.02):
    """Round-robin timing of ``steps`` across ``workers`` (dict key -> ``Worker``).

    Each step is warmed up in every worker first, then each of the ``repeat`` rounds
    calls every worker once, starting with a different worker every round. A worker
    that fails is dropped (its error kept in ``worker.error``).

    Returns:
        dict ``(key, step) -> Timing`` and dict ``(key, step) -> cores used by other
        processes`` (averaged over all of that step's timed rounds, workers counted as own).
    """
    timings, loads = {}, {}
    keys = list(workers)
    for step in steps:
        alive = [k for k in keys if workers[k].error is None]
        samples = {k: [] for k in alive}
        for k in alive:
            try:
                for _ in range(warmup):
                    workers[k].call(step)
            except RuntimeError:
                samples.pop(k)
        for k in list(samples):
            try:
                workers[k].settle(step)
            except RuntimeError:
                samples.pop(k)
        with ForeignLoad(pids=[w.proc.pid for w in workers.values()]) as load:
            for r in range(repeat):
                order = [k for k in alive if k in samples]
                order = order[r % len(order) :] + order[: r % len(order)] if order else order
                for k in order:
                    try:
                        samples[k].append(workers[k].call(step))
                    except RuntimeError:
                        samples.pop(k)
                    time.sleep(pause)
        for k, s in samples.items():
            timings[(k, step)] = Timing(s)
            loads[(k, step)] = load.cores
    return timings, loads


# -- output -------------------------------------------------------------------------------------
def markdown_table(header, rows):
    """A GitHub markdown table from a header list and rows of cells."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    lines = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def format_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def format_rate(bytes_per_s):
    return "-" if bytes_per_s is None else f"{bytes_per_s / 1e9:.1f} GB/s"


def quiet_tensorflow():
    """Silence TF's C++ start-up logging in a benchmark subprocess (set before import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def python_executable():
    return sys.executable
