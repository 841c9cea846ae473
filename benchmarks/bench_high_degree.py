"""Benchmark PointConvolution's three implementations against e3nn at higher harmonic degree.

Workload, for each degree L in 2, 4, 6 (``--degrees``): the graph of
``bench_point_convolution.py`` (its ``build_graph``: the density of 32 neighbours
within 5.0 in a periodic box, minimum-image ``edge_shifts``) with N = 300 nodes
(``--nodes``; 9,440 directed edges), features ``8x0e+8x1o+8x2e+...+8xL(p)`` in and
out (multiplicity 8 per degree, ``--mul``, parity (-1)^l), harmonics
``1x0e+1x1o+...+1xLp`` (lmax L, component normalization), 16 Gaussian radial
functions -> 64 (SiLU) -> the per-edge weights of the fully connected (``uvw``)
tensor product, neighbour sum / sqrt(32), no self-interaction. Per-edge weights:
704 (11 paths) at L = 2, 2,688 (42) at L = 4, 6,784 (106) at L = 6.

Configurations: ``PointConvolution(implementation=...)`` ``per_edge`` (per-edge
weights and a scatter-sum, as e3nn), ``so2`` (each edge's product in a frame
aligned with the edge, eSCN's SO(2) reduction) and ``per_node`` (the radial
MLP's last layer after the neighbour sum; under XLA with ``max_neighbors`` = the
graph's largest in-degree), each under ``tf.function`` and XLA
(``jit_compile=True``) (``--tf-modes``; eager is optional); e3nn eager and
TorchScript (``--e3nn-modes``; ``compile`` = ``torch.compile`` is selectable).
Passes: forward, and forward+backward (the gradient of a fixed random
cotangent dotted with the output, with respect to the features, the positions
and the weights).

Measuring is ``bench_point_convolution.py``'s, whose pieces this script imports
(``build_graph``, ``_measure``, ``_tf_steps``, ``_tf_inputs``, ``_torch_inputs``;
the layer and the e3nn module are built here, for any irreps): every
configuration and pass runs in a fresh subprocess (``_common.run_isolated``), one
after another, after waiting for the machine to be quiet and re-run once when
other processes used >= 0.3 cores during it; warm-up calls excluded, median and
IQR of the timed calls; peak memory ("peak MB") is the kernel's RSS high-water
mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over the timed calls,
minus the RSS after building the inputs and the layer (the details table also
gives it including the warm-up calls, i.e. tracing and compilation, and the
warm-up time). The machine may be shared: a configuration that runs longer than
``--timeout`` (start-up and compilation included) is killed and shown as "timed
out", one whose RSS exceeds ``--max-rss-gb`` is killed by the memory guard
(``bench_se3_attention.ChildMemoryGuard``) and shown as "killed (memory)"; the
other configurations still run. ``per_node`` forward+backward is run up to
L = 4 only (``--per-node-bwd-max-degree``): at L = 6 (N = 300) its backward
under ``tf.function`` grew past 24 GB (killed by the kernel), under XLA it had
not compiled after 18 min (7.4 GB), and with ``node_chunk=8`` neither mode had
finished warming up after 8 min; there the check compares its output only.

Before timing each degree, one subprocess builds the three implementations with
the same weights, copies them into the e3nn module (e3nn's sampled
``normalize2mom`` constant replaced by the exact one) and prints the largest
output and gradient differences (features, positions, both radial weight
matrices), absolute and relative to the largest e3nn value; the run stops when
one exceeds ``--check-tol`` (default 1e-4, float32).

Tables per degree: medians (ms ± IQR) and peak memory of every configuration,
and the ratios so2 best / e3nn best, so2 best / per_edge best and per_node best
/ e3nn best ("best": the fastest mode of that implementation or framework).

The allocator is whatever the process runs with, for both frameworks, e.g.
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4``.

Example:
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \\
        python benchmarks/bench_high_degree.py --reps 7 --markdown /tmp/hd/summary.md --json /tmp/hd/results.json
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import bench_point_convolution as conv  # noqa: E402
from bench_se3_attention import ChildMemoryGuard  # noqa: E402

DEGREES = (2, 4, 6)
MUL = 8
NODES = 300

TF_IMPLEMENTATIONS = ("per_edge", "so2", "per_node")
TF_MODES = ("eager", "function", "xla")
PASSES = ("fwd", "fwdbwd")
PASS_NAMES = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
GRADIENTS = ("features", "positions", "radial_kernel_0", "radial_output")


# -- the workload (numpy only, so the parent process loads no framework) ------
def parity(l):
    return "e" if l % 2 == 0 else "o"


def feature_irreps(degree, mul=MUL):
    """``"8x0e+8x1o+...+8xL(p)"``: multiplicity ``mul`` for every degree 0..L, parity (-1)^l."""
    return "+".join(f"{mul}x{l}{parity(l)}" for l in range(degree + 1))


def sh_irreps(degree):
    """``"1x0e+1x1o+...+1xLp"``: the harmonics up to ``degree``."""
    return "+".join(f"1x{l}{parity(l)}" for l in range(degree + 1))


def irreps_dim(degree, mul=MUL):
    return mul * (degree + 1) ** 2


def path_counts(degree, mul=MUL):
    """Paths, per-edge weights and per-edge forward FLOPs of the fully connected product.

    The FLOPs are those of the product as e3nn (and ``per_edge``) evaluate it, from
    ``bench_point_convolution.path_sums``: harmonics times CG, features times that,
    weights (multiply-add = 2).
    """
    blocks = [(mul, l, (-1) ** l) for l in range(degree + 1)]
    sh = [(1, l, (-1) ** l) for l in range(degree + 1)]
    paths = sum(1 for _, l1, p1 in blocks for _, l2, p2 in sh for _, lo, po in blocks
                if abs(l1 - l2) <= lo <= l1 + l2 and po == p1 * p2)
    cg, weightless, weighted, _, w_numel = conv.path_sums(blocks, sh)
    return {"paths": paths, "weight_numel": w_numel, "tp_flops_per_edge": cg + weightless + weighted}


def build_workload(num_nodes, degree, mul=MUL):
    """``bench_point_convolution.build_graph`` with features and cotangent of this degree's irreps."""
    g = conv.build_graph(num_nodes)
    rng = np.random.default_rng(1)
    dim = irreps_dim(degree, mul)
    g["features"] = rng.standard_normal((num_nodes, dim)).astype(np.float32)
    g["cotangent"] = rng.standard_normal((num_nodes, dim)).astype(np.float32)
    return g


