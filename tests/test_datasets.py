"""Tests of tfequivariant.datasets: the charged N-body simulator and the tetris shapes.

The simulator is checked against a plain per-trajectory loop written from the
protocol (not from the vectorised code), against physics (momentum, energy,
rotation and translation equivariance where nothing is clipped) and for
reproducibility (seeds, caching, batch independence).
"""

import doctest
import itertools
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfequivariant import graph, so3
from tfequivariant.datasets import nbody, tetris

# ---------------------------------------------------------------------------
# N-body: an independent reference
# ---------------------------------------------------------------------------


def reference_trajectory(x, v, q, num_steps, record_every, dt=0.001, max_force=100.0):
    """One trajectory, particle by particle, exactly as the protocol reads."""
    x, v = x.copy(), v.copy()
    num_particles = len(q)

    def force(x):
        f = np.zeros_like(x)
        for i in range(num_particles):
            for j in range(num_particles):
                if i != j:
                    r = x[i] - x[j]
                    f[i] += q[i] * q[j] * r / np.linalg.norm(r) ** 3
        return np.clip(f, -max_force, max_force)

    v += dt * force(x)
    xs, vs, steps = [], [], []
    for step in range(1, num_steps):
        x += dt * v
        if step % record_every == 0:
            xs.append(x.copy())
            vs.append(v.copy())
            steps.append(step)
        v += dt * force(x)
    return np.array(xs), np.array(vs), steps


def energy(positions, velocities, charges):
    """Kinetic plus Coulomb energy [T, F] of trajectories [T, F, P, 3]."""
    i, j = np.triu_indices(positions.shape[2], 1)
    r = np.linalg.norm(positions[:, :, i] - positions[:, :, j], axis=-1)
    potential = (charges[:, None, i] * charges[:, None, j] / r).sum(-1)
    return 0.5 * (velocities**2).sum(axis=(-1, -2)) + potential


@pytest.fixture(scope="module")
def sim_200():
    """200 test-split trajectories of the full protocol (shared by several tests)."""
    return nbody.simulate(200, seed=nbody.SPLIT_SEEDS["test"])


# ---------------------------------------------------------------------------
# N-body: the protocol
# ---------------------------------------------------------------------------


def test_matches_reference_loop_including_clipping():
    init = nbody.sample_initial_conditions(3, seed=4)
    # Trajectory 2: a close opposite-charge pair, so clipping happens at once.
    init["positions"][2, 1] = init["positions"][2, 0] + [0.05, 0.0, 0.0]
    init["charges"][2, :2] = [1.0, -1.0]
    out = nbody.integrate(**init, num_steps=601, record_every=50)
    assert out["positions"].shape == (3, 12, 5, 3)
    assert out["num_clipped"][2] > 0
    for t in range(3):
        xs, vs, steps = reference_trajectory(
            init["positions"][t], init["velocities"][t], init["charges"][t], 601, 50
        )
        assert steps == list(range(50, 601, 50))
        np.testing.assert_allclose(out["positions"][t], xs, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["velocities"][t], vs, rtol=0, atol=1e-10)


