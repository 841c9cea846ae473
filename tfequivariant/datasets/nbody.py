"""The charged N-body task of the SE(3)-Transformer paper (Fuchs et al. 2020, Table 1).

Five point charges ``q_i = +1`` or ``-1`` (equal probability) move in free 3D
space (no box) under Coulomb forces; from positions and velocities at one
time, predict the change of positions and velocities ``delta`` recorded
frames (1000 integration steps, 1.0 time units by default) later. The
simulator follows the protocol of the charged-particles simulation of Kipf et
al. (2018) as adapted to 3D by Fuchs et al., vectorised over trajectories.

**Initial conditions.** Positions ``x_i ~ N(0, 1)`` per coordinate;
velocities of norm 0.5 in a uniformly random direction. Per trajectory one
row of 7 standard normal numbers per particle is drawn (3 for the position,
3 for the direction, one whose sign is the charge), so trajectory ``t`` of
``simulate(n, seed=s)`` is the same for every ``n > t``.

**Force** on particle ``i`` (unit masses, unit coupling; like charges repel)::

    F_i = sum_{j != i} q_i q_j (x_i - x_j) / |x_i - x_j|^3,

then each Cartesian component of ``F_i`` is clipped to ``[-100, 100]``
(``0.1 / dt``) as in the reference code. The clipping is applied to the
Cartesian components, so it breaks rotation equivariance, but only in steps
where a component exceeds 100 (close encounters); ``num_clipped`` counts them.

**Integration** (semi-implicit Euler, dt = 0.001), exactly::

    v <- v + dt F(x)                  # once, before the loop ("step 0")
    for s = 1, 2, ..., num_steps - 1:
        x <- x + dt v
        if s % record_every == 0: record (x, v)
        v <- v + dt F(x)

``num_steps = 5000`` and ``record_every = 100`` record the 49 frames of the
steps 100, 200, ..., 4900 (frame ``k`` is step ``100 (k + 1)``; the initial
state is not a frame). The recorded ``v`` is the velocity that moved ``x``
into the recorded position, the kick of that step not yet applied (in
leapfrog terms it is half a step behind ``x``). The loop stops at the last
recorded step, since later steps change nothing that is returned.

**Task** (:func:`make_examples`). From frame ``f0`` (uniform in
``[0, num_frames - delta)``, i.e. ``[0, 39)``, per trajectory for training;
fixed for testing) predict ``x(f0 + delta) - x(f0)`` and
``v(f0 + delta) - v(f0)`` on the fully connected graph without self-loops.
Each example is a single-graph dict in :mod:`tfequivariant.graph`'s
convention:

=================  =======  ===========  ====================================
key                dtype    shape        content
=================  =======  ===========  ====================================
``positions``      float32  ``[5, 3]``   ``x(f0)``
``senders``        int32    ``[20]``     fully connected, no self-loops,
``receivers``      int32    ``[20]``     sorted by receiver
``node_features``  float32  ``[5, 3]``   ``v(f0)``, irreps ``1x1o``
``node_charges``   float32  ``[5, 1]``   ``q_i``, irreps ``1x0e``
``edge_attr``      float32  ``[20, 1]``  ``q_sender q_receiver`` (``1x0e``)
``node_targets``   float32  ``[5, 6]``   ``(dx, dv)``, irreps ``2x1o``
=================  =======  ===========  ====================================

The targets sit under one key so that
``tfequivariant.graph.to_keras_inputs(graph, "node_targets")`` splits a
batch; a model predicting them outputs ``2x1o``, whose e3nn layout
``[mul, 3]`` row-major is exactly ``(dx_x, dx_y, dx_z, dv_x, dv_y, dv_z)``.

The paper reports the mean over test trajectories of the per-component MSE
of ``dx`` and ``dv`` (:func:`mse_report`); :func:`constant_velocity_baseline`
gives the trivial reference ``dx = v * (delta * record_every * dt)``,
``dv = 0``. Measured on 6000 trajectories with random ``f0`` and
``delta = 10``: MSE_x 0.127 (median 0.044), MSE_v 0.283 (median 0.139);
means over 1000 trajectories scatter by about +-0.01 (heavy tails: about
half of the trajectories have a close encounter that hits the force clip).

Differences from the reference code (NRI's ``ChargedParticlesSim`` in the
SE(3)-Transformer repository): no box (its ``generate_dataset.py`` defaults
to elastic walls at +-5), pair distances from coordinate differences rather
than ``|a|^2 + |b|^2 - 2 a.b`` (more accurate at short range), and NumPy's
``Generator`` with the draw layout above instead of the global
``np.random`` state, so the numbers are not those of the reference files.

References:
    Fuchs, Worrall, Fischer, Welling, "SE(3)-Transformers: 3D
    Roto-Translation Equivariant Attention Networks", NeurIPS 2020.
    Kipf, Fetaya, Wang, Welling, Zemel, "Neural Relational Inference for
    Interacting Systems", ICML 2018.
"""

