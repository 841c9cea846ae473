"""Test utilities: equivariance and normalization checks shared by every layer and model.

``assert_equivariant`` applies random proper and improper rotations (and
translations, where points are among the inputs) to the inputs of a function
and checks that its outputs transform accordingly:
``f(D_in(g) x) = D_out(g) f(x)``.
"""

import numpy as np

from tfequivariant import so3
from tfequivariant.irreps import Irreps

__all__ = [
    "CARTESIAN_POINTS",
    "DEFAULT_TOLERANCES",
    "equivariance_error",
    "assert_equivariant",
    "assert_normalized",
]

#: Marker for inputs/outputs that are points in space: rotated *and* translated.
CARTESIAN_POINTS = "cartesian_points"

#: Default tolerances of ``assert_equivariant`` on the relative error (see there).
DEFAULT_TOLERANCES = {"float64": 1e-9, "float32": 2e-4, "float16": 5e-2, "bfloat16": 5e-2}


def _kind(spec):
    if spec is None:
        return "invariant", None
    if isinstance(spec, str) and spec == CARTESIAN_POINTS:
        return "points", None
    return "irreps", Irreps(spec)


def _to_numpy(x):
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x)


def _as_list(x):
    if isinstance(x, (list, tuple)) and not isinstance(x, Irreps):
        return list(x), True
    return [x], False


def _random_inputs(specs, num_points, dtype, rng):
    out = []
    for spec in specs:
        kind, irreps = _kind(spec)
        if kind == "points":
            out.append(rng.normal(size=(num_points, 3)).astype(dtype))
        elif kind == "irreps":
            out.append(rng.normal(size=(num_points, irreps.dim)).astype(dtype))
        else:
            raise ValueError(
                "args_in must be given when an input is invariant (irreps None): there "
                "is no way to make up a graph or an index tensor."
            )
    return out


def _transform(values, specs, R, t, dtype):
    out = []
    for value, spec in zip(values, specs):
        kind, irreps = _kind(spec)
        if kind == "invariant":
            out.append(value)
            continue
        arr = _to_numpy(value).astype(np.float64)
        if kind == "points":
            arr = arr @ R.T + t
        else:
            D = irreps.D_from_matrix(R)
            arr = arr @ D.T
        out.append(arr.astype(dtype) if dtype is not None else arr)
    return out


def equivariance_error(
    fn,
    irreps_in,
    irreps_out,
    args_in=None,
    *,
    num_trials=4,
    do_parity=True,
    do_translation=True,
    dtype="float64",
    num_points=6,
    seed=0,
):
    """Largest relative equivariance error of ``fn`` over random group elements.

    Args:
        fn: callable taking the inputs as positional arguments and returning a
            tensor or a list of tensors.
        irreps_in: one entry per input: an ``Irreps`` (or its string) for features
            ``[..., dim]``, ``CARTESIAN_POINTS`` for positions ``[..., 3]`` (rotated
            and translated) or ``None`` for an invariant input passed unchanged
            (graph indices, masks).
        irreps_out: the same for the outputs (a single entry for a single output).
        args_in: the inputs; random normal ``[num_points, dim]`` when omitted.
        num_trials: random rotations tried; with ``do_parity`` every other trial is
            an improper rotation (rotation times inversion).
        do_parity: also test improper rotations (an SE(3)-only function must set
            it False).
        do_translation: translate the ``CARTESIAN_POINTS`` inputs too.
        dtype: float dtype the inputs are given in (``"float64"`` or ``"float32"``).
        num_points: leading size of generated inputs.
        seed: seed of the generator of rotations, translations and inputs.

    Returns:
        ``max |f(g x) - g f(x)| / max |f(x)|`` over trials and outputs (relative
        error; ``inf`` if any output is NaN or infinite).
    """
    rng = np.random.default_rng(seed)
    specs_in, _ = _as_list(irreps_in)
    specs_out, _ = _as_list(irreps_out)
    if args_in is None:
        args = _random_inputs(specs_in, num_points, dtype, rng)
    else:
        args, _ = _as_list(args_in)
        if len(args) != len(specs_in):
            raise ValueError(
                f"args_in has {len(args)} entries but irreps_in has {len(specs_in)}."
            )
    ref, _ = _as_list(fn(*args))
    if len(ref) != len(specs_out):
        raise ValueError(f"fn returned {len(ref)} outputs but irreps_out has {len(specs_out)}.")
    ref = [_to_numpy(r).astype(np.float64) for r in ref]
    if not all(np.all(np.isfinite(r)) for r in ref):
        return float("inf")  # NaN/inf outputs are never "equivariant" (max() would skip NaN)
    # Relative to the output's own scale, so small outputs cannot hide an error;
    # the floor only guards an identically zero output.
    scale = max([1e-12] + [float(np.max(np.abs(r))) if r.size else 0.0 for r in ref])
    worst = 0.0
    for trial in range(num_trials):
        R = so3.rand_matrix(seed=rng)
        if do_parity and trial % 2 == 1:
            R = -R
        t = rng.normal(size=3) * 3.0 if do_translation else np.zeros(3)
        out, _ = _as_list(fn(*_transform(args, specs_in, R, t, dtype)))
        expected = _transform(ref, specs_out, R, t, None)
        for o, e, spec in zip(out, expected, specs_out):
            o = _to_numpy(o).astype(np.float64)
            if o.shape != e.shape:
                raise AssertionError(f"output shape changed under rotation: {o.shape} vs {e.shape}")
            if not np.all(np.isfinite(o)):
                return float("inf")
            if o.size:
                worst = max(worst, float(np.max(np.abs(o - e))) / scale)
    return worst