def test_first_frames_follow_the_update_order():
    # record_every=1: frame k is step k + 1; check the first steps by hand.
    x0 = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    v0 = np.array([[[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]])
    q = np.array([[1.0, 1.0]])
    dt = 0.001
    out = nbody.integrate(x0, v0, q, num_steps=3, record_every=1, dt=dt)
    f0 = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # like charges repel, r = 1
    v_half = v0[0] + dt * f0
    x1 = x0[0] + dt * v_half
    np.testing.assert_allclose(out["positions"][0, 0], x1, atol=1e-15)
    np.testing.assert_allclose(out["velocities"][0, 0], v_half, atol=1e-15)  # before the kick
    r = x1[0] - x1[1]
    f1 = np.stack([r, -r]) / np.linalg.norm(r) ** 3
    v1 = v_half + dt * f1
    np.testing.assert_allclose(out["positions"][0, 1], x1 + dt * v1, atol=1e-15)
    np.testing.assert_allclose(out["velocities"][0, 1], v1, atol=1e-15)


def test_default_protocol_shapes(sim_200):
    assert sim_200["positions"].shape == (200, 49, 5, 3)
    assert sim_200["velocities"].shape == (200, 49, 5, 3)
    assert sim_200["charges"].shape == (200, 5)
    assert sim_200["num_clipped"].shape == (200,)
    assert np.all(np.isfinite(sim_200["positions"]))


def test_initial_conditions():
    init = nbody.sample_initial_conditions(4000, seed=0)
    charges = init["charges"]
    assert set(np.unique(charges)) == {-1.0, 1.0}
    assert abs((charges > 0).mean() - 0.5) < 0.02
    np.testing.assert_allclose(np.linalg.norm(init["velocities"], axis=-1), 0.5, atol=1e-12)
    assert abs(init["velocities"].mean()) < 0.01  # isotropic directions
    positions = init["positions"].reshape(-1, 3)
    np.testing.assert_allclose(positions.mean(0), 0.0, atol=0.03)
    np.testing.assert_allclose(positions.std(0), 1.0, atol=0.03)


def test_deterministic_by_seed_and_independent_of_batch():
    a = nbody.simulate(6, seed=5, num_steps=1001)
    b = nbody.simulate(6, seed=5, num_steps=1001)
    c = nbody.simulate(6, seed=6, num_steps=1001)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["positions"], c["positions"])
    # A smaller set is a prefix of a larger one ...
    prefix = nbody.simulate(3, seed=5, num_steps=1001)
    for key in a:
        np.testing.assert_array_equal(prefix[key], a[key][:3])
    # ... and integrating one trajectory alone gives the same numbers, bit for bit.
    init = nbody.sample_initial_conditions(6, seed=5)
    for t in (0, 4):
        alone = nbody.integrate(
            init["positions"][t : t + 1],
            init["velocities"][t : t + 1],
            init["charges"][t : t + 1],
            num_steps=1001,
        )
        np.testing.assert_array_equal(alone["positions"][0], a["positions"][t])
        np.testing.assert_array_equal(alone["velocities"][0], a["velocities"][t])


def test_momentum_conserved_without_clipping_energy_approximately(sim_200):
    init = nbody.sample_initial_conditions(200, seed=nbody.SPLIT_SEEDS["test"])
    unclipped = sim_200["num_clipped"] == 0
    assert 50 < unclipped.sum() < 200
    momentum = sim_200["velocities"].sum(axis=2)  # unit masses
    drift = np.abs(momentum - init["velocities"].sum(axis=1)[:, None]).max(axis=(1, 2))
    assert drift[unclipped].max() < 1e-10
    assert drift[~unclipped].max() > 1e-3  # clipping breaks Newton's third law
    # Semi-implicit Euler is symplectic: energy stays close, not exact (v lags x by dt/2).
    e = energy(sim_200["positions"], sim_200["velocities"], sim_200["charges"])
    e_drift = np.abs(e - e[:, :1]).max(axis=1)[unclipped]
    assert np.median(e_drift) < 0.01 and e_drift.max() < 0.2


