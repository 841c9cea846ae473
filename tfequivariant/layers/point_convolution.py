"""The Tensor Field Network point convolution."""

import math

import keras
import numpy as np

from tfequivariant import ops as tfe_ops
from tfequivariant._xla import in_xla_context
from tfequivariant.layers._edge_filter import EdgeFilterLayer, check_positive_int, second_moment_constant
from tfequivariant.layers._per_node import PerNodePlan, last_layer_weights, per_node_convolution
from tfequivariant.layers._so2 import SO2Plan, edge_frame, so2_products
from tfequivariant.layers._receiver_blocks import (
    degree_order,
    dropped_edges,
    edge_chunks,
    looped_sum,
    map_blocks_by_degree,
    num_slots,
    pad_to_blocks,
    receiver_layout,
    with_zero_row,
)
from tfequivariant.layers.self_interaction import SelfInteraction, parse_irreps
from tfequivariant.layers.tensor_product import (
    fully_connected_instructions,
    plan_instructions,
    radial_path_weights,
    tensor_product,
)

__all__ = ["PointConvolution", "second_moment_constant"]

_IMPLEMENTATIONS = ("per_node", "per_edge", "so2")


@keras.saving.register_keras_serializable(package="tfequivariant")
class PointConvolution(EdgeFilterLayer):
    """Tensor Field Network point convolution (Thomas, Smidt et al. 2018).

    For each receiver ``i``, with ``r_ij = x_j - x_i`` over the edges ``j -> i``:

    ``out_i = SI(f_i) + 1/sqrt(avg_num_neighbors) sum_j sum_paths
    c_p R_p(|r_ij|) C^{l_o}_{l_i l_f} (f_j^{l_i} (x) Y^{l_f}(r_ij / |r_ij|))``

    a fully connected (``uvw``) Clebsch–Gordan tensor product of the sender's
    features with the spherical harmonics of the edge, every path
    ``l_i x l_f -> l_o`` that the irreps allow, weighted per edge by a radial MLP
    on the radial basis (and ``edge_attr`` when the graph has it); ``SI`` is a
    self-interaction skip. ``c_p`` is e3nn's path normalization, so unit-variance
    inputs give outputs of order one.

    Three exact implementations:

    * ``"per_node"`` (default): the radial MLP's last layer is linear, so it is
      applied once per node after the neighbour sum instead of once per edge;
      no per-edge weight tensor is built (DESIGN.md section 5). Uses a padded
      ``[N, K]`` neighbour layout, ``K`` = ``max_neighbors`` or the largest
      in-degree.
    * ``"per_edge"``: per-edge weights ``[E, weight_numel]`` and a scatter-sum, as
      e3nn does; simpler, more memory.
    * ``"so2"``: per-edge weights, with each edge's product evaluated in a frame
      whose polar axis is the edge (the SO(2) reduction of eSCN): the harmonics
      of the edge are then ``Y_l0`` alone, so a path costs a constant
      ``[2l_i+1, 2l_o+1]`` matrix instead of a product with ``2l_f+1``
      harmonics, at the price of rotating the sender features into the frame
      and the messages out of it. Pays at higher degrees (BENCHMARKS.md). Edge
      directions come from ``positions`` (and ``edge_shifts``); ``edge_sh`` is
      not used.

    Args:
        irreps_in: irreps of the node features.
        irreps_out: irreps of the output, kept in the given order; a block that no
            path can produce raises ``ValueError``.
        irreps_sh: harmonics of the filter: int lmax or irreps (default 2, i.e.
            ``"1x0e+1x1o+1x2e"``).
        num_radial_basis: radial basis size (default 16).
        cutoff: radial cutoff (default 5.0).
        radial_basis: ``"gaussian"`` (default) or ``"bessel"``.
        radial_hidden: hidden sizes of the radial MLP (default ``(64,)``).
        radial_activation: its activation (default ``"silu"``).
        avg_num_neighbors: the neighbour sum is divided by its square root
            (default 1.0; set it to the mean in-degree of your graphs).
        self_interaction: add ``SelfInteraction(irreps_in, irreps_out)(f_i)``
            (default True).
        max_neighbors: static ``K`` of the per-node layout (needed under XLA;
            every node must receive at most ``K`` unmasked edges: more raises
            ``InvalidArgumentError`` eagerly, in ``tf.function`` and in a
            SavedModel; XLA runs no assertions, so there the layout leaves the
            extra edges out and the layer adds their messages computed per edge, in a
            loop over them that runs zero times when every node fits: exact, gradients
            of any order included, but slow for many such edges, so check graphs with
            ``validate_graph(graph, max_neighbors=K)``). Default None: the
            largest in-degree, computed at run time.
        implementation: ``"per_node"`` (default), ``"per_edge"`` or ``"so2"``.
        node_chunk: ``"per_node"`` only: process the receivers in blocks of this many
            nodes, one block after another (``tf.map_fn``), each gathering its own rows, and
            recompute each block's products in the backward pass instead of keeping them.
            Memory then grows with ``node_chunk * K`` instead of ``N * K``: what lets
            graphs of 100k nodes (3.2M edges) train on 24 GB. Under XLA, small blocks
            (8-16 nodes) are also faster, since one block's products stay in cache
            (BENCHMARKS.md, session 7). The receivers are sorted by in-degree and each
            block runs on only as many neighbour slots as its largest in-degree, rounded
            up to a quarter of ``K`` (four compiled sizes): on a uniform graph, whose ``K``
            is about 1.6x the mean degree, that is ~10 % off the blocked forward and
            forward+backward, for ~3x the XLA compile time (BENCHMARKS.md, session 11).
            Same numbers as without blocks; a graph of at most ``node_chunk`` nodes
            (known statically) takes the unblocked path.
            Gradients of gradients (e.g. forces in the loss) are not supported through
            blocks: leave it None (default) for those.
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        features: ``[N, irreps_in.dim]``.
        graph: dict with ``positions``, ``senders``, ``receivers``, optionally
            ``edge_mask`` (0 removes an edge exactly), ``edge_shifts``,
            ``edge_attr`` and the ``edge_sh`` / ``edge_radial`` of ``EdgeGeometry``
            (component-normalized harmonics ``0..lmax`` covering ``irreps_sh``).

    Returns:
        ``[N, irreps_out.dim]``.

    Example:
        >>> conv = PointConvolution("4x0e+2x1o", "4x0e+2x1o", num_radial_basis=4, radial_hidden=(8,))
        >>> g = {"positions": keras.ops.ones((3, 3)), "senders": keras.ops.array([0, 1], "int32"),
        ...      "receivers": keras.ops.array([1, 2], "int32")}
        >>> tuple(conv(keras.ops.ones((3, 10)), g).shape)
        (3, 10)

    References:
        Thomas, Smidt, Kearnes, Yang, Li, Kohlhoff, Riley, "Tensor field networks:
        rotation- and translation-equivariant neural networks for 3D point
        clouds", 2018.
    """

    def __init__(
        self,
        irreps_in,
        irreps_out,
        irreps_sh=2,
        num_radial_basis=16,
        cutoff=5.0,
        radial_basis="gaussian",
        radial_hidden=(64,),
        radial_activation="silu",
        avg_num_neighbors=1.0,
        self_interaction=True,
        max_neighbors=None,
        implementation="per_node",
        node_chunk=None,
        **kwargs,
    ):
        super().__init__(
            irreps_sh=irreps_sh,
            num_radial_basis=num_radial_basis,
            cutoff=cutoff,
            radial_basis=radial_basis,
            radial_hidden=radial_hidden,
            radial_activation=radial_activation,
            **kwargs,
        )
        self.irreps_in = parse_irreps(irreps_in, "irreps_in")
        self.irreps_out = parse_irreps(irreps_out, "irreps_out")
        try:
            avg_num_neighbors = float(avg_num_neighbors)
        except (TypeError, ValueError):
            avg_num_neighbors = -1.0
        if not avg_num_neighbors > 0:
            raise ValueError(f"avg_num_neighbors must be > 0. Received: avg_num_neighbors={avg_num_neighbors!r}")
        self.avg_num_neighbors = avg_num_neighbors
        self.self_interaction = bool(self_interaction)
        self.max_neighbors = None if max_neighbors is None else check_positive_int(max_neighbors, "max_neighbors")
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {_IMPLEMENTATIONS}. Received: implementation={implementation!r}"
            )
        self.implementation = implementation
        self.node_chunk = None if node_chunk is None else check_positive_int(node_chunk, "node_chunk")
        if self.node_chunk is not None and implementation != "per_node":
            raise ValueError(
                "node_chunk applies to implementation='per_node' only. "
                f"Received: node_chunk={node_chunk!r}, implementation={implementation!r}"
            )
        instructions = fully_connected_instructions(self.irreps_in, self.irreps_sh, self.irreps_out)
        reached = {ins[2] for ins in instructions}
        missing = [str(self.irreps_out[i]) for i in range(len(self.irreps_out)) if i not in reached]
        if missing:
            raise ValueError(
                f"irreps_out contains {', '.join(missing)}, which no path irreps_in x irreps_sh "
                f"({self.irreps_in} x {self.irreps_sh}) can produce. Received: irreps_out={str(self.irreps_out)!r}"
            )
        self.instructions = plan_instructions(self.irreps_in, self.irreps_sh, self.irreps_out, instructions)
        self.weight_numel = sum(int(np.prod(i.path_shape)) for i in self.instructions)
        self._plan = PerNodePlan(self.irreps_in, self.irreps_sh, self.irreps_out, self.instructions)
        self._so2_plan = (SO2Plan(self.irreps_in, self.irreps_sh, self.irreps_out, self.instructions)
                          if implementation == "so2" else None)
        self.skip = (
            SelfInteraction(self.irreps_in, self.irreps_out, dtype=self.dtype_policy, name="self_interaction")
            if self.self_interaction
            else None
        )

    def build(self, features_shape, graph_shape):
        self._check_inputs(features_shape, graph_shape, self.irreps_in)
        self._build_filter(graph_shape, self.weight_numel)
        if self.skip is not None:
            self.skip.build(features_shape)

    def _per_node(self, features, graph, sh, h):
        import tensorflow as tf

        self.irreps_in._check_features(features, "features")
        n = tfe_ops.num_nodes(graph["positions"])
        slots, sender_slots = receiver_layout(graph, n, self.max_neighbors, "PointConvolution")  # [N, K]
        num_edges = tf.shape(sh)[0]
        features, sh, h = with_zero_row(features), with_zero_row(sh), with_zero_row(h)

        def dropped(layout):  # XLA only: the edges an over-full neighbour list left out
            if self.max_neighbors is None or not in_xla_context():
                return 0.0
            return self._dropped_edge_messages(features, sh, h, graph, layout)

        weights = last_layer_weights(self._plan, self.radial_output, self.compute_dtype)

        def neighbour_last(rows, index):  # [M, K] indices -> [M, D, K] padded rows
            return tf.transpose(tfe_ops.gather(rows, index), (0, 2, 1))

        chunk = self.node_chunk
        if chunk is None or (slots.shape[0] is not None and slots.shape[0] <= chunk):
            out = per_node_convolution(
                self._plan, neighbour_last(features, sender_slots), neighbour_last(sh, slots),
                tfe_ops.gather(h, slots), weights,
            )
            return out + dropped(slots)
        # node blocks of `chunk` receivers, one after the other; the backward pass recomputes
        # each block's products instead of keeping them, so memory is O(chunk * K), and blocks
        # of 8-16 receivers keep each block's products in cache (BENCHMARKS.md, session 7).
        # Each block gathers its own rows (map_blocks_by_degree's tables), so the padded [N, K, D]
        # copies of the whole graph are not kept; the backward pass adds each block's row
        # gradients into the rows' (in the loop under XLA, else by one segment sum after it).
        # Receivers sorted by in-degree, so that a block of similar degrees runs on the slots it
        # needs (rounded up to a quarter of K) instead of all K: on the benchmark's uniform graph
        # (K = 51, mean degree 32) the empty slots are 37 % of the blocks' work otherwise.
        correction = dropped(slots)
        slots, sender_slots = pad_to_blocks(n, num_edges, chunk, slots, sender_slots)
        order, inverse, block_slots = degree_order(slots, num_edges, chunk)
        slots, sender_slots = tfe_ops.gather(slots, order), tfe_ops.gather(sender_slots, order)
        k = num_slots(slots)
        out = map_blocks_by_degree(
            lambda x, y, hh, *w: per_node_convolution(
                self._plan, tf.transpose(x, (0, 2, 1)), tf.transpose(y, (0, 2, 1)), hh, w),
            (sender_slots, slots, slots), (1, 1, 1), weights, chunk, self.irreps_out.dim, self.compute_dtype,
            block_slots, k, tables=(features, sh, h),
        )
        return tfe_ops.gather(out, inverse)[:n] + correction

    def _dropped_edge_messages(self, features, sh, h, graph, slots):
        """The summed messages of the edges that ``slots`` dropped, ``[N, irreps_out.dim]``
        (``features``, ``sh``, ``h``: the rows with ``with_zero_row``'s zero row).

        Under XLA the neighbour layout cannot raise for a node with more unmasked edges than
        ``max_neighbors``: its extra edges get no slot. They are not lost: this adds their
        messages, computed per edge (as ``implementation="per_edge"``) in a loop over chunks
        of ``EDGE_CHUNK`` dropped edges that runs zero times when every node fits, which
        is then the only cost (a scatter and a cumulative sum over the edges, and in the
        backward pass zero gradients of the edge rows). ``looped_sum`` gives the loop its own
        gradients, of any order, each a loop over the same chunks, so nothing per edge is kept.
        """
        import tensorflow as tf

        n = tfe_ops.num_nodes(graph["positions"])
        num_edges = tf.shape(sh)[0] - 1
        ids, count = dropped_edges(slots, num_edges, graph.get("edge_mask"))
        chunk, trips, max_trips = edge_chunks(ids, count, graph, n, num_edges)
        instructions, dtype = self.instructions, self.compute_dtype
        zeros = tf.zeros(tf.stack([n + 1, self.irreps_out.dim]), dtype)

        def step(i, x_all, y_all, h_all, w):  # one chunk's messages, summed into their receivers [N + 1, out]
            e, s, r = chunk(i)
            msg = tensor_product(self.irreps_in.split(tf.gather(x_all, s)), self.irreps_sh.split(tf.gather(y_all, e)),
                                 radial_path_weights(tf.gather(h_all, e), w, instructions), instructions,
                                 self.irreps_out, (-1,), dtype, shared=False)
            return [tf.tensor_scatter_nd_add(zeros, r[:, None], msg)]

        (out,) = looped_sum(step, [features, sh, h, tf.cast(self.radial_output, dtype)], [zeros], trips, max_trips)
        return out[:-1]

    def _per_edge(self, features, graph, sh, h):
        ops = keras.ops
        n = tfe_ops.num_nodes(graph["positions"])
        x_send = tfe_ops.gather(features, graph["senders"])
        weights = radial_path_weights(h, ops.cast(self.radial_output, self.compute_dtype), self.instructions)
        messages = tensor_product(
            self.irreps_in.split(x_send),
            self.irreps_sh.split(sh),
            weights,
            self.instructions,
            self.irreps_out,
            (-1,),
            self.compute_dtype,
            shared=False,
        )
        return tfe_ops.segment_sum(messages, graph["receivers"], n)

    def _so2(self, features, graph, vec, h):
        self.irreps_in._check_features(features, "features")
        plan = self._so2_plan
        frame = edge_frame(vec, plan.lmax, self.compute_dtype)
        messages = so2_products(plan, tfe_ops.gather(features, graph["senders"]), frame, h, self.radial_output)
        return tfe_ops.segment_sum(messages, graph["receivers"], tfe_ops.num_nodes(graph["positions"]))

    def call(self, features, graph):
        ops = keras.ops
        features = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        so2 = self.implementation == "so2"
        geometry, radial, mask = self._edge_inputs(graph, vectors=so2)  # so2: edge vectors, else harmonics
        h = self._radial_hidden(radial, mask)
        if so2:
            out = self._so2(features, graph, geometry, h)
        elif self.implementation == "per_node":
            out = self._per_node(features, graph, geometry, h)
        else:
            out = self._per_edge(features, graph, geometry, h)
        out = out / math.sqrt(self.avg_num_neighbors)
        if self.skip is not None:
            out = out + self.skip(features)
        return out

    def compute_output_shape(self, features_shape, graph_shape):
        return tuple(features_shape[:-1]) + (self.irreps_out.dim,)

    def get_config(self):
        return {
            **super().get_config(),
            "irreps_in": str(self.irreps_in),
            "irreps_out": str(self.irreps_out),
            **self._filter_config(),
            "avg_num_neighbors": self.avg_num_neighbors,
            "self_interaction": self.self_interaction,
            "max_neighbors": self.max_neighbors,
            "implementation": self.implementation,
            "node_chunk": self.node_chunk,
        }
