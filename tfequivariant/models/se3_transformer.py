"""The ready SE(3)-Transformer model."""

import keras

from tfequivariant.irreps import Irreps
from tfequivariant.layers.edge_geometry import EdgeGeometry, parse_irreps_sh
from tfequivariant.layers.gate import Gate
from tfequivariant.layers.graph_pooling import GraphPooling
from tfequivariant.layers.point_convolution import PointConvolution
from tfequivariant.layers.se3_attention import SE3Attention
from tfequivariant.layers.se3_norm_nonlinearity import SE3NormNonlinearity
from tfequivariant.layers.self_interaction import SelfInteraction, parse_irreps
from tfequivariant.models._common import BaseGraphModel, build_functional, gate_for, hidden_irreps, reachable_irreps

__all__ = ["SE3Transformer", "build_se3_transformer"]


def _key_irreps(irreps_in, irreps_hidden):
    """Keys of the hidden types the query (a linear map of ``irreps_in``) can reach."""
    present = {ir for mul, ir in irreps_in if mul > 0}
    key = Irreps([(mul, ir) for mul, ir in irreps_hidden if ir in present and mul > 0])
    if key.dim == 0:  # no shared type: invariant keys still work (queries of the 0e channels)
        key = Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l == 0 and mul > 0])
    return key