def test_rotation_and_translation_equivariance_where_not_clipped():
    init = nbody.sample_initial_conditions(40, seed=11)
    rotation = so3.rand_matrix(seed=3)
    shift = np.array([0.3, -1.0, 2.0])
    plain = nbody.integrate(**init)
    moved = nbody.integrate(
        init["positions"] @ rotation.T + shift, init["velocities"] @ rotation.T, init["charges"]
    )
    ok = (plain["num_clipped"] == 0) & (moved["num_clipped"] == 0)
    assert ok.sum() >= 10
    err_x = np.abs(plain["positions"] @ rotation.T + shift - moved["positions"]).max((1, 2, 3))
    err_v = np.abs(plain["velocities"] @ rotation.T - moved["velocities"]).max((1, 2, 3))
    assert err_x[ok].max() < 1e-8 and err_v[ok].max() < 1e-8
    # Per-component clipping is not rotation invariant: clipped trajectories diverge.
    assert err_x[~ok].max() > 1e-3


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_trajectories"):
        nbody.simulate(0)
    with pytest.raises(ValueError, match="record_every"):
        nbody.simulate(1, num_steps=50, record_every=100)
    with pytest.raises(ValueError, match="velocities"):
        nbody.integrate(np.zeros((1, 2, 3)), np.zeros((1, 3, 3)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="split"):
        nbody.load("validation", 1)


# ---------------------------------------------------------------------------
# N-body: cache
# ---------------------------------------------------------------------------


def test_cache_round_trip_without_resimulating(tmp_path, monkeypatch):
    first = nbody.load("train", 4, cache_dir=tmp_path, num_steps=301)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("load simulated again instead of reading the cache")

    monkeypatch.setattr(nbody, "simulate", fail)
    second = nbody.load("train", 4, cache_dir=tmp_path, num_steps=301)
    assert set(first) == set(second) == {"positions", "velocities", "charges", "num_clipped"}
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
        assert first[key].dtype == second[key].dtype
    assert first["positions"].dtype == np.float32
    monkeypatch.undo()
    # The cached arrays are the simulation with the split's seed, in float32.
    direct = nbody.simulate(4, seed=nbody.SPLIT_SEEDS["train"], num_steps=301)
    np.testing.assert_array_equal(first["positions"], direct["positions"].astype(np.float32))
    # Every parameter is part of the key; splits get distinct seeds.
    other = nbody.load("test", 4, cache_dir=tmp_path, num_steps=301)
    assert not np.allclose(other["positions"], first["positions"])
    nbody.load("train", 4, cache_dir=tmp_path, num_steps=301, record_every=50)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    assert not list(tmp_path.glob(".tmp_*"))


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TFEQUIVARIANT_CACHE", str(tmp_path))
    nbody.load("valid", 2, num_steps=201)
    assert len(list((tmp_path / "nbody").glob("*.npz"))) == 1


# ---------------------------------------------------------------------------
# N-body: examples, graphs, baseline
# ---------------------------------------------------------------------------


def test_make_examples_content(sim_200):
    data = {k: v[:10] for k, v in sim_200.items()}
    examples = nbody.make_examples(data, frame=np.arange(10) * 3, delta=10)
    assert len(examples) == 10
    senders, receivers = examples[0]["senders"], examples[0]["receivers"]
    assert senders.dtype == receivers.dtype == np.int32 and senders.shape == (20,)
    pairs = set(zip(senders.tolist(), receivers.tolist()))
    assert pairs == {(j, i) for i in range(5) for j in range(5) if i != j}
    for t, g in enumerate(examples):
        f0 = 3 * t
        assert g["positions"].shape == (5, 3) and g["positions"].dtype == np.float32
        np.testing.assert_allclose(g["positions"], data["positions"][t, f0], rtol=1e-6)
        np.testing.assert_allclose(g["node_features"], data["velocities"][t, f0], rtol=1e-6)
        dx = data["positions"][t, f0 + 10] - data["positions"][t, f0]
        dv = data["velocities"][t, f0 + 10] - data["velocities"][t, f0]
        np.testing.assert_allclose(g["node_targets"], np.concatenate([dx, dv], -1), atol=1e-6)
        q = data["charges"][t]
        np.testing.assert_array_equal(g["node_charges"][:, 0], q)
        np.testing.assert_array_equal(g["edge_attr"][:, 0], q[senders] * q[receivers])
        graph.validate_graph(g)


def test_make_examples_start_frames(sim_200):
    def start_frames(examples):
        # Recover f0 by matching positions against the recorded frames.
        return [
            int(np.argmin(np.abs(sim_200["positions"][t] - g["positions"]).sum(axis=(1, 2))))
            for t, g in enumerate(examples)
        ]

    frames = start_frames(nbody.make_examples(sim_200, delta=10, rng=1))
    assert min(frames) >= 0 and max(frames) < 39 and len(set(frames)) > 20
    assert frames == start_frames(nbody.make_examples(sim_200, delta=10, rng=1))
    assert set(start_frames(nbody.make_examples(sim_200, frame=38, delta=10))) == {38}
    with pytest.raises(ValueError, match="frame"):
        nbody.make_examples(sim_200, frame=39, delta=10)
    with pytest.raises(ValueError, match="delta"):
        nbody.make_examples(sim_200, delta=49)


def test_examples_feed_merge_and_batch_graphs(sim_200):
    data = {k: v[:6] for k, v in sim_200.items()}
    examples = nbody.make_examples(data, frame=0)
    merged = graph.merge_graphs(examples[:4])
    graph.validate_graph(merged)
    assert merged["positions"].shape == (20, 3) and merged["node_targets"].shape == (20, 6)
    assert merged["senders"].shape == (80,) and merged["edge_attr"].shape == (80, 1)
    inputs, targets, weights = graph.to_keras_inputs(merged, "node_targets")
    assert "node_targets" not in inputs and targets.shape == (20, 6) and weights.shape == (20,)

    fixed = graph.batch_graphs(nbody.tf_dataset(data, frame=0), batch_size=4)
    batches = list(fixed)
    assert [int(b["graph_sizes"].shape[0]) for b in batches] == [4, 2]
    for key in merged:
        np.testing.assert_array_equal(batches[0][key].numpy(), merged[key])
    padded = graph.pad_to_sizes(batches[1], num_nodes=24, num_edges=90, num_graphs=3)
    assert padded["positions"].shape == (24, 3)

    # frame=None: new start frames every epoch, the same sequence for the same seed.
    def epoch_targets(ds):
        return np.concatenate([g["node_targets"].numpy() for g in ds])

    ds = nbody.tf_dataset(data, seed=3)
    first, second = epoch_targets(ds), epoch_targets(ds)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, epoch_targets(nbody.tf_dataset(data, seed=3)))
    batch = next(iter(graph.batch_graphs(ds, batch_size=3)))
    assert batch["node_features"].shape == (15, 3) and batch["receivers"].shape == (60,)


