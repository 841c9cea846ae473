"""Pieces shared by the ready models: hidden irreps, gates, graph inputs and readout."""

import keras
import numpy as np

from tfequivariant.irreps import Irreps
from tfequivariant.layers.self_interaction import parse_irreps

__all__ = ["hidden_irreps", "gate_for", "graph_inputs", "BaseGraphModel", "build_functional", "reachable_irreps"]


def reachable_irreps(irreps_hidden, irreps_in, irreps_sh):
    """The blocks of ``irreps_hidden`` one convolution of ``irreps_in`` with ``irreps_sh`` can produce.

    A hidden irrep that needs several layers to appear (e.g. ``1e`` from scalar
    inputs) is left out of the early layers, as e3nn's examples do.
    """
    reachable = {ir for _, ir1 in Irreps(irreps_in) for _, ir2 in Irreps(irreps_sh) for ir in ir1 * ir2}
    return Irreps([(mul, ir) for mul, ir in Irreps(irreps_hidden) if ir in reachable and mul > 0])

_READOUTS = ("node", "graph")


def hidden_irreps(channels, max_degree, parity=True):
    """``channels x 0e + channels x 1o + channels x 2e + ...`` up to ``max_degree``.

    ``parity=True`` (default) gives the parities of the spherical harmonics,
    what convolutions of scalars produce; ``parity=False`` gives even parity
    for every degree (``0e+1e+2e``), for SE(3)-only models.
    """
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be an int >= 1. Received: channels={channels!r}")
    if isinstance(max_degree, bool) or not isinstance(max_degree, (int, np.integer)) or max_degree < 0:
        raise ValueError(f"max_degree must be an int >= 0. Received: max_degree={max_degree!r}")
    return Irreps([(channels, (l, (-1) ** l if parity else 1)) for l in range(max_degree + 1)])


def gate_for(irreps_hidden):
    """Gate arguments making ``irreps_hidden`` from a convolution output.

    Scalars pass through SiLU (``0e``) or tanh (``0o``, odd, keeps parity); each
    channel of degree ``l > 0`` is gated by its own ``0e`` scalar through a sigmoid.
    Returns the ``Gate`` keyword arguments.
    """
    irreps_hidden = Irreps(irreps_hidden)
    scalars = Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l == 0 and mul > 0])
    gated = Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l > 0 and mul > 0])
    return dict(
        irreps_scalars=str(scalars),
        act_scalars=["silu" if ir.p == 1 else "tanh" for _, ir in scalars],
        irreps_gates=f"{gated.num_irreps}x0e" if gated.num_irreps else "",
        act_gates=["sigmoid"] if gated.num_irreps else [],
        irreps_gated=str(gated),
    )


def graph_inputs(node_feature_dim, edge_attr_dim=0, readout="node", edge_mask=False, edge_shifts=False):
    """Named ``keras.Input``s of the graph contract (DESIGN.md section 3), ``None`` leading dims."""
    inputs = {
        "positions": keras.Input(shape=(3,), name="positions"),
        "node_features": keras.Input(shape=(node_feature_dim,), name="node_features"),
        "senders": keras.Input(shape=(), dtype="int32", name="senders"),
        "receivers": keras.Input(shape=(), dtype="int32", name="receivers"),
    }
    if edge_attr_dim:
        inputs["edge_attr"] = keras.Input(shape=(edge_attr_dim,), name="edge_attr")
    if edge_mask:
        inputs["edge_mask"] = keras.Input(shape=(), name="edge_mask")
    if edge_shifts:
        inputs["edge_shifts"] = keras.Input(shape=(3,), name="edge_shifts")
    if readout == "graph":
        inputs["node_graph_index"] = keras.Input(shape=(), dtype="int32", name="node_graph_index")
        inputs["graph_sizes"] = keras.Input(shape=(), dtype="int32", name="graph_sizes")
    return inputs


class BaseGraphModel(keras.Model):
    """A model called on a graph dict: ``model(graph) -> [N or G, irreps_out.dim]``."""

    _GRAPH_KEYS = (
        "positions",
        "senders",
        "receivers",
        "edge_mask",
        "edge_attr",
        "edge_shifts",
        "node_graph_index",
        "graph_sizes",
        "node_mask",
        "graph_mask",
    )

    def _check_common(self, irreps_node_in, irreps_out, readout, pooling):
        self.irreps_node_in = parse_irreps(irreps_node_in, "irreps_node_in")
        self.irreps_out = parse_irreps(irreps_out, "irreps_out")
        if readout not in _READOUTS:
            raise ValueError(f"readout must be one of {_READOUTS}. Received: readout={readout!r}")
        if pooling not in ("sum", "mean", "max"):
            raise ValueError(f"pooling must be 'sum', 'mean' or 'max'. Received: pooling={pooling!r}")
        self.readout = readout
        self.pooling = pooling

    _INDEX_KEYS = ("senders", "receivers", "node_graph_index", "graph_sizes")

    def build(self, input_shape):
        # Build every sublayer by running the model once on a tiny zero graph of
        # the given widths (2 nodes, 2 edges, 2 graphs), so that a reloaded model
        # has all its variables before its weights are restored.
        if self.built:
            return
        if not isinstance(input_shape, dict):
            raise ValueError(f"Graph models take a dict of inputs. Received input shape: {input_shape!r}")
        # Unknown edge counts become 0 edges, so no node exceeds a static max_neighbors.
        dummy = {}
        for key, shape in input_shape.items():
            size = 0 if key in ("senders", "receivers") or key.startswith("edge_") else 2
            concrete = tuple(size if d is None else int(d) for d in shape[:1]) + tuple(
                1 if d is None else int(d) for d in shape[1:]
            )
            dtype = "int32" if key in self._INDEX_KEYS else self.compute_dtype
            dummy[key] = keras.ops.zeros(concrete, dtype=dtype)
        num_nodes = dummy["positions"].shape[0] if "positions" in dummy else 2
        for key in ("senders", "receivers"):
            if key in dummy and dummy[key].shape[0]:
                # spread a static number of edges over the nodes
                dummy[key] = keras.ops.cast(keras.ops.arange(dummy[key].shape[0]) % num_nodes, "int32")
        self.call(dummy)
        self.built = True

    def _graph(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError(
                "Graph models are called on a dict with positions, node_features, senders and "
                f"receivers (DESIGN.md section 3). Received: {type(inputs).__name__}"
            )
        missing = [k for k in ("positions", "node_features", "senders", "receivers") if k not in inputs]
        if missing:
            raise ValueError(f"The graph dict lacks {missing}. Received keys: {sorted(inputs)}")
        if self.readout == "graph":
            for k in ("node_graph_index", "graph_sizes"):
                if k not in inputs:
                    raise ValueError(
                        f"readout='graph' needs {k!r} in the graph dict (tfequivariant.graph.batch_graphs "
                        f"adds it). Received keys: {sorted(inputs)}"
                    )
        graph = {k: inputs[k] for k in self._GRAPH_KEYS if k in inputs}
        return inputs["node_features"], graph


def build_functional(model, node_feature_dim, edge_attr_dim=0, edge_mask=False, edge_shifts=False, name=None):
    """Wrap a graph model in a functional ``keras.Model`` over named inputs (for export)."""
    inputs = graph_inputs(node_feature_dim, edge_attr_dim, model.readout, edge_mask, edge_shifts)
    outputs = model(inputs)
    return keras.Model(inputs, outputs, name=name or f"{model.name}_functional")