# -- TensorFlow side -----------------------------------------------------------------
def _tf_layer(implementation, degree, mul, max_neighbors=None):
    """``bench_point_convolution._tf_layer`` at this degree's irreps, without self-interaction."""
    return conv._tf_layer(implementation, False, max_neighbors, irreps=feature_irreps(degree, mul), irreps_sh=degree)


def tf_worker(cfg):
    g = build_workload(cfg["nodes"], cfg["degree"], cfg["mul"])
    k = g["max_degree"] if cfg["mode"] == "xla" and cfg["impl"] == "per_node" else None
    measured = conv.tf_timed(g, lambda: _tf_layer(cfg["impl"], cfg["degree"], cfg["mul"], k), cfg)
    return {**measured, "threads": _common.tf_threading_report()}


# -- e3nn side -----------------------------------------------------------------------
def _e3nn_module(num_nodes, irreps, irreps_sh, weights=None, act_constant=None, script=False):
    """``bench_point_convolution._e3nn_module`` at these irreps."""
    return conv._e3nn_module(num_nodes, weights, act_constant, script, irreps=irreps, irreps_sh=irreps_sh)


def e3nn_worker(cfg):
    g = build_workload(cfg["nodes"], cfg["degree"], cfg["mul"])
    weights = dict(np.load(cfg["weights"])) if cfg.get("weights") else None
    irreps, irreps_sh = feature_irreps(cfg["degree"], cfg["mul"]), sh_irreps(cfg["degree"])
    return conv.e3nn_timed(
        g, lambda script: _e3nn_module(cfg["nodes"], irreps, irreps_sh, weights, cfg.get("act_constant"), script),
        cfg)


def _difference(ours, theirs):
    scale = float(np.abs(theirs).max())
    diff = float(np.abs(ours - theirs).max())
    return {"max_abs": diff, "relative": diff / scale if scale > 0 else diff}