import os

import numpy as np

from tfequivariant.datasets import _cache

__all__ = [
    "NODE_FEATURES_IRREPS",
    "SPLIT_SEEDS",
    "TARGETS_IRREPS",
    "constant_velocity_baseline",
    "fully_connected_edges",
    "integrate",
    "load",
    "make_examples",
    "mse_report",
    "sample_initial_conditions",
    "simulate",
    "tf_dataset",
]

#: Irreps of ``node_features`` (the velocity).
NODE_FEATURES_IRREPS = "1x1o"
#: Irreps of ``node_targets``: ``(dx, dv)``.
TARGETS_IRREPS = "2x1o"

#: Default seed of each split; distinct so that splits share no trajectory.
SPLIT_SEEDS = {"train": 1, "valid": 2, "test": 3}

# Bumped whenever the simulator's output changes, so stale caches are not read.
_CACHE_VERSION = 1
# Trajectories integrated together: [3, 10, chunk] float64 pair arrays stay in L2.
_CHUNK = 2048


def _check_int(name, value, minimum, where):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: {name} must be an int >= {minimum}. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_positive_float(name, value, where):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{where}: {name} must be a positive number. Received: {name}={value!r}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{where}: {name} must be a positive number. Received: {name}={value!r}")
    return float(value)


def _num_frames(num_steps, record_every):
    return (num_steps - 1) // record_every


def fully_connected_edges(num_nodes):
    """Senders and receivers of the complete directed graph without self-loops.

    Args:
        num_nodes: an int >= 1.

    Returns:
        ``(senders, receivers)``, int32 ``[num_nodes * (num_nodes - 1)]``,
        sorted by receiver, then sender.

    Example:
        >>> senders, receivers = fully_connected_edges(3)
        >>> senders.tolist(), receivers.tolist()
        ([1, 2, 0, 2, 0, 1], [0, 0, 1, 1, 2, 2])
    """
    num_nodes = _check_int("num_nodes", num_nodes, 1, "fully_connected_edges")
    receivers, senders = np.nonzero(~np.eye(num_nodes, dtype=bool))
    return senders.astype(np.int32), receivers.astype(np.int32)


def sample_initial_conditions(num_trajectories, num_particles=5, seed=0):
    """Draws initial positions, velocities and charges.

    Positions are ``N(0, 1)`` per coordinate, velocities have norm 0.5 and a
    uniformly random direction, charges are +1 or -1 with probability 1/2.
    Trajectory ``t`` uses only row ``t`` of one ``[T, P, 7]`` standard normal
    draw, so it does not depend on ``num_trajectories``.

    Args:
        num_trajectories: ``T``, an int >= 1.
        num_particles: ``P``, an int >= 2.
        seed: an int or a ``numpy.random.Generator``.

    Returns:
        A dict of float64 arrays: ``positions [T, P, 3]``,
        ``velocities [T, P, 3]``, ``charges [T, P]``.

    Example:
        >>> init = sample_initial_conditions(2, seed=0)
        >>> np.linalg.norm(init["velocities"], axis=-1).round(6).tolist()[0]
        [0.5, 0.5, 0.5, 0.5, 0.5]
    """
    where = "sample_initial_conditions"
    num_trajectories = _check_int("num_trajectories", num_trajectories, 1, where)
    num_particles = _check_int("num_particles", num_particles, 2, where)
    rng = np.random.default_rng(seed)
    draw = rng.standard_normal((num_trajectories, num_particles, 7))
    direction = draw[..., 3:6]
    return {
        "positions": draw[..., 0:3].copy(),
        "velocities": 0.5 * direction / np.linalg.norm(direction, axis=-1, keepdims=True),
        "charges": np.where(draw[..., 6] >= 0, 1.0, -1.0),
    }


