"""Benchmark PointConvolution against e3nn on the shared convolution workload.

DESIGN.md section 6: N = 1000 nodes at the density of 32 neighbours within
5.0 in a periodic box, features ``32x0e+16x1o+8x2e`` in and out, harmonics
``1x0e+1x1o+1x2e`` (component), 16 Gaussian radial functions -> 64 (SiLU) ->
3456 tensor-product weights per edge, neighbour sum / sqrt(32); edges sorted by
receiver, as ``radius_graph`` returns them (both frameworks get the same graph).

Every configuration (framework, implementation, mode, forward or
forward+backward) runs in a fresh subprocess (``_common.run_isolated``), which
reports the median and IQR of its timed repetitions and its peak memory: the
kernel's RSS high-water mark (what ``resource.getrusage`` reports as maxrss)
minus the RSS measured after building the inputs and the layer, the mark being
reset there through ``/proc/self/clear_refs`` so import-time peaks do not count
("peak MB" covers the timed calls, the details table also gives it including
the warm-up calls, i.e. compilation; "step MB" is the peak of the timed calls
above the RSS of the warmed-up process after its allocator handed its free pages
back, i.e. what one call needs on top of the compiled program, weights and
inputs; it is not reported for TensorFlow with oneDNN's operations on, whose
allocator keeps its pool: ``--no-onednn`` runs the tfequivariant workers with
``TF_ENABLE_ONEDNN_OPTS=0`` to measure it). Before timing, one subprocess copies the
tfequivariant weights into e3nn and prints the largest output and gradient
differences, so both sides compute the same function. FLOP rates use FLOP
counts derived from the tensor-product paths (``flop_counts``), forward+backward
counted as 3x the forward.

The allocator is whatever the process runs with: run the script once plainly
(glibc malloc) and once under
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4``; both
frameworks then use the same allocator in each run.

Example:
    python benchmarks/bench_point_convolution.py --markdown /tmp/conv_glibc.md
"""

import argparse
import importlib.util
import json
import math
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

IRREPS = "32x0e+16x1o+8x2e"
IRREPS_SH = "1x0e+1x1o+1x2e"
CUTOFF = 5.0
NUM_BASIS = 16
HIDDEN = 64
AVG_NEIGHBORS = 32.0
MATMUL_SIZE = 2048

TF_IMPLEMENTATIONS = ("per_node", "per_edge")
TF_MODES = ("eager", "function", "xla")
PASSES = ("fwd", "fwdbwd")


# -- the workload (numpy only, so the parent process loads no framework) ------
def build_graph(num_nodes):
    """Positions, senders, receivers and minimum-image shifts of the shared workload."""
    from scipy.spatial import cKDTree

    box = (num_nodes * 4.0 / 3.0 * math.pi * CUTOFF**3 / 32.0) ** (1.0 / 3.0)
    pos = np.random.default_rng(0).uniform(0.0, box, (num_nodes, 3))
    pairs = cKDTree(pos, boxsize=box).query_pairs(CUTOFF, output_type="ndarray")
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    senders = np.concatenate([pairs[:, 0], pairs[:, 1]]).astype(np.int32)
    receivers = np.concatenate([pairs[:, 1], pairs[:, 0]]).astype(np.int32)
    # edges sorted by receiver, then sender: the order tfequivariant.graph.radius_graph gives
    # (and the layers' neighbour layout takes without a sort); both frameworks get this graph
    by_receiver = np.lexsort((senders, receivers))
    senders, receivers = senders[by_receiver], receivers[by_receiver]
    raw = pos[senders] - pos[receivers]
    shifts = -box * np.round(raw / box)  # raw + shifts is the minimum-image vector
    degree = np.bincount(receivers, minlength=num_nodes)
    rng = np.random.default_rng(1)
    dim = 32 + 16 * 3 + 8 * 5
    return {
        "box": box,
        "positions": pos.astype(np.float32),
        "senders": senders,
        "receivers": receivers,
        "edge_shifts": shifts.astype(np.float32),
        "max_degree": int(degree.max()),
        "mean_degree": float(degree.mean()),
        "features": rng.standard_normal((num_nodes, dim)).astype(np.float32),
        "cotangent": rng.standard_normal((num_nodes, dim)).astype(np.float32),
    }