def tf_reference(cfg):
    """Outputs and gradients of the three implementations with the same weights (eager).

    Returns ``(values, weights, report)``: ``values[impl]`` maps ``"out"`` and the
    ``GRADIENTS`` names to arrays (``per_node``: ``"out"`` only when
    ``cfg["per_node_grads"]`` is false), ``weights`` the radial weights by name,
    ``report`` the differences of ``so2`` and ``per_node`` to ``per_edge`` and of the
    XLA forward of each implementation to its eager forward (``cfg["xla"]``).
    """
    import tensorflow as tf

    g = build_workload(cfg["nodes"], cfg["degree"], cfg["mul"])
    graph, features, cotangent = conv._tf_inputs(g)
    values, layers = {}, {}
    for impl in TF_IMPLEMENTATIONS:
        layer = _tf_layer(impl, cfg["degree"], cfg["mul"])
        layer(features, graph)
        if layers:  # the same weights everywhere
            layer.set_weights(layers[TF_IMPLEMENTATIONS[0]].get_weights())
        layers[impl] = layer
        if impl == "per_node" and not cfg.get("per_node_grads", True):
            values[impl] = {"out": layer(features, graph).numpy()}
            continue
        with tf.GradientTape() as tape:
            tape.watch([features, graph["positions"]])
            out = layer(features, graph)
            loss = tf.reduce_sum(out * cotangent)
        names = [v.path.split("/")[-1] for v in layer.trainable_weights]
        grads = tape.gradient(loss, [features, graph["positions"]] + list(layer.trainable_weights))
        grads = dict(zip(["features", "positions"] + names, [tf.convert_to_tensor(x).numpy() for x in grads]))
        values[impl] = {"out": out.numpy(), **{k: grads[k] for k in GRADIENTS}}
    ref = TF_IMPLEMENTATIONS[0]
    report = {"weight_numel": layers[ref].weight_numel, "paths": len(layers[ref].instructions),
              "max_abs_out": float(np.abs(values[ref]["out"]).max()),
              "per_node_grads_checked": len(values["per_node"]) > 1}
    for impl in TF_IMPLEMENTATIONS[1:]:
        report[f"{impl}_vs_{ref}"] = {k: _difference(values[impl][k], values[ref][k]) for k in values[impl]}
    if cfg.get("xla", True):
        for impl in TF_IMPLEMENTATIONS:
            k = g["max_degree"] if impl == "per_node" else None
            xla_layer = _tf_layer(impl, cfg["degree"], cfg["mul"], k)
            xla_layer(features, graph)
            xla_layer.set_weights(layers[impl].get_weights())
            out_xla = tf.function(lambda f: xla_layer(f, graph), jit_compile=True)(features).numpy()
            report[f"{impl}_xla_vs_eager"] = _difference(out_xla, values[impl]["out"])
    weights = {v.path.split("/")[-1]: v.numpy() for v in layers[ref].weights}
    return values, weights, report


