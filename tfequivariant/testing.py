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
    if isinstance(x, (list, tuple)):
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
        ``max |f(g x) - g f(x)| / max(1, max |f(x)|)`` over trials and outputs.
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
    scale = max([1.0] + [float(np.max(np.abs(r))) if r.size else 0.0 for r in ref])
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
            if o.size:
                worst = max(worst, float(np.max(np.abs(o - e))) / scale)
    return worst


def assert_equivariant(fn, irreps_in, irreps_out, args_in=None, *, tolerance=None, **kwargs):
    """Assert ``equivariance_error(...) <= tolerance`` and print the error.

    ``tolerance`` defaults to ``DEFAULT_TOLERANCES[dtype]`` (float64 1e-9,
    float32 2e-4, relative to the output scale). Other keyword arguments go to
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
