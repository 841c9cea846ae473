"""The ready Tensor Field Network model."""

import keras

from tfequivariant.layers.edge_geometry import EdgeGeometry, parse_irreps_sh
from tfequivariant.layers.gate import Gate
from tfequivariant.layers.graph_pooling import GraphPooling
from tfequivariant.layers.point_convolution import PointConvolution
from tfequivariant.layers.self_interaction import parse_irreps
from tfequivariant.models._common import (
    BaseGraphModel,
    build_functional,
    gate_for,
    hidden_irreps,
    reachable_irreps,
)

__all__ = ["TensorFieldNetwork", "build_tensor_field_network"]


@keras.saving.register_keras_serializable(package="tfequivariant")
class TensorFieldNetwork(BaseGraphModel):
    """Tensor Field Network (Thomas, Smidt et al. 2018): point convolutions and gates.

    ``num_layers - 1`` blocks of ``PointConvolution -> Gate`` to ``irreps_hidden``
    (each block keeps the hidden irreps its input can reach in one convolution;
    residual connections where the irreps match), then a last
    ``PointConvolution`` to ``irreps_out``; per node, or pooled per graph.
    Edge geometry is computed once and shared by every layer.

    Args:
        irreps_node_in: irreps of ``node_features``.
        irreps_out: irreps of the output (e.g. ``"1x1o"`` for a vector per node,
            ``"1x0e"`` for an energy per graph).
        irreps_hidden: hidden irreps; default ``channels`` of every degree up to
            ``max_degree`` with the harmonics' parities.
        channels: hidden channels per degree when ``irreps_hidden`` is not given (default 16).
        max_degree: hidden ``lmax`` when ``irreps_hidden`` is not given (default 2).
        num_layers: convolutions (default 3).
        irreps_sh: harmonics of the filters (default: lmax ``max_degree``).
        num_radial_basis, cutoff, radial_basis, radial_hidden: the filters' radial part.
        avg_num_neighbors: the neighbour sum is divided by its square root (default 1.0).
        residual: add the block input to its output where the irreps match (default True).
        readout: ``"node"`` (default) or ``"graph"`` (needs ``node_graph_index``, ``graph_sizes``).
        pooling: ``"sum"`` (default), ``"mean"`` or ``"max"`` (scalars only) for ``readout="graph"``.
        max_neighbors: static neighbour bound of the convolutions (needed under XLA).
        implementation: the convolutions' ``PointConvolution(implementation=...)``:
            ``"per_node"`` (default), ``"per_edge"`` or ``"so2"`` (edge-aligned frames;
            faster from degree 4 or so, BENCHMARKS.md). Same function, same weights.
        **kwargs: base ``keras.Model`` arguments.

    Call arguments:
        graph: dict with ``positions``, ``node_features``, ``senders``, ``receivers``
            and optionally ``edge_attr``, ``edge_mask``, ``edge_shifts``,
            ``node_graph_index``, ``graph_sizes``, ``node_mask``, ``graph_mask``.

    Returns:
        ``[N, irreps_out.dim]`` or ``[G, irreps_out.dim]``.

    Example:
        >>> model = TensorFieldNetwork("1x0e", "1x1o", channels=4, max_degree=1, num_layers=2)
        >>> g = {"positions": keras.ops.ones((3, 3)), "node_features": keras.ops.ones((3, 1)),
        ...      "senders": keras.ops.array([0, 1], "int32"), "receivers": keras.ops.array([1, 2], "int32")}
        >>> tuple(model(g).shape)
        (3, 3)

    References:
        Thomas, Smidt et al., "Tensor field networks", 2018.
    """

    def __init__(
        self,
        irreps_node_in,
        irreps_out,
        irreps_hidden=None,
        channels=16,
        max_degree=2,
        num_layers=3,
        irreps_sh=None,
        num_radial_basis=16,
        cutoff=5.0,
        radial_basis="gaussian",
        radial_hidden=(64,),
        avg_num_neighbors=1.0,
        residual=True,
        readout="node",
        pooling="sum",
        max_neighbors=None,
        implementation="per_node",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._check_common(irreps_node_in, irreps_out, readout, pooling)
        self.irreps_hidden = (
            hidden_irreps(channels, max_degree) if irreps_hidden is None else parse_irreps(irreps_hidden, "irreps_hidden")
        )
        self.channels, self.max_degree = channels, max_degree
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1. Received: num_layers={num_layers!r}")
        self.num_layers = num_layers
        self.irreps_sh = parse_irreps_sh(self.irreps_hidden.lmax if irreps_sh is None else irreps_sh)
        self.num_radial_basis, self.cutoff, self.radial_basis = num_radial_basis, cutoff, radial_basis
        self.radial_hidden = tuple(radial_hidden) if not isinstance(radial_hidden, int) else (radial_hidden,)
        self.avg_num_neighbors = avg_num_neighbors
        self.residual = bool(residual)
        self.max_neighbors = max_neighbors
        self.implementation = implementation
        filters = dict(
            irreps_sh=self.irreps_sh,
            num_radial_basis=num_radial_basis,
            cutoff=cutoff,
            radial_basis=radial_basis,
            radial_hidden=self.radial_hidden,
            avg_num_neighbors=avg_num_neighbors,
            max_neighbors=max_neighbors,
            implementation=implementation,
        )
        self.geometry = EdgeGeometry(
            self.irreps_sh, num_radial_basis, cutoff, radial_basis, dtype=self.dtype_policy, name="geometry"
        )
        self.convolutions, self.gates = [], []
        irreps = self.irreps_node_in
        for k in range(num_layers - 1):
            hidden = reachable_irreps(self.irreps_hidden, irreps, self.irreps_sh)
            gate = Gate(**gate_for(hidden), dtype=self.dtype_policy, name=f"gate_{k}")
            self.convolutions.append(
                PointConvolution(irreps, gate.irreps_in, dtype=self.dtype_policy, name=f"conv_{k}", **filters)
            )
            self.gates.append(gate)
            irreps = gate.irreps_out
        self.output_convolution = PointConvolution(
            irreps, self.irreps_out, dtype=self.dtype_policy, name="conv_out", **filters
        )
        self.pool = (
            GraphPooling(self.irreps_out, mode=pooling, dtype=self.dtype_policy, name="pooling")
            if readout == "graph"
            else None
        )

    def call(self, inputs):
        x, graph = self._graph(inputs)
        graph = self.geometry(graph)
        for conv, gate in zip(self.convolutions, self.gates):
            y = gate(conv(x, graph))
            x = x + y if self.residual and gate.irreps_out == conv.irreps_in else y
        out = self.output_convolution(x, graph)
        if self.pool is not None:
            out = self.pool(out, graph)
        return out

    def compute_output_shape(self, input_shape):
        n = input_shape["node_features"][0]
        return (None if self.readout == "graph" else n, self.irreps_out.dim)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps_node_in": str(self.irreps_node_in),
            "irreps_out": str(self.irreps_out),
            "irreps_hidden": str(self.irreps_hidden),
            "num_layers": self.num_layers,
            "irreps_sh": str(self.irreps_sh),
            "num_radial_basis": self.num_radial_basis,
            "cutoff": self.cutoff,
            "radial_basis": self.radial_basis,
            "radial_hidden": list(self.radial_hidden),
            "avg_num_neighbors": self.avg_num_neighbors,
            "residual": self.residual,
            "readout": self.readout,
            "pooling": self.pooling,
            "max_neighbors": self.max_neighbors,
            "implementation": self.implementation,
        }


def build_tensor_field_network(irreps_node_in, irreps_out, edge_attr_dim=0, edge_mask=False, edge_shifts=False, **kwargs):
    """A functional ``keras.Model`` over named graph inputs wrapping ``TensorFieldNetwork``.

    Inputs: ``positions``, ``node_features``, ``senders``, ``receivers`` (plus
    ``edge_attr`` when ``edge_attr_dim`` > 0, ``edge_mask``/``edge_shifts`` when asked,
    and ``node_graph_index``/``graph_sizes`` for ``readout="graph"``), every leading
    dimension ``None``: the form ``tfequivariant.export`` serves. Other keyword
    arguments go to ``TensorFieldNetwork``.
    """
    model = TensorFieldNetwork(irreps_node_in, irreps_out, **kwargs)
    return build_functional(model, model.irreps_node_in.dim, edge_attr_dim, edge_mask, edge_shifts)