def path_sums(blocks, sh=((1, 0, 1), (1, 1, -1), (1, 2, 1))):
    """Per-edge sums over the fully connected paths ``blocks x sh -> blocks``.

    ``blocks``/``sh`` are ``(mul, l, parity)``; returns ``(cg, weightless, weighted,
    q, w_numel)``: the FLOPs of harmonics times CG, of features times that, of the
    weights, the size of the weightless product and the number of path weights.
    """
    cg = weightless = weighted = q = w_numel = 0
    for mul1, l1, p1 in blocks:
        for mul2, l2, p2 in sh:
            for mulo, lo, po in blocks:
                if abs(l1 - l2) <= lo <= l1 + l2 and po == p1 * p2:
                    d1, d2, do = 2 * l1 + 1, 2 * l2 + 1, 2 * lo + 1
                    cg += 2 * mul2 * d1 * d2 * do
                    weightless += 2 * mul1 * mul2 * d1 * do
                    weighted += 2 * mul1 * mul2 * mulo * do
                    q += mul1 * mul2 * do
                    w_numel += mul1 * mul2 * mulo
    return cg, weightless, weighted, q, w_numel


def flop_counts(num_nodes, num_edges, max_degree):
    """Forward FLOPs (multiply-add = 2) of both algorithms, derived from the paths.

    Per path ``(mul1 x l1) x (mul2 x l2) -> (mulo x lo)`` with ``d = 2l+1``:
    harmonics times CG ``2 mul2 d1 d2 do``, features times that ``2 mul1 mul2 d1 do``
    (the weightless product, per edge), weights ``2 mul1 mul2 mulo do``.
    """
    blocks = [(32, 0, 1), (16, 1, -1), (8, 2, 1)]
    cg, weightless, weighted, q, w_numel = path_sums(blocks)
    # so2: the paths' constant matrices on the rotated features (the weightless count), the weights,
    # and the rotations in and out (three constant [d, d] products each way per block of l > 0)
    rotations = sum(2 * 3 * 2 * mul * (2 * l + 1) ** 2 for mul, l, _ in blocks if l > 0)  # in + out
    radial_hidden = 2 * num_edges * NUM_BASIS * HIDDEN
    per_edge = {
        "radial_hidden": radial_hidden,
        "radial_output": 2 * num_edges * HIDDEN * w_numel,
        "tensor_product": num_edges * (cg + weightless + weighted),
    }
    per_node = {
        "radial_hidden": radial_hidden,
        "edge_products": num_edges * (cg + weightless),
        "neighbour_sum": 2 * num_edges * HIDDEN * q,
        "per_node_weights": num_nodes * HIDDEN * weighted,
    }
    so2 = {
        "radial_hidden": radial_hidden,
        "radial_output": per_edge["radial_output"],
        "frame_products": num_edges * (weightless + weighted + rotations),
    }
    padded_neighbour_sum = 2 * num_nodes * max_degree * HIDDEN * q
    return {
        "weight_numel": w_numel,
        "q": q,
        "per_edge": per_edge,
        "per_node": per_node,
        "per_edge_total": sum(per_edge.values()),
        "so2": so2,
        "so2_total": sum(so2.values()),
        "per_node_total": sum(per_node.values()),
        "per_node_padded_total": sum(per_node.values()) - per_node["neighbour_sum"] + padded_neighbour_sum,
    }


# -- measuring inside a case subprocess ----------------------------------------------
def _measure(build_step, warmup, reps, budget_s):
    """Warm up, time and record peak memory of one configuration (called in a fresh subprocess).

    Peak memory is relative to the RSS right after building the inputs and the layer
    (before the first call): the kernel high-water mark, reset at that point
    (``_common.PeakRSS``: ``VmHWM`` after ``/proc/self/clear_refs``), read after the warm-up
    calls (compilation included) and after the timed calls; ``ru_maxrss`` from
    ``resource.getrusage`` is recorded as well (the same counter for a live process).
    """
    step = build_step()
    base = _common.rss_bytes()
    with _common.PeakRSS(baseline=base) as warm_mem:
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        warmup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        step()
        one = time.perf_counter() - t0
    n = reps if one * reps <= budget_s else max(3, int(budget_s / one))
    settled = _common.settled_rss_bytes()
    with _common.PeakRSS(baseline=base) as mem:
        timing = _common.time_callable(step, warmup=0, repeat=n)
    step_bytes = _common.step_extra_bytes(mem.peak_bytes, settled)
    getrusage_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "timing": timing.as_dict(),
        "median_ms": timing.median_ms,
        "iqr_ms": timing.iqr_ms,
        "reps": timing.n,
        "reduced": n < reps,
        "warmup_s": warmup_s,
        "peak_mb": mem.extra_bytes / 2**20,
        "peak_with_warmup_mb": max(warm_mem.extra_bytes, mem.extra_bytes) / 2**20,
        "step_mb": None if step_bytes is None else step_bytes / 2**20,
        "settled_rss_mb": settled / 2**20,
        "getrusage_peak_mb": getrusage_peak / 2**20,
        "rss_inputs_mb": base / 2**20,
        "memory_method": mem.method,
        "allocator": _common.allocator()["allocator"],
    }