@keras.saving.register_keras_serializable(package="tfequivariant")
class SE3Transformer(BaseGraphModel):
    """SE(3)-Transformer (Fuchs et al. 2020): attention blocks and a last convolution.

    ``num_layers`` blocks of ``SE3Attention -> SE3NormNonlinearity`` to
    ``irreps_hidden`` with a residual connection, then a
    ``PointConvolution`` to ``irreps_out`` (the layout of NVIDIA's reference
    implementation); per node, or pooled per graph. Edge geometry is computed
    once; ``edge_attr`` feeds every radial network.

    Args:
        irreps_node_in: irreps of ``node_features``.
        irreps_out: irreps of the output.
        irreps_hidden: hidden irreps; default ``channels`` of every degree up to
            ``max_degree`` with the harmonics' parities.
        channels: hidden channels per degree (default 16).
        max_degree: hidden ``lmax`` (default 2).
        num_layers: attention blocks (default 3).
        num_heads: heads of every attention block (default 4); must divide ``channels``.
        irreps_sh: harmonics of the filters (default: lmax of the hidden irreps).
        num_radial_basis, cutoff, radial_basis, radial_hidden: the filters' radial part.
        avg_num_neighbors: normalization of the last convolution's neighbour sum (default 1.0).
        nonlinearity: ``"norm"`` (default, the paper's: ``SE3NormNonlinearity``, a
            layer normalization of the norms of each type followed by ReLU) or
            ``"gate"`` (the attention also produces one gate scalar per channel of
            degree > 0 and a ``Gate`` follows, as in the TFN model and e3nn: it keeps
            magnitudes, which regression of physical quantities needs).
        residual: add the block input to its output (default True): itself where
            the irreps match, else its image under a linear self-interaction (a
            projection shortcut). The norm nonlinearity normalizes the norms of
            each type across channels, so without a shortcut the magnitudes of
            the input features (e.g. a velocity) cannot reach the output linearly.
        readout: ``"node"`` (default) or ``"graph"``.
        pooling: ``"sum"`` (default), ``"mean"`` or ``"max"`` (scalars only).
        max_neighbors: static neighbour bound of the last convolution (needed under XLA).
        attention_edge_chunk: ``edge_chunk`` of every attention block (default None):
            the edges in chunks of this many, recomputed in the backward pass, so that
            memory no longer holds the per-edge weights of the whole batch (large
            graphs); first-order gradients only (see ``SE3Attention``).
        implementation: ``implementation`` of the attention blocks and the last convolution:
            ``"per_edge"`` (default; the last convolution then uses its default per-node
            form) or ``"so2"`` (products in edge-aligned frames, faster at higher degrees).
            Same function and weights.
        **kwargs: base ``keras.Model`` arguments.

    Call arguments:
        graph: dict as for ``TensorFieldNetwork``.

    Returns:
        ``[N, irreps_out.dim]`` or ``[G, irreps_out.dim]``.

    Example:
        >>> model = SE3Transformer("1x1o", "1x1o", channels=4, max_degree=1, num_layers=1, num_heads=2)
        >>> g = {"positions": keras.ops.ones((3, 3)), "node_features": keras.ops.ones((3, 3)),
        ...      "senders": keras.ops.array([0, 1], "int32"), "receivers": keras.ops.array([1, 2], "int32")}
        >>> tuple(model(g).shape)
        (3, 3)

    References:
        Fuchs, Worrall, Fischer, Welling, "SE(3)-Transformers", NeurIPS 2020.
    """

    def __init__(
        self,
        irreps_node_in,
        irreps_out,
        irreps_hidden=None,
        channels=16,
        max_degree=2,
        num_layers=3,
        num_heads=4,
        irreps_sh=None,
        num_radial_basis=16,
        cutoff=5.0,
        radial_basis="gaussian",
        radial_hidden=(64,),
        avg_num_neighbors=1.0,
        residual=True,
        nonlinearity="norm",
        readout="node",
        pooling="sum",
        max_neighbors=None,
        attention_edge_chunk=None,
        implementation="per_edge",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._check_common(irreps_node_in, irreps_out, readout, pooling)
        self.irreps_hidden = (
            hidden_irreps(channels, max_degree) if irreps_hidden is None else parse_irreps(irreps_hidden, "irreps_hidden")
        )
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1. Received: num_layers={num_layers!r}")
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.irreps_sh = parse_irreps_sh(self.irreps_hidden.lmax if irreps_sh is None else irreps_sh)
        self.num_radial_basis, self.cutoff, self.radial_basis = num_radial_basis, cutoff, radial_basis
        self.radial_hidden = tuple(radial_hidden) if not isinstance(radial_hidden, int) else (radial_hidden,)
        self.avg_num_neighbors = avg_num_neighbors
        self.residual = bool(residual)
        if nonlinearity not in ("norm", "gate"):
            raise ValueError(f'nonlinearity must be "norm" or "gate". Received: nonlinearity={nonlinearity!r}')
        self.nonlinearity = nonlinearity
        self.max_neighbors = max_neighbors
        self.attention_edge_chunk = attention_edge_chunk
        self.implementation = implementation  # checked by SE3Attention
        filters = dict(
            irreps_sh=self.irreps_sh,
            num_radial_basis=num_radial_basis,
            cutoff=cutoff,
            radial_basis=radial_basis,
            radial_hidden=self.radial_hidden,
        )
        self.geometry = EdgeGeometry(
            self.irreps_sh, num_radial_basis, cutoff, radial_basis, dtype=self.dtype_policy, name="geometry"
        )
        self.attentions, self.norms, self.shortcuts = [], [], []
        irreps = self.irreps_node_in
        for k in range(num_layers):
            hidden = reachable_irreps(self.irreps_hidden, irreps, self.irreps_sh)
            if nonlinearity == "gate":
                norm = Gate(**gate_for(hidden), dtype=self.dtype_policy, name=f"gate_{k}")
            else:
                norm = SE3NormNonlinearity(hidden, dtype=self.dtype_policy, name=f"norm_{k}")
            hidden = norm.irreps_out
            self.attentions.append(
                SE3Attention(
                    irreps,
                    norm.irreps_in,
                    irreps_key=_key_irreps(irreps, hidden.simplify()),
                    num_heads=num_heads,
                    edge_chunk=attention_edge_chunk,
                    implementation=implementation,
                    dtype=self.dtype_policy,
                    name=f"attention_{k}",
                    **filters,
                )
            )
            self.norms.append(norm)
            self.shortcuts.append(
                SelfInteraction(irreps, hidden, use_bias=False, dtype=self.dtype_policy, name=f"shortcut_{k}")
                if self.residual and irreps != hidden
                else None
            )
            irreps = hidden
        self.output_convolution = PointConvolution(
            irreps,
            self.irreps_out,
            avg_num_neighbors=avg_num_neighbors,
            max_neighbors=max_neighbors,
            implementation="so2" if implementation == "so2" else "per_node",
            dtype=self.dtype_policy,
            name="conv_out",
            **filters,
        )
        self.pool = (
            GraphPooling(self.irreps_out, mode=pooling, dtype=self.dtype_policy, name="pooling")
            if readout == "graph"
            else None
        )

    def call(self, inputs):
        x, graph = self._graph(inputs)
        graph = self.geometry(graph)
        for attention, norm, shortcut in zip(self.attentions, self.norms, self.shortcuts):
            y = norm(attention(x, graph))
            if not self.residual:
                x = y
            else:
                x = y + (x if shortcut is None else shortcut(x))
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
            "num_heads": self.num_heads,
            "irreps_sh": str(self.irreps_sh),
            "num_radial_basis": self.num_radial_basis,
            "cutoff": self.cutoff,
            "radial_basis": self.radial_basis,
            "radial_hidden": list(self.radial_hidden),
            "avg_num_neighbors": self.avg_num_neighbors,
            "residual": self.residual,
            "nonlinearity": self.nonlinearity,
            "readout": self.readout,
            "pooling": self.pooling,
            "max_neighbors": self.max_neighbors,
            "attention_edge_chunk": self.attention_edge_chunk,
            "implementation": self.implementation,
        }


def build_se3_transformer(irreps_node_in, irreps_out, edge_attr_dim=0, edge_mask=False, edge_shifts=False, **kwargs):
    """A functional ``keras.Model`` over named graph inputs wrapping ``SE3Transformer``.

    Same inputs as ``build_tensor_field_network``; other keyword arguments go to
    ``SE3Transformer``.
    """
    model = SE3Transformer(irreps_node_in, irreps_out, **kwargs)
    return build_functional(model, model.irreps_node_in.dim, edge_attr_dim, edge_mask, edge_shifts)