def check_worker(cfg):
    """``tf_reference``, then (``cfg["e3nn"]``) the same weights in e3nn: differences per implementation.

    ``report["worst_relative"]``: the largest relative difference of all (tfequivariant
    implementations among themselves and, with e3nn, each against e3nn with the exact
    activation constant); the radial weights go to ``cfg["weights"]`` (npz).
    """
    from tfequivariant.layers.point_convolution import second_moment_constant

    values, weights, report = tf_reference(cfg)
    if cfg.get("weights"):
        np.savez(cfg["weights"], **weights)
    relatives = [d["relative"] for key, diffs in report.items() if key.endswith("_vs_per_edge")
                 for d in diffs.values()]
    relatives += [d["relative"] for key, d in report.items() if key.endswith("_xla_vs_eager")]
    if cfg.get("e3nn"):
        import tensorflow as tf
        import torch

        g = build_workload(cfg["nodes"], cfg["degree"], cfg["mul"])
        irreps, irreps_sh = feature_irreps(cfg["degree"], cfg["mul"]), sh_irreps(cfg["degree"])
        # The TP weight columns must follow e3nn's instruction order, each block [mul1, mul2, mul_out].
        layer = _tf_layer("per_edge", cfg["degree"], cfg["mul"])
        e3 = _e3nn_module(cfg["nodes"], irreps, irreps_sh)
        ours = [(i.i_in1, i.i_in2, i.i_out, tuple(i.path_shape)) for i in layer.instructions]
        theirs = [(i.i_in1, i.i_in2, i.i_out, tuple(i.path_shape)) for i in e3.tp.instructions]
        report["instructions_match"] = ours == theirs
        report["weight_numel_e3nn"] = e3.tp.weight_numel
        act_scale = second_moment_constant(tf.nn.silu)
        report["act_constant_tfe"] = act_scale
        report["act_constant_e3nn"] = e3.fc.layer0.act.cst
        t = conv._torch_inputs(g, True)
        for label, cst in (("e3nn_own_constant", None), ("e3nn", act_scale)):
            module = _e3nn_module(cfg["nodes"], irreps, irreps_sh, weights, cst)
            out = module(t["features"], t["positions"], t["senders"], t["receivers"], t["edge_shifts"])
            wrt = [t["features"], t["positions"], module.fc.layer0.weight, module.fc.layer1.weight]
            grads = torch.autograd.grad((out * t["cotangent"]).sum(), wrt)
            theirs = {"out": out.detach().numpy(), **{k: v.numpy() for k, v in zip(GRADIENTS, grads)}}
            for impl in TF_IMPLEMENTATIONS:
                keys = values[impl] if label == "e3nn" else ("out",)
                report[f"{impl}_vs_{label}"] = {k: _difference(values[impl][k], theirs[k]) for k in keys}
                if label == "e3nn":
                    relatives += [d["relative"] for d in report[f"{impl}_vs_{label}"].values()]
        if not report["instructions_match"]:
            relatives.append(float("inf"))
    report["worst_relative"] = max(relatives)
    return report


def _check_lines(check):
    """The check's differences as short lines: ``name: quantity abs (rel), ...``."""
    lines = [f"weights per edge {check.get('weight_numel')}, paths {check.get('paths')}, "
             f"largest |output| {check.get('max_abs_out', float('nan')):.3g}"]
    if not check.get("per_node_grads_checked", True):
        lines.append("per_node: output only (its backward is not run at this degree, --per-node-bwd-max-degree)")
    if "instructions_match" in check:
        lines.append(f"instructions match e3nn's: {check['instructions_match']}; activation constant "
                     f"tfe {check['act_constant_tfe']:.6f}, e3nn sampled {check['act_constant_e3nn']:.6f}")
    for key, diffs in check.items():
        if key.endswith("_xla_vs_eager"):
            lines.append(f"{key}: out {diffs['max_abs']:.2e} ({diffs['relative']:.1e})")
        elif isinstance(diffs, dict) and "_vs_" in key:
            lines.append(f"{key}: " + ", ".join(f"{k} {d['max_abs']:.2e} ({d['relative']:.1e})"
                                                for k, d in diffs.items()))
    lines.append(f"worst relative difference: {check['worst_relative']:.2e}")
    return lines


# -- driver ----------------------------------------------------------------------------
GUARD = None  # ChildMemoryGuard of the driver (the machine is shared)


def _run_worker(kind, cfg, timeout):
    argv = [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(cfg)]
    before = dict(GUARD.kills) if GUARD else {}
    r = _common.run_isolated(argv, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}, timeout=timeout)
    new = [v for k, v in (GUARD.kills if GUARD else {}).items() if k not in before]
    if "error" in r:
        r["error"] = ("killed by the memory guard: " + new[-1] if new else
                      " / ".join(line.strip() for line in r["error"].splitlines()[-3:])[:400])
    return r


def _error_cell(r):
    """Short table cell for a failed (or skipped) configuration."""
    if r.get("skipped"):
        return "skipped"
    if "memory guard" in r["error"]:
        return "killed (memory)"
    if r["error"].startswith("timed out"):
        return "timed out"
    return "error"


def _label(kind, impl, mode):
    return f"e3nn {mode}" if kind == "e3nn" else f"tfe {impl} {mode}"


def _ok(r):
    return r is not None and "error" not in r


def best_of(results, prefix, pass_):
    """``(median_ms, label)`` of the fastest configuration whose label starts with ``prefix``, or None."""
    found = [(r["median_ms"], lbl) for (lbl, p), r in results.items()
             if p == pass_ and lbl.startswith(prefix) and _ok(r)]
    return min(found) if found else None