# -- TensorFlow side -----------------------------------------------------------------
def _tf_layer(implementation, self_interaction, max_neighbors, node_chunk=None, irreps=IRREPS, irreps_sh=IRREPS_SH):
    """The benchmark's ``PointConvolution`` (``irreps`` in and out; other workloads pass their own)."""
    import keras

    from tfequivariant.layers import PointConvolution

    keras.utils.set_random_seed(0)
    return PointConvolution(
        irreps,
        irreps,
        irreps_sh=irreps_sh,
        num_radial_basis=NUM_BASIS,
        cutoff=CUTOFF,
        radial_basis="gaussian",
        radial_hidden=(HIDDEN,),
        radial_activation="silu",
        avg_num_neighbors=AVG_NEIGHBORS,
        self_interaction=self_interaction,
        max_neighbors=max_neighbors,
        implementation=implementation,
        node_chunk=node_chunk,
    )


def _tf_inputs(g):
    import tensorflow as tf

    graph = {k: tf.constant(g[k]) for k in ("positions", "senders", "receivers", "edge_shifts")}
    return graph, tf.constant(g["features"]), tf.constant(g["cotangent"])


def _tf_steps(layer, graph, cotangent, mode, pass_):
    import tensorflow as tf

    def fwd(features, positions):
        return layer(features, {**graph, "positions": positions})

    def fwdbwd(features, positions):
        with tf.GradientTape() as tape:
            tape.watch([features, positions])
            out = layer(features, {**graph, "positions": positions})
            loss = tf.reduce_sum(out * cotangent)
        grads = tape.gradient(loss, [features, positions] + list(layer.trainable_weights))
        return [tf.convert_to_tensor(x) for x in grads]  # dense, as e3nn's (gathers give IndexedSlices)

    fn = fwd if pass_ == "fwd" else fwdbwd
    if mode == "function":
        fn = tf.function(fn, jit_compile=False)
    elif mode == "xla":
        fn = tf.function(fn, jit_compile=True)
    return fn


def tf_timed(g, make_layer, cfg):
    """``_measure`` of the layer ``make_layer()`` on workload ``g`` in ``cfg``'s mode and pass
    (the layer built on a two-node graph first). Shared with other convolution workloads."""
    import tensorflow as tf

    def build_step():
        graph, features, cotangent = _tf_inputs(g)
        layer = make_layer()
        layer(features[:2], {"positions": graph["positions"][:2], "senders": tf.constant([0], tf.int32),
                             "receivers": tf.constant([1], tf.int32)})
        fn = _tf_steps(layer, graph, cotangent, cfg["mode"], cfg["pass"])
        positions = graph["positions"]

        def step():
            r = fn(features, positions)
            (r if cfg["pass"] == "fwd" else r[0]).numpy()

        return step

    return _measure(build_step, cfg["warmup"], cfg["reps"], cfg["budget_s"])


def tf_worker(cfg):
    g = build_graph(cfg["nodes"])
    k = g["max_degree"] if cfg["mode"] == "xla" else None
    built = {}

    def make_layer():
        built["layer"] = _tf_layer(cfg["impl"], cfg["si"], k, cfg.get("node_chunk"))
        return built["layer"]

    measured = tf_timed(g, make_layer, cfg)
    return {**measured, "node_chunk": built["layer"].node_chunk,
            "threads": _common.tf_threading_report(),
            "TF_CPU_ALLOCATOR_USE_BFC": _common.tf_pool_setting()}


