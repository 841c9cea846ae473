"""The SE(3)-Transformer attention layer."""

import math

import keras
import numpy as np

from tfequivariant import ops as tfe_ops
from tfequivariant._xla import in_xla_context
from tfequivariant.irreps import Irreps
from tfequivariant.layers._edge_filter import EdgeFilterLayer, check_positive_int
from tfequivariant.layers._receiver_blocks import (
    compact_edges,
    degree_order,
    edge_chunks,
    looped_sum,
    map_blocks,
    map_blocks_by_degree,
    num_slots,
    pad_to_blocks,
    receiver_layout,
    with_zero_row,
)
from tfequivariant.layers._so2 import SO2Plan, edge_frame, so2_products
from tfequivariant.layers.self_interaction import SelfInteraction, parse_irreps
from tfequivariant.layers.tensor_product import (
    fully_connected_instructions,
    plan_instructions,
    radial_path_weights,
    tensor_product,
)

__all__ = ["SE3Attention", "segment_softmax"]


def segment_softmax(logits, segment_ids, num_segments, mask=None):
    """Softmax of ``logits [E, H]`` over the edges of each segment (receiver).

    Masked edges (``mask == 0``) get exactly zero weight and do not shift the
    maximum; a segment with no (unmasked) edge has no weights at all, never
    NaN. Uses only unsorted segment max/sum (XLA- and TFLite-friendly).
    """
    ops = keras.ops
    if mask is not None:
        keep = ops.greater(ops.cast(mask, logits.dtype), 0)[:, None]
        lowest = ops.full_like(logits, float(np.finfo(keras.backend.standardize_dtype(logits.dtype)).min))
        logits = ops.where(keep, logits, lowest)
    top = tfe_ops.segment_max(logits, segment_ids, num_segments)
    top = ops.stop_gradient(tfe_ops.gather(top, segment_ids))
    e = ops.exp(logits - top)
    if mask is not None:
        e = ops.where(keep, e, ops.zeros_like(e))
    denom = tfe_ops.gather(tfe_ops.segment_sum(e, segment_ids, num_segments), segment_ids)
    # denom >= 1 for every kept edge (its own term is exp(0) at the maximum)
    return e / ops.where(ops.greater(denom, 0), denom, ops.ones_like(denom))