RATIOS = (("so2 best / e3nn best", "tfe so2 ", "e3nn "),
          ("so2 best / per_edge best", "tfe so2 ", "tfe per_edge "),
          ("per_node best / e3nn best", "tfe per_node ", "e3nn "))


def tables(results, passes=PASSES):
    """Markdown tables of one degree from ``{(label, pass): result}``: timings, ratios, details."""
    best_e3nn = {p: best_of(results, "e3nn ", p) for p in passes}
    labels = list(dict.fromkeys(lbl for lbl, _ in results))
    rows, details = [], []
    for lbl in labels:
        row = [lbl]
        for p in passes:
            r = results.get((lbl, p))
            row.append("-" if r is None else _error_cell(r) if "error" in r else
                       _common.format_ms(r["timing"]) + ("*" if r.get("reduced") else ""))
        for p in passes:
            r = results.get((lbl, p))
            row.append(f"{r['peak_mb']:.0f}" if _ok(r) else "-")
        for p in passes:
            r = results.get((lbl, p))
            row.append(f"{r['median_ms'] / best_e3nn[p][0]:.2f}" if _ok(r) and best_e3nn[p] else "-")
        rows.append(row)
        for p in passes:
            r = results.get((lbl, p))
            if _ok(r):
                details.append([lbl, PASS_NAMES[p], r["reps"], f"{r['timing']['min_ms']:.1f}", f"{r['warmup_s']:.1f}",
                                f"{r['peak_with_warmup_mb']:.0f}", f"{r['rss_inputs_mb']:.0f}",
                                f"{r.get('foreign_cores', float('nan')):.2f}"])
    names = [PASS_NAMES[p] for p in passes]
    table = _common.markdown_table(
        ["implementation / mode"] + [f"{n} ms (median ± IQR)" for n in names] + [f"peak MB {n}" for n in names]
        + [f"{n} vs e3nn best" for n in names], rows)
    ratio_rows, ratio_values = [], {}
    for name, num, den in RATIOS:
        row = [name]
        for p in passes:
            a, b = best_of(results, num, p), best_of(results, den, p)
            if a and b:
                ratio_values[(name, p)] = a[0] / b[0]
                row.append(f"{a[0] / b[0]:.2f} ({a[1]} {a[0]:.1f} / {b[1]} {b[0]:.1f})")
            else:
                row.append("-")
        ratio_rows.append(row)
    ratio_table = _common.markdown_table(["ratio (ms / ms)"] + names, ratio_rows)
    detail = _common.markdown_table(
        ["implementation / mode", "pass", "timed reps", "min ms", "warm-up s (incl. compile)",
         "peak MB incl. warm-up", "RSS after inputs MB", "foreign load (cores)"], details)
    return table, ratio_table, detail, ratio_values


def summary_table(per_degree, passes=PASSES):
    """One row per degree: edges, paths, weights per edge and the three ratios per pass."""
    rows = []
    for degree, d in per_degree.items():
        row = [degree, d["edges"], d["paths"], d["weight_numel"]]
        for name, _, _ in RATIOS:
            row += [f"{d['ratios'][(name, p)]:.2f}" if (name, p) in d["ratios"] else "-" for p in passes]
        rows.append(row)
    header = ["L", "edges", "paths", "weights per edge"]
    header += [f"{name} {PASS_NAMES[p]}" for name, _, _ in RATIOS for p in passes]
    return _common.markdown_table(header, rows)


def _parse_list(text, allowed, what):
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed and not (what == "e3nn mode" and t.startswith("compile:"))]
    if bad:
        raise SystemExit(f"--{what.replace(' ', '-')}s takes a comma list of {', '.join(allowed)}. Received: {text!r}")
    return items