def matmul_worker(cfg):
    import tensorflow as tf

    n = MATMUL_SIZE
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((n, n)), tf.float32)
    b = tf.constant(rng.standard_normal((n, n)), tf.float32)
    mm = tf.function(tf.matmul)
    timing = _common.time_callable(lambda: mm(a, b).numpy(), warmup=3, repeat=20)
    return {"median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms, "gflops": 2 * n**3 / timing.median_ms / 1e6}


# -- e3nn side -----------------------------------------------------------------------
def _e3nn_module(num_nodes, weights=None, act_constant=None, script=False, irreps=IRREPS, irreps_sh=IRREPS_SH):
    """e3nn's convolution: radial MLP -> per-edge weights, FullyConnectedTensorProduct, index_add
    (``irreps`` in and out, harmonics ``irreps_sh``; other workloads pass their own)."""
    import e3nn
    import torch
    from e3nn import o3
    from e3nn.nn import FullyConnectedNet
    from e3nn.util.jit import compile_mode

    if script:
        e3nn.set_optimization_defaults(jit_mode="script")

    @compile_mode("script")
    class E3nnConvolution(torch.nn.Module):
        num_nodes: int
        dim_out: int
        cutoff: float
        step: float
        norm: float

        def __init__(self):
            super().__init__()
            self.sh = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
            self.tp = o3.FullyConnectedTensorProduct(irreps, irreps_sh, irreps, shared_weights=False)
            self.fc = FullyConnectedNet([NUM_BASIS, HIDDEN, self.tp.weight_numel], torch.nn.functional.silu)
            self.register_buffer("centers", torch.linspace(0.0, CUTOFF, NUM_BASIS))
            self.num_nodes = num_nodes
            self.dim_out = o3.Irreps(irreps).dim
            self.cutoff = CUTOFF
            self.step = CUTOFF / (NUM_BASIS - 1)
            self.norm = 1.0 / AVG_NEIGHBORS**0.5

        def radial_basis(self, r: torch.Tensor) -> torch.Tensor:
            # tfequivariant's RadialBasis("gaussian"): Gaussians / 1.12 times the p = 6 polynomial envelope.
            b = torch.exp(-(((r[:, None] - self.centers) / self.step) ** 2)) / 1.12
            x = r[:, None] / self.cutoff
            xp = x**6
            u = 1 - 28 * xp + 48 * xp * x - 21 * xp * x * x
            return b * torch.where(x < 1, u, torch.zeros_like(u))

        def forward(self, features, positions, senders, receivers, shifts):
            vec = positions[senders] - positions[receivers] + shifts
            sh = self.sh(vec)
            emb = self.radial_basis(torch.sqrt(torch.sum(vec * vec, dim=1)))
            messages = self.tp(features[senders], sh, self.fc(emb))
            out = messages.new_zeros((self.num_nodes, self.dim_out)).index_add(0, receivers, messages)
            return out * self.norm

    torch.manual_seed(0)
    module = E3nnConvolution()
    if weights is not None:
        with torch.no_grad():
            module.fc.layer0.weight.copy_(torch.from_numpy(weights["radial_kernel_0"]))
            module.fc.layer1.weight.copy_(torch.from_numpy(weights["radial_output"]))
    if act_constant is not None:
        # e3nn estimates normalize2mom's constant from 1e6 samples; tfequivariant integrates it exactly.
        module.fc.layer0.act.cst = act_constant
    if script:
        from e3nn.util.jit import compile as e3nn_compile

        module = e3nn_compile(module)
    return module


def _torch_inputs(g, requires_grad):
    import torch

    t = {k: torch.from_numpy(np.ascontiguousarray(g[k])) for k in
         ("features", "positions", "edge_shifts", "cotangent")}
    t["senders"] = torch.from_numpy(g["senders"].astype(np.int64))
    t["receivers"] = torch.from_numpy(g["receivers"].astype(np.int64))
    if requires_grad:
        t["features"].requires_grad_(True)
        t["positions"].requires_grad_(True)
    return t


def e3nn_timed(g, make_module, cfg):
    """``_measure`` of e3nn's module ``make_module(script)`` on workload ``g`` in ``cfg``'s mode
    (eager, script, compile[:mode]) and pass, or ``{"error": ...}`` when it fails (``torch.compile``
    can fail on a given setup). Shared with other convolution workloads."""
    import torch

    def build_step():
        module = make_module(cfg["mode"] == "script")
        fn = module
        if cfg["mode"].startswith("compile"):
            compile_mode = cfg["mode"].split(":", 1)[1] if ":" in cfg["mode"] else None
            fn = torch.compile(module, mode=compile_mode)
        t = _torch_inputs(g, cfg["pass"] == "fwdbwd")
        args = (t["features"], t["positions"], t["senders"], t["receivers"], t["edge_shifts"])
        params = list(module.parameters())

        if cfg["pass"] == "fwd":
            def step():
                with torch.no_grad():
                    fn(*args)
        else:
            def step():
                loss = (fn(*args) * t["cotangent"]).sum()
                torch.autograd.grad(loss, [t["features"], t["positions"]] + params)

        return step

    try:
        return {**_measure(build_step, cfg["warmup"], cfg["reps"], cfg["budget_s"]),
                "threads": _common.torch_threading_report()}
    except Exception as e:  # torch.compile can fail on a given setup: report why
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}


