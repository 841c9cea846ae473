"""The ``EdgeGeometry`` layer: edge vectors, lengths, harmonics and radial basis, once per graph."""

import keras
import numpy as np

from tfequivariant import ops as tfe_ops
from tfequivariant.irreps import Irreps
from tfequivariant.layers.radial_basis import RadialBasis
from tfequivariant.spherical_harmonics import _NORMALIZATIONS, spherical_harmonics

__all__ = ["EdgeGeometry", "edge_vectors", "parse_irreps_sh", "slice_sh"]


def parse_irreps_sh(irreps_sh, name="irreps_sh"):
    """An int lmax or harmonics irreps (``"1x0e+1x1o+1x2e"``) -> ``Irreps`` of vector harmonics."""
    if isinstance(irreps_sh, (int, np.integer)) and not isinstance(irreps_sh, bool):
        if irreps_sh < 0:
            raise ValueError(f"{name} as an int is lmax >= 0. Received: {name}={irreps_sh!r}")
        return Irreps.spherical_harmonics(int(irreps_sh))
    try:
        irreps = Irreps(irreps_sh)
    except ValueError as e:
        raise ValueError(f"Invalid {name}: {e}") from None
    bad = [str(ir) for mul, ir in irreps if mul != 1 or ir.p != (-1) ** ir.l]
    seen = [ir.l for _, ir in irreps]
    if bad or len(set(seen)) != len(seen) or seen != sorted(seen) or not seen:
        raise ValueError(
            f"{name} must list each degree once, in increasing order, with the parity of "
            f"the harmonics of a vector ((-1)**l), e.g. '1x0e+1x1o+1x2e'. "
            f"Received: {name}={str(irreps)!r}"
        )
    return irreps


def slice_sh(edge_sh, irreps_sh):
    """Columns of a full ``0..lmax`` harmonics tensor that make up ``irreps_sh``."""
    ls = [ir.l for _, ir in irreps_sh]
    if ls == list(range(len(ls))):
        return edge_sh[..., : (ls[-1] + 1) ** 2]
    parts = [edge_sh[..., l * l : (l + 1) ** 2] for l in ls]
    return keras.ops.concatenate(parts, axis=-1)


def edge_vectors(graph, dtype=None):
    """``positions[senders] - positions[receivers] (+ edge_shifts)``, the contract's edge vector."""
    ops = keras.ops
    pos = graph["positions"]
    if pos.shape[-1] is not None and pos.shape[-1] != 3:
        raise ValueError(f"graph['positions'] must have shape [N, 3]. Received shape: {tuple(pos.shape)}")
    if dtype is not None:
        pos = ops.cast(pos, dtype)
    vec = tfe_ops.gather(pos, graph["senders"]) - tfe_ops.gather(pos, graph["receivers"])
    if graph.get("edge_shifts") is not None:
        vec = vec + ops.cast(graph["edge_shifts"], vec.dtype)
    return vec


@keras.saving.register_keras_serializable(package="tfequivariant")
class EdgeGeometry(keras.layers.Layer):
    """Edge geometry computed once per graph and shared by every later graph layer.

    For each edge ``j -> i`` (``senders[e] = j``, ``receivers[e] = i``):
    ``r_ij = x_j - x_i (+ edge_shifts)``, its length (0 with finite gradient for
    zero-length edges), the spherical harmonics ``Y(r_ij / |r_ij|)`` of every degree
    ``0..lmax`` (``component`` normalization by default) and a radial basis.

    Args:
        irreps_sh: an int lmax or harmonics irreps such as ``"1x0e+1x1o+1x2e"``;
            ``edge_sh`` always holds every degree ``0..lmax`` so that any layer
            needing a subset can slice it (default 2).
        num_radial_basis: number of radial functions (default 16).
        cutoff: radial cutoff (default 5.0).
        radial_basis: ``"gaussian"`` (default) or ``"bessel"``.
        normalization: of the harmonics (default ``"component"``, what the graph
            layers expect).
        **kwargs: base ``Layer`` arguments. Geometry is computed in the layer's
            variable dtype (float32 under ``mixed_float16``).

    Call arguments:
        graph: dict with ``positions`` ``[N, 3]``, ``senders`` and ``receivers``
            ``[E]`` int32 and optionally ``edge_shifts`` ``[E, 3]``.

    Returns:
        The graph dict plus ``edge_vectors`` ``[E, 3]``, ``edge_lengths`` ``[E]``,
        ``edge_sh`` ``[E, (lmax+1)^2]`` and ``edge_radial`` ``[E, num_radial_basis]``.

    Example:
        >>> g = {"positions": keras.ops.ones((3, 3)), "senders": keras.ops.array([0, 1], "int32"),
        ...      "receivers": keras.ops.array([1, 2], "int32")}
        >>> tuple(EdgeGeometry(2, num_radial_basis=4)(g)["edge_sh"].shape)
        (2, 9)
    """

    def __init__(
        self,
        irreps_sh=2,
        num_radial_basis=16,
        cutoff=5.0,
        radial_basis="gaussian",
        normalization="component",
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.irreps_sh = parse_irreps_sh(irreps_sh)
        self.lmax = self.irreps_sh.lmax
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {_NORMALIZATIONS}. Received: normalization={normalization!r}"
            )
        self.normalization = normalization
        self.irreps_in = None
        self.irreps_out = Irreps.spherical_harmonics(self.lmax)
        self.radial = RadialBasis(
            num_radial_basis, cutoff, radial_basis, dtype=self.dtype_policy.variable_dtype, name="radial"
        )
        self.num_radial_basis = self.radial.num_basis
        self.cutoff = self.radial.cutoff
        self.radial_basis = self.radial.basis

    def build(self, graph_shape):
        self.radial.build(graph_shape["senders"] if isinstance(graph_shape, dict) else None)

    def call(self, graph):
        ops = keras.ops
        dtype = self.dtype_policy.variable_dtype
        vec = edge_vectors(graph, dtype)
        lengths = tfe_ops.safe_norm(vec, axis=-1)
        sh = spherical_harmonics(
            list(range(self.lmax + 1)), vec, normalize=True, normalization=self.normalization
        )
        out = dict(graph)
        out["edge_vectors"] = vec
        out["edge_lengths"] = lengths
        out["edge_sh"] = sh
        out["edge_radial"] = ops.cast(self.radial(lengths), dtype)
        return out

    def compute_output_shape(self, graph_shape):
        out = dict(graph_shape)
        num_edges = graph_shape["senders"][0]
        out["edge_vectors"] = (num_edges, 3)
        out["edge_lengths"] = (num_edges,)
        out["edge_sh"] = (num_edges, (self.lmax + 1) ** 2)
        out["edge_radial"] = (num_edges, self.num_radial_basis)
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "irreps_sh": str(self.irreps_sh),
            "num_radial_basis": self.num_radial_basis,
            "cutoff": self.cutoff,
            "radial_basis": self.radial_basis,
            "normalization": self.normalization,
        }