def assert_equivariant(fn, irreps_in, irreps_out, args_in=None, *, tolerance=None, **kwargs):
    """Assert ``equivariance_error(...) <= tolerance`` and print the error.

    ``tolerance`` defaults to ``DEFAULT_TOLERANCES[dtype]`` (float64 1e-9,
    float32 2e-4, relative to the largest output). Other keyword arguments go to
    ``equivariance_error``. Returns the error.
    """
    dtype = kwargs.get("dtype", "float64")
    tol = DEFAULT_TOLERANCES[dtype] if tolerance is None else tolerance
    err = equivariance_error(fn, irreps_in, irreps_out, args_in, **kwargs)
    label = getattr(fn, "__name__", type(fn).__name__)
    print(f"equivariance error of {label} ({dtype}, parity={kwargs.get('do_parity', True)}): "
          f"{err:.3e} (tolerance {tol:.1e})")
    if not np.isfinite(err) or err > tol:
        raise AssertionError(
            f"{label} is not equivariant: relative error {err:.3e} > tolerance {tol:.1e} ({dtype})"
        )
    return err


def assert_normalized(fn, irreps_in, args_in=None, *, num_points=4096, seed=0, rtol=0.35):
    """Unit-variance (component-normalized) inputs give roughly unit-variance outputs.

    Checks that the mean square of every output component is within ``rtol`` of
    1 (e3nn's normalization discipline: a deep stack neither explodes nor
    vanishes at initialisation). ``fn`` takes the inputs and returns one tensor.
    Returns the per-component mean squares.
    """
    rng = np.random.default_rng(seed)
    specs, _ = _as_list(irreps_in)
    if args_in is None:
        args = _random_inputs(specs, num_points, "float64", rng)
    else:
        args, _ = _as_list(args_in)
    out = _to_numpy(fn(*args)).astype(np.float64)
    ms = np.mean(out.reshape(-1, out.shape[-1]) ** 2, axis=0)
    bad = np.abs(ms - 1) > rtol
    print(f"output mean squares: min {ms.min():.3f}, mean {ms.mean():.3f}, max {ms.max():.3f}")
    if np.any(bad):
        raise AssertionError(
            f"output components {np.flatnonzero(bad).tolist()} have mean square "
            f"{ms[bad].round(3).tolist()}, not within {rtol} of 1"
        )
    return ms