def e3nn_worker(cfg):
    g = build_graph(cfg["nodes"])
    weights = dict(np.load(cfg["weights"])) if cfg.get("weights") else None
    return e3nn_timed(g, lambda script: _e3nn_module(cfg["nodes"], weights, cfg.get("act_constant"), script=script),
                      cfg)


# -- correctness: the same function on both sides -----------------------------------
def check_worker(cfg):
    import tensorflow as tf
    import torch

    from tfequivariant.layers.point_convolution import second_moment_constant

    g = build_graph(cfg["nodes"])
    graph, features, cotangent = _tf_inputs(g)
    report = {}
    outs, grads = {}, {}
    layers = {}
    for impl in TF_IMPLEMENTATIONS + ("so2",):
        layer = _tf_layer(impl, False, None)
        layer(features, graph)
        if impl != "per_node":  # the same weights as per_node
            layer.set_weights(layers["per_node"].get_weights())
        with tf.GradientTape() as tape:
            tape.watch([features, graph["positions"]])
            out = layer(features, graph)
            loss = tf.reduce_sum(out * cotangent)
        layers[impl] = layer
        outs[impl] = out.numpy()
        grads[impl] = [tf.convert_to_tensor(x).numpy() for x in tape.gradient(loss, [features, graph["positions"]])]
    layer = layers["per_node"]
    xla_layer = _tf_layer("per_node", False, g["max_degree"])
    xla_layer(features, graph)
    xla_layer.set_weights(layer.get_weights())
    out_xla = tf.function(lambda f: xla_layer(f, graph), jit_compile=True)(features).numpy()

    weights = {v.path.split("/")[-1]: v.numpy() for v in layer.weights}
    np.savez(cfg["weights"], **weights)

    # The TP weight columns must follow e3nn's instruction order, each block [mul1, mul2, mul_out].
    e3 = _e3nn_module(cfg["nodes"])
    ours = [(i.i_in1, i.i_in2, i.i_out, tuple(i.path_shape)) for i in layer.instructions]
    theirs = [(i.i_in1, i.i_in2, i.i_out, tuple(i.path_shape)) for i in e3.tp.instructions]
    report["instructions_match"] = ours == theirs
    report["weight_numel"] = [layer.weight_numel, e3.tp.weight_numel]
    report["act_constant_tfe"] = layer._act_scale
    report["act_constant_e3nn"] = e3.fc.layer0.act.cst

    t = _torch_inputs(g, True)
    for label, cst in (("e3nn_own_constant", None), ("e3nn_matched_constant", layer._act_scale)):
        module = _e3nn_module(cfg["nodes"], weights, cst)
        out = module(t["features"], t["positions"], t["senders"], t["receivers"], t["edge_shifts"])
        gf, gp = torch.autograd.grad((out * t["cotangent"]).sum(), [t["features"], t["positions"]])
        out = out.detach().numpy()
        report[label] = {
            "max_abs_out_per_node": float(np.abs(outs["per_node"] - out).max()),
            "max_abs_out_per_edge": float(np.abs(outs["per_edge"] - out).max()),
            "max_abs_grad_features": float(np.abs(grads["per_node"][0] - gf.numpy()).max()),
            "max_abs_grad_positions": float(np.abs(grads["per_node"][1] - gp.numpy()).max()),
        }
    report["max_abs_out"] = float(np.abs(outs["per_node"]).max())
    report["max_abs_grad_positions"] = float(np.abs(grads["per_node"][1]).max())
    report["per_node_vs_per_edge"] = float(np.abs(outs["per_node"] - outs["per_edge"]).max())
    report["so2_vs_per_edge"] = float(np.abs(outs["so2"] - outs["per_edge"]).max())
    report["so2_vs_per_edge_grad_positions"] = float(np.abs(grads["so2"][1] - grads["per_edge"][1]).max())
    report["xla_vs_eager_per_node"] = float(np.abs(outs["per_node"] - out_xla).max())
    report["second_moment_constant_quadrature"] = second_moment_constant(tf.nn.silu)
    return report


# -- driver ----------------------------------------------------------------------------
def _run_worker(kind, cfg, timeout):
    argv = [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(cfg)]
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    if kind == "tf" and cfg.get("tf_pool"):
        env.update(_common.TF_POOL_ENV)
    if kind == "tf" and cfg.get("no_onednn"):
        env.update(_common.TF_NO_ONEDNN_ENV)
    r = _common.run_isolated(argv, env=env, timeout=timeout)
    if "error" in r:
        r["error"] = " / ".join(line.strip() for line in r["error"].splitlines()[-3:])[:400]
    return r