class _Forces:
    """Clipped Coulomb forces on a chunk, laid out [3, P, T] (trajectories last).

    Each pair force is computed once and added to both particles in a fixed
    order, so a trajectory's numbers do not depend on which other
    trajectories share the chunk (bitwise), and sum_i F_i = 0 up to rounding
    when nothing is clipped.
    """

    def __init__(self, charges, max_force):
        num_particles = charges.shape[0]
        self.first, self.second = np.triu_indices(num_particles, 1)
        self.charge_products = charges[self.first] * charges[self.second]  # [K, T]
        self.max_force = max_force

    def __call__(self, x):
        # [3, K, T], x_i - x_j for the pairs i < j in triu_indices order; slices
        # are ~15x faster than a fancy-index gather on the middle axis.
        blocks = [x[:, i : i + 1] - x[:, i + 1 :] for i in range(x.shape[1] - 1)]
        diff = np.concatenate(blocks, axis=1)
        r2 = diff[0] * diff[0] + diff[1] * diff[1] + diff[2] * diff[2]
        pair = (self.charge_products / (r2 * np.sqrt(r2))) * diff
        forces = np.zeros_like(x)
        for k, (i, j) in enumerate(zip(self.first, self.second)):
            forces[:, i] += pair[:, k]
            forces[:, j] -= pair[:, k]
        if self.max_force is None:
            return forces, 0
        clipped = np.count_nonzero(np.abs(forces) > self.max_force, axis=(0, 1))
        np.clip(forces, -self.max_force, self.max_force, out=forces)
        return forces, clipped