# --- the shared layer harness --------------------------------------------------
def _map_structure(fn, x):
    if isinstance(x, dict):
        return {k: _map_structure(fn, v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and not isinstance(x, Irreps):
        return type(x)(_map_structure(fn, v) for v in x)
    return fn(x)


def _flatten(x):
    if isinstance(x, dict):
        return [a for k in sorted(x) for a in _flatten(x[k])]
    if isinstance(x, (list, tuple)):
        return [a for v in x for a in _flatten(v)]
    return [x]


def _assert_close(a, b, atol, rtol, what):
    fa, fb = _flatten(a), _flatten(b)
    if len(fa) != len(fb):
        raise AssertionError(f"{what}: different output structures")
    for u, v in zip(fa, fb):
        u = _to_numpy(u).astype(np.float64)
        v = _to_numpy(v).astype(np.float64)
        if u.shape != v.shape:
            raise AssertionError(f"{what}: shapes differ {u.shape} vs {v.shape}")
        if not np.allclose(u, v, atol=atol, rtol=rtol):
            raise AssertionError(f"{what}: max abs difference {np.max(np.abs(u - v)):.3e} > atol {atol}")


def _symbolic_inputs(x, name):
    import keras

    if isinstance(x, dict):
        return {k: _symbolic_inputs(v, k) for k, v in x.items()}
    arr = np.asarray(x)
    return keras.Input(shape=arr.shape[1:], dtype=str(arr.dtype), name=name)


def check_layer(
    layer_cls,
    init_kwargs,
    inputs,
    *,
    run_fit=True,
    run_xla=True,
    run_float64=True,
    run_saving=True,
    tmp_dir=None,
    atol=1e-5,
    rtol=1e-5,
):
    """The shared layer test harness (after keras' ``testing/test_case.py``).

    Builds ``layer_cls(**init_kwargs)`` and checks, on ``inputs`` (a tuple of
    positional call arguments: NumPy arrays or dicts of them, e.g.
    ``(features, graph)``):

    1. an eager call, whose shape matches ``compute_output_shape`` when the
       output is a single tensor;
    2. ``get_config`` is JSON-serializable and ``from_config`` rebuilds a layer
       that, given the same weights, gives the same outputs;
    3. the layer inside a Keras functional model gives the same outputs;
    4. the model saved as ``.keras`` and reloaded gives the same outputs;
    5. one ``fit`` step on a ``tf.data`` batch runs with a finite loss and, if the
       layer has trainable weights, changes them;
    6. ``tf.function(jit_compile=True)`` (XLA) equals eager;
    7. with ``dtype="float64"`` the output is float64 and close to float32's.

    Returns the eager output.
    """
    import json
    import os
    import tempfile

    import keras
    import tensorflow as tf

    inputs = tuple(inputs)
    layer = layer_cls(**init_kwargs)
    out = layer(*inputs)
    if not isinstance(out, (dict, list, tuple)) and hasattr(layer, "compute_output_shape"):
        shapes = _map_structure(lambda a: tuple(np.asarray(a).shape), inputs)
        expected = layer.compute_output_shape(*shapes)
        if tuple(expected) != tuple(out.shape):
            raise AssertionError(f"compute_output_shape gave {expected}, call gave {tuple(out.shape)}")

    # 2. config round trip
    config = layer.get_config()
    json.dumps(config)
    clone = layer_cls.from_config(config)
    clone(*inputs)
    clone.set_weights(layer.get_weights())
    _assert_close(clone(*inputs), out, atol, rtol, "from_config(get_config()) with the same weights")

    # 3. functional model
    symbolic = tuple(_symbolic_inputs(x, f"input_{i}") for i, x in enumerate(inputs))
    sym_out = layer(*symbolic)
    model = keras.Model(list(symbolic) if len(symbolic) > 1 else symbolic[0], sym_out)
    model_in = list(inputs) if len(inputs) > 1 else inputs[0]
    _assert_close(model(model_in), out, atol, rtol, "functional model")

    # 4. .keras round trip
    if run_saving:
        with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
            path = os.path.join(d, "model.keras")
            model.save(path)
            reloaded = keras.models.load_model(path)
            _assert_close(reloaded(model_in), out, atol, rtol, ".keras save and reload")

    # 5. one fit step
    if run_fit and not isinstance(out, dict):
        target = _map_structure(lambda a: np.random.default_rng(0).normal(size=np.shape(a)).astype(
            _to_numpy(a).dtype), out)
        # tf.data stacks a Python list into one tensor: several inputs go as a tuple.
        ds = tf.data.Dataset.from_tensors((tuple(model_in) if isinstance(model_in, list) else model_in, target))
        before = [np.array(w) for w in model.trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False)
        history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
        loss = history.history["loss"][-1]
        if not np.isfinite(loss):
            raise AssertionError(f"fit step gave a non-finite loss: {loss}")
        if before:
            changed = any(not np.allclose(b, np.array(w)) for b, w in zip(before, model.trainable_weights))
            if not changed:
                raise AssertionError("one fit step changed no trainable weight")
        # restore the weights so that later checks compare against `out`
        for w, b in zip(model.trainable_weights, before):
            w.assign(b)

    # 6. XLA equals eager
    if run_xla:
        compiled = tf.function(lambda *a: layer(*a), jit_compile=True)
        _assert_close(compiled(*inputs), out, max(atol, 1e-5), max(rtol, 1e-5), "XLA (jit_compile=True)")

    # 7. float64
    if run_float64:
        layer64 = layer_cls(**{**init_kwargs, "dtype": "float64"})
        inputs64 = _map_structure(
            lambda a: np.asarray(a).astype(np.float64) if np.asarray(a).dtype.kind == "f" else a, inputs
        )
        layer64(*inputs64)
        layer64.set_weights([np.asarray(w, dtype=np.float64) for w in layer.get_weights()])
        out64 = layer64(*inputs64)
        for o in _flatten(out64):
            name = keras.backend.standardize_dtype(o.dtype)
            if "float" in name and name != "float64":
                raise AssertionError(f"a dtype='float64' layer returned {name}")
        _assert_close(out64, out, 1e-4, 1e-4, "float64 vs float32")
    return out