def _split_heads(block, num_heads):
    """``[E, mul, d]`` -> ``[E, heads, mul / heads, d]``."""
    mul, d = block.shape[-2], block.shape[-1]
    return keras.ops.reshape(block, (-1, num_heads, mul // num_heads, d))


@keras.saving.register_keras_serializable(package="tfequivariant")
class SE3Attention(EdgeFilterLayer):
    """SE(3)-Transformer attention (Fuchs, Worrall, Fischer, Welling 2020).

    For each receiver ``i`` and edge ``j -> i`` with ``r_ij = x_j - x_i``:

    * query ``q_i = W_Q f_i``, an equivariant linear map to ``irreps_key``;
    * key and value ``k_ij (+) v_ij = W_KV(r_ij) f_j``, one fused TFN
      convolution (the Clebsch–Gordan tensor product of ``f_j`` with the edge
      harmonics, weighted per edge by a radial MLP on the radial basis and
      ``edge_attr``) to ``irreps_key + irreps_out``, not summed;
    * per head ``h``, ``alpha_ij = softmax_{j in N(i)}(q_i^h . k_ij^h / sqrt(d_h))``,
      ``d_h = irreps_key.dim / num_heads`` (the inner products are invariant, so
      the weights are too);
    * ``out_i = W_V f_i + sum_j alpha_ij^h v_ij^h``, ``W_V`` a self-interaction.

    Heads split every key and value block's multiplicity evenly. Masked edges
    are exactly equivalent to removed edges; a node without neighbours gets
    only its self-interaction term.

    Args:
        irreps_in: irreps of the node features.
        irreps_out: irreps of the values and the output (given order kept).
        irreps_key: irreps of queries and keys; default ``irreps_in`` restricted
            to the blocks the key convolution can produce.
        num_heads: attention heads (default 1); must divide every multiplicity of
            ``irreps_key`` and ``irreps_out``.
        irreps_sh, num_radial_basis, cutoff, radial_basis, radial_hidden,
            radial_activation: the filters, as in ``PointConvolution``.
        self_interaction: add ``W_V f_i`` (default True).
        max_neighbors: static ``K`` of the receiver blocks (``node_chunk`` under XLA
            needs it; every node must receive at most ``K`` unmasked edges: as in
            ``PointConvolution``, more raises except under XLA, which runs no assertions:
            there the receiver blocks leave the extra edges out and the layer recomputes
            those receivers' attention over all their edges, in loops over those edges
            that run zero times when every receiver fits: exact, but slow for many such
            edges, so check graphs with ``validate_graph(graph, max_neighbors=K)``).
            Default None: the
            largest in-degree, computed at run time.
        node_chunk: process the receivers in blocks of this many nodes, one block after
            another (``tf.map_fn``), each over its padded incoming edges (receivers sorted
            by in-degree, a block on the first ``K``, ``3K/4``, ``K/2`` or ``K/4`` slots
            that hold its largest in-degree), recomputed in the backward pass. The softmax
            of a receiver lies within its block, so the numbers are those of the
            unblocked layer, but memory grows with ``node_chunk * K`` instead of the
            per-edge weights of the whole graph. Default None (no blocks). Gradients of
            gradients are not supported through blocks.
        edge_chunk: process the edges in chunks of this many, one after another, in two
            passes: the keys and logits of every chunk, the softmax over each receiver's
            edges, then the values of every chunk weighted by their softmax and summed into
            their receivers. Each chunk is recomputed in the backward pass (under XLA
            its node rows' gradients are added in place, so the backward pass stays linear
            in the edges), so the per-edge weights exist for one chunk at a time
            and memory grows with the edges (their harmonics, radial features, sender
            features and logits), not with the per-edge weights. No padding to a largest
            in-degree and no ``max_neighbors`` needed; the numbers are those of the
            unchunked layer. Default None. Not together with ``node_chunk``; no gradients
            of gradients.
        implementation: ``"per_edge"`` (default): the keys and values are Clebsch–Gordan
            products with the edge harmonics; ``"so2"``: the same products evaluated in a
            frame whose polar axis is the edge (``PointConvolution(implementation="so2")``),
            cheaper at higher degrees. Same function and weights; edge directions then come
            from ``positions`` (``edge_sh`` is not used).
        **kwargs: base ``Layer`` arguments.

    Call arguments:
        features: ``[N, irreps_in.dim]``.
        graph: dict with ``positions``, ``senders``, ``receivers`` and optionally
            ``edge_mask``, ``edge_shifts``, ``edge_attr``, ``edge_sh``,
            ``edge_radial`` (see ``PointConvolution``).

    Returns:
        ``[N, irreps_out.dim]``.

    Example:
        >>> att = SE3Attention("4x0e+2x1o", "4x0e+2x1o", num_heads=2, num_radial_basis=4,
        ...                    radial_hidden=(8,))
        >>> g = {"positions": keras.ops.ones((3, 3)), "senders": keras.ops.array([0, 1], "int32"),
        ...      "receivers": keras.ops.array([1, 2], "int32")}
        >>> tuple(att(keras.ops.ones((3, 10)), g).shape)
        (3, 10)

    References:
        Fuchs, Worrall, Fischer, Welling, "SE(3)-Transformers: 3D
        roto-translation equivariant attention networks", NeurIPS 2020.
    """

    def __init__(
        self,
        irreps_in,
        irreps_out,
        irreps_key=None,
        num_heads=1,
        irreps_sh=2,
        num_radial_basis=16,
        cutoff=5.0,
        radial_basis="gaussian",
        radial_hidden=(64,),
        radial_activation="silu",
        self_interaction=True,
        max_neighbors=None,
        node_chunk=None,
        edge_chunk=None,
        implementation="per_edge",
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
        self.irreps_out = parse_irreps(irreps_out, "irreps_out").remove_zero_multiplicities()
        self.num_heads = check_positive_int(num_heads, "num_heads")
        reachable = {ir for _, ir1 in self.irreps_in for _, ir2 in self.irreps_sh for ir in ir1 * ir2}
        if irreps_key is None:
            self.irreps_key = Irreps([(mul, ir) for mul, ir in self.irreps_in if mul > 0 and ir in reachable])
        else:
            self.irreps_key = parse_irreps(irreps_key, "irreps_key").remove_zero_multiplicities()
        if self.irreps_key.dim == 0:
            raise ValueError(
                f"irreps_key is empty: no block of irreps_in ({self.irreps_in}) can be produced by the key "
                f"convolution with irreps_sh {self.irreps_sh}. Received: irreps_key={irreps_key!r}"
            )
        for name, irreps in (("irreps_key", self.irreps_key), ("irreps_out", self.irreps_out)):
            bad = [f"{mul}x{ir}" for mul, ir in irreps if mul % self.num_heads]
            if bad:
                raise ValueError(
                    f"num_heads={self.num_heads} must divide every multiplicity of {name}; "
                    f"{', '.join(bad)} cannot be split evenly. Received: {name}={str(irreps)!r}"
                )
        self.irreps_kv = self.irreps_key + self.irreps_out
        instructions = fully_connected_instructions(self.irreps_in, self.irreps_sh, self.irreps_kv)
        reached = {ins[2] for ins in instructions}
        missing = [str(self.irreps_kv[i]) for i in range(len(self.irreps_kv)) if i not in reached]
        if missing:
            raise ValueError(
                f"irreps_key + irreps_out contains {', '.join(missing)}, which no path irreps_in x "
                f"irreps_sh ({self.irreps_in} x {self.irreps_sh}) can produce. Received: "
                f"irreps_key={str(self.irreps_key)!r}, irreps_out={str(self.irreps_out)!r}"
            )
        self.instructions = plan_instructions(self.irreps_in, self.irreps_sh, self.irreps_kv, instructions)
        self.weight_numel = sum(int(np.prod(i.path_shape)) for i in self.instructions)
        self.self_interaction = bool(self_interaction)
        self.max_neighbors = None if max_neighbors is None else check_positive_int(max_neighbors, "max_neighbors")
        self.node_chunk = None if node_chunk is None else check_positive_int(node_chunk, "node_chunk")
        self.edge_chunk = None if edge_chunk is None else check_positive_int(edge_chunk, "edge_chunk")
        if self.node_chunk is not None and self.edge_chunk is not None:
            raise ValueError(
                "Give node_chunk or edge_chunk, not both (they are two ways of bounding the memory). "
                f"Received: node_chunk={node_chunk!r}, edge_chunk={edge_chunk!r}"
            )
        # the key and value paths apart (edge_chunk: keys in a first pass, values in a second);
        # e3nn's path normalization is per output block, so the coefficients stay those of the fused plan
        n_key = len(self.irreps_key)
        self._key_instructions, self._value_instructions, self._key_columns, self._value_columns = [], [], [], []
        offset = 0
        for ins in self.instructions:
            size = int(np.prod(ins.path_shape))
            if ins.i_out < n_key:
                self._key_instructions.append(ins)
                self._key_columns.extend(range(offset, offset + size))
            else:
                self._value_instructions.append(ins._replace(i_out=ins.i_out - n_key))
                self._value_columns.extend(range(offset, offset + size))
            offset += size
        if implementation not in ("per_edge", "so2"):
            raise ValueError(
                f"implementation must be 'per_edge' or 'so2'. Received: implementation={implementation!r}"
            )
        self.implementation = implementation
        # the products per edge: keys and values fused, or apart (edge_chunk's two passes)
        self._products = {"kv": (self.instructions, self.irreps_kv),
                          "key": (self._key_instructions, self.irreps_key),
                          "value": (self._value_instructions, self.irreps_out)}
        self._so2_plans = None
        if implementation == "so2":
            self._so2_plans = {which: SO2Plan(self.irreps_in, self.irreps_sh, irreps, instructions)
                               for which, (instructions, irreps) in self._products.items()}
        self.query = SelfInteraction(
            self.irreps_in, self.irreps_key, use_bias=False, dtype=self.dtype_policy, name="query"
        )
        self.skip = (
            SelfInteraction(self.irreps_in, self.irreps_out, dtype=self.dtype_policy, name="self_interaction")
            if self.self_interaction
            else None
        )

    def build(self, features_shape, graph_shape):
        self._check_inputs(features_shape, graph_shape, self.irreps_in)
        self._build_filter(graph_shape, self.weight_numel)
        self.query.build(features_shape)
        if self.skip is not None:
            self.skip.build(features_shape)

    def _keys_values(self, features, graph, sh, h):
        x_send = tfe_ops.gather(features, graph["senders"])
        return self._edge_keys_values(x_send, sh, h, keras.ops.cast(self.radial_output, self.compute_dtype))

    def _edge_keys_values(self, x_send, sh, h, radial_output):
        """Keys and values of edges given their sender features ``[E, irreps_in.dim]``."""
        kv = self._edge_products(x_send, sh, h, radial_output, "kv")
        return kv[:, : self.irreps_key.dim], kv[:, self.irreps_key.dim :]

    def _edge_geometry(self, graph):
        """Harmonics (``per_edge``) or edge vectors (``so2``), radial features and mask per edge."""
        return self._edge_inputs(graph, vectors=self.implementation == "so2")

    def _edge_products(self, x_send, sh, h, radial_output, which, ordered=False):
        """The weighted tensor products per edge of ``which`` ("kv", "key" or "value";
        ``radial_output``: the columns of its paths).

        ``sh``: the edge harmonics, or with ``implementation="so2"`` the edge vectors;
        ``ordered``: ``radial_output``'s columns are in the SO(2) plan's order.
        """
        if self.implementation == "so2":
            plan = self._so2_plans[which]
            frame = edge_frame(sh, plan.lmax, self.compute_dtype)
            return so2_products(plan, x_send, frame, h, radial_output, ordered)
        instructions, irreps_out = self._products[which]
        weights = radial_path_weights(h, radial_output, instructions)
        return tensor_product(
            self.irreps_in.split(x_send),
            self.irreps_sh.split(sh),
            weights,
            instructions,
            irreps_out,
            (-1,),
            self.compute_dtype,
            shared=False,
        )

    def _key_value_weights(self):
        """The last radial layer's columns of the key paths and of the value paths (``so2``: in
        the SO(2) plans' column order, gathered once rather than in every chunk)."""
        import tensorflow as tf

        radial_output = tf.cast(self.radial_output, self.compute_dtype)
        key_columns, value_columns = np.asarray(self._key_columns), np.asarray(self._value_columns)
        if self.implementation == "so2":
            key_columns = key_columns[self._so2_plans["key"].column_order]
            value_columns = value_columns[self._so2_plans["value"].column_order]
        return tf.gather(radial_output, key_columns, axis=1), tf.gather(radial_output, value_columns, axis=1)

    def _over_full_receivers(self, features, sh, h, queries, graph, blocked):
        """``blocked [N, irreps_out.dim]`` with the rows of the receivers that have more unmasked
        edges than ``max_neighbors`` replaced by their exact attention (XLA only; ``features``,
        ``sh``, ``h``, ``queries``: the rows with ``with_zero_row``'s zero row).

        Under XLA the layout cannot raise and leaves such a receiver's extra edges out; its
        softmax needs all of them, so its output is recomputed over all its edges: the keys and
        logits of those edges, their softmax per receiver, then their weighted values, each a
        loop over chunks of them (``looped_sum``, each chunk recomputed in the backward pass)
        that runs zero times when every receiver fits, which is then the only cost.
        """
        import tensorflow as tf

        n = tfe_ops.num_nodes(graph["positions"])
        num_edges = tf.shape(sh)[0] - 1
        receivers = tf.cast(graph["receivers"], "int32")
        keep = tf.ones_like(receivers, dtype="bool")
        if graph.get("edge_mask") is not None:
            keep = tf.greater(graph["edge_mask"], 0)
        degree = tf.math.unsorted_segment_sum(tf.cast(keep, "int32"), receivers, n)
        over_full = degree > self.max_neighbors  # [N]
        selected = tf.logical_and(keep, tf.gather(over_full, receivers))
        ids, count = compact_edges(selected)
        chunk, trips, max_trips = edge_chunks(ids, count, graph, n, num_edges)
        key_w, value_w = self._key_value_weights()
        ordered, dtype = self.implementation == "so2", self.compute_dtype
        no_logits = tf.zeros(tf.stack([num_edges + 1, self.num_heads]), dtype)
        no_values = tf.zeros(tf.stack([n + 1, self.irreps_out.dim]), dtype)

        def logits_step(i, x, y, hh, q, w):  # [E + 1, heads], the chunk's rows filled
            e, s, r = chunk(i)
            keys = self._edge_products(tf.gather(x, s), tf.gather(y, e), tf.gather(hh, e), w, "key", ordered)
            return [tf.tensor_scatter_nd_add(no_logits, e[:, None], self._logits(tf.gather(q, r) * keys))]

        (logits,) = looped_sum(logits_step, [features, sh, h, queries, key_w], [no_logits], trips, max_trips)
        alpha = segment_softmax(logits[:num_edges], receivers, n, tf.cast(selected, dtype))

        def values_step(i, x, y, hh, a, w):  # [N + 1, out], the chunk's receivers' rows summed
            e, s, r = chunk(i)
            values = self._edge_products(tf.gather(x, s), tf.gather(y, e), tf.gather(hh, e), w, "value", ordered)
            return [tf.tensor_scatter_nd_add(no_values, r[:, None], self._weighted_values(tf.gather(a, e), values))]

        (exact,) = looped_sum(values_step, [features, sh, h, with_zero_row(alpha), value_w], [no_values], trips,
                              max_trips)
        return tf.where(over_full[:, None], exact[:-1], blocked)

    def _edge_chunked(self, features, graph, sh, h, mask):
        """The attention over chunks of ``edge_chunk`` edges (see ``edge_chunk``)."""
        import tensorflow as tf

        n = tfe_ops.num_nodes(graph["positions"])
        num_edges = tf.shape(sh)[0]
        chunk = self.edge_chunk
        pad = [[0, (num_edges + chunk - 1) // chunk * chunk - num_edges]]
        senders = tf.pad(tf.cast(graph["senders"], "int32"), pad, constant_values=n)
        receivers = tf.pad(tf.cast(graph["receivers"], "int32"), pad, constant_values=n)
        rows = lambda t: tf.pad(t, pad + [[0, 0]])
        sh, h = rows(sh), rows(h)
        # node rows are gathered inside the chunks (per-edge copies of the features and queries,
        # and of their gradients, would be most of the memory); empty slots gather the zero row
        nodes, queries = with_zero_row(features), with_zero_row(self.query(features))
        key_w, value_w = self._key_value_weights()
        ordered = self.implementation == "so2"

        def keys_rows(x, q, y, hh, w):  # a chunk's sender and receiver rows -> logits [C, heads]
            return self._logits(q * self._edge_products(x, y, hh, w, "key", ordered))

        def values_rows(x, y, hh, a, w):  # -> alpha-weighted values [C, irreps_out.dim]
            return self._weighted_values(a, self._edge_products(x, y, hh, w, "value", ordered))

        if in_xla_context():
            # Each chunk gathers its node rows from tables, and the backward pass adds the
            # chunk's row gradients into the tables' gradients in the loop carry, which XLA
            # updates in place. tf.recompute_grad's gradient of the gathered rows is a dense
            # [N, D] per chunk, N * E in all: at 10k nodes the forward+backward took 2x the
            # time per edge of 1k nodes. Elsewhere TensorFlow's kernels would copy the carry
            # per chunk, and stacking the row gradients costs [E, D] of memory (BENCHMARKS.md,
            # session 15), so there the chunks keep tf.recompute_grad (map_blocks).
            def chunked(fn, per_edge, tables, w, width):  # fn(*per-edge rows, w), table indices as rows
                ones = tf.ones(tf.shape(per_edge[0])[:1] // chunk, "int32")
                return map_blocks_by_degree(fn, per_edge, [None] * len(per_edge), [w], chunk, width,
                                            self.compute_dtype, ones, 1, num_tiers=1, tables=tables)
        else:
            def chunked(fn, per_edge, tables, w, width):
                def block(*args):  # per-edge inputs, then the tables present, then w
                    present = iter(args[len(per_edge):-1])
                    xs = [a if t is None else tf.gather(next(present), a) for a, t in zip(args, tables)]
                    return fn(*xs, args[-1])

                return map_blocks(block, per_edge, (*[t for t in tables if t is not None], w), chunk, width,
                                  self.compute_dtype)

        logits = chunked(keys_rows, (senders, receivers, sh, h), (nodes, queries, None, None), key_w,
                         self.num_heads)
        alpha = segment_softmax(logits[:num_edges], graph["receivers"], n, mask)
        weighted = chunked(values_rows, (senders, sh, h, rows(alpha)), (nodes, None, None, None), value_w,
                           self.irreps_out.dim)
        return tfe_ops.segment_sum(weighted[:num_edges], graph["receivers"], n)

    def attention_weights(self, features, graph):
        """``alpha [E, num_heads]`` and the values ``[E, irreps_out.dim]`` (for inspection)."""
        ops = keras.ops
        features = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        sh, radial, mask = self._edge_geometry(graph)
        h = self._radial_hidden(radial, mask)
        keys, values = self._keys_values(features, graph, sh, h)
        q = tfe_ops.gather(self.query(features), graph["receivers"])
        logits = self._logits(q * keys)
        n = tfe_ops.num_nodes(graph["positions"])
        alpha = segment_softmax(logits, graph["receivers"], n, mask)
        return alpha, values

    def _logits(self, query_times_keys):
        """``[M, irreps_key.dim]`` products of queries and keys -> ``[M, num_heads]`` logits."""
        logits = None
        for block in self.irreps_key.split(query_times_keys):
            term = keras.ops.sum(_split_heads(block, self.num_heads), axis=(2, 3))
            logits = term if logits is None else logits + term
        return logits / math.sqrt(self.irreps_key.dim / self.num_heads)

    def _weighted_values(self, alpha, values):
        """``sum`` ready rows: ``alpha [M, heads] * values [M, irreps_out.dim]`` per head."""
        ops = keras.ops
        weighted = []
        for (mul, ir), block in zip(self.irreps_out, self.irreps_out.split(values)):
            heads = _split_heads(block, self.num_heads) * alpha[:, :, None, None]
            weighted.append(ops.reshape(heads, (-1, mul * ir.dim)))
        return ops.concatenate(weighted, axis=-1) if len(weighted) > 1 else weighted[0]

    def _blocked(self, features, graph, sh, h):
        """The attention over blocks of ``node_chunk`` receivers (see ``node_chunk``).

        As in ``PointConvolution``: receivers sorted by in-degree, each block on the slots
        its degree tier needs (``map_blocks_by_degree``) instead of all ``K``.
        """
        import tensorflow as tf

        n = tfe_ops.num_nodes(graph["positions"])
        slots, sender_slots = receiver_layout(graph, n, self.max_neighbors, "SE3Attention")  # [N, K]
        k = num_slots(slots)
        num_edges = tf.shape(sh)[0]
        chunk = self.node_chunk
        queries = self.query(features)
        slots, sender_slots, query = pad_to_blocks(n, num_edges, chunk, slots, sender_slots, queries)
        order, inverse, block_slots = degree_order(slots, num_edges, chunk)
        slots, sender_slots, query = (tfe_ops.gather(t, order) for t in (slots, sender_slots, query))
        features, sh, h = with_zero_row(features), with_zero_row(sh), with_zero_row(h)
        occupied = tf.cast(tf.less(slots, num_edges), self.compute_dtype)  # [N_pad, K]

        def block(x, y, hh, q, mask, w):  # [C, T, D] first T slots of C receivers -> [C, out]
            t = num_slots(x)
            flat = lambda a: tf.reshape(a, tf.concat([[-1], tf.shape(a)[2:]], axis=0))
            keys, values = self._edge_keys_values(flat(x), flat(y), flat(hh), w)
            q_edges = tf.reshape(tf.repeat(q[:, None, :], t, axis=1), (-1, self.irreps_key.dim))
            logits = tf.reshape(self._logits(q_edges * keys), (chunk, t, self.num_heads))
            # the masked softmax of segment_softmax, per row of slots
            keep = tf.greater(mask, 0)[:, :, None]
            lowest = tf.fill(tf.shape(logits), tf.constant(np.finfo(self.compute_dtype).min, logits.dtype))
            logits = tf.where(keep, logits, lowest)
            e = tf.exp(logits - tf.stop_gradient(tf.reduce_max(logits, axis=1, keepdims=True)))
            e = tf.where(keep, e, tf.zeros_like(e))
            denom = tf.reduce_sum(e, axis=1, keepdims=True)
            alpha = e / tf.where(tf.greater(denom, 0), denom, tf.ones_like(denom))
            weighted = self._weighted_values(tf.reshape(alpha, (-1, self.num_heads)), values)
            return tf.reduce_sum(tf.reshape(weighted, (chunk, t, self.irreps_out.dim)), axis=1)

        out = map_blocks_by_degree(
            block, (sender_slots, slots, slots, query, occupied), (1, 1, 1, None, 1),
            (tf.cast(self.radial_output, self.compute_dtype),), chunk, self.irreps_out.dim, self.compute_dtype,
            block_slots, k, tables=(features, sh, h, None, None),
        )
        out = tfe_ops.gather(out, inverse)[:n]
        if self.max_neighbors is not None and in_xla_context():
            out = self._over_full_receivers(features, sh, h, with_zero_row(queries), graph, out)
        return out

    def call(self, features, graph):
        ops = keras.ops
        features = ops.convert_to_tensor(features, dtype=self.compute_dtype)
        if self.edge_chunk is not None:
            self.irreps_in._check_features(features, "features")
            sh, radial, mask = self._edge_geometry(graph)
            out = self._edge_chunked(features, graph, sh, self._radial_hidden(radial, mask), mask)
        elif self.node_chunk is not None:
            self.irreps_in._check_features(features, "features")
            sh, radial, mask = self._edge_geometry(graph)
            out = self._blocked(features, graph, sh, self._radial_hidden(radial, mask))
        else:
            alpha, values = self.attention_weights(features, graph)
            weighted = self._weighted_values(alpha, values)
            out = tfe_ops.segment_sum(weighted, graph["receivers"], tfe_ops.num_nodes(graph["positions"]))
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
            "irreps_key": str(self.irreps_key),
            "num_heads": self.num_heads,
            **self._filter_config(),
            "self_interaction": self.self_interaction,
            "max_neighbors": self.max_neighbors,
            "node_chunk": self.node_chunk,
            "edge_chunk": self.edge_chunk,
            "implementation": self.implementation,
        }