def integrate(
    positions,
    velocities,
    charges,
    num_steps=5000,
    record_every=100,
    dt=0.001,
    max_force=100.0,
):
    """Integrates charged particles from given initial states (see the module docstring).

    Args:
        positions: float ``[T, P, 3]`` initial positions.
        velocities: float ``[T, P, 3]`` initial velocities.
        charges: float ``[T, P]``.
        num_steps: an int; steps ``1 .. num_steps - 1`` are run (as in the
            reference code), recording ``(num_steps - 1) // record_every``
            frames.
        record_every: record after every this many steps.
        dt: the time step.
        max_force: clip each Cartesian force component to
            ``[-max_force, max_force]``; ``None`` disables clipping.

    Returns:
        A dict: float64 ``positions [T, F, P, 3]`` and
        ``velocities [T, F, P, 3]``, ``charges [T, P]`` and int64
        ``num_clipped [T]``, the number of force components clipped in
        the force evaluations that led to the recorded frames.

    Example:
        >>> out = integrate(np.array([[[0.0, 0, 0], [2, 0, 0]]]),
        ...                 np.zeros((1, 2, 3)), np.array([[1.0, 1.0]]))
        >>> tuple(out["positions"].shape), bool(out["positions"][0, -1, 1, 0] > 2.0)
        ((1, 49, 2, 3), True)
    """
    where = "integrate"
    positions = np.asarray(positions, dtype=np.float64)
    velocities = np.asarray(velocities, dtype=np.float64)
    charges = np.asarray(charges, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[-1] != 3 or positions.shape[1] < 2:
        raise ValueError(
            f"{where}: positions must have shape [T, P, 3] with P >= 2. "
            f"Received: positions of shape {positions.shape}"
        )
    if velocities.shape != positions.shape or charges.shape != positions.shape[:2]:
        raise ValueError(
            f"{where}: velocities must have the shape of positions {positions.shape} and "
            f"charges {positions.shape[:2]}. Received: velocities of shape "
            f"{velocities.shape}, charges of shape {charges.shape}"
        )
    num_steps = _check_int("num_steps", num_steps, 2, where)
    record_every = _check_int("record_every", record_every, 1, where)
    dt = _check_positive_float("dt", dt, where)
    if max_force is not None:
        max_force = _check_positive_float("max_force", max_force, where)
    num_frames = _num_frames(num_steps, record_every)
    if num_frames < 1:
        raise ValueError(
            f"{where}: num_steps must be > record_every to record a frame. "
            f"Received: num_steps={num_steps}, record_every={record_every}"
        )
    num_trajectories, num_particles, _ = positions.shape
    out_x = np.empty((num_trajectories, num_frames, num_particles, 3))
    out_v = np.empty_like(out_x)
    num_clipped = np.zeros(num_trajectories, dtype=np.int64)
    last_step = num_frames * record_every
    for start in range(0, num_trajectories, _CHUNK):
        chunk = slice(start, start + _CHUNK)
        x = np.ascontiguousarray(positions[chunk].transpose(2, 1, 0))  # [3, P, T]
        v = np.ascontiguousarray(velocities[chunk].transpose(2, 1, 0))
        forces = _Forces(np.ascontiguousarray(charges[chunk].T), max_force)
        f, clipped = forces(x)
        num_clipped[chunk] += clipped
        v += dt * f
        for step in range(1, last_step + 1):
            x += dt * v
            if step % record_every == 0:
                frame = step // record_every - 1
                out_x[chunk, frame] = x.transpose(2, 1, 0)
                out_v[chunk, frame] = v.transpose(2, 1, 0)
            if step < last_step:
                f, clipped = forces(x)
                num_clipped[chunk] += clipped
                v += dt * f
    return {
        "positions": out_x,
        "velocities": out_v,
        "charges": charges.copy(),
        "num_clipped": num_clipped,
    }


def simulate(num_trajectories, num_particles=5, seed=0, num_steps=5000, record_every=100, dt=0.001):
    """Simulates charged N-body trajectories (see the module docstring for the protocol).

    Args:
        num_trajectories: ``T``, an int >= 1.
        num_particles: ``P``, an int >= 2.
        seed: an int or a ``numpy.random.Generator`` for the initial
            conditions (:func:`sample_initial_conditions`).
        num_steps: steps ``1 .. num_steps - 1`` are integrated.
        record_every: steps between recorded frames.
        dt: the time step.

    Returns:
        A dict: float64 ``positions [T, F, P, 3]``, ``velocities [T, F, P, 3]``,
        ``charges [T, P]`` and int64 ``num_clipped [T]``, with
        ``F = (num_steps - 1) // record_every`` (49 by default).

    Example:
        >>> data = simulate(2, num_steps=501)
        >>> tuple(data["positions"].shape), tuple(data["charges"].shape)
        ((2, 5, 5, 3), (2, 5))
    """
    initial = sample_initial_conditions(num_trajectories, num_particles, seed)
    return integrate(**initial, num_steps=num_steps, record_every=record_every, dt=dt)


def load(
    split,
    num_trajectories,
    seed=None,
    cache_dir=None,
    num_particles=5,
    num_steps=5000,
    record_every=100,
    dt=0.001,
):
    """Simulates a split once and caches it on disk; later calls read the cache.

    The file name holds every parameter, so a changed parameter never reads
    a stale file. Writes are atomic (a temporary file renamed into place), so
    parallel processes at worst simulate twice.

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"``.
        num_trajectories: an int >= 1. Trajectory ``t`` does not depend on
            it, so a smaller set is a prefix of a larger one.
        seed: ``None`` for the split's fixed seed (:data:`SPLIT_SEEDS`) or
            an int.
        cache_dir: the directory of the cache files; default
            ``$TFEQUIVARIANT_CACHE/nbody`` if that variable is set, else
            ``~/.cache/tfequivariant/nbody``.
        num_particles, num_steps, record_every, dt: as in :func:`simulate`.

    Returns:
        The dict of :func:`simulate` with ``positions``, ``velocities`` and
        ``charges`` stored and returned as float32 (the simulation itself
        runs in float64) and ``num_clipped`` as int32.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     data = load("test", 3, cache_dir=d, num_steps=201)
        ...     again = load("test", 3, cache_dir=d, num_steps=201)
        >>> tuple(data["positions"].shape), bool(np.all(data["positions"] == again["positions"]))
        ((3, 2, 5, 3), True)
    """
    where = "load"
    if split not in SPLIT_SEEDS:
        raise ValueError(
            f"{where}: split must be one of {sorted(SPLIT_SEEDS)}. Received: split={split!r}"
        )
    if seed is None:
        seed = SPLIT_SEEDS[split]
    seed = _check_int("seed", seed, 0, where)
    num_trajectories = _check_int("num_trajectories", num_trajectories, 1, where)
    num_particles = _check_int("num_particles", num_particles, 2, where)
    num_steps = _check_int("num_steps", num_steps, 2, where)
    record_every = _check_int("record_every", record_every, 1, where)
    dt = _check_positive_float("dt", dt, where)
    directory = _cache.cache_dir(cache_dir, "nbody")
    name = (
        f"charged_{split}_seed{seed}_n{num_trajectories}_p{num_particles}_steps{num_steps}"
        f"_every{record_every}_dt{dt!r}_v{_CACHE_VERSION}.npz"
    )
    path = os.path.join(directory, name)
    if os.path.exists(path):
        with np.load(path) as cached:
            return {key: cached[key] for key in cached.files}
    data = simulate(num_trajectories, num_particles, seed, num_steps, record_every, dt)
    data = {
        "positions": data["positions"].astype(np.float32),
        "velocities": data["velocities"].astype(np.float32),
        "charges": data["charges"].astype(np.float32),
        "num_clipped": data["num_clipped"].astype(np.int32),
    }
    _cache.write_npz(path, data)
    return data


def _check_data(data, where):
    if not isinstance(data, dict) or not {"positions", "velocities", "charges"} <= set(data):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{where}: data must be the dict returned by simulate or load, with 'positions', "
            f"'velocities' and 'charges'. Received: {keys}"
        )
    positions = np.asarray(data["positions"])
    velocities = np.asarray(data["velocities"])
    charges = np.asarray(data["charges"])
    if (
        positions.ndim != 4
        or positions.shape[-1] != 3
        or velocities.shape != positions.shape
        or charges.shape != positions.shape[:1] + positions.shape[2:3]
    ):
        raise ValueError(
            f"{where}: data must hold positions and velocities [T, F, P, 3] and charges "
            f"[T, P]. Received shapes: positions {positions.shape}, velocities "
            f"{velocities.shape}, charges {charges.shape}"
        )
    return positions, velocities, charges


