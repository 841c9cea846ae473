"""Shared machinery of the graph layers whose filters are ``R(|r|) Y(r / |r|)``.

Edge harmonics, radial basis and the radial MLP (e3nn's ``FullyConnectedNet``
normalization: weights ``N(0, 1)`` divided by ``sqrt(fan_in)``, activations
rescaled to unit second moment), reused from ``EdgeGeometry`` when the graph
carries them.
"""

import math

import keras
import numpy as np

from tfequivariant import ops as tfe_ops
from tfequivariant.layers._activations import get_activation, serialize_activation
from tfequivariant.layers.edge_geometry import edge_vectors, parse_irreps_sh, slice_sh
from tfequivariant.layers.radial_basis import RadialBasis
from tfequivariant.spherical_harmonics import spherical_harmonics

__all__ = ["EdgeFilterLayer", "second_moment_constant", "check_positive_int"]


def second_moment_constant(activation):
    """``1 / sqrt(E[f(z)^2])`` for ``z ~ N(0, 1)`` (e3nn's ``normalize2mom``), by quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    f = keras.ops.convert_to_numpy(activation(keras.ops.convert_to_tensor(z)))
    return float(1.0 / np.sqrt(np.sum(w * f**2) / np.sqrt(2 * np.pi)))


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1. Received: {name}={value!r}")
    return int(value)


class EdgeFilterLayer(keras.layers.Layer):
    """Base of layers with TFN filters: holds the harmonics, radial basis and radial MLP."""

    def __init__(
        self,
        irreps_sh=2,
        num_radial_basis=16,
        cutoff=5.0,
        radial_basis="gaussian",
        radial_hidden=(64,),
        radial_activation="silu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.irreps_sh = parse_irreps_sh(irreps_sh)
        if isinstance(radial_hidden, (int, np.integer)):
            radial_hidden = (radial_hidden,)
        self.radial_hidden = tuple(check_positive_int(h, "radial_hidden") for h in radial_hidden)
        if not self.radial_hidden:
            raise ValueError("radial_hidden needs at least one hidden layer. Received: radial_hidden=()")
        self.radial_activation = get_activation(radial_activation, "radial_activation")
        self._act_scale = second_moment_constant(self.radial_activation)
        self.radial = RadialBasis(
            num_radial_basis, cutoff, radial_basis, dtype=self.dtype_policy.variable_dtype, name="radial_basis"
        )
        self.num_radial_basis = self.radial.num_basis
        self.cutoff = self.radial.cutoff
        self.radial_basis = self.radial.basis

    def _check_inputs(self, features_shape, graph_shape, irreps_in):
        if features_shape[-1] is not None and features_shape[-1] != irreps_in.dim:
            raise ValueError(
                f"features must have last dimension irreps_in.dim = {irreps_in.dim} "
                f"({irreps_in}). Received shape: {tuple(features_shape)}"
            )
        for key in ("positions", "senders", "receivers"):
            if key not in graph_shape:
                raise ValueError(f"graph must contain {key!r}. Received keys: {sorted(graph_shape)}")
        if "edge_radial" in graph_shape and graph_shape["edge_radial"][-1] != self.num_radial_basis:
            raise ValueError(
                f"graph['edge_radial'] has {graph_shape['edge_radial'][-1]} radial functions but this "
                f"layer was built for num_radial_basis={self.num_radial_basis}."
            )

    def _build_filter(self, graph_shape, weight_numel):
        """Radial MLP weights: hidden kernels and the output layer ``[H, weight_numel]``."""
        self._edge_attr_dim = int(graph_shape["edge_attr"][-1]) if "edge_attr" in graph_shape else 0
        fan_in = self.num_radial_basis + self._edge_attr_dim
        self.radial_kernels = []
        for k, h in enumerate(self.radial_hidden):
            self.radial_kernels.append(
                self.add_weight(
                    name=f"radial_kernel_{k}",
                    shape=(fan_in, h),
                    initializer=keras.initializers.RandomNormal(stddev=1.0),
                )
            )
            fan_in = h
        self.radial_output = self.add_weight(
            name="radial_output",
            shape=(fan_in, weight_numel),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        self.radial.build(None)

    def _edge_inputs(self, graph, vectors=False):
        """Harmonics, radial features and mask per edge, reusing EdgeGeometry's when present.

        ``vectors=True``: the edge vectors (geometry dtype) in place of the harmonics, for
        the products in edge-aligned frames; the radial features reuse them.
        """
        ops = keras.ops
        geometry_dtype = self.dtype_policy.variable_dtype
        need = (self.irreps_sh.lmax + 1) ** 2
        vec = None
        if vectors:
            sh = None
            vec = edge_vectors(graph, geometry_dtype)
        elif graph.get("edge_sh") is not None:
            sh = graph["edge_sh"]
            if sh.shape[-1] is not None and sh.shape[-1] < need:
                raise ValueError(
                    f"graph['edge_sh'] has {sh.shape[-1]} columns but irreps_sh={self.irreps_sh} needs "
                    f"harmonics 0..{self.irreps_sh.lmax} ({need} columns). Build EdgeGeometry with "
                    f"irreps_sh >= {self.irreps_sh.lmax} or drop edge_sh from the graph."
                )
        else:
            vec = edge_vectors(graph, geometry_dtype)
            sh = spherical_harmonics(
                list(range(self.irreps_sh.lmax + 1)), vec, normalize=True, normalization="component"
            )
        if sh is not None:
            sh = ops.cast(slice_sh(sh, self.irreps_sh), self.compute_dtype)
        if graph.get("edge_radial") is not None:
            radial = graph["edge_radial"]
        else:
            if vec is None:
                vec = edge_vectors(graph, geometry_dtype)
            radial = self.radial(tfe_ops.safe_norm(vec, axis=-1))
        radial = ops.cast(radial, self.compute_dtype)
        has_attr = graph.get("edge_attr") is not None
        if has_attr != bool(self._edge_attr_dim):
            raise ValueError(
                f"This layer was built {'with' if self._edge_attr_dim else 'without'} graph['edge_attr'] "
                f"(width {self._edge_attr_dim}) but is called {'with' if has_attr else 'without'} it: "
                "edge features feed the radial network's first layer, so every call needs the same keys."
            )
        if self._edge_attr_dim:
            radial = ops.concatenate([radial, ops.cast(graph["edge_attr"], self.compute_dtype)], axis=-1)
        mask = graph.get("edge_mask")
        return (vec if vectors else sh), radial, mask

    def _radial_hidden(self, radial, mask):
        ops = keras.ops
        h = radial
        for kernel in self.radial_kernels:
            fan_in = kernel.shape[0]
            h = self.radial_activation(ops.matmul(h, ops.cast(kernel, self.compute_dtype)) / math.sqrt(fan_in))
            h = h * self._act_scale
        if mask is not None:
            h = h * ops.cast(mask, self.compute_dtype)[:, None]
        return h

    def _filter_config(self):
        return {
            "irreps_sh": str(self.irreps_sh),
            "num_radial_basis": self.num_radial_basis,
            "cutoff": self.cutoff,
            "radial_basis": self.radial_basis,
            "radial_hidden": list(self.radial_hidden),
            "radial_activation": serialize_activation(self.radial_activation),
        }
