"""Spherical harmonics throughput: tfequivariant against e3nn on the same vectors.

Workload (DESIGN.md section 6): 1,000,000 float32 vectors from
``numpy.random.default_rng(0).normal(size=(1_000_000, 3))``, harmonics
``0..lmax`` (``1x0e+1x1o+...``) with ``normalize=True`` and component
normalization, for lmax 2, 3 and 6.

Modes, each in its own process (``_common.Worker``), timed round-robin so that all
modes see the same machine load (``_common.interleaved_timings``):

* tfequivariant: eager, ``tf.function``, ``tf.function(jit_compile=True)`` (XLA);
  opt-in ``xla_pool``: XLA with TensorFlow's pooling CPU allocator
  (``TF_CPU_ALLOCATOR_USE_BFC=true`` in that worker's environment), which reuses
  freed buffers instead of returning them to malloc. Under glibc's malloc every
  output of 32 MiB or more is a fresh ``mmap`` whose pages the kernel faults in
  and zeroes on first write, in both frameworks alike; the pool skips that;
* e3nn (if installed): eager, TorchScript (``e3nn.util.jit.compile`` with
  ``jit_mode="script"``) and ``torch.compile(fullgraph=True)``.

Each mode is timed for the forward pass and for forward+backward (the sum of all
outputs and its gradient with respect to the vectors; both frameworks return the
sum and the gradient, and the compiled modes compile the forward and the sum). Warm-up calls are excluded;
the tables give median ± IQR in ms, the ratio of tfequivariant's best mode to
e3nn's best mode, the forward's achieved bytes/s (12 B read + 4 (lmax+1)^2 B
written per vector) next to a NumPy copy's bandwidth, and the peak resident memory
above the RSS before the first call.

Run it under both allocators and compare (DESIGN.md section 5):

    python benchmarks/bench_spherical_harmonics.py
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        python benchmarks/bench_spherical_harmonics.py
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

TF_MODES = ("eager", "function", "xla", "xla_pool")
DEFAULT_TF_MODES = ("eager", "function", "xla")
# the environment each TF mode's worker adds to ours
TF_MODE_ENV = {"xla_pool": _common.TF_POOL_ENV}
TORCH_MODES = ("eager", "script", "compile")
MODE_LABELS = {
    ("tf", "eager"): "tfe eager",
    ("tf", "function"): "tfe tf.function",
    ("tf", "xla"): "tfe XLA",
    ("tf", "xla_pool"): "tfe XLA+TF pool",
    ("torch", "eager"): "e3nn eager",
    ("torch", "script"): "e3nn TorchScript",
    ("torch", "compile"): "e3nn torch.compile",
}
PASSES = ("forward", "forward_backward")
SAMPLE_ROWS = 16


def make_vectors(n):
    return np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)


def forward_bytes(n, lmax):
    return n * (3 * 4 + 4 * (lmax + 1) ** 2)


def _fingerprint(out):
    out = np.asarray(out)
    return {"sample": out[:SAMPLE_ROWS].tolist(), "sum": float(out.astype(np.float64).sum())}


# -- cases (run in a subprocess) ------------------------------------------------------------
def run_tf_case(lmax, mode, n):
    _common.quiet_tensorflow()
    import tensorflow as tf

    import tfequivariant as tfe

    x = tf.constant(make_vectors(n))
    ls = list(range(lmax + 1))

    def forward(v):
        return tfe.spherical_harmonics(ls, v, True, "component")

    def forward_backward(v):
        # The loss is returned too: a graph that only returns the gradient lets
        # Grappler/XLA prune the forward's output, which e3nn always computes.
        with tf.GradientTape() as tape:
            tape.watch(v)
            total = tf.reduce_sum(forward(v))
        return total, tape.gradient(total, v)

    if mode != "eager":
        jit = mode.startswith("xla")
        forward = tf.function(forward, jit_compile=jit)
        forward_backward = tf.function(forward_backward, jit_compile=jit)

    steps = {"forward": lambda: forward(x), "forward_backward": lambda: forward_backward(x)}

    def finish():
        return {
            "threads": _common.tf_threading_report(),
            "allocator": _common.allocator(),
            "TF_CPU_ALLOCATOR_USE_BFC": _common.tf_pool_setting(),
            "tf_allocator_stats": _common.tf_allocator_stats(),
            "forward": _fingerprint(forward(x)),
            "forward_backward": _fingerprint(forward_backward(x)[1]),
        }

    _common.serve(steps, finish)


def run_torch_case(lmax, mode, n, compile_mode="default"):
    import warnings

    import e3nn
    import torch
    from e3nn import o3

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript in torch >= 2.10
    x = torch.from_numpy(make_vectors(n))
    irreps = o3.Irreps.spherical_harmonics(lmax)
    if mode == "script":
        e3nn.set_optimization_defaults(jit_mode="script")
    sh = o3.SphericalHarmonics(irreps, normalize=True, normalization="component")
    if mode == "script":
        from e3nn.util.jit import compile as e3nn_compile

        sh = e3nn_compile(sh)

    def loss(v):
        return sh(v).sum()

    if mode == "compile":
        # Like tf.function above, the compiled graph covers the forward and the loss.
        options = dict(fullgraph=True, mode=None if compile_mode == "default" else compile_mode)
        sh, loss = torch.compile(sh, **options), torch.compile(loss, **options)

    x_grad = x.clone().requires_grad_(True)

    def forward():
        return sh(x)

    def forward_backward():
        total = loss(x_grad)
        (grad,) = torch.autograd.grad(total, x_grad)
        return total, grad

    steps = {"forward": forward, "forward_backward": forward_backward}

    def finish():
        return {
            "threads": _common.torch_threading_report(),
            "allocator": _common.allocator(),
            "forward": _fingerprint(forward().numpy()),
            "forward_backward": _fingerprint(forward_backward()[1].numpy()),
        }

    _common.serve(steps, finish)


# -- driver ---------------------------------------------------------------------------------------
def _e3nn_available():
    import importlib.util

    return importlib.util.find_spec("e3nn") is not None and importlib.util.find_spec("torch") is not None


def _best(results, framework, lmax, pass_):
    best = None
    for (fw, mode, l), res in results.items():
        if fw != framework or l != lmax or "error" in res:
            continue
        t = res[pass_]["timing"]["median_ms"]
        if best is None or t < best[1]:
            best = (mode, t)
    return best


def _check_agreement(results, lmax, pass_):
    """Largest difference of every mode's sample rows from the first mode's."""
    ref, worst = None, 0.0
    for (fw, mode, l), res in results.items():
        if l != lmax or "error" in res:
            continue
        sample = np.asarray(res[pass_]["sample"])
        if ref is None:
            ref = sample
        else:
            worst = max(worst, float(np.abs(sample - ref).max()))
    return worst


def summarize(results, args, copy):
    frameworks = ["tf"] + (["torch"] if any(k[0] == "torch" for k in results) else [])
    modes = [(fw, m) for fw in frameworks for m in (TF_MODES if fw == "tf" else TORCH_MODES)]
    modes = [fm for fm in modes if any(k[:2] == fm for k in results)]
    header = ["lmax", "pass"] + [MODE_LABELS[fm] for fm in modes] + [
        "tfe best / e3nn best",
        "tfe best fwd GB/s",
        "e3nn best fwd GB/s",
        "numpy copy GB/s",
    ]
    rows, mem_rows = [], []
    for lmax in args.lmax:
        for pass_ in PASSES:
            row = [lmax, pass_.replace("_", "+")]
            mem_row = [lmax, pass_.replace("_", "+")]
            for fw, mode in modes:
                res = results.get((fw, mode, lmax))
                if res is None:
                    row.append("-")
                    mem_row.append("-")
                elif "error" in res:
                    row.append("error")
                    mem_row.append("error")
                else:
                    row.append(_common.format_ms(res[pass_]["timing"]))
                    mem_row.append(_common.format_bytes(res[pass_].get("peak_extra_bytes")))
            tf_best = _best(results, "tf", lmax, pass_)
            th_best = _best(results, "torch", lmax, pass_)
            if tf_best and th_best:
                row.append(f"{tf_best[1] / th_best[1]:.2f} ({tf_best[0]} / {th_best[0]})")
            else:
                row.append("-")
            nbytes = forward_bytes(args.n, lmax)
            for best in (tf_best, th_best):
                row.append(
                    f"{nbytes / (best[1] / 1e3) / 1e9:.1f}" if best and pass_ == "forward" else "-"
                )
            row.append(f"{copy['bytes_per_s'] / 1e9:.1f}" if pass_ == "forward" else "-")
            rows.append(row)
            mem_rows.append(mem_row)
    mem_header = ["lmax", "pass"] + [MODE_LABELS[fm] for fm in modes]
    return _common.markdown_table(header, rows), _common.markdown_table(mem_header, mem_rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmax", type=int, nargs="+", default=[2, 3, 6], help="degrees 0..lmax (default: 2 3 6)")
    parser.add_argument("--n", type=int, default=1_000_000, help="number of vectors (default: 1,000,000)")
    parser.add_argument("--repeat", type=int, default=15, help="timed calls per mode and pass (default: 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default: 3)")
    parser.add_argument("--frameworks", nargs="+", choices=["tf", "torch"], default=["tf", "torch"])
    parser.add_argument("--tf-modes", nargs="+", choices=TF_MODES, default=list(DEFAULT_TF_MODES),
                        help="default: %(default)s; xla_pool: XLA with TensorFlow's pooling CPU allocator")
    parser.add_argument("--torch-modes", nargs="+", choices=TORCH_MODES, default=list(TORCH_MODES))
    parser.add_argument(
        "--torch-compile-mode",
        default="default",
        help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: default)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each case wait up to this long for other processes to go quiet (default: 0)",
    )
    parser.add_argument("--json", help="write all raw results (samples included) to this file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, in a subprocess
    args = parser.parse_args(argv)

    if args.case:
        case = json.loads(args.case)
        fn = run_tf_case if case.pop("framework") == "tf" else run_torch_case
        fn(**case)  # serves timed calls on stdin until "finish"
        return

    machine = _common.machine_report()
    print(_common.format_report(machine, "Machine"))
    copy = _common.copy_bandwidth()
    print(
        f"  numpy copy of {copy['nbytes'] / 2**20:.0f} MiB: "
        f"{_common.format_ms(copy['timing'])} ms -> {_common.format_rate(copy['bytes_per_s'])} (read+write)"
    )
    print(
        f"Workload: {args.n:,} float32 vectors, harmonics 0..lmax, normalize=True, component; "
        f"warm-up {args.warmup}, {args.repeat} timed calls; each mode in its own process, "
        "calls interleaved round-robin across modes"
    )

    cases = []
    for lmax in args.lmax:
        if "tf" in args.frameworks:
            cases += [("tf", m, lmax) for m in args.tf_modes]
        if "torch" in args.frameworks:
            if _e3nn_available():
                cases += [("torch", m, lmax) for m in args.torch_modes]
            elif lmax == args.lmax[0]:
                print("e3nn/torch not importable: e3nn columns skipped (pip install -e '.[bench]')")

    results, threads_seen, foreign = {}, {}, {}
    script = os.path.abspath(__file__)
    for lmax in args.lmax:
        if args.wait_quiet > 0:
            _common.wait_for_quiet(timeout=args.wait_quiet)
        workers = {}
        try:
            for fw, mode, l in cases:
                if l != lmax:
                    continue
                case = {"framework": fw, "lmax": lmax, "mode": mode, "n": args.n}
                if fw == "torch":
                    case["compile_mode"] = args.torch_compile_mode
                try:
                    env = TF_MODE_ENV.get(mode, {}) if fw == "tf" else {}
                    workers[(fw, mode)] = _common.Worker([sys.executable, script, "--case", json.dumps(case)], env=env)
                except RuntimeError as e:
                    results[(fw, mode, lmax)] = {"error": str(e)}
            timings, loads = _common.interleaved_timings(
                workers, PASSES, warmup=args.warmup, repeat=args.repeat
            )
            for (fw, mode), worker in workers.items():
                if worker.error is not None or not all(((fw, mode), p) in timings for p in PASSES):
                    results[(fw, mode, lmax)] = {"error": worker.error or "a step failed"}
                    continue
                res = worker.finish()
                for p in PASSES:
                    res[p].update(
                        timing=timings[((fw, mode), p)].as_dict(),
                        foreign_cores=loads[((fw, mode), p)],
                        **res["memory"].get(p, {}),
                    )
                results[(fw, mode, lmax)] = res
        finally:
            for worker in workers.values():
                worker.kill()
        for fw, mode, l in cases:
            if l != lmax:
                continue
            res, label = results.get((fw, mode, lmax), {"error": "missing"}), MODE_LABELS[(fw, mode)]
            if "error" in res:
                print(f"  lmax {lmax} {label:<20} ERROR {res['error']}")
                continue
            threads_seen.setdefault(fw, res["threads"])
            load = max(res[p]["foreign_cores"] or 0.0 for p in PASSES)
            foreign[(fw, mode, lmax)] = load
            print(
                f"  lmax {lmax} {label:<20} fwd {_common.format_ms(res['forward']['timing']):>17} ms   "
                f"fwd+bwd {_common.format_ms(res['forward_backward']['timing']):>17} ms   "
                f"(other processes: {load:.2f} cores)"
            )

    print()
    for fw, report in threads_seen.items():
        print(_common.format_report(report, "TensorFlow" if fw == "tf" else "PyTorch"))
    allocs = {json.dumps(r["allocator"]) for r in results.values() if "allocator" in r}
    print(f"Allocator in the cases: {', '.join(sorted(allocs))}")
    for lmax in args.lmax:
        for pass_ in PASSES:
            diff = _check_agreement(results, lmax, pass_)
            print(f"lmax {lmax} {pass_}: all modes agree on the first {SAMPLE_ROWS} rows to {diff:.2e}")
    time_table, mem_table = summarize(results, args, copy)
    print("\nMedian ± IQR (ms)\n")
    print(time_table)
    print(
        "\nPeak resident memory above the RSS before the worker's first call "
        "(VmHWM; warm-up and compilation included; forward+backward also holds what forward left cached)\n"
    )
    print(mem_table)
    worst = max(foreign.values(), default=0.0)
    print(
        f"\nOther processes used up to {worst:.2f} of {machine['cpus_usable']} cores while timing"
        + (": absolute times are inflated; interleaving keeps the ratios comparable" if worst > 0.25 else "")
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "copy_bandwidth": copy,
                    "args": vars(args),
                    "results": [{"framework": k[0], "mode": k[1], "lmax": k[2], **v} for k, v in results.items()],
                },
                f,
                indent=1,
            )
        print(f"Raw results written to {args.json}")


if __name__ == "__main__":
    main()