def test_mse_report():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(4, 5, 6))
    pred = target.copy()
    pred[0, :, :3] += 2.0  # trajectory 0: dx error 4 per component
    pred[1, :, 3:] += 1.0  # trajectory 1: dv error 1 per component
    report = nbody.mse_report(pred, target)
    assert report == pytest.approx(
        {
            "mse_x_mean": 1.0,
            "mse_x_median": 0.0,
            "mse_v_mean": 0.25,
            "mse_v_median": 0.0,
            "num_trajectories": 4,
        }
    )
    assert nbody.mse_report(pred.reshape(20, 6), target.reshape(20, 6)) == report
    with pytest.raises(ValueError, match="same shape"):
        nbody.mse_report(pred, target[:2])


def test_constant_velocity_baseline(sim_200):
    report = nbody.constant_velocity_baseline(sim_200, delta=10)
    print("constant-velocity baseline, 200 test trajectories:", report)
    # Reference: about 0.125 / 0.282 (mean); heavy tails make 200 trajectories noisy.
    assert 0.06 < report["mse_x_mean"] < 0.25
    assert 0.15 < report["mse_v_mean"] < 0.45
    assert report["mse_x_median"] < report["mse_x_mean"]
    # From examples: the same numbers.
    examples = nbody.make_examples(sim_200, delta=10)
    assert nbody.constant_velocity_baseline(examples, delta=10) == pytest.approx(report)


@pytest.mark.slow
def test_constant_velocity_baseline_1000_trajectories():
    report = nbody.constant_velocity_baseline(
        nbody.simulate(1000, seed=nbody.SPLIT_SEEDS["test"]), delta=10
    )
    print("constant-velocity baseline, 1000 test trajectories:", report)
    assert 0.10 < report["mse_x_mean"] < 0.16
    assert 0.24 < report["mse_v_mean"] < 0.33


# ---------------------------------------------------------------------------
# Tetris
# ---------------------------------------------------------------------------


def signed_volume(p):
    return float(np.dot(p[1] - p[0], np.cross(p[2] - p[0], p[3] - p[0])))


def distance_matrix(p):
    return np.linalg.norm(p[:, None] - p[None], axis=-1)


def properly_congruent(a, b):
    """True when some rotation + translation + relabelling of points maps a onto b."""
    a, b = a - a.mean(0), b - b.mean(0)
    for perm in itertools.permutations(range(len(b))):
        bp = b[list(perm)]
        if not np.allclose(distance_matrix(a), distance_matrix(bp), atol=1e-6):
            continue
        # Kabsch with det = +1: the best rotation taking a to bp.
        u, _, vt = np.linalg.svd(bp.T @ a)
        d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
        rotation = u @ d @ vt
        if np.allclose(a @ rotation.T, bp, atol=1e-6):
            return True
    return False


def test_tetris_shapes_are_connected_polycubes():
    points, names = tetris.shapes()
    assert points.shape == (8, 4, 3) and points.dtype == np.float32
    assert len(set(names)) == 8 and names == tetris.CLASS_NAMES
    for p in points.astype(np.float64):
        np.testing.assert_array_equal(p, np.round(p))
        d = distance_matrix(p)
        assert np.all(d[~np.eye(4, dtype=bool)] > 0.5)  # 4 distinct points
        adjacent = np.isclose(d, 1.0)
        reached = {0}
        for _ in range(4):
            reached |= {j for i in reached for j in np.flatnonzero(adjacent[i])}
        assert reached == {0, 1, 2, 3}