def _degrees(text):
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise SystemExit(f"--degrees takes positive integers, comma separated. Received: {text!r}")
        out.append(int(item))
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--degrees", default=",".join(map(str, DEGREES)),
                        help="comma list of harmonic degrees L (default 2,4,6)")
    parser.add_argument("--mul", type=int, default=MUL, help="multiplicity of every degree (default 8)")
    parser.add_argument("--nodes", type=int, default=NODES, help="number of nodes (default 300)")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls (default 2; 3 for e3nn)")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="seconds of timed calls per configuration; beyond it fewer reps (>= 3, marked *)")
    parser.add_argument("--tf-modes", default="function,xla", help="comma list of eager, function, xla "
                                                                   "(default function,xla)")
    parser.add_argument("--implementations", default=",".join(TF_IMPLEMENTATIONS),
                        help="comma list of per_edge, so2, per_node (default all three)")
    parser.add_argument("--e3nn-modes", default="eager,script",
                        help="comma list of eager, script (TorchScript), compile, compile:<torch.compile mode> "
                             "(default eager,script)")
    parser.add_argument("--no-e3nn", action="store_true", help="skip e3nn even if importable")
    parser.add_argument("--passes", default="fwd,fwdbwd", help="comma list of fwd, fwdbwd (default both)")
    parser.add_argument("--only", default="", help="run only configurations whose label contains this text")
    parser.add_argument("--check-tol", type=float, default=1e-4,
                        help="largest relative difference allowed in the correctness check (default 1e-4)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each configuration wait up to this many seconds for other processes to use "
                             "< 0.3 cores (default 120; 0 disables)")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-run a configuration up to this many times when other processes used >= 0.3 cores "
                             "during it, keeping the quietest attempt (default 1)")
    parser.add_argument("--per-node-bwd-max-degree", type=int, default=4,
                        help="run per_node forward+backward (timing and the check's per_node gradients) up to "
                             "this degree only (default 4: at L = 6 it grew past 24 GB under tf.function and "
                             "does not compile in 18 min under XLA; node_chunk=8 does not finish in 8 min)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per configuration and pass, start-up and compilation included; a slower one "
                             "is killed and shown as 'timed out' (default 300; the check gets 1800)")
    parser.add_argument("--max-rss-gb", type=float, default=12.0,
                        help="memory guard: kill a configuration whose RSS exceeds this (default 12 GiB; shown as "
                             "'killed (memory)'), or the largest when all together exceed 70%% of MemAvailable")
    parser.add_argument("--markdown", help="write the tables and run details to this markdown file")
    parser.add_argument("--json", help="write the raw results (samples included), graph, path counts, checks and "
                                       "machine report to this JSON file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker:
        args.degree_list = _degrees(args.degrees)
        args.tf_mode_list = _parse_list(args.tf_modes, TF_MODES, "tf mode")
        args.impl_list = _parse_list(args.implementations, TF_IMPLEMENTATIONS, "implementation")
        args.e3nn_mode_list = _parse_list(args.e3nn_modes, ("eager", "script", "compile"), "e3nn mode")
        args.pass_list = _parse_list(args.passes, PASSES, "passe")
    return args


def configurations(args, have_e3nn):
    """``[(kind, impl, mode)]`` in table order, ``--only`` applied."""
    configs = [("e3nn", "e3nn", m) for m in args.e3nn_mode_list] if have_e3nn else []
    configs += [("tf", impl, mode) for impl in args.impl_list for mode in args.tf_mode_list]
    return [c for c in configs if not args.only or args.only in _label(*c)]


def _print_result(degree, label, pass_, r):
    print(f"L={degree} {label:22s} {pass_:7s} " + (r["error"] if "error" in r else
          f"median {r['median_ms']:8.1f} ms  IQR {r['iqr_ms']:6.1f}  reps {r['reps']:2d}  "
          f"peak {r['peak_mb']:6.0f} MB  warm-up {r['warmup_s']:5.1f} s  foreign load "
          f"{r['foreign_cores']:.2f} cores  ({r['allocator']})"), flush=True)


def run_degree(degree, args, have_e3nn, tmpdir):
    """Check, then time every configuration of one degree; returns the degree's record."""
    g = build_workload(args.nodes, degree, args.mul)
    counts = path_counts(degree, args.mul)
    num_edges = len(g["senders"])
    info = {"irreps": feature_irreps(degree, args.mul), "irreps_sh": sh_irreps(degree), "edges": num_edges,
            "mean_degree": g["mean_degree"], "max_degree": g["max_degree"], **counts,
            "tp_gflop_fwd": counts["tp_flops_per_edge"] * num_edges / 1e9}
    print(f"\n== L={degree}: irreps {info['irreps']}, harmonics {info['irreps_sh']}; N={args.nodes} E={num_edges} "
          f"in-degree mean {g['mean_degree']:.2f} max {g['max_degree']}; {counts['paths']} paths, "
          f"{counts['weight_numel']} weights per edge; product forward {info['tp_gflop_fwd']:.2f} GFLOP "
          f"(as e3nn / per_edge evaluate it)", flush=True)
    weights_path = os.path.join(tmpdir, f"weights_L{degree}.npz")
    base = {"nodes": args.nodes, "degree": degree, "mul": args.mul, "warmup": args.warmup, "reps": args.reps,
            "budget_s": args.budget}
    t0 = time.time()
    per_node_bwd = degree <= args.per_node_bwd_max_degree
    check = _run_worker("check", {**base, "weights": weights_path, "e3nn": have_e3nn, "per_node_grads": per_node_bwd},
                        1800)
    info["check_s"] = time.time() - t0
    if "error" in check:
        print(f"correctness check failed to run: {check['error']}", flush=True)
    else:
        print(f"correctness check ({'tfequivariant vs e3nn' if have_e3nn else 'tfequivariant'}, same weights, "
              f"float32; abs (relative to the largest reference value)), {info['check_s']:.0f} s:\n  "
              + "\n  ".join(_check_lines(check)), flush=True)
    info["check"] = check
    if "error" in check or not check["worst_relative"] <= args.check_tol:
        info["check_failed"] = True
        return info

    results = {}
    for kind, impl, mode in configurations(args, have_e3nn):
        label = _label(kind, impl, mode)
        for pass_ in args.pass_list:
            cfg = {**base, "impl": impl, "mode": mode, "pass": pass_}
            if impl == "per_node" and pass_ == "fwdbwd" and not per_node_bwd:
                results[(label, pass_)] = {"error": f"skipped: L > --per-node-bwd-max-degree "
                                                    f"{args.per_node_bwd_max_degree}", "skipped": True}
                print(f"L={degree} {label:22s} {pass_:7s} {results[(label, pass_)]['error']}", flush=True)
                continue
            if kind == "e3nn":
                cfg["warmup"] = max(args.warmup, 3)  # compiled forward and backward settle after 2 calls
                cfg["weights"] = weights_path
                cfg["act_constant"] = check["act_constant_tfe"]
            r = None
            for _ in range(1 + max(0, args.retries)):
                if args.quiet_wait > 0:
                    _common.wait_for_quiet(timeout=args.quiet_wait)
                with _common.ForeignLoad() as load:
                    attempt = _run_worker(kind, cfg, args.timeout)
                attempt["foreign_cores"] = load.cores
                if r is None or ("error" not in attempt and ("error" in r or load.cores < r["foreign_cores"])):
                    r = attempt
                if "error" in r or r["foreign_cores"] < 0.3:
                    break
            results[(label, pass_)] = r
            _print_result(degree, label, pass_, r)
    info["results"] = results
    info["table"], info["ratio_table"], info["detail"], info["ratios"] = tables(results, args.pass_list)
    info["errors"] = [f"- L={degree} {lbl} {p}: {r['error']}" for (lbl, p), r in results.items() if "error" in r]
    print(f"\n### L = {degree}\n\n{info['table']}\n\n{info['ratio_table']}\n\n{info['detail']}", flush=True)
    return info


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        kind, cfg = args.worker[0], json.loads(args.worker[1])
        _common.quiet_tensorflow()
        fn = {"tf": tf_worker, "e3nn": e3nn_worker, "check": check_worker}[kind]
        _common.emit_result(fn(cfg))
        return 0

    global GUARD
    t_start = time.time()
    with open("/proc/meminfo") as f:
        available = int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    GUARD = ChildMemoryGuard(args.max_rss_gb * 2**30, 0.7 * available)
    machine = _common.machine_report()
    print(_common.format_report(machine, "Machine"), flush=True)
    print(f"memory guard: {args.max_rss_gb:.1f} GiB per process, {0.7 * available / 2**30:.1f} GiB together; "
          f"timeout {args.timeout:.0f} s per configuration and pass", flush=True)
    have_e3nn = not args.no_e3nn and all(importlib.util.find_spec(m) is not None for m in ("torch", "e3nn"))
    tmpdir = tempfile.mkdtemp(prefix="bench_high_degree_")
    per_degree, failed = {}, None
    for degree in args.degree_list:
        per_degree[degree] = run_degree(degree, args, have_e3nn, tmpdir)
        if per_degree[degree].get("check_failed"):
            failed = degree
            break
    GUARD.stop()
    elapsed = time.time() - t_start
    done = {d: info for d, info in per_degree.items() if "results" in info}
    summary = summary_table(done, args.pass_list) if done else ""
    errors = [e for info in done.values() for e in info["errors"]]
    if summary:
        print("\n### Summary (ratios of medians, best mode of each)\n\n" + summary)
    if errors:
        print("\n".join(errors))
    if failed is not None:
        print(f"\nSTOPPED: the correctness check at L={failed} failed (worst relative difference "
              f"{per_degree[failed]['check'].get('worst_relative', 'n/a')} > --check-tol {args.check_tol}, "
              "or the check did not run); no timings for this and later degrees.")
    print(f"\ntotal {elapsed / 60:.1f} min")

    if args.markdown:
        preload = os.environ.get("LD_PRELOAD")
        cmd = " ".join(([f"LD_PRELOAD={preload}"] if preload else [])
                       + ["python", "benchmarks/bench_high_degree.py"] + sys.argv[1:])
        threads = {k: v for info in done.values() for r in info["results"].values() if "threads" in r
                   for k, v in r["threads"].items()}
        with open(args.markdown, "w") as fh:
            fh.write(f"### {machine['allocator']}{' (LD_PRELOAD)' if preload else ''}\n\n")
            fh.write(f"- date: {machine['date']}; machine: {machine['cpu_model']}, {machine['cpus_usable']} "
                     f"usable CPUs, {machine['memory_gib']} GiB; Python {machine['python']}; "
                     + ", ".join(f"{k} {v}" for k, v in threads.items()) + "\n")
            fh.write(f"- command: `{cmd}` (total {elapsed / 60:.1f} min)\n")
            fh.write(f"- workload: N={args.nodes}, multiplicity {args.mul} per degree, 16 Gaussian -> 64 (SiLU) -> "
                     "per-edge weights, neighbour sum / sqrt(32), no self-interaction\n")
            fh.write(f"- `*`: fewer timed reps than {args.reps} (over the --budget of {args.budget:.0f} s of timed "
                     "calls); foreign load: cores used by other processes during that configuration\n")
            if summary:
                fh.write("\n#### Summary (ratios of medians, best mode of each)\n\n" + summary + "\n")
            for degree, info in per_degree.items():
                fh.write(f"\n#### L = {degree}: `{info['irreps']}`, harmonics `{info['irreps_sh']}`\n\n")
                fh.write(f"- E={info['edges']} (in-degree mean {info['mean_degree']:.2f}, max {info['max_degree']}); "
                         f"{info['paths']} paths, {info['weight_numel']} weights per edge; product forward "
                         f"{info['tp_gflop_fwd']:.2f} GFLOP as e3nn / per_edge evaluate it\n")
                if "results" in info:
                    fh.write("\n" + info["table"] + "\n\n" + info["ratio_table"] + "\n\n" + info["detail"] + "\n")
                check = info["check"]
                if "error" in check:
                    fh.write(f"\ncorrectness check failed to run: {check['error']}\n")
                else:
                    fh.write("\ncorrectness check (max abs difference, relative to the largest reference value):\n\n"
                             "```\n" + "\n".join(_check_lines(check)) + "\n```\n")
            if errors:
                fh.write("\n" + "\n".join(errors) + "\n")
            if failed is not None:
                fh.write(f"\nSTOPPED: the correctness check at L={failed} failed.\n")
        print(f"wrote {args.markdown}")

    if args.json:
        tables_only = ("results", "ratios", "table", "ratio_table", "detail")
        degrees = [{"degree": d, **{k: v for k, v in info.items() if k not in tables_only},
                    "ratios": [{"ratio": n, "pass": p, "value": v} for (n, p), v in info.get("ratios", {}).items()],
                    "results": [{"label": lbl, "pass": p, **r} for (lbl, p), r in info.get("results", {}).items()]}
                   for d, info in per_degree.items()]
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "args": vars(args), "elapsed_s": elapsed, "stopped_at_degree": failed,
                       "degrees": degrees}, fh, indent=1)
        print(f"wrote {args.json}")
    return 1 if failed is not None else 0


if __name__ == "__main__":
    sys.exit(main())
