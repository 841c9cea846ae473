"""Benchmark SE3Attention against an attention built from e3nn pieces on the shared workload.

DESIGN.md section 6: the point-convolution graph (N = 1000 nodes at the density
of 32 neighbours within 5.0 in a periodic box, minimum-image ``edge_shifts``,
31,912 directed edges), features ``32x0e+16x1o+8x2e`` in and out, harmonics
``1x0e+1x1o+1x2e`` (component), 16 Gaussian radial functions -> 64 (SiLU) ->
6912 per-edge weights of ONE fused fully connected tensor product to
``irreps_key + irreps_out`` (keys ``32x0e+16x1o+8x2e`` and values), queries from
an equivariant linear map (no bias), 4 heads (head h owns channels
``[h mul / 4, (h + 1) mul / 4)`` of every block), invariant dot products scaled
by ``1 / sqrt(30)`` (key dim per head), per-receiver softmax, weighted value sum
plus a self-interaction (with bias).

The e3nn side is assembled from ``o3.SphericalHarmonics``,
``o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, irreps_key + irreps_out,
shared_weights=False)``, ``e3nn.nn.FullyConnectedNet([16, 64, weight_numel],
silu)``, two ``o3.Linear`` (queries, self-interaction) and a scatter softmax in
torch ops (``scatter_reduce`` amax, ``index_add_``). Before timing, one
subprocess copies the tfequivariant weights into it (and e3nn's sampled
``normalize2mom`` constant is replaced by the exact one) and prints the largest
output and gradient differences, so both sides compute the same function.

Timing ("side by side", the default ``--schedule interleaved``): every
configuration (framework, mode, forward or forward+backward) lives in its own
fresh subprocess (``_common.Worker`` / ``_common.serve``); for each pass the
driver warms every configuration up, then asks each in turn for one timed call,
round-robin (``_common.interleaved_timings``), so all configurations of a pass
see the same machine load. ``--schedule sequential`` runs the configurations
one after another instead, like ``bench_point_convolution.py``.

Peak memory ("peak MB"): in each configuration's subprocess, the kernel's RSS
high-water mark ``VmHWM`` (reset through ``/proc/self/clear_refs``,
``_common.PeakRSS``) minus the RSS after building the inputs and the layer,
over the timed calls only (the mark is reset again after the warm-up calls);
"peak MB incl. warm-up" also covers the warm-up calls (tracing, XLA and
``torch.compile`` compilation). "step MB": the peak of the timed calls above the
RSS of the warmed-up process after its allocator handed its free pages back
(``_common.serve``'s ``settle``), what one call needs on top of the compiled
program, weights and inputs; not reported for TensorFlow with oneDNN's
operations on, whose allocator keeps its pool (``--no-onednn`` runs the
tfequivariant workers with ``TF_ENABLE_ONEDNN_OPTS=0``). Resident memory, so
it is comparable between TensorFlow and PyTorch, which have no CPU allocator
statistics.

The allocator is whatever the process runs with: run the script once plainly
(glibc malloc) and once under
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4``; both
frameworks then use the same allocator in each run.

Example:
    python benchmarks/bench_se3_attention.py --markdown /tmp/att_glibc.md
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
from bench_point_convolution import (  # noqa: E402  (the same workload and the same TF/torch plumbing)
    _tf_inputs,
    _tf_steps,
    _torch_inputs,
    build_graph,
    matmul_worker,
    path_sums,
)

IRREPS = "32x0e+16x1o+8x2e"
IRREPS_KEY = IRREPS
IRREPS_OUT = IRREPS
IRREPS_SH = "1x0e+1x1o+1x2e"
HEADS = 4
CUTOFF = 5.0
NUM_BASIS = 16
HIDDEN = 64
MATMUL_SIZE = 2048

BLOCKS = [(32, 0, 1), (16, 1, -1), (8, 2, 1)]  # (mul, l, parity) of IRREPS = IRREPS_KEY = IRREPS_OUT
KEY_DIM = sum(m * (2 * l + 1) for m, l, _ in BLOCKS)  # 120

TF_MODES = ("eager", "function", "xla")
# the default run adds the edge chunks (SE3Attention(edge_chunk=1024)), the layer's memory setting, and
# the products in edge-aligned frames (SE3Attention(implementation="so2"))
DEFAULT_TF_MODES = TF_MODES + ("function@e1024", "xla@e1024", "xla@8", "function@so2", "xla@so2")
MIN_REPS = 3
PASSES = ("fwd", "fwdbwd")


# -- FLOPs ----------------------------------------------------------------------------
def flop_counts(num_nodes, num_edges):
    """Forward FLOPs (multiply-add = 2) of the per-edge formulation, derived from the paths.

    Per path ``(mul1 x l1) x (1 x l2) -> (mulo x lo)``, ``d = 2l+1``: harmonics times CG
    ``2 d1 d2 do``, features times that ``2 mul1 d1 do``, weights ``2 mul1 mulo do``; the
    fused key+value product has every path twice (once into the key block, once into
    the value block). Also an estimate of a per-receiver ("per-node") formulation.
    """
    cg, weightless, weighted, q, w_numel = path_sums(BLOCKS)
    linear = sum(2 * m * m * (2 * l + 1) for m, l, _ in BLOCKS)  # one o3.Linear per node
    e = num_edges
    per_edge = {
        "radial_hidden": 2 * e * NUM_BASIS * HIDDEN,
        "radial_output": 2 * e * HIDDEN * 2 * w_numel,  # [E, 64] x [64, 6912]
        # the weightless product (CG block, features) is computed per path, so twice (key and value)
        "tensor_product": e * 2 * (cg + weightless + weighted),
        "query": num_nodes * linear,
        "logits": 2 * e * KEY_DIM,
        "softmax": 6 * e * HEADS,
        "weighted_sum": 2 * e * KEY_DIM,
        "self_interaction": num_nodes * linear,
    }
    # Per-receiver estimate: weightless product once per edge; keys through per-node projected
    # queries Q_i^h = W_last . q_i^h (logit = h_ij . <T_ij, Q_i^h>); values through per-head
    # alpha-weighted neighbour sums of h_ij (x) T_ij and the last radial layer per node.
    per_node = {
        "radial_hidden": per_edge["radial_hidden"],
        "edge_products": e * (cg + weightless),
        "projected_queries": num_nodes * HIDDEN * weighted,
        "key_logits": 2 * e * HEADS * HIDDEN * q,
        "value_neighbour_sums": 2 * e * HEADS * HIDDEN * q,
        "per_node_values": num_nodes * HIDDEN * weighted,
        "softmax+query+SI": per_edge["softmax"] + per_edge["query"] + per_edge["self_interaction"],
    }
    return {
        "weight_numel": 2 * w_numel,
        "q": q,
        "per_edge": per_edge,
        "per_edge_total": sum(per_edge.values()),
        "per_node": per_node,
        "per_node_total": sum(per_node.values()),
        "per_edge_weights_mb": 4 * e * 2 * w_numel / 2**20,
    }


# -- TensorFlow side -----------------------------------------------------------------
def _tf_layer(node_chunk=None, max_neighbors=None, edge_chunk=None, implementation="per_edge"):
    import keras
    import tensorflow as tf

    from tfequivariant.layers import SE3Attention

    keras.utils.set_random_seed(0)
    layer = SE3Attention(
        IRREPS,
        IRREPS_OUT,
        irreps_key=IRREPS_KEY,
        num_heads=HEADS,
        irreps_sh=IRREPS_SH,
        num_radial_basis=NUM_BASIS,
        cutoff=CUTOFF,
        radial_basis="gaussian",
        radial_hidden=(HIDDEN,),
        radial_activation="silu",
        self_interaction=True,
        node_chunk=node_chunk,
        max_neighbors=max_neighbors,
        edge_chunk=edge_chunk,
        implementation=implementation,
    )
    layer(tf.zeros((2, layer.irreps_in.dim)), {"positions": tf.constant([[0.0, 0, 0], [1.0, 0, 0]]),
                                               "senders": tf.constant([0], tf.int32),
                                               "receivers": tf.constant([1], tf.int32)})
    # The bias starts at zero: give it values so that the comparison with e3nn covers it.
    layer.skip.bias.assign(np.random.default_rng(2).standard_normal(layer.skip.bias.shape).astype(np.float32))
    return layer


def tf_step(cfg):
    """``step()`` -> the output (fwd) or the gradients (fwd+bwd); ``arrays(result)`` -> dict to compare."""
    g = build_graph(cfg["nodes"])
    graph, features, cotangent = _tf_inputs(g)
    chunk = cfg.get("node_chunk")
    # receiver blocks under XLA need the static K: the largest in-degree of the graph
    layer = _tf_layer(chunk, g["max_degree"] if chunk else None, cfg.get("edge_chunk"),
                      cfg.get("implementation", "per_edge"))
    fn = _tf_steps(layer, graph, cotangent, cfg["mode"], cfg["pass"])
    positions = graph["positions"]

    def step():
        r = fn(features, positions)
        (r if cfg["pass"] == "fwd" else r[0]).numpy()
        return r

    def arrays(r):
        if cfg["pass"] == "fwd":
            return {"out": r.numpy()}
        return {"grad_features": r[0].numpy(), "grad_positions": r[1].numpy()}

    return step, arrays, _common.tf_threading_report


# -- e3nn side -----------------------------------------------------------------------
def _e3nn_module(num_nodes, weights=None, act_constant=None):
    """The attention from e3nn pieces (per-edge weights, fused key/value tensor product)."""
    import torch
    from e3nn import o3
    from e3nn.nn import FullyConnectedNet

    class E3nnAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.irreps_key = o3.Irreps(IRREPS_KEY)
            self.irreps_out = o3.Irreps(IRREPS_OUT)
            self.sh = o3.SphericalHarmonics(IRREPS_SH, normalize=True, normalization="component")
            self.tp = o3.FullyConnectedTensorProduct(IRREPS, IRREPS_SH, self.irreps_key + self.irreps_out,
                                                     shared_weights=False)
            self.fc = FullyConnectedNet([NUM_BASIS, HIDDEN, self.tp.weight_numel], torch.nn.functional.silu)
            self.query = o3.Linear(IRREPS, IRREPS_KEY, biases=False)
            self.self_interaction = o3.Linear(IRREPS, IRREPS_OUT, biases=True)
            self.register_buffer("centers", torch.linspace(0.0, CUTOFF, NUM_BASIS))
            self.num_nodes = num_nodes
            self.key_dim = self.irreps_key.dim
            self.key_blocks = [(s.start, mul, ir.dim) for (mul, ir), s in zip(self.irreps_key, self.irreps_key.slices())]
            self.value_blocks = [(s.start, mul, ir.dim) for (mul, ir), s in zip(self.irreps_out, self.irreps_out.slices())]
            self.scale = 1.0 / math.sqrt(self.key_dim / HEADS)

        def radial_basis(self, r):
            # tfequivariant's RadialBasis("gaussian"): Gaussians / 1.12 times the p = 6 polynomial envelope.
            b = torch.exp(-(((r[:, None] - self.centers) / (CUTOFF / (NUM_BASIS - 1))) ** 2)) / 1.12
            x = r[:, None] / CUTOFF
            xp = x**6
            u = 1 - 28 * xp + 48 * xp * x - 21 * xp * x * x
            return b * torch.where(x < 1, u, torch.zeros_like(u))

        def forward(self, features, positions, senders, receivers, shifts):
            e = senders.shape[0]
            vec = positions[senders] - positions[receivers] + shifts
            sh = self.sh(vec)
            emb = self.radial_basis(torch.sqrt(torch.sum(vec * vec, dim=1)))
            kv = self.tp(features[senders], sh, self.fc(emb))  # one fused convolution
            keys, values = kv[:, : self.key_dim], kv[:, self.key_dim :]
            qk = self.query(features)[receivers] * keys
            logits = None
            for start, mul, d in self.key_blocks:  # head h: channels [h mul/H, (h+1) mul/H) of each block
                term = qk[:, start : start + mul * d].reshape(e, HEADS, (mul // HEADS) * d).sum(-1)
                logits = term if logits is None else logits + term
            logits = logits * self.scale
            # scatter softmax over the edges of each receiver
            index = receivers[:, None].expand(e, HEADS)
            top = logits.new_full((self.num_nodes, HEADS), float("-inf"))
            top = top.scatter_reduce(0, index, logits.detach(), reduce="amax", include_self=True)
            ex = torch.exp(logits - top[receivers])
            denom = logits.new_zeros((self.num_nodes, HEADS)).index_add_(0, receivers, ex)
            alpha = ex / denom[receivers]
            weighted = []
            for start, mul, d in self.value_blocks:
                block = values[:, start : start + mul * d].reshape(e, HEADS, (mul // HEADS) * d)
                weighted.append((block * alpha[:, :, None]).reshape(e, mul * d))
            weighted = torch.cat(weighted, dim=1)
            out = weighted.new_zeros((self.num_nodes, weighted.shape[1])).index_add_(0, receivers, weighted)
            return out + self.self_interaction(features)

    torch.manual_seed(0)
    module = E3nnAttention()
    if weights is not None:
        with torch.no_grad():
            module.fc.layer0.weight.copy_(torch.from_numpy(weights["radial_kernel_0"]))
            module.fc.layer1.weight.copy_(torch.from_numpy(weights["radial_output"]))
            for name, lin in (("query", module.query), ("self_interaction", module.self_interaction)):
                irreps_in = o3.Irreps(IRREPS)
                flat = [weights[f"{name}/weight_{irreps_in[ins.i_in].ir}"].ravel() for ins in lin.instructions
                        if ins.i_in >= 0]  # i_in == -1: the bias "instructions"
                lin.weight.copy_(torch.from_numpy(np.concatenate(flat)))
            module.self_interaction.bias.copy_(torch.from_numpy(weights["self_interaction/bias"]))
    if act_constant is not None:
        # e3nn estimates normalize2mom's constant from 1e6 samples; tfequivariant integrates it exactly.
        module.fc.layer0.act.cst = act_constant
    return module


def e3nn_step(cfg):
    import torch

    g = build_graph(cfg["nodes"])
    weights = dict(np.load(cfg["weights"])) if cfg.get("weights") else None
    module = _e3nn_module(cfg["nodes"], weights, cfg.get("act_constant"))
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
                return fn(*args)
    else:
        def step():
            loss = (fn(*args) * t["cotangent"]).sum()
            return torch.autograd.grad(loss, [t["features"], t["positions"]] + params)

    def arrays(r):
        if cfg["pass"] == "fwd":
            return {"out": r.detach().numpy()}
        return {"grad_features": r[0].numpy(), "grad_positions": r[1].numpy()}

    return step, arrays, _common.torch_threading_report


# -- one configuration in a fresh subprocess ----------------------------------------
def _error_text(e):
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def case_worker(kind, cfg):
    """Build one configuration; serve it (interleaved) or time it here (sequential).

    The last call's output (fwd) or input gradients (fwd+bwd) go to ``cfg["dump"]`` so the
    driver can compare every configuration with e3nn (the weights are the same everywhere).
    """
    serving = bool(cfg.get("serve"))
    try:
        step, arrays, threads = (tf_step if kind == "tf" else e3nn_step)(cfg)
    except Exception as e:  # report why (e.g. torch.compile on this setup)
        if serving:  # _common.Worker reports the end of stderr when the worker dies
            print(f"building the configuration failed: {_error_text(e)}", file=sys.stderr, flush=True)
            sys.exit(1)
        _common.emit_result({"error": _error_text(e)})
        return
    base = _common.rss_bytes()
    state = {"last": None}

    def dump():
        if cfg.get("dump") and state["last"] is not None:
            np.savez(cfg["dump"], **arrays(state["last"]))

    if serving:
        # _common.serve measures VmHWM over the step's calls; the driver's interleaved_timings
        # settles the worker (free pages released, settled RSS taken, mark reset) between the
        # warm-up and the timed calls, so the memory record separates the two.
        def timed_step():
            state["last"] = None
            state["last"] = step()

        def finish():
            dump()
            return {"base_rss_mb": base / 2**20, "allocator": _common.allocator()["allocator"],
                    "threads": threads()}

        try:
            _common.serve({"step": timed_step}, finish)
        except Exception as e:  # e.g. torch.compile failing at the first call
            print(f"the configuration failed: {_error_text(e)}", file=sys.stderr, flush=True)
            sys.exit(1)
        return

    def run():
        state["last"] = None
        state["last"] = step()

    try:
        with _common.PeakRSS(baseline=base) as warm_mem:
            t0 = time.perf_counter()
            for _ in range(cfg["warmup"]):
                run()
            warmup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            run()
            one = time.perf_counter() - t0
        n = cfg["reps"] if one * cfg["reps"] <= cfg["budget_s"] else max(MIN_REPS, int(cfg["budget_s"] / one))
        settled = _common.settled_rss_bytes()
        with _common.PeakRSS(baseline=base) as mem:
            timing = _common.time_callable(run, warmup=0, repeat=n)
        step_bytes = _common.step_extra_bytes(mem.peak_bytes, settled)
        dump()
    except Exception as e:
        _common.emit_result({"error": _error_text(e)})
        return
    _common.emit_result({
        "timing": timing.as_dict(), "median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms, "reps": timing.n,
        "reduced": n < cfg["reps"], "warmup_s": warmup_s, "peak_mb": mem.extra_bytes / 2**20,
        "warm_peak_mb": warm_mem.extra_bytes / 2**20,
        "step_mb": None if step_bytes is None else step_bytes / 2**20,
        "base_rss_mb": base / 2**20,
        "memory_method": mem.method, "allocator": _common.allocator()["allocator"], "threads": threads(),
    })


# -- correctness: the same function on both sides -----------------------------------
def check_worker(cfg):
    """Save the tfequivariant weights for e3nn; check both sides use the same paths and constants.

    The numerical comparison itself uses the outputs and gradients the timed
    configurations dump (``compare_dumps``): no extra compute.
    """
    e3_cst = None
    layer = _tf_layer()
    weights = {"/".join(v.path.split("/")[1:]): v.numpy() for v in layer.weights}
    np.savez(cfg["weights"], **weights)
    e3 = _e3nn_module(cfg["nodes"])
    e3_cst = e3.fc.layer0.act.cst
    ours = [(i.i_in1, i.i_in2, i.i_out, tuple(i.path_shape)) for i in layer.instructions]
    theirs = [(i.i_in1, i.i_in2, i.i_out, tuple(i.path_shape)) for i in e3.tp.instructions]
    return {
        "instructions_match": ours == theirs,
        "num_paths": len(ours),
        "weight_numel": [layer.weight_numel, e3.tp.weight_numel],
        "act_constant_tfe": layer._act_scale,
        "act_constant_e3nn_sampled": e3_cst,
    }


def compare_dumps(dumps, reference):
    """Largest absolute differences of every configuration's arrays from ``reference``'s."""
    ref = dict(np.load(dumps[reference]))
    rows = {}
    for label, path in dumps.items():
        if not os.path.exists(path):
            continue
        arr = dict(np.load(path))
        rows[label] = {k: float(np.abs(arr[k].astype(np.float64) - ref[k]).max()) for k in ref if k in arr}
    scale = {k: float(np.abs(v).max()) for k, v in ref.items()}
    return rows, scale


# -- where the time goes: the layer's stages, timed separately ------------------------
def breakdown_worker(cfg):
    """Time the stages of ``SE3Attention.call`` separately (forward and forward+backward).

    Each stage is its own ``tf.function`` (``jit_compile`` per ``cfg["mode"]``) fed with the
    previous stage's outputs; "fwd+bwd" is the stage plus the vector-Jacobian product with
    a random cotangent w.r.t. its float inputs and the layer weights it uses. One extra
    row times the tensor-product stage with the per-path weights cut by ``tf.split``
    instead of the layer's strided slices (whose gradients are full-size zero-padded
    ``[E, 6912]`` tensors, one per path, summed).
    """
    import keras
    import tensorflow as tf

    from tfequivariant import ops as tfe_ops
    from tfequivariant.layers.se3_attention import _split_heads, segment_softmax
    from tfequivariant.layers.tensor_product import tensor_product

    ops = keras.ops
    g = build_graph(cfg["nodes"])
    graph, features, _ = _tf_inputs(g)
    layer = _tf_layer()
    n = cfg["nodes"]
    rng = np.random.default_rng(5)
    sizes = [int(np.prod(ins.path_shape)) for ins in layer.instructions]

    def geometry(positions):
        sh, radial, _ = layer._edge_inputs({**graph, "positions": positions})
        return sh, radial

    def hidden(radial):
        return layer._radial_hidden(radial, None)

    def radial_out(h):
        return ops.matmul(h, layer.radial_output) / math.sqrt(h.shape[-1])

    def tp_from(parts, features, sh):
        weights = [ops.reshape(p, (-1,) + tuple(ins.path_shape)) for p, ins in zip(parts, layer.instructions)]
        x_send = ops.take(features, graph["senders"], axis=0)
        return tensor_product(layer.irreps_in.split(x_send), layer.irreps_sh.split(sh), weights,
                              layer.instructions, layer.irreps_kv, (-1,), layer.compute_dtype, shared=False)

    def tp(features, sh, w):  # as SE3Attention._keys_values
        parts, offset = [], 0
        for size in sizes:
            parts.append(w[:, offset: offset + size])
            offset += size
        return tp_from(parts, features, sh)

    def tp_split(features, sh, w):
        return tp_from(tf.split(w, sizes, axis=1), features, sh)

    def attend(features, kv):  # as SE3Attention.attention_weights + call after _keys_values
        keys, values = kv[:, : layer.irreps_key.dim], kv[:, layer.irreps_key.dim:]
        q = ops.take(layer.query(features), graph["receivers"], axis=0)
        logits = None
        for block in layer.irreps_key.split(q * keys):
            term = ops.sum(_split_heads(block, HEADS), axis=(2, 3))
            logits = term if logits is None else logits + term
        logits = logits / math.sqrt(layer.irreps_key.dim / HEADS)
        alpha = segment_softmax(logits, graph["receivers"], n)
        weighted = []
        for (mul, ir), block in zip(layer.irreps_out, layer.irreps_out.split(values)):
            weighted.append(ops.reshape(_split_heads(block, HEADS) * alpha[:, :, None, None], (-1, mul * ir.dim)))
        out = tfe_ops.segment_sum(ops.concatenate(weighted, axis=-1), graph["receivers"], n)
        return out + layer.skip(features)

    def with_vjp(fn, variables, inputs):
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        cts = [tf.constant(rng.standard_normal(o.shape.as_list()).astype(np.float32)) for o in outs]

        def run(*xs):
            with tf.GradientTape() as tape:
                tape.watch(list(xs))
                res = fn(*xs)
                res = res if isinstance(res, tuple) else (res,)
                loss = tf.add_n([tf.reduce_sum(o * c) for o, c in zip(res, cts)])
            grads = tape.gradient(loss, list(xs) + variables)
            return [tf.convert_to_tensor(x) for x in grads if x is not None]

        return run

    positions = graph["positions"]
    sh, radial = geometry(positions)
    h = hidden(radial)
    w = radial_out(h)
    kv = tp(features, sh, w)
    # The layer's tensor-product stage goes last: in plain tf.function mode its backward
    # can exceed the memory guard; results are emitted after every measurement, so the
    # rows measured before a kill survive it.
    stages = [
        ("geometry (edge vectors, SH, radial basis)", geometry, (positions,), []),
        ("radial MLP hidden layer [E,16]x[16,64], SiLU", hidden, (radial,), list(layer.radial_kernels)),
        (f"radial output matmul [E,64]x[64,{layer.weight_numel}]", radial_out, (h,), [layer.radial_output]),
        ("queries, logits, segment softmax, weighted sum, segment sum, SI", attend, (features, kv),
         list(layer.query.trainable_weights) + list(layer.skip.trainable_weights)),
        ("[alternative] the tensor product with tf.split instead of slices", tp_split, (features, sh, w), []),
        (f"per-edge tensor product ({len(sizes)} paths, strided slices as in the layer)", tp, (features, sh, w), []),
    ]
    result = []
    for name, fn, inputs, variables in stages:
        row = {"stage": name, "fwd": None, "fwdbwd": None}
        result.append(row)
        for pass_, f in (("fwd", fn), ("fwdbwd", with_vjp(fn, variables, inputs))):
            row[pass_] = "running"
            _common.emit_result({"mode": cfg["mode"], "stages": result, "complete": False})
            tfn = tf.function(f, jit_compile=cfg["mode"] == "xla")

            def call(tfn=tfn):
                r = tf.nest.flatten(tfn(*inputs))
                r[0][:1].numpy()  # CPU tf.function calls return when done; this is a cheap sync

            row[pass_] = _common.time_callable(call, warmup=1, repeat=cfg["reps"]).median_ms
        print(row, file=sys.stderr, flush=True)
    return {"mode": cfg["mode"], "stages": result, "complete": True}


# -- memory guard: the machine is shared --------------------------------------------
TOTAL_CAP_KILL = "all benchmark processes together"  # the guard's reason for a kill by the combined cap


class ChildMemoryGuard:
    """Kill (SIGKILL, by pid) a child of this process whose RSS exceeds ``per_child`` bytes, or
    the largest child when all children together exceed ``total`` bytes.

    Watches every direct child (``_common.Worker`` and ``_common.run_isolated`` processes)
    from a background thread; ``kills`` maps pid -> reason.
    """

    def __init__(self, per_child, total, period=0.1):
        import threading

        self.per_child, self.total, self.period = per_child, total, period
        self.kills = {}
        self.max_seen = {}
        self._me = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _children(self):
        pids = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == self._me:
                        pids.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
        return pids

    @staticmethod
    def _rss(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _kill(self, pid, reason):
        import signal

        if pid in self.kills:
            return
        self.kills[pid] = reason
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        print(f"memory guard: killed pid {pid}: {reason}", flush=True)

    def _run(self):
        children, tick = [], 0
        while not self._stop.is_set():
            if tick % 5 == 0:
                children = self._children()
            tick += 1
            rss = {pid: self._rss(pid) for pid in children if pid not in self.kills}
            for pid, r in rss.items():
                self.max_seen[pid] = max(self.max_seen.get(pid, 0), r)
                if r > self.per_child:
                    self._kill(pid, f"RSS {r / 2**30:.1f} GiB > per-process limit {self.per_child / 2**30:.1f} GiB")
            if sum(rss.values()) > self.total and rss:
                pid = max(rss, key=rss.get)
                self._kill(pid, f"{TOTAL_CAP_KILL} {sum(rss.values()) / 2**30:.1f} GiB > "
                                f"limit {self.total / 2**30:.1f} GiB (largest killed, {rss[pid] / 2**30:.1f} GiB)")
            self._stop.wait(self.period)

    def stop(self):
        self._stop.set()
        self._thread.join()


GUARD = None


# -- driver ----------------------------------------------------------------------------
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
NO_ONEDNN = False  # --no-onednn: the tfequivariant workers run with TF_ENABLE_ONEDNN_OPTS=0


def _env(kind):
    return {**WORKER_ENV, **(_common.TF_NO_ONEDNN_ENV if NO_ONEDNN and kind == "tf" else {})}


def _argv(kind, cfg):
    return [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(cfg)]


def _short(err):
    return " / ".join(line.strip() for line in str(err).strip().splitlines()[-3:])[:400]


def _run_worker(kind, cfg, timeout):
    before = dict(GUARD.kills) if GUARD else {}
    r = _common.run_isolated(_argv(kind, cfg), env=_env(kind), timeout=timeout)
    new = [v for k, v in (GUARD.kills if GUARD else {}).items() if k not in before]
    if "error" in r:
        r["error"] = "killed by the memory guard: " + new[-1] if new else _short(r["error"])
    elif new:  # a partial result emitted before the kill
        r["killed"] = new[-1]
    return r


def split_mode(spec):
    """A TF mode and the layer's settings, ``+``-separated after ``@``: ``"xla@16"`` ->
    ("xla", {"node_chunk": 16}) (``SE3Attention(node_chunk=16)``), ``"function@e2048"`` ->
    ("function", {"edge_chunk": 2048}), ``"xla@so2"`` -> ("xla", {"implementation": "so2"}),
    ``"function@e1024+so2"`` -> both, ``"xla"`` -> ("xla", {})."""
    mode, _, rest = spec.partition("@")
    settings = {}
    for token in rest.split("+") if rest else []:
        if token == "so2":
            settings["implementation"] = "so2"
            continue
        key, digits = ("edge_chunk", token[1:]) if token.startswith("e") else ("node_chunk", token)
        if not digits.isdigit() or int(digits) < 1:
            raise SystemExit("a TF mode takes @<positive node_chunk>, @e<positive edge_chunk> and/or @so2, joined "
                             f"by '+', e.g. xla@16, function@e2048, xla@so2, function@e1024+so2. Received: {spec!r}")
        settings[key] = int(digits)
    return mode, settings


def chunk_label(chunks):
    """``{"node_chunk": 16}`` -> " node_chunk=16", ``{"implementation": "so2"}`` -> " so2" (the label
    suffix; "" without settings)."""
    return "".join(f" {v}" if k == "implementation" else f" {k}={v}" for k, v in chunks.items())


def _label(kind, mode):
    if kind == "e3nn":
        return f"e3nn {mode}"
    mode, chunks = split_mode(mode)
    return f"tfe {mode}" + chunk_label(chunks) + (" +no-onednn" if NO_ONEDNN else "")


def _configs(args, have_e3nn):
    configs = []
    if have_e3nn:
        configs += [("e3nn", m.strip()) for m in args.e3nn_modes.split(",") if m.strip()]
    configs += [("tf", m.strip()) for m in args.tf_modes.split(",") if m.strip()]
    return [(k, m) for k, m in configs if not args.only or args.only in _label(k, m)]


def _cfg(kind, mode, pass_, base, check, tmpdir):
    cfg = {**base, "mode": mode, "pass": pass_,
           "dump": os.path.join(tmpdir, f"{_label(kind, mode).replace(' ', '_').replace(':', '_')}_{pass_}.npz")}
    if kind == "tf":
        cfg["mode"], chunks = split_mode(mode)
        cfg.update(chunks)
    if kind == "e3nn":
        if mode.startswith("compile"):
            cfg["warmup"] = max(base["warmup"], 3)  # compiled forward and backward settle after 2 calls
        if check and "error" not in check:
            cfg["weights"] = os.path.join(tmpdir, "weights.npz")
            cfg["act_constant"] = check["act_constant_tfe"]
    return cfg


def _worker_error(label, w, pid=None):
    reason = GUARD.kills.get(pid) if GUARD and pid is not None else None
    return "killed by the memory guard: " + reason if reason else _short(w.error if w is not None else "")


def run_interleaved(configs, base, check, tmpdir, budget_s, passes=PASSES):
    """Per pass: one live worker per configuration, timed round-robin (same load for all).

    Each worker gets its warm-up calls first (one after another); the number of timed
    rounds is ``base["reps"]``, or fewer (>= MIN_REPS) when the round time measured
    in the last warm-up calls times ``reps`` exceeds ``budget_s``. A worker the memory
    guard killed because all live workers together exceeded its cap (not its own
    limit) is measured again afterwards, alone: its result says ``"retried_alone"``.
    """
    results = {}
    for pass_ in passes:
        t0 = time.time()
        together = _interleaved_group(configs, pass_, base, check, tmpdir, budget_s)
        for kind, mode in configs:
            label = _label(kind, mode)
            r = together[label]
            if len(configs) > 1 and TOTAL_CAP_KILL in r.get("error", ""):
                print(f"  {label} {pass_}: {r['error']}; measured again alone", flush=True)
                r = _interleaved_group([(kind, mode)], pass_, base, check, tmpdir, budget_s)[label]
                r["retried_alone"] = True
            results[(label, pass_)] = r
        for kind, mode in configs:
            _print_result(_label(kind, mode), pass_, results[(_label(kind, mode), pass_)])
        print(f"  ({pass_}: {time.time() - t0:.0f} s including start-up and compilation)", flush=True)
    return results


def _interleaved_group(configs, pass_, base, check, tmpdir, budget_s):
    """One pass of ``run_interleaved`` over ``configs``, all alive together: label -> result."""
    results = {}
    workers, errors, cfgs, last = {}, {}, {}, {}
    for kind, mode in configs:
        label = _label(kind, mode)
        cfgs[label] = {**_cfg(kind, mode, pass_, base, check, tmpdir), "serve": True}
        try:
            workers[label] = _common.Worker(_argv(kind, cfgs[label]), env=_env(kind))
        except RuntimeError as e:
            errors[label] = _short(e)
    for label, w in list(workers.items()):
        t1 = time.time()
        try:
            for _ in range(cfgs[label]["warmup"]):
                last[label] = w.call("step")
        except RuntimeError:
            errors[label] = _worker_error(label, w, w.proc.pid)
            w.kill()
            del workers[label]
            continue
        last_call = f"{last[label]:.2f} s" if label in last else "none (--warmup 0)"
        print(f"  {label} {pass_}: warm-up {time.time() - t1:.0f} s, last warm-up call {last_call}", flush=True)
    round_s = sum(last.get(label, 0.0) for label in workers)  # no warm-up: no estimate, no budget cut
    reps = base["reps"]
    if workers and round_s * reps > budget_s:
        reps = max(MIN_REPS, int(budget_s / round_s))
    print(f"  {pass_}: {len(workers)} configurations, ~{round_s:.1f} s per round, {reps} timed rounds",
          flush=True)
    timings, loads = _common.interleaved_timings(workers, ["step"], warmup=0, repeat=reps) if workers else ({}, {})
    for label, w in workers.items():
        if w.error is not None or (label, "step") not in timings:
            errors[label] = _worker_error(label, w, w.proc.pid)
            w.kill()
            continue
        try:
            fin = w.finish()
        except RuntimeError:
            errors[label] = _worker_error(label, w, w.proc.pid)
            continue
        timing = timings[(label, "step")]
        mem = fin["memory"].get("step", {})
        results[label] = {
            "timing": timing.as_dict(), "median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms,
            "reps": timing.n, "reduced": timing.n < base["reps"],
            "peak_mb": mem.get("timed_extra_bytes", float("nan")) / 2**20,
            "warm_peak_mb": mem.get("peak_extra_bytes", float("nan")) / 2**20,
            "step_mb": mem["step_extra_bytes"] / 2**20 if "step_extra_bytes" in mem else None,
            "base_rss_mb": fin.get("base_rss_mb"),
            "memory_method": mem.get("method"), "allocator": fin.get("allocator"),
            "threads": fin.get("threads", {}), "foreign_cores": loads[(label, "step")],
            "dump": cfgs[label]["dump"],
        }
    for label, err in errors.items():
        results[label] = {"error": err}
    return results


def run_sequential(configs, base, check, tmpdir, budget_s, quiet_wait, passes=PASSES):
    results = {}
    for kind, mode in configs:
        label = _label(kind, mode)
        for pass_ in passes:
            if quiet_wait > 0:
                _common.wait_for_quiet(timeout=quiet_wait)
            cfg = {**_cfg(kind, mode, pass_, base, check, tmpdir), "budget_s": budget_s}
            with _common.ForeignLoad() as load:
                r = _run_worker(kind, cfg, 1800)
            r["foreign_cores"] = load.cores
            r["dump"] = cfg["dump"]
            results[(label, pass_)] = r
            _print_result(label, pass_, r)
    return results


def _print_result(label, pass_, r):
    print(f"{label:22s} {pass_:7s} " + (r["error"] if "error" in r else
          f"median {r['median_ms']:8.1f} ms  IQR {r['iqr_ms']:6.1f}  reps {r['reps']:2d}  "
          f"peak {r['peak_mb']:6.0f} MB  foreign load {r['foreign_cores']:.2f} cores  ({r['allocator']})"),
          flush=True)


def _ok(r):
    return r is not None and "error" not in r


def _tables(results, flops):
    best = {}
    for pass_ in PASSES:
        e3 = [(r["median_ms"], lbl) for (lbl, p), r in results.items() if lbl.startswith("e3nn") and p == pass_ and _ok(r)]
        best[pass_] = min(e3) if e3 else None
    labels = list(dict.fromkeys(lbl for lbl, _ in results))
    rows, details = [], []
    for lbl in labels:
        f, b = results.get((lbl, "fwd")), results.get((lbl, "fwdbwd"))

        def cell(r):
            if r is None:
                return "-"
            if "error" in r:
                return "killed (memory)" if "memory guard" in r["error"] else "error"
            return (_common.format_ms(r["timing"]) + ("*" if r.get("reduced") else "")
                    + (" (alone)" if r.get("retried_alone") else ""))

        def ratio(r, p):
            return f"{r['median_ms'] / best[p][0]:.2f}" if _ok(r) and best[p] else "-"

        def rate(r, mult):  # forward+backward counted as 3x the forward FLOPs
            return f"{flops['per_edge_total'] * mult / r['median_ms'] / 1e6:.1f}" if _ok(r) else "-"

        def mb(r, key="peak_mb"):
            return f"{r[key]:.0f}" if _ok(r) and r.get(key) is not None else "-"

        rows.append([lbl, cell(f), cell(b), mb(f), mb(b), ratio(f, "fwd"), ratio(b, "fwdbwd"), rate(f, 1), rate(b, 3)])
        for p, r in (("fwd", f), ("fwd+bwd", b)):
            if _ok(r):
                details.append([lbl, p, r["reps"], f"{r['timing']['min_ms']:.1f}", mb(r, "warm_peak_mb"),
                                mb(r, "step_mb"), f"{r['base_rss_mb']:.0f}",
                                f"{r.get('foreign_cores', float('nan')):.2f}"])
    table = _common.markdown_table(
        ["mode", "fwd ms (median ± IQR)", "fwd+bwd ms (median ± IQR)", "peak MB fwd", "peak MB fwd+bwd",
         "fwd / e3nn best", "fwd+bwd / e3nn best", "GFLOP/s fwd", "GFLOP/s fwd+bwd"], rows)
    detail = _common.markdown_table(
        ["mode", "pass", "timed reps", "min ms", "peak MB incl. warm-up", "step MB", "RSS after inputs MB",
         "foreign load (cores)"], details)
    return table, detail, best


def _correctness(results):
    """Max |difference| of every configuration's output / input gradients from e3nn eager's."""
    rows, notes = [], []
    for pass_, keys in (("fwd", ["out"]), ("fwdbwd", ["grad_features", "grad_positions"])):
        dumps = {lbl: r["dump"] for (lbl, p), r in results.items() if p == pass_ and _ok(r) and os.path.exists(r["dump"])}
        ref = "e3nn eager" if "e3nn eager" in dumps else next((lbl for lbl in dumps if lbl.startswith("e3nn")), None)
        if ref is None:
            continue
        diffs, scale = compare_dumps(dumps, ref)
        notes.append(f"{pass_}: reference {ref}, max |value| " + ", ".join(f"{k} {v:.3g}" for k, v in scale.items()))
        for lbl, d in diffs.items():
            if lbl != ref:
                rows.append([lbl, pass_] + [f"{d[k]:.2e}" if k in d else "-" for k in keys]
                            + ["-"] * (2 - len(keys)))
    if not rows:
        return None
    return (_common.markdown_table(["mode", "pass", "max abs diff (out / grad features)", "max abs diff (grad positions)"],
                                   rows) + "\n\n" + "\n".join(f"- {n}" for n in notes))


def main():
    global GUARD, NO_ONEDNN
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=1000, help="number of nodes (default 1000)")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per configuration (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls (default 2; at least 3 for torch.compile)")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="seconds of timed calls per pass (interleaved) or per configuration (sequential); "
                             f"beyond it fewer reps (>= {MIN_REPS}, marked *) (default 150)")
    parser.add_argument("--schedule", choices=("interleaved", "sequential"), default="interleaved",
                        help="interleaved (default): all configurations of a pass alive at once, timed "
                             "round-robin; sequential: one fresh subprocess after another")
    parser.add_argument("--e3nn-modes", default="eager,compile",
                        help="comma list of eager, compile, compile:<torch.compile mode> (default eager,compile)")
    parser.add_argument("--tf-modes", default=",".join(DEFAULT_TF_MODES),
                        help="comma list of eager, function, xla; mode@N runs SE3Attention(node_chunk=N) "
                             "(receivers in blocks of N, e.g. xla@16), mode@eN SE3Attention(edge_chunk=N) "
                             "(edges in chunks of N, e.g. function@e2048), mode@so2 SE3Attention(implementation='so2') "
                             "(products in edge-aligned frames), joined by '+' (function@e1024+so2) "
                             "(default eager,function,xla,function@e1024,function@so2,xla@so2)")
    parser.add_argument("--passes", default=",".join(PASSES),
                        help="comma list of fwd, fwdbwd (default both; one pass per run keeps runs short)")
    parser.add_argument("--no-e3nn", action="store_true", help="skip e3nn even if importable")
    parser.add_argument("--no-onednn", action="store_true",
                        help="run the tfequivariant workers with TF_ENABLE_ONEDNN_OPTS=0 (labels get '+no-onednn'): "
                             "TensorFlow's kernels without oneDNN and its allocator without oneDNN's pool, so "
                             "that the 'step MB' column (a call's own memory) can be measured")
    parser.add_argument("--only", default="", help="run only configurations whose label contains this text")
    parser.add_argument("--breakdown", default="",
                        help="comma list of TF modes (function, xla) whose per-stage times to measure after the "
                             "table (default none)")
    parser.add_argument("--max-rss-gb", type=float, default=6.0,
                        help="kill a benchmark subprocess whose RSS exceeds this (default 6 GiB; the machine is "
                             "shared); it is reported as killed")
    parser.add_argument("--max-total-gb", type=float, default=None,
                        help="kill the largest benchmark subprocess when all together exceed this (default 70%% "
                             "of MemAvailable at start)")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="sequential schedule: before each configuration wait up to this many seconds for "
                             "other processes to use < 0.3 cores (default 0: off)")
    parser.add_argument("--markdown", help="write the tables and run details to this markdown file")
    parser.add_argument("--json", help="write the raw results (samples included), graph, FLOP counts and machine "
                                       "report to this JSON file")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    NO_ONEDNN = args.no_onednn

    if args.worker:
        kind, cfg = args.worker[0], json.loads(args.worker[1])
        _common.quiet_tensorflow()
        if kind in ("tf", "e3nn"):
            case_worker(kind, cfg)
            return
        fn = {"check": check_worker, "matmul": matmul_worker, "breakdown": breakdown_worker}[kind]
        _common.emit_result(fn(cfg))
        return

    t_start = time.time()
    with open("/proc/meminfo") as f:
        available = int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    total_cap = args.max_total_gb * 2**30 if args.max_total_gb else 0.7 * available
    GUARD = ChildMemoryGuard(args.max_rss_gb * 2**30, total_cap)
    machine = _common.machine_report()
    print(_common.format_report(machine, "Machine"), flush=True)
    print(f"memory guard: {args.max_rss_gb:.1f} GiB per process, {total_cap / 2**30:.1f} GiB together "
          f"(MemAvailable at start {available / 2**30:.1f} GiB)", flush=True)
    g = build_graph(args.nodes)
    num_edges = len(g["senders"])
    flops = flop_counts(args.nodes, num_edges)
    print(f"graph: N={args.nodes} box={g['box']:.3f} E={num_edges} in-degree mean={g['mean_degree']:.2f} "
          f"max={g['max_degree']}", flush=True)
    flop_line = (
        f"forward GFLOP, per-edge formulation (both sides): {flops['per_edge_total'] / 1e9:.2f} "
        f"({', '.join(f'{k} {v / 1e9:.3f}' for k, v in flops['per_edge'].items())}); per-edge weights "
        f"[{num_edges}, {flops['weight_numel']}] float32 = {flops['per_edge_weights_mb']:.0f} MiB"
    )
    node_line = (
        f"estimate for a per-receiver formulation (not implemented): {flops['per_node_total'] / 1e9:.2f} GFLOP "
        f"({', '.join(f'{k} {v / 1e9:.3f}' for k, v in flops['per_node'].items())})"
    )
    print(flop_line + "\n" + node_line, flush=True)

    have_e3nn = not args.no_e3nn and all(importlib.util.find_spec(m) is not None for m in ("torch", "e3nn"))
    tmpdir = tempfile.mkdtemp(prefix="bench_att_")
    base = {"nodes": args.nodes, "warmup": args.warmup, "reps": args.reps}
    configs = _configs(args, have_e3nn)
    passes = [p.strip() for p in args.passes.split(",") if p.strip() in PASSES]

    check = None
    if have_e3nn:
        check = _run_worker("check", {**base, "weights": os.path.join(tmpdir, "weights.npz")}, 900)
        print("set-up check (tfequivariant vs e3nn):\n" + json.dumps(check, indent=1), flush=True)
    matmul = _run_worker("matmul", base, 600)
    mm = matmul.get("gflops", float("nan"))
    print(f"TF {MATMUL_SIZE}x{MATMUL_SIZE} float32 matmul: {mm:.1f} GFLOP/s", flush=True)

    load_before = [round(v, 2) for v in os.getloadavg()]
    t_timing = time.time()
    if args.schedule == "interleaved":
        results = run_interleaved(configs, base, check, tmpdir, args.budget, passes)
    else:
        results = run_sequential(configs, base, check, tmpdir, args.budget, args.quiet_wait, passes)
    load_after = [round(v, 2) for v in os.getloadavg()]
    timing_min = (time.time() - t_timing) / 60

    bd_tables = []
    for mode in [m.strip() for m in args.breakdown.split(",") if m.strip()]:
        b = _run_worker("breakdown", {**base, "mode": mode, "reps": max(MIN_REPS, args.reps // 3)}, 1200)
        if "error" in b:
            bd_tables.append(f"breakdown ({mode}) error: {b['error']}")
            continue

        def ms(v):
            if v == "running":
                return "killed (memory)" if b.get("killed") else "not finished"
            return "-" if v is None else f"{v:.1f}"

        main_stages = [s for s in b["stages"] if not s["stage"].startswith("[alternative]")]
        tot = {p: sum(s[p] for s in main_stages if isinstance(s[p], float)) for p in PASSES}
        complete = {p: all(isinstance(s[p], float) for s in main_stages) and len(main_stages) == 5 for p in PASSES}

        def share(s, p):
            return f"{100 * s[p] / tot[p]:.0f} %" if complete[p] and s in main_stages else ""

        rows = [[s["stage"], ms(s["fwd"]), share(s, "fwd"), ms(s["fwdbwd"]), share(s, "fwdbwd")] for s in b["stages"]]
        total = {p: f"{tot[p]:.1f}" + ("" if complete[p] else " (incomplete)") for p in PASSES}
        rows.append(["sum of the layer's stages", total["fwd"], "", total["fwdbwd"], ""])
        note = f" The process was killed: {b['killed']}." if b.get("killed") else ""
        bd_tables.append(f"tfequivariant stages, tf.function(jit_compile={b['mode'] == 'xla'}), each its own "
                         f"function, medians of {max(MIN_REPS, args.reps // 3)} calls, run alone after the "
                         f"table.{note}\n\n"
                         + _common.markdown_table(["stage", "fwd ms", "share", "fwd+bwd ms", "share"], rows))

    table, detail, best = _tables(results, flops)
    correctness = _correctness(results)
    errors = [f"- {lbl} {p}: {r['error']}" for (lbl, p), r in results.items() if "error" in r]
    elapsed = time.time() - t_start
    print("\n" + table + "\n\n" + detail)
    if correctness:
        print("\ncorrectness (same weights; e3nn's activation constant set to the exact value):\n\n" + correctness)
    for t in bd_tables:
        print("\n" + t)
    if errors:
        print("\n".join(errors))
    print(f"\nload average (1, 5, 15 min) before timing {load_before}, after {load_after}; "
          f"TF {MATMUL_SIZE}^2 float32 matmul: {mm:.1f} GFLOP/s; timing {timing_min:.1f} min, "
          f"total {elapsed / 60:.1f} min")
    GUARD.stop()

    if args.markdown:
        preload = os.environ.get("LD_PRELOAD")
        cmd = " ".join(([f"LD_PRELOAD={preload}"] if preload else [])
                       + ["python", "benchmarks/bench_se3_attention.py"] + sys.argv[1:])
        threads = {k: v for r in results.values() if "threads" in r for k, v in r["threads"].items()}
        with open(args.markdown, "w") as fh:
            fh.write(f"### {machine['allocator']}{' (LD_PRELOAD)' if preload else ''}\n\n")
            fh.write(f"- date: {machine['date']}; machine: {machine['cpu_model']}, {machine['cpus_usable']} "
                     f"usable CPUs, {machine['memory_gib']} GiB; Python {machine['python']}; "
                     + ", ".join(f"{k} {v}" for k, v in threads.items()) + "\n")
            fh.write(f"- command: `{cmd}` (schedule {args.schedule}, up to {args.reps} timed reps, time budget "
                     f"{args.budget:.0f} s per {'pass' if args.schedule == 'interleaved' else 'configuration'}, "
                     f"warm-up {args.warmup} (torch.compile {max(args.warmup, 3)}); timing {timing_min:.1f} min, total "
                     f"{elapsed / 60:.1f} min)\n")
            fh.write(f"- load average (1, 5, 15 min): {machine['load_average_1_5_15']} at start, {load_before} "
                     f"before timing, {load_after} after\n")
            fh.write(f"- graph: N={args.nodes}, E={num_edges}, in-degree mean {g['mean_degree']:.2f}, "
                     f"max {g['max_degree']}\n- {flop_line}\n- {node_line}\n")
            fh.write(f"- TF {MATMUL_SIZE}x{MATMUL_SIZE} float32 matmul: {mm:.1f} GFLOP/s\n")
            names = {"fwd": "forward", "fwdbwd": "forward+backward"}
            if any(best.values()):
                fh.write("- e3nn best: " + ", ".join(f"{names[p]} {b[0]:.1f} ms ({b[1]})" for p, b in best.items() if b)
                         + "\n")
            fh.write("\n" + table + "\n\n" + detail + "\n")
            if correctness:
                fh.write("\ncorrectness (same weights):\n\n" + correctness + "\n")
            for t in bd_tables:
                fh.write("\n" + t + "\n")
            if errors:
                fh.write("\n" + "\n".join(errors) + "\n")
            if check:
                fh.write("\nset-up check:\n\n```\n" + json.dumps(check, indent=1) + "\n```\n")
        print(f"wrote {args.markdown}")

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "args": vars(args), "elapsed_s": elapsed, "matmul_gflops": mm,
                       "load_average_before_after": [load_before, load_after],
                       "graph": {"nodes": args.nodes, "edges": num_edges, "mean_degree": g["mean_degree"],
                                 "max_degree": g["max_degree"]},
                       "flops": flops, "check": check,
                       "results": [{"label": lbl, "pass": p, **r} for (lbl, p), r in results.items()]}, fh, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