def _start_frames(frame, num_trajectories, last_start, rng, where):
    """frame (None / int / [T] ints) -> int array [T] of start frames in [0, last_start)."""
    if frame is None:
        return np.random.default_rng(0 if rng is None else rng).integers(
            0, last_start, num_trajectories
        )
    frames = np.asarray(frame)
    if frames.dtype.kind not in "iu" or frames.ndim > 1:
        raise ValueError(
            f"{where}: frame must be None, an int or an int array [num_trajectories]. "
            f"Received: frame={frame!r}"
        )
    frames = np.broadcast_to(frames, (num_trajectories,)) if frames.ndim == 0 else frames
    if frames.shape != (num_trajectories,):
        raise ValueError(
            f"{where}: frame must have one entry per trajectory ({num_trajectories}). "
            f"Received: frame of shape {frames.shape}"
        )
    if np.any(frames < 0) or np.any(frames >= last_start):
        raise ValueError(
            f"{where}: start frames must lie in [0, num_frames - delta) = [0, {last_start}). "
            f"Received: frame={frame!r}"
        )
    return frames.astype(np.int64)


def _example_arrays(data, frame, delta, rng, where):
    """Stacked examples: a dict of [T, ...] arrays plus the shared senders/receivers."""
    positions, velocities, charges = _check_data(data, where)
    num_trajectories, num_frames, num_particles, _ = positions.shape
    if isinstance(delta, (bool, np.bool_)) or not isinstance(delta, (int, np.integer)):
        raise ValueError(f"{where}: delta must be an int >= 1. Received: delta={delta!r}")
    if not 1 <= delta < num_frames:
        raise ValueError(
            f"{where}: delta must be in [1, num_frames) = [1, {num_frames}). "
            f"Received: delta={delta!r}"
        )
    f0 = _start_frames(frame, num_trajectories, num_frames - delta, rng, where)
    rows = np.arange(num_trajectories)
    x0, x1 = positions[rows, f0], positions[rows, f0 + delta]
    v0, v1 = velocities[rows, f0], velocities[rows, f0 + delta]
    senders, receivers = fully_connected_edges(num_particles)
    q = charges.astype(np.float32)
    arrays = {
        "positions": x0.astype(np.float32),
        "node_features": v0.astype(np.float32),
        "node_charges": q[:, :, None],
        "edge_attr": (q[:, senders] * q[:, receivers])[:, :, None],
        # Differences in the stored precision, then cast: float32 inputs lose nothing more.
        "node_targets": np.concatenate([x1 - x0, v1 - v0], axis=-1).astype(np.float32),
    }
    return arrays, senders, receivers


