"""Benchmark a full training step of the N-body and QM9 example models, with and without XLA.

The workloads are the examples' own models, data pipelines and compile
settings: ``examples/nbody.py`` (SE(3)-Transformer and TFN on the charged
5-body task, batch 64, fixed batch shapes) and ``examples/qm9.py``
(SE(3)-Transformer and TFN on HOMO, batch 16; under XLA the batches are padded
to the example's 3 size buckets, without XLA they are not padded, as in the
example). The scripts are imported (``importlib``) and their ``parse_args``,
``build_model`` and ``keras_dataset`` are called, so the benchmark follows
them; only the data preparation of ``main()`` is repeated here
(the examples' ``compile_model`` is called too). The example arguments of every case are printed.

Modes: ``function`` is ``model.compile(jit_compile=False)`` (Keras' tf.function
step), ``xla`` is ``jit_compile=True``; ``function-padded`` (opt-in, QM9 only)
is ``jit_compile=False`` on the XLA mode's padded batches, which separates
the cost of padding from XLA's.

Every (workload, mode) runs in its own process, which trains with
``model.fit`` on the example's pipeline:

1. one full epoch first (the warm-up: tracing and every compilation); its
   wall time and the number of XLA compilations during it are recorded. The
   compilations are counted as ``tests/test_xla_training.py`` counts them:
   the process runs with ``XLA_FLAGS=--xla_dump_to=DIR``, XLA dumps one
   ``*.before_optimizations.txt`` module per compilation, and the modules
   of the train step are those whose name holds ``one_step_on_data``.
2. then ``fit`` continues (next epochs, same pipeline) and a callback holds
   every step until the driver asks for it: the driver asks the modes of
   one workload in turn for one step each (round-robin, a different mode first
   every round, ``_common.interleaved_timings``), so both modes see the same
   machine load. A step's time runs from ``on_train_batch_begin`` to
   ``on_train_batch_end``: the train function, including the fetch of the
   (prefetched) batch from ``tf.data``; ``--warmup`` steps are discarded first.

Reported: median +- IQR of the step time in ms, steps/s (1000 / median),
the XLA compilations during epoch 1 (train step / all modules) and after it
(should be 0), the distinct batch shapes of one epoch, the epoch-1 wall time
(tracing and compilation included; XLA dumping adds a little), and the load
of other processes while timing.

Example:
    python benchmarks/bench_training_step.py --json /tmp/steps.json --markdown /tmp/steps.md
    python benchmarks/bench_training_step.py --quick            # smoke run, numbers meaningless
    python benchmarks/bench_training_step.py --only nbody --modes xla
"""

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _common  # noqa: E402

EXAMPLES = {"nbody": os.path.join(ROOT, "examples", "nbody.py"), "qm9": os.path.join(ROOT, "examples", "qm9.py")}
WORKLOADS = ("nbody-se3", "nbody-tfn", "qm9-se3", "qm9-tfn")
MODES = ("function", "xla", "function-padded")
DEFAULT_MODES = ("function", "xla")
MODE_NAMES = {"function": "no XLA (jit_compile=False)", "xla": "XLA (jit_compile=True)",
              "function-padded": "no XLA, padded to the XLA buckets"}
TRAIN_STEP_MODULE = "one_step_on_data"  # Keras' train step function (tests/test_xla_training.py)

# Example arguments beyond the examples' defaults. Models, batch sizes and everything else are the
# examples' defaults; only the training set is cut so that one epoch is 20 steps and a run of all
# cases stays within a few minutes on 2 cores: N-body 1280 of 3000 trajectories (batch 64), QM9 a
# 320-molecule prefix of the training split instead of 4000 (batch 16; the buckets are chosen, as
# in the example, from these and the 500 validation molecules). --quick: tiny models and epochs.
DEFAULT_SIZES = {"nbody": ["--train", "1280"], "qm9": ["--train", "320"]}
QUICK_SIZES = {
    "nbody": ["--train", "128", "--channels", "4", "--max-degree", "1", "--layers", "1", "--heads", "1"],
    "qm9": ["--train", "96", "--valid", "32", "--channels", "4", "--max-degree", "1", "--layers", "1",
            "--heads", "1", "--head-width", "8"],
}
QUICK_STEPS, QUICK_WARMUP = 3, 1