def _cell_ms(r):
    if r is None:
        return "-"
    if "error" in r:
        return "error"
    return _common.format_ms(r["timing"]) + ("*" if r.get("reduced") else "")


def _label(kind, impl, mode, si, tf_pool=False, node_chunk=None, no_onednn=False):
    if kind == "e3nn":
        return f"e3nn {mode}"
    return (f"tfe {impl} {mode}" + (f" node_chunk={node_chunk}" if node_chunk else "") + (" +SI" if si else "")
            + (" +pool" if tf_pool else "") + (" +no-onednn" if no_onednn else ""))


def useful_flops_key(label):
    """The FLOP count of the algorithm a label runs: ``per_node_total``, ``so2_total`` or ``per_edge_total``."""
    return "per_node_total" if "per_node" in label else "so2_total" if "so2" in label else "per_edge_total"


def _tables(results, flops, matmul_gflops):
    best = {}
    for pass_ in PASSES:
        e3 = [r["median_ms"] for (lbl, p), r in results.items() if lbl.startswith("e3nn") and p == pass_ and "error" not in r]
        best[pass_] = min(e3) if e3 else None
    labels = list(dict.fromkeys(lbl for lbl, _ in results))
    rows, details = [], []
    for lbl in labels:
        f, b = results.get((lbl, "fwd")), results.get((lbl, "fwdbwd"))
        useful = flops[useful_flops_key(lbl)]

        def ok(r):
            return r is not None and "error" not in r

        def ratio(r, p):
            return f"{r['median_ms'] / best[p]:.2f}" if ok(r) and best[p] else "-"

        def rate(r, mult):  # forward+backward counted as 3x the forward FLOPs
            return f"{useful * mult / r['median_ms'] / 1e6:.1f}" if ok(r) else "-"

        def mb(r, key="peak_mb"):
            return f"{r[key]:.0f}" if ok(r) and r.get(key) is not None else "-"

        rows.append([lbl, _cell_ms(f), _cell_ms(b), mb(f), mb(b), ratio(f, "fwd"), ratio(b, "fwdbwd"),
                     rate(f, 1), rate(b, 3)])
        for p, r in (("fwd", f), ("fwd+bwd", b)):
            if ok(r):
                details.append([lbl, p, r["reps"], f"{r['timing']['min_ms']:.1f}", f"{r['warmup_s']:.1f}",
                                mb(r, "peak_with_warmup_mb"), mb(r, "step_mb"),
                                mb(r, "getrusage_peak_mb"), f"{r['rss_inputs_mb']:.0f}",
                                f"{r.get('foreign_cores', float('nan')):.2f}"])
    table = _common.markdown_table(
        ["implementation / mode", "fwd ms (median ± IQR)", "fwd+bwd ms", "peak MB fwd", "peak MB fwd+bwd",
         "ratio fwd vs e3nn best", "ratio fwd+bwd vs e3nn best", "GFLOP/s fwd", "GFLOP/s fwd+bwd"], rows)
    detail = _common.markdown_table(
        ["implementation / mode", "pass", "timed reps", "min ms", "warm-up s (incl. compile)", "peak MB incl. warm-up",
         "step MB", "getrusage peak MB", "RSS after inputs MB", "foreign load (cores)"], details)
    return table, detail, best