def make_examples(data, frame=None, delta=10, rng=None):
    """Turns trajectories into single-graph examples (keys in the module docstring).

    Args:
        data: the dict of :func:`simulate` or :func:`load`.
        frame: the start frame ``f0``: ``None`` draws one uniformly from
            ``[0, num_frames - delta)`` per trajectory (training); an int
            fixes it for every trajectory; an int array gives one per
            trajectory (the reference test loader used
            ``np.arange(T) * (num_frames - delta) // T``).
        delta: frames between input and target (10 frames = 1000 steps).
        rng: an int seed or ``numpy.random.Generator`` for the random start
            frames; ``None`` means seed 0, so the examples are reproducible.

    Returns:
        A list of ``T`` single-graph dicts of NumPy arrays, in trajectory
        order, ready for ``tfequivariant.graph.merge_graphs``.

    Example:
        >>> examples = make_examples(simulate(2, num_steps=1501), delta=4)
        >>> sorted(examples[0])  # doctest: +NORMALIZE_WHITESPACE
        ['edge_attr', 'node_charges', 'node_features', 'node_targets', 'positions',
         'receivers', 'senders']
        >>> tuple(examples[0]["node_targets"].shape), tuple(examples[0]["senders"].shape)
        ((5, 6), (20,))
    """
    arrays, senders, receivers = _example_arrays(data, frame, delta, rng, "make_examples")
    count = arrays["positions"].shape[0]
    return [
        {
            "positions": arrays["positions"][t],
            "senders": senders.copy(),
            "receivers": receivers.copy(),
            **{key: arrays[key][t] for key in arrays if key != "positions"},
        }
        for t in range(count)
    ]


def tf_dataset(data, frame=None, delta=10, seed=0):
    """A ``tf.data.Dataset`` of single-graph examples, for ``graph.batch_graphs``.

    With ``frame=None`` the start frames are drawn anew every time the
    dataset is iterated (every epoch), as the reference training loader did;
    the sequence of draws is fixed by ``seed``. Otherwise the examples are
    fixed. Shuffle with ``Dataset.shuffle`` before batching.

    Args:
        data: the dict of :func:`simulate` or :func:`load`, or a list of
            examples from :func:`make_examples` (then ``frame``, ``delta``
            and ``seed`` are ignored).
        frame: as in :func:`make_examples`.
        delta: as in :func:`make_examples`.
        seed: an int; seeds the start-frame draws of every epoch.

    Returns:
        A ``tf.data.Dataset`` of dicts with the keys of :func:`make_examples`
        and static shapes (``positions [P, 3]``, ``senders [P (P - 1)]``, ...).

    Example:
        >>> from tfequivariant import graph
        >>> ds = tf_dataset(simulate(4, num_steps=1501), delta=4)
        >>> batch = next(iter(graph.batch_graphs(ds, batch_size=4)))
        >>> tuple(batch["node_targets"].shape), tuple(batch["senders"].shape)
        ((20, 6), (80,))
    """
    import tensorflow as tf  # only the tf.data helper needs TensorFlow

    where = "tf_dataset"
    if isinstance(data, (list, tuple)):
        if not data:
            raise ValueError(f"{where}: the list of examples is empty.")
        stacked = {key: np.stack([g[key] for g in data]) for key in data[0]}
        return tf.data.Dataset.from_tensor_slices(stacked)
    if frame is not None:
        return tf_dataset(make_examples(data, frame, delta))
    seed = _check_int("seed", seed, 0, where)
    # Validates data and delta now rather than inside the first epoch.
    arrays, senders, receivers = _example_arrays(data, 0, delta, None, where)
    signature = {key: tf.TensorSpec(value.shape[1:], tf.float32) for key, value in arrays.items()}
    signature["senders"] = tf.TensorSpec(senders.shape, tf.int32)
    signature["receivers"] = tf.TensorSpec(receivers.shape, tf.int32)
    rng = np.random.default_rng(seed)

    def generator():
        epoch, _, _ = _example_arrays(data, None, delta, rng, where)
        for t in range(epoch["positions"].shape[0]):
            example = {key: value[t] for key, value in epoch.items()}
            yield {**example, "senders": senders, "receivers": receivers}

    return tf.data.Dataset.from_generator(generator, output_signature=signature)