# -- configurations (no TensorFlow in the driver) ---------------------------------------------
def example_argv(workload, mode, quick=False, extra=()):
    """The example's command-line arguments for one case (parsed by the example's ``parse_args``)."""
    dataset, model = workload.split("-")
    sizes = QUICK_SIZES[dataset] if quick else DEFAULT_SIZES[dataset]
    jit = ["--jit-compile"] if mode == "xla" else ["--no-jit-compile"]
    return ["--model", model, *jit, *sizes, *extra]


def select_cases(only=None, modes=DEFAULT_MODES):
    """``(workload, mode)`` pairs to run, in run order; ``only``: substrings of ``"workload mode"``."""
    cases = []
    for workload in WORKLOADS:
        for mode in modes:
            if mode == "function-padded" and not workload.startswith("qm9"):
                continue  # N-body batches have fixed shapes: nothing to pad
            label = f"{workload} {mode}"
            if only and not any(o in label for o in only):
                continue
            cases.append((workload, mode))
    return cases


def parse_list(values, allowed=None, what="value"):
    items = [v.strip() for value in (values or []) for v in value.split(",") if v.strip()]
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise ValueError(f"unknown {what} {bad}; choose from {list(allowed)}")
    return items


def short_error(text, limit=300):
    """The informative part of a worker's error: the exception line and the message after it."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(text).strip().splitlines()]
    lines = [line for line in lines if line]
    at = [i for i, line in enumerate(lines) if re.match(r"^[\w.]*(Error|Exception|Exit)\w*\b", line)]
    if at:
        picked = [lines[at[-1]]] + [line for line in lines[at[-1] + 1 : at[-1] + 3]
                                    if not line.startswith("Arguments received")]
    else:
        picked = lines[-2:]
    text = " ".join(picked)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def count_xla_modules(dump_dir):
    """XLA compilations in a ``--xla_dump_to`` directory: ``{"train_step": n, "all": m}``.

    One ``*.before_optimizations.txt`` per compiled module (as in tests/test_xla_training.py).
    ``None`` when ``dump_dir`` is ``None`` (not counted).
    """
    if dump_dir is None:
        return None
    try:
        names = os.listdir(dump_dir)
    except FileNotFoundError:
        return {"train_step": 0, "all": 0}
    modules = [n for n in names if n.endswith("before_optimizations.txt")]
    return {"train_step": sum(TRAIN_STEP_MODULE in n for n in modules), "all": len(modules)}


# -- worker side (one case per process) ----------------------------------------------------------
def load_example(name):
    """The example script as a module (``examples/`` is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tfe_example_{name}", EXAMPLES[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_nbody(argv, mode):
    """Model (compiled as examples/nbody.py compiles it), training dataset factory and info."""
    import keras

    from tfequivariant.datasets import nbody

    ex = load_example("nbody")
    args = ex.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    train = nbody.load("train", args.train, cache_dir=args.cache_dir)
    model = ex.build_model(args.model, args)
    ex.compile_model(model, args)

    def dataset():
        return ex.keras_dataset(train, args.batch_size, None, args.seed, shuffle=True)

    info = {"batch_size": args.batch_size, "train_graphs": args.train, "buckets": None,
            "graph": "5 particles, fully connected (20 edges)"}
    return model, dataset, info


def build_qm9(argv, mode):
    """Model (compiled as examples/qm9.py compiles it), training dataset factory and info."""
    import keras

    from tfequivariant import graph as tfe_graph
    from tfequivariant.datasets import qm9

    ex = load_example("qm9")
    args = ex.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    data = qm9.load(limit=args.limit, cache_dir=args.cache_dir, directory=args.data_dir)
    splits = qm9.split_indices(len(data["num_atoms"]))
    train_idx, valid_idx = splits["train"][: args.train], splits["valid"][: args.valid]
    shift, scale = qm9.standardization(data, args.target, train_idx)

    def make(idx):
        return qm9.make_examples(data, idx, args.target, cutoff=args.cutoff, shift=shift, scale=scale)

    train_examples, valid_examples = make(train_idx), make(valid_idx)
    num_edges = sum(len(e["senders"]) for e in train_examples)
    num_nodes = sum(len(e["positions"]) for e in train_examples)
    buckets = None
    if mode in ("xla", "function-padded"):  # the example pads (only) under XLA; its bucket choice
        sizes = [(len(e["positions"]), len(e["senders"])) for e in train_examples + valid_examples]
        buckets = tfe_graph.buckets_for(sizes, args.batch_size, num_buckets=3)
    model = ex.build_model(args.model, args, num_edges / num_nodes, num_nodes / len(train_examples))
    ex.compile_model(model, args, max(1, len(train_examples) // args.batch_size))

    def dataset():
        return ex.keras_dataset(train_examples, args.batch_size, True, args.seed, buckets)

    info = {"batch_size": args.batch_size, "train_graphs": len(train_examples),
            "buckets": [list(b) for b in buckets] if buckets is not None else None,
            "graph": f"molecules, mean {num_nodes / len(train_examples):.1f} atoms, "
                     f"{num_edges / num_nodes:.1f} edges per atom"}
    return model, dataset, info


def _batch_shapes(dataset):
    """Distinct input shapes of the batches of one epoch of a fresh copy of the pipeline."""
    shapes = set()
    count = 0
    for inputs, _, _ in dataset:
        shapes.add(tuple(sorted((k, tuple(v.shape)) for k, v in inputs.items())))
        count += 1
    return len(shapes), count


def next_call(stdin):
    """Read the driver's commands (``_common.Worker``) up to the next ``call``: True for a call,
    False for ``finish`` or a closed pipe. ``settle`` (sent by ``interleaved_timings`` after the
    warm-up) is answered with ``settled: false``: a training step inside ``model.fit`` is not a
    single call whose own memory could be isolated."""
    line = stdin.readline().split()
    while line and line[0] == "settle":
        _common.emit_result({"settled": False})
        line = stdin.readline().split()
    return bool(line) and line[0] == "call"


def worker(cfg):
    """One case: train one counted epoch, then serve timed steps (``_common.Worker`` protocol)."""
    import keras
    import tensorflow as tf

    dump_dir = cfg["dump_dir"]
    builder = build_nbody if cfg["workload"].startswith("nbody") else build_qm9
    t_build = time.perf_counter()
    model, dataset, info = builder(cfg["argv"], cfg["mode"])
    build_s = time.perf_counter() - t_build
    num_shapes, steps_per_epoch = _batch_shapes(dataset())
    stdin = sys.stdin
    # "pending": a call was read at a batch begin that Keras then aborted (the epoch's iterator was
    # exhausted: with unknown cardinality Keras calls on_train_batch_begin once more per epoch); the
    # first step of the next epoch serves it.
    state = {"epoch1": None, "finishing": False, "pending": False, "t0": None, "timed": 0}

    class Driven(keras.callbacks.Callback):
        """Epoch 1 free-running; afterwards every step waits for a ``call`` from the driver."""

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 0:
                state["epoch_t0"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                state["epoch1"] = {
                    "seconds": time.perf_counter() - state["epoch_t0"],
                    "loss": float(logs["loss"]) if logs and "loss" in logs else None,
                    "xla_compilations": count_xla_modules(dump_dir),
                }
                _common.emit_result({"ready": True})

        def on_train_batch_begin(self, batch, logs=None):
            if state["epoch1"] is None or state["finishing"]:
                return
            if not state["pending"]:
                if not next_call(stdin):  # "finish" or the driver is gone: this step is the last
                    state["finishing"] = True
                    return
                state["pending"] = True
            state["t0"] = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if state["epoch1"] is None:
                return
            if state["finishing"]:
                self.model.stop_training = True
                return
            seconds = time.perf_counter() - state["t0"]
            state["pending"] = False
            state["timed"] += 1
            _common.emit_result({"seconds": seconds})

    history = model.fit(dataset(), epochs=10**6, verbose=0, callbacks=[Driven()])
    total = count_xla_modules(dump_dir)
    first = state["epoch1"]["xla_compilations"]
    after = None if total is None else {k: total[k] - first[k] for k in total}
    losses = history.history.get("loss", [])
    _common.emit_result({
        **info,
        "steps_per_epoch": steps_per_epoch,
        "distinct_batch_shapes": num_shapes,
        "parameters": int(model.count_params()),
        "build_seconds": build_s,
        "epoch1_seconds": state["epoch1"]["seconds"],
        "epoch1_loss": state["epoch1"]["loss"],
        "last_epoch_loss": float(losses[-1]) if losses else None,
        "xla_compilations_epoch1": first,
        "xla_compilations_after_epoch1": after,
        "jit_compile": bool(model.jit_compile),
        "allocator": _common.allocator()["allocator"],
        "threads": _common.tf_threading_report(),
        "tf_xla_flags": os.environ.get("XLA_FLAGS"),
        "tf_version": tf.__version__,
    })


# -- driver ---------------------------------------------------------------------------------------
def run_workload(workload, modes, args, dump_root):
    """Start one worker per mode (one after another: each trains its first epoch alone), then time them."""
    workers, results = {}, {}
    for mode in modes:
        dump = None if args.no_count else os.path.join(dump_root, f"{workload}-{mode}")
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
        if dump is not None:
            os.makedirs(dump, exist_ok=True)
            env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()
        argv = example_argv(workload, mode, args.quick, shlex.split(getattr(args, workload.split("-")[0] + "_args")))
        cfg = {"workload": workload, "mode": mode, "argv": argv, "dump_dir": dump}
        example = os.path.relpath(EXAMPLES[workload.split("-")[0]], ROOT)
        print(f"[{workload} {mode}] starting: {example} {shlex.join(argv)}", flush=True)
        results[mode] = {"example_argv": argv}
        t0 = time.perf_counter()
        try:
            workers[mode] = _common.Worker([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                                           env=env)
        except RuntimeError as e:
            results[mode]["error"] = short_error(e)
            print(f"[{workload} {mode}] FAILED: {results[mode]['error']}", flush=True)
            continue
        print(f"[{workload} {mode}] first epoch done after {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        timings, loads = _common.interleaved_timings(workers, ["step"], warmup=args.warmup, repeat=args.steps)
        for mode, w in workers.items():
            if w.error is not None:
                results[mode]["error"] = short_error(w.error)
                continue
            try:
                final = w.finish()
            except RuntimeError:
                results[mode]["error"] = short_error(w.error)
                continue
            timing = timings[(mode, "step")]
            results[mode].update(final)
            results[mode]["timing"] = timing.as_dict()
            results[mode]["steps_per_second"] = 1e3 / timing.median_ms
            results[mode]["foreign_cores"] = loads[(mode, "step")]
    finally:
        for w in workers.values():
            w.kill()
    return results


def _compilations(r):
    c = r.get("xla_compilations_epoch1")
    if not c:
        return "not counted"
    text = f"{c['train_step']}" + (f" ({c['all']} modules)" if c["all"] != c["train_step"] else "")
    after = (r.get("xla_compilations_after_epoch1") or {}).get("all", 0)
    return text + (f", +{after} later" if after else "")


def table_rows(results):
    """Rows of the main table from ``{workload: {mode: result}}``."""
    rows = []
    for workload, by_mode in results.items():
        base = by_mode.get("function")
        for mode, r in by_mode.items():
            label = f"{workload.replace('-', ' ')}"
            if "error" in r:
                rows.append([label, MODE_NAMES[mode], "-", "FAILED (below)", "-", "-", "-", "-", "-", "-"])
                continue
            med = r["timing"]["median_ms"]
            speedup = "-"
            if mode != "function" and base is not None and "error" not in base:
                speedup = f"{base['timing']['median_ms'] / med:.2f}x"
            shapes = f"{r['distinct_batch_shapes']} / {r['steps_per_epoch']}"
            rows.append([
                label, MODE_NAMES[mode], str(r["batch_size"]),
                _common.format_ms(r["timing"]) + f" (n={r['timing']['n']})",
                f"{r['steps_per_second']:.2f}", speedup, _compilations(r), shapes,
                f"{r['epoch1_seconds']:.1f}", f"{r['foreign_cores']:.2f}",
            ])
    return rows


HEADER = ["workload", "mode", "batch", "ms/step (median ± IQR)", "steps/s", "speed-up vs no XLA",
          "XLA compilations in epoch 1", "batch shapes / steps per epoch", "epoch 1 s (incl. compile)",
          "other load (cores)"]


def failures(results):
    return [f"{w} {m}: {r['error']}" for w, by in results.items() for m, r in by.items() if "error" in r]


def format_table(results):
    """The markdown table, with the failed cases' errors under it."""
    failed = failures(results)
    return _common.markdown_table(HEADER, table_rows(results)) + (
        "\n\nFailures:\n" + "\n".join(f"- {f}" for f in failed) if failed else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 20; --quick 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps after the first epoch, per case (default 2; --quick 1)")
    parser.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                        help=f"any of {', '.join(MODES)} (default: {' '.join(DEFAULT_MODES)})")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="run only cases whose label '<workload> <mode>' contains one of these "
                             f"(workloads: {', '.join(WORKLOADS)}), e.g. --only nbody 'qm9-se3 xla'")
    parser.add_argument("--quick", action="store_true", help="tiny models and epochs, 3 timed steps (smoke run)")
    parser.add_argument("--nbody-args", default="", metavar="ARGS",
                        help="extra examples/nbody.py arguments as one string, appended (so they win), e.g. "
                             "--nbody-args='--train 1024'")
    parser.add_argument("--qm9-args", default="", metavar="ARGS",
                        help="extra examples/qm9.py arguments, e.g. --qm9-args='--train 1024 --max-degree 2'")
    parser.add_argument("--no-count", action="store_true",
                        help="do not count XLA compilations (no XLA dump: epoch 1 then times compilation alone)")
    parser.add_argument("--keep-dumps", metavar="DIR", help="keep the XLA dumps under DIR (default: deleted)")
    parser.add_argument("--json", help="write results (samples included), cases and machine report here")
    parser.add_argument("--markdown", help="write the table with date, machine, allocator and command here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        _common.quiet_tensorflow()
        worker(json.loads(args.worker))
        return 0

    try:
        modes = parse_list(args.modes, MODES, "mode") or list(DEFAULT_MODES)
    except ValueError as e:
        parser.error(f"--modes: {e}")
    only = parse_list(args.only)
    args.steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else 2)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    cases = select_cases(only, modes)
    if not cases:
        parser.error(f"no case matches --only {only} with --modes {modes}")

    t_start = time.time()
    machine = _common.machine_report()
    print(_common.format_report(machine, "Machine"), flush=True)
    if args.keep_dumps:  # a fresh subdirectory: stale modules of an earlier run would be counted
        os.makedirs(args.keep_dumps, exist_ok=True)
    dump_root = tempfile.mkdtemp(prefix="tfe_bench_steps_", dir=args.keep_dumps)
    if args.keep_dumps:
        print(f"XLA dumps kept in {dump_root}", flush=True)
    results = {}
    try:
        for workload in dict.fromkeys(w for w, _ in cases):
            wmodes = [m for w, m in cases if w == workload]
            results[workload] = run_workload(workload, wmodes, args, dump_root)
            for mode, r in results[workload].items():
                if "error" not in r:
                    print(f"[{workload} {mode}] {_common.format_ms(r['timing'])} ms/step, "
                          f"{r['steps_per_second']:.2f} steps/s; XLA compilations in epoch 1: {_compilations(r)}; "
                          f"{r['distinct_batch_shapes']} batch shapes in {r['steps_per_epoch']} steps; epoch 1 "
                          f"{r['epoch1_seconds']:.1f} s; {r['parameters']:,} parameters; other load "
                          f"{r['foreign_cores']:.2f} cores ({r['allocator']})", flush=True)
    finally:
        if not args.keep_dumps:
            shutil.rmtree(dump_root, ignore_errors=True)
    elapsed = time.time() - t_start
    load_after = [round(v, 2) for v in os.getloadavg()]
    table = format_table(results)
    notes = [
        "ms/step: one training step inside model.fit (train function + fetching the prefetched batch), "
        f"after one full epoch and {args.warmup} more untimed steps; the modes of a workload timed in turn.",
        "XLA compilations: modules dumped by XLA (--xla_dump_to) during the first epoch whose name holds "
        f"'{TRAIN_STEP_MODULE}' (the train step); '(k modules)' when other modules were compiled too, "
        "'+k later' for compilations after epoch 1.",
        "QM9: no XLA runs unpadded batches (as examples/qm9.py does); XLA pads them to the example's buckets.",
    ]
    threads = {k: v for by_mode in results.values() for r in by_mode.values() for k, v in r.get("threads", {}).items()}
    print("\n" + table + "\n\n" + "\n".join(notes))
    print(f"\nthreads: {threads}; load average after: {load_after}; total {elapsed / 60:.1f} min")
    command = ["python", "benchmarks/bench_training_step.py"] + list(sys.argv[1:] if argv is None else argv)
    preload = os.environ.get("LD_PRELOAD")
    if args.markdown:
        allocs = sorted({r["allocator"] for by in results.values() for r in by.values() if "allocator" in r})
        with open(args.markdown, "w") as fh:
            fh.write("### Full training step" + (" (--quick smoke run: numbers meaningless)" if args.quick else "")
                     + "\n\n")
            fh.write(f"- date: {machine['date']}; machine: {machine['cpu_model']}, {machine['cpus_usable']} usable "
                     f"CPUs, {machine['memory_gib']} GiB; Python {machine['python']}; "
                     + ", ".join(f"{k} {v}" for k, v in threads.items()) + "\n")
            fh.write(f"- allocator: LD_PRELOAD={preload or '(unset)'}; loaded in the workers: "
                     f"{', '.join(allocs) or 'not reported'}\n")
            fh.write(f"- load average (1, 5, 15 min): before {machine['load_average_1_5_15']}, after {load_after}\n")
            fh.write(f"- command: `{shlex.join(command)}` (total {elapsed / 60:.1f} min)\n")
            for workload, by_mode in results.items():
                for mode, r in by_mode.items():
                    ex = os.path.relpath(EXAMPLES[workload.split("-")[0]], ROOT)
                    extra = ""
                    if "error" not in r:
                        extra = f"; {r['parameters']:,} parameters; {r['graph']}"
                        if r.get("buckets"):
                            extra += f"; buckets (nodes, edges, graphs) {r['buckets']}"
                    fh.write(f"- {workload} {mode}: `{ex} {shlex.join(r['example_argv'])}`{extra}\n")
            fh.write("\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
        print(f"wrote {args.markdown}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine, "args": vars(args), "command": command, "elapsed_s": elapsed,
                       "load_average_after": load_after, "results": results}, fh, indent=1)
        print(f"wrote {args.json}")
    return 1 if failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