def test_tetris_shapes_are_distinct_and_only_the_pair_is_chiral():
    points = tetris.shapes()[0].astype(np.float64)
    for a, b in itertools.combinations(range(8), 2):
        assert not properly_congruent(points[a], points[b]), (a, b)
    mirror = np.array([1.0, -1.0, 1.0])
    for k in range(8):
        achiral = properly_congruent(points[k], points[k] * mirror)
        assert achiral == (k not in tetris.CHIRAL_PAIR), tetris.CLASS_NAMES[k]
    first, second = (points[k] for k in tetris.CHIRAL_PAIR)
    assert properly_congruent(first * mirror, second)


def test_tetris_chiral_pair_by_distances_and_signed_volume():
    first, second = (tetris.shapes()[0][k].astype(np.float64) for k in tetris.CHIRAL_PAIR)
    iu = np.triu_indices(4, 1)
    np.testing.assert_allclose(
        np.sort(distance_matrix(first)[iu]), np.sort(distance_matrix(second)[iu])
    )
    volume = signed_volume(first)
    assert abs(volume) > 0.5
    # Every distance-preserving correspondence of points flips the signed volume,
    # so no rotation (which keeps it) superposes the two shapes.
    matches = 0
    for perm in itertools.permutations(range(4)):
        candidate = second[list(perm)]
        if np.allclose(distance_matrix(candidate), distance_matrix(first)):
            matches += 1
            assert signed_volume(candidate) == pytest.approx(-volume)
    assert matches >= 1


def test_tetris_make_dataset():
    graphs = tetris.make_dataset(5, seed=1)
    assert len(graphs) == 40
    canonical = tetris.shapes()[0].astype(np.float64)
    for index, g in enumerate(graphs):
        label = int(g["graph_label"])
        assert label == index % 8
        np.testing.assert_array_equal(g["graph_targets"], np.eye(8, dtype=np.float32)[label])
        assert g["positions"].dtype == np.float32 and g["node_features"].shape == (4, 1)
        assert g["senders"].shape == (12,) and g["senders"].dtype == np.int32
        p = g["positions"].astype(np.float64)
        np.testing.assert_allclose(distance_matrix(p), distance_matrix(canonical[label]), atol=1e-5)
        # Proper rotations: the chirality of each copy matches its class.
        assert signed_volume(p) == pytest.approx(signed_volume(canonical[label]), abs=1e-4)
        graph.validate_graph(g)
    assert not np.allclose(graphs[0]["positions"], graphs[8]["positions"])  # copies differ
    again = tetris.make_dataset(5, seed=1)
    np.testing.assert_array_equal(graphs[13]["positions"], again[13]["positions"])
    plain = tetris.make_dataset(1, rotate=False, translate=False)
    np.testing.assert_array_equal(np.stack([g["positions"] for g in plain]), canonical)
    with pytest.raises(ValueError, match="num_copies"):
        tetris.make_dataset(0)


def test_tetris_feeds_merge_and_batch_graphs():
    merged = graph.merge_graphs(tetris.make_dataset(2, seed=0))
    graph.validate_graph(merged)
    assert merged["graph_targets"].shape == (16, 8) and merged["graph_label"].shape == (16,)
    inputs, targets, weights = graph.to_keras_inputs(
        merged, "graph_targets", input_keys=["positions", "senders", "receivers", "node_features"]
    )
    assert targets.shape == (16, 8) and weights.shape == (16,)
    batch = next(iter(graph.batch_graphs(tetris.tf_dataset(2, seed=0), batch_size=16)))
    for key in merged:
        np.testing.assert_array_equal(batch[key].numpy(), merged[key])


# ---------------------------------------------------------------------------
# Package
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", [nbody, tetris], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(
        module,
        extraglobs={"np": np, "tf": tf},
        optionflags=doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.failed == 0 and result.attempted > 0


def test_imports_without_optional_packages():
    blocked = ["torch", "e3nn", "jax", "matplotlib", "qm9pack", "scipy", "sympy"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # makes 'import name' fail\n"
        "from tfequivariant.datasets import nbody, tetris\n"
        "assert nbody.simulate(1, num_steps=201)['positions'].shape == (1, 2, 5, 3)\n"
        "assert len(tetris.make_dataset(1)) == 8\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