def _per_trajectory_mse(pred, target, num_particles, where):
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(
            f"{where}: pred and target must have the same shape. Received: pred {pred.shape}, "
            f"target {target.shape}"
        )
    if pred.ndim == 2 and pred.shape[-1] == 6 and pred.shape[0] % num_particles == 0:
        pred = pred.reshape(-1, num_particles, 6)
        target = target.reshape(-1, num_particles, 6)
    if pred.ndim != 3 or pred.shape[-1] != 6:
        raise ValueError(
            f"{where}: pred and target must be [num_graphs, P, 6] or merged "
            f"[num_graphs * num_particles, 6] (columns dx, dv). Received shape {pred.shape} "
            f"with num_particles={num_particles}"
        )
    squared = (pred - target) ** 2
    return squared[..., :3].mean(axis=(1, 2)), squared[..., 3:].mean(axis=(1, 2))


def mse_report(pred, target, num_particles=5):
    """Per-component MSE of ``dx`` and ``dv``: mean and median over trajectories.

    For each trajectory the squared errors are averaged over its particles
    and the 3 components, separately for ``dx`` (columns 0-2) and ``dv``
    (columns 3-5); the report gives the mean (the paper's number) and the
    median (the distribution is heavy-tailed: a few close encounters
    dominate the mean).

    Args:
        pred: predictions ``[G, P, 6]`` or merged ``[G * P, 6]`` (graphs of
            ``num_particles`` nodes each, in order, no padding).
        target: the same shape, e.g. the stacked ``node_targets``.
        num_particles: ``P``, used to split merged ``[G * P, 6]`` arrays.

    Returns:
        A dict of floats: ``mse_x_mean``, ``mse_x_median``, ``mse_v_mean``,
        ``mse_v_median``, and ``num_trajectories``.

    Example:
        >>> target = np.zeros((2, 5, 6)); pred = np.zeros((2, 5, 6)); pred[0, :, 0] = 3.0
        >>> mse_report(pred, target)["mse_x_mean"]
        1.5
    """
    mse_x, mse_v = _per_trajectory_mse(pred, target, num_particles, "mse_report")
    return {
        "mse_x_mean": float(mse_x.mean()),
        "mse_x_median": float(np.median(mse_x)),
        "mse_v_mean": float(mse_v.mean()),
        "mse_v_median": float(np.median(mse_v)),
        "num_trajectories": int(mse_x.shape[0]),
    }


def constant_velocity_baseline(data, delta=10, frame=None, rng=None, record_every=100, dt=0.001):
    """The MSE of predicting ``dx = v * (delta * record_every * dt)`` and ``dv = 0``.

    Args:
        data: the dict of :func:`simulate`/:func:`load` (examples are made
            with ``frame``, ``delta`` and ``rng`` as in
            :func:`make_examples`), or a list of examples.
        delta: frames between input and target; must be the ``delta`` the
            examples were made with.
        frame: start frames, when ``data`` is a simulation dict.
        rng: seed of random start frames, when ``data`` is a simulation dict.
        record_every: steps between frames of the simulation.
        dt: its time step.

    Returns:
        The dict of :func:`mse_report`.

    Example:
        >>> report = constant_velocity_baseline(simulate(20, num_steps=1501), delta=4)
        >>> sorted(report)
        ['mse_v_mean', 'mse_v_median', 'mse_x_mean', 'mse_x_median', 'num_trajectories']
    """
    if isinstance(data, (list, tuple)):
        velocity = np.stack([np.asarray(g["node_features"]) for g in data])
        target = np.stack([np.asarray(g["node_targets"]) for g in data])
    else:
        arrays, _, _ = _example_arrays(data, frame, delta, rng, "constant_velocity_baseline")
        velocity, target = arrays["node_features"], arrays["node_targets"]
    elapsed = delta * record_every * dt
    pred = np.concatenate([velocity * elapsed, np.zeros_like(velocity)], axis=-1)
    return mse_report(pred, target, num_particles=velocity.shape[1])
