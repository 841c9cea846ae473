"""The ``GraphPooling`` layer: per-graph readout (sum, mean or max over each graph's nodes)."""

import keras
import numpy as np

from tfequivariant import ops as tfe_ops
from tfequivariant.irreps import Irrep
from tfequivariant.layers.self_interaction import parse_irreps

__all__ = ["GraphPooling"]

_MODES = ("sum", "mean", "max")


def _lowest(dtype):
    """The dtype's lowest finite value (what an empty segment_max holds)."""
    if dtype == "bfloat16":  # not a NumPy dtype
        import ml_dtypes

        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).min)
    return float(np.finfo(dtype).min)


@keras.saving.register_keras_serializable(package="tfequivariant")
class GraphPooling(keras.layers.Layer):
    """Pools node features into one row per graph of a merged (disjoint-union) batch.

    With ``S_g`` the (unmasked) nodes ``i`` of graph ``g`` (``node_graph_index[i] = g``):

    * ``"sum"``: ``out_g = sum_{i in S_g} f_i``;
    * ``"mean"``: ``out_g = 1/|S_g| sum_{i in S_g} f_i`` (0 for an empty graph);
    * ``"max"``: ``out_g = max_{i in S_g} f_i`` per component (0 for an empty graph).

    Sum and mean are linear, so they commute with every ``D(g)``: equivariant
    for any irreps. A componentwise max is not (it does not commute with
    rotations, and for odd scalars ``max(-x) != -max(x)``), so ``"max"`` takes
    even scalars (``0e``) only.

    Padding follows tensorflow-gnn (DESIGN.md section 3): nodes with
    ``node_mask = 0`` are left out of every reduction, and graphs with
    ``graph_mask = 0`` (the padding graph) give zeros. The number of graphs is
    ``G = shape(graph_sizes)[0]``; the graph sizes themselves are not read (the
    mean counts the unmasked nodes carrying each graph index).

    Args:
        irreps: irreps of the node features.
        mode: ``"sum"`` (default), ``"mean"`` or ``"max"``.
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        features: ``[N, irreps.dim]`` node features.
        graph: dict with ``node_graph_index [N]`` (int32) and ``graph_sizes [G]``
            (int32), optionally ``node_mask [N]`` and ``graph_mask [G]`` (1 real,
            0 padding); other keys are ignored.

    Returns:
        ``[G, irreps.dim]``.

    Example:
        >>> graph = {"node_graph_index": np.array([0, 0, 1], "int32"),
        ...          "graph_sizes": np.array([2, 1], "int32")}
        >>> tuple(GraphPooling("1x0e+1x1o", mode="mean")(np.ones((3, 4), "float32"), graph).shape)
        (2, 4)

    References:
        Gilmer et al., "Neural Message Passing for Quantum Chemistry", ICML 2017
        (readout); tensorflow-gnn's ``pool_nodes_to_context`` and padding convention.
    """

    def __init__(self, irreps, mode="sum", **kwargs):
        super().__init__(**kwargs)
        self.irreps_in = parse_irreps(irreps, "irreps")
        self.irreps_out = self.irreps_in
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}. Received: mode={mode!r}")
        if mode == "max" and any(ir != Irrep("0e") for mul, ir in self.irreps_in if mul > 0):
            raise ValueError(
                "mode='max' needs irreps of even scalars only (0e): a componentwise max of "
                "vectors or odd scalars is not equivariant. Use mode='sum' or 'mean', or pool "
                f"invariants (norms, 0e channels). Received: irreps={str(self.irreps_in)!r}, mode='max'"
            )
        self.mode = mode

    def build(self, features_shape, graph_shape):
        if features_shape[-1] is not None and features_shape[-1] != self.irreps_in.dim:
            raise ValueError(
                f"features must have last dimension irreps.dim = {self.irreps_in.dim} "
                f"({self.irreps_in}). Received shape: {tuple(features_shape)}"
            )
        if not isinstance(graph_shape, dict):
            raise ValueError(f"graph must be a dict of tensors. Received: graph of type {type(graph_shape)}")
        for key in ("node_graph_index", "graph_sizes"):
            if key not in graph_shape:
                raise ValueError(
                    f"graph must contain {key!r} (a merged batch; see tfequivariant.graph.batch_graphs). "
                    f"Received keys: {sorted(graph_shape)}"
                )

    def call(self, features, graph):
        ops = keras.ops
        x = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        ids = ops.cast(graph["node_graph_index"], "int32")
        num_graphs = ops.shape(graph["graph_sizes"])[0]
        node_mask = graph.get("node_mask")
        if node_mask is not None:
            weight = ops.cast(ops.cast(node_mask, self.compute_dtype) > 0, self.compute_dtype)
        else:
            weight = ops.ones_like(ids, dtype=self.compute_dtype)
        count = tfe_ops.segment_sum(weight, ids, num_graphs)[:, None]  # [G, 1]
        if self.mode == "max":
            lowest = ops.convert_to_tensor(_lowest(self.compute_dtype), dtype=self.compute_dtype)
            if node_mask is not None:
                x = ops.where(weight[:, None] > 0, x, lowest)
            pooled = tfe_ops.segment_max(x, ids, num_graphs)
            # empty (or fully masked) graphs: the dtype's lowest value -> 0
            pooled = ops.where(count > 0, pooled, ops.zeros_like(pooled))
        else:
            if node_mask is not None:
                x = x * weight[:, None]
            pooled = tfe_ops.segment_sum(x, ids, num_graphs)
            if self.mode == "mean":
                pooled = pooled / ops.maximum(count, ops.ones_like(count))
        graph_mask = graph.get("graph_mask")
        if graph_mask is not None:
            real = ops.cast(graph_mask, self.compute_dtype)[:, None] > 0
            pooled = ops.where(real, pooled, ops.zeros_like(pooled))
        return pooled

    def compute_output_shape(self, features_shape, graph_shape):
        return (graph_shape["graph_sizes"][0], self.irreps_in.dim)

    def get_config(self):
        return {**super().get_config(), "irreps": str(self.irreps_in), "mode": self.mode}