def _node_chunks(text):
    """``"8,16"`` -> [8, 16]; a clear error for anything but positive integers."""
    chunks = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise SystemExit(f"--node-chunks takes positive integers, comma separated. Received: {text!r}")
        chunks.append(int(item))
    return chunks


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=1000, help="number of nodes (default 1000)")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls (default 2; 3 for e3nn)")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="seconds of timed calls per configuration; beyond it fewer reps (>= 3, marked *)")
    parser.add_argument("--e3nn-modes", default="eager,script,compile",
                        help="comma list of eager, script (TorchScript), compile, compile:<torch.compile mode>")
    parser.add_argument("--no-e3nn", action="store_true", help="skip e3nn even if importable")
    parser.add_argument("--tf-pool", action="store_true",
                        help="run the tfequivariant workers with TensorFlow's pooling CPU allocator "
                             "(TF_CPU_ALLOCATOR_USE_BFC=true; labels get '+pool'); matters under glibc malloc")
    parser.add_argument("--no-onednn", action="store_true",
                        help="run the tfequivariant workers with TF_ENABLE_ONEDNN_OPTS=0 (labels get "
                             "'+no-onednn'): TensorFlow's kernels without oneDNN and its allocator without "
                             "oneDNN's pool, so that the 'step MB' column (a call's own memory) can be measured")
    parser.add_argument("--so2-modes", default="function,xla",
                        help="modes of the extra runs of PointConvolution(implementation='so2') (products in "
                             "edge-aligned frames; default function,xla; empty to skip)")
    parser.add_argument("--si-modes", default="function,xla",
                        help="modes of the extra tfequivariant runs with self_interaction=True (default "
                             "function,xla; empty to skip)")
    parser.add_argument("--node-chunks", default="8,32",
                        help="comma list of PointConvolution(node_chunk=...) values for extra per_node XLA runs "
                             "(receivers in blocks of that many nodes; default 8,32: 8 was the best size on an "
                             "AMD EPYC VM, 32 on an Intel Xeon VM with 2 MB of L2 per core; empty to skip)")
    parser.add_argument("--only", default="", help="run only configurations whose label contains this text")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each configuration wait up to this many seconds for other processes to use "
                             "< 0.3 cores (default 120; 0 disables)")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-run a configuration up to this many times when other processes used >= 0.3 cores "
                             "during it, keeping the quietest attempt (default 1)")
    parser.add_argument("--markdown", help="write the tables and run details to this markdown file")
    parser.add_argument("--json", help="write the raw results (samples included), graph, FLOP counts and machine "
                                       "report to this JSON file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, cfg = args.worker[0], json.loads(args.worker[1])
        _common.quiet_tensorflow()
        fn = {"tf": tf_worker, "e3nn": e3nn_worker, "check": check_worker, "matmul": matmul_worker}[kind]
        _common.emit_result(fn(cfg))
        return

    t_start = time.time()
    machine = _common.machine_report()
    print(_common.format_report(machine, "Machine"), flush=True)
    g = build_graph(args.nodes)
    num_edges = len(g["senders"])
    flops = flop_counts(args.nodes, num_edges, g["max_degree"])
    print(f"graph: N={args.nodes} box={g['box']:.3f} E={num_edges} in-degree mean={g['mean_degree']:.2f} "
          f"max={g['max_degree']}", flush=True)
    flop_line = (
        f"forward GFLOP: per_edge {flops['per_edge_total'] / 1e9:.2f} "
        f"({', '.join(f'{k} {v / 1e9:.3f}' for k, v in flops['per_edge'].items())}); per_node "
        f"{flops['per_node_total'] / 1e9:.2f} useful "
        f"({', '.join(f'{k} {v / 1e9:.3f}' for k, v in flops['per_node'].items())}), "
        f"{flops['per_node_padded_total'] / 1e9:.2f} as executed with K={g['max_degree']} padding"
    )
    print(flop_line, flush=True)

    have_e3nn = not args.no_e3nn and all(
        importlib.util.find_spec(m) is not None for m in ("torch", "e3nn"))
    tmpdir = tempfile.mkdtemp(prefix="bench_conv_")
    weights_path = os.path.join(tmpdir, "weights.npz")
    base = {"nodes": args.nodes, "warmup": args.warmup, "reps": args.reps, "budget_s": args.budget}

    check = None
    if have_e3nn:
        check = _run_worker("check", {**base, "weights": weights_path}, 1800)
        print("correctness check (tfequivariant vs e3nn with the same weights):\n" + json.dumps(check, indent=1),
              flush=True)
    if args.quiet_wait > 0:
        _common.wait_for_quiet(timeout=args.quiet_wait)
    matmul = _run_worker("matmul", base, 600)
    mm = matmul.get("gflops", float("nan"))
    print(f"TF {MATMUL_SIZE}x{MATMUL_SIZE} float32 matmul: {mm:.1f} GFLOP/s", flush=True)

    configs = []
    if have_e3nn:
        configs += [("e3nn", "e3nn", m.strip(), False, None) for m in args.e3nn_modes.split(",") if m.strip()]
    configs += [("tf", impl, mode, False, None) for impl in TF_IMPLEMENTATIONS for mode in TF_MODES]
    configs += [("tf", "per_node", "xla", False, chunk) for chunk in _node_chunks(args.node_chunks)]
    configs += [("tf", "so2", m.strip(), False, None) for m in args.so2_modes.split(",") if m.strip()]
    si_modes = [m.strip() for m in args.si_modes.split(",") if m.strip()]
    configs += [("tf", impl, mode, True, None) for impl in TF_IMPLEMENTATIONS for mode in TF_MODES
                if mode in si_modes]

    results = {}
    for kind, impl, mode, si, chunk in configs:
        label = _label(kind, impl, mode, si, args.tf_pool, chunk, args.no_onednn and kind == "tf")
        if args.only and args.only not in label:
            continue
        for pass_ in PASSES:
            cfg = {**base, "impl": impl, "mode": mode, "pass": pass_, "si": si, "tf_pool": args.tf_pool,
                   "node_chunk": chunk, "no_onednn": args.no_onednn}
            if kind == "e3nn":
                cfg["warmup"] = max(args.warmup, 3)  # compiled forward and backward settle after 2 calls
                if check and "error" not in check:
                    cfg["weights"] = weights_path
                    cfg["act_constant"] = check["act_constant_tfe"]
            r = None
            for _ in range(1 + max(0, args.retries)):
                if args.quiet_wait > 0:
                    _common.wait_for_quiet(timeout=args.quiet_wait)
                with _common.ForeignLoad() as load:
                    attempt = _run_worker(kind, cfg, 1800)
                attempt["foreign_cores"] = load.cores
                if r is None or ("error" not in attempt and ("error" in r or load.cores < r["foreign_cores"])):
                    r = attempt
                if "error" in r or r["foreign_cores"] < 0.3:
                    break
            results[(label, pass_)] = r
            print(f"{label:26s} {pass_:7s} " + (r["error"] if "error" in r else
                  f"median {r['median_ms']:8.1f} ms  IQR {r['iqr_ms']:6.1f}  reps {r['reps']:2d}  "
                  f"peak {r['peak_mb']:6.0f} MB  warm-up {r['warmup_s']:5.1f} s  foreign load "
                  f"{r['foreign_cores']:.2f} cores  ({r['allocator']})"), flush=True)

    table, detail, best = _tables(results, flops, mm)
    errors = [f"- {lbl} {p}: {r['error']}" for (lbl, p), r in results.items() if "error" in r]
    elapsed = time.time() - t_start
    print("\n" + table + "\n\n" + detail)
    if errors:
        print("\n".join(errors))
    print(f"\nTF {MATMUL_SIZE}^2 float32 matmul: {mm:.1f} GFLOP/s; total {elapsed / 60:.1f} min")

    if args.markdown:
        preload = os.environ.get("LD_PRELOAD")
        cmd = " ".join(([f"LD_PRELOAD={preload}"] if preload else [])
                       + ["python", "benchmarks/bench_point_convolution.py"] + sys.argv[1:])
        threads = {k: v for r in results.values() if "threads" in r for k, v in r["threads"].items()}
        with open(args.markdown, "w") as fh:
            fh.write(f"### {machine['allocator']}{' (LD_PRELOAD)' if preload else ''}\n\n")
            fh.write(f"- date: {machine['date']}; machine: {machine['cpu_model']}, {machine['cpus_usable']} "
                     f"usable CPUs, {machine['memory_gib']} GiB; Python {machine['python']}; "
                     + ", ".join(f"{k} {v}" for k, v in threads.items()) + "\n")
            fh.write(f"- command: `{cmd}` (total {elapsed / 60:.1f} min)\n")
            fh.write(f"- graph: N={args.nodes}, E={num_edges}, in-degree mean {g['mean_degree']:.2f}, "
                     f"max {g['max_degree']}\n- {flop_line}\n")
            fh.write(f"- TF {MATMUL_SIZE}x{MATMUL_SIZE} float32 matmul: {mm:.1f} GFLOP/s\n")
            if best["fwd"]:
                fh.write(f"- e3nn best: forward {best['fwd']:.1f} ms, forward+backward {best['fwdbwd']:.1f} ms\n")
            fh.write("\n" + table + "\n\n" + detail + "\n")
            if errors:
                fh.write("\n" + "\n".join(errors) + "\n")
            if check:
                fh.write("\ncorrectness check:\n\n```\n" + json.dumps(check, indent=1) + "\n```\n")
        print(f"wrote {args.markdown}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "args": vars(args), "elapsed_s": elapsed, "matmul_gflops": mm,
                       "graph": {"nodes": args.nodes, "edges": num_edges, "mean_degree": g["mean_degree"],
                                 "max_degree": g["max_degree"]},
                       "flops": flops, "check": check,
                       "results": [{"label": lbl, "pass": p, **r} for (lbl, p), r in results.items()]}, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
