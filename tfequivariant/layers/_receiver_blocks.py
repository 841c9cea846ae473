"""Receivers with their padded incoming edges, whole or in blocks (``node_chunk``).

Shared by ``PointConvolution``'s per-node form and ``SE3Attention``'s receiver
blocks: the ``[N, K]`` slot layout with its sender indices, the zero row that
empty slots gather, the padding of the node count to whole blocks, and the
loop over blocks that recomputes each block in the backward pass.
"""

from tfequivariant import ops as tfe_ops
from tfequivariant._xla import in_xla_context

__all__ = ["receiver_layout", "with_zero_row", "pad_to_blocks", "map_blocks", "degree_order", "map_blocks_by_degree",
           "num_slots", "dropped_edges", "compact_edges", "edge_chunks", "looped_sum"]

# Edges per step of the loops over the edges an over-full neighbour list dropped (XLA only).
EDGE_CHUNK = 256


def receiver_layout(graph, num_nodes, max_neighbors, where="receiver_layout"):
    """``slots [N, K]`` (edge indices; empty -> ``E``) and ``sender_slots [N, K]`` (empty -> ``N``).

    Gathering edge rows (nodes rows) padded by ``with_zero_row`` with these gives
    zeros in the empty slots; edges with ``edge_mask == 0`` take no slot.

    With a static ``max_neighbors`` a node receiving more (unmasked) edges raises
    ``InvalidArgumentError`` naming ``where`` and ``max_neighbors`` before the layout
    is built, eagerly, in ``tf.function`` and in a SavedModel. Under XLA the check
    does not run (XLA drops assertions) and the layout leaves the extra edges out
    (``dropped_edges`` lists them; ``PointConvolution`` adds their messages back and
    ``SE3Attention`` recomputes the receivers concerned over all their edges):
    ``graph.validate_graph(graph, max_neighbors=K)`` checks at the boundary.
    """
    import tensorflow as tf

    checks = []
    if max_neighbors is not None:
        receivers = tf.cast(graph["receivers"], "int32")
        taken = tf.ones_like(receivers)
        if graph.get("edge_mask") is not None:
            taken = tf.cast(tf.greater(graph["edge_mask"], 0), "int32")
        degree = tf.math.unsorted_segment_sum(taken, receivers, num_nodes)
        checks.append(tf.debugging.assert_less_equal(
            tf.reduce_max(tf.concat([degree, [0]], axis=0)), tf.constant(int(max_neighbors), "int32"),
            message=(f"{where}: a node receives more edges than max_neighbors={int(max_neighbors)} (its in-degree "
                     "is x below). Raise max_neighbors, or cap the neighbour lists "
                     "(radius_graph(..., max_neighbors=K)); under XLA this check does not run and the layers "
                     "take the extra edges in a slow per-edge loop instead: check graphs with "
                     "validate_graph(graph, max_neighbors=K)"),
        ))
    with tf.control_dependencies(checks):  # before the scatter, whose own error names no argument
        slots = tfe_ops.receiver_slots(graph["receivers"], num_nodes, max_neighbors, graph.get("edge_mask"))
    senders = tf.concat([tf.cast(graph["senders"], "int32"), tf.reshape(tf.cast(num_nodes, "int32"), (1,))], axis=0)
    return slots, tfe_ops.gather(senders, slots)


def dropped_edges(slots, num_edges, edge_mask=None):
    """The unmasked edges that took no slot of ``slots`` (``receiver_layout`` with a static
    ``max_neighbors`` that some node's in-degree exceeds; XLA drops them from the layout).

    Returns:
        ``(ids, count)`` as ``compact_edges``.
    """
    import tensorflow as tf

    flat = tf.reshape(slots, (-1, 1))
    placed = tf.scatter_nd(flat, tf.ones_like(flat[:, 0]), tf.reshape(num_edges + 1, (1,)))[:num_edges] > 0
    dropped = tf.logical_not(placed)
    if edge_mask is not None:
        dropped = tf.logical_and(dropped, tf.greater(edge_mask, 0))
    return compact_edges(dropped)


def compact_edges(selected):
    """The indices of the ``True`` entries of ``selected [E]``, first, in order.

    Returns:
        ``(ids, count)``: ``ids [E]`` int32, the selected edges' indices in edge order, then
        ``E`` (one past the last edge) in the remaining entries; ``count`` their number.
        Static shapes only (a scatter and a cumulative sum over the edges), so XLA compiles it.
    """
    import tensorflow as tf

    num_edges = tf.shape(selected)[0]
    count = tf.reduce_sum(tf.cast(selected, "int32"))
    position = tf.where(selected, tf.cumsum(tf.cast(selected, "int32")) - 1, num_edges)  # the rest go to entry E
    ids = tf.tensor_scatter_nd_update(tf.fill(tf.reshape(num_edges + 1, (1,)), num_edges), position[:, None],
                                      tf.range(num_edges))
    return ids[:-1], count  # [:-1], not [:num_edges]: keeps a static length static


def edge_chunks(ids, count, graph, num_nodes, num_edges, size=EDGE_CHUNK):
    """The edges listed first in ``ids`` (``compact_edges``), ``size`` at a time, for ``looped_sum``.

    Returns:
        ``(chunk, trips, max_trips)``: ``chunk(i) -> (edges, senders, receivers)``, each
        ``[size]`` int32, of step ``i``, the entries past ``count`` pointing at the zero rows
        (edge ``E``, node ``N``) that ``with_zero_row`` appends; ``trips`` the number of steps
        (0 when ``count`` is 0); ``max_trips`` its static bound when ``ids``' length is static.
    """
    import tensorflow as tf

    static_edges = ids.shape[0]
    ids = tf.pad(ids, [[0, size]], constant_values=num_edges)  # a whole chunk from any start below count
    pad = tf.reshape(tf.cast(num_nodes, "int32"), (1,))
    senders = tf.concat([tf.cast(graph["senders"], "int32"), pad], axis=0)
    receivers = tf.concat([tf.cast(graph["receivers"], "int32"), pad], axis=0)

    def chunk(i):
        e = tf.slice(ids, tf.reshape(i * size, (1,)), [size])
        return e, tf.gather(senders, e), tf.gather(receivers, e)

    max_trips = None if static_edges is None else max(1, -(-static_edges // size))
    return chunk, (count + size - 1) // size, max_trips


def looped_sum(step, inputs, zeros, trips, max_trips=None):
    """``sum_{i < trips} step(i, *inputs)`` in a loop, with gradients of every order.

    Args:
        step: ``step(i, *inputs) -> list`` of tensors shaped like ``zeros``.
        inputs: float tensors (differentiated); other tensors ``step`` uses are captured.
        zeros: the initial sums.
        trips: number of steps, a scalar tensor (may be 0: the loop is then all the cost).
        max_trips: a static bound on ``trips`` (XLA), or None.

    The gradient is the same kind of loop over the steps' vector-Jacobian products, each
    step recomputed under a tape inside the loop body, so no intermediate of a step is kept
    across steps, and no gradient of a loop is left to TensorFlow (under XLA its while-loop
    gradient needs loop-invariant shapes and permutations as compile-time constants, which
    a second-order gradient does not give it).
    """
    import tensorflow as tf

    n_in = len(inputs)

    @tf.custom_gradient
    def summed(*xs):
        def body(i, *acc):
            return (i + 1, *[a + c for a, c in zip(acc, step(i, *xs))])

        out = tf.while_loop(lambda i, *_: i < trips, body, (tf.constant(0), *zeros), maximum_iterations=max_trips)[1:]

        def grad(*d_out):
            def vjp(i, *args):
                x, d = list(args[:n_in]), list(args[n_in:])
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    o = step(i, *x)
                g = tape.gradient(o, x, output_gradients=d, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return [tf.convert_to_tensor(v) for v in g]

            return looped_sum(vjp, list(xs) + list(d_out), [tf.zeros_like(x) for x in xs], trips, max_trips)

        return list(out), grad

    return summed(*inputs)


def num_slots(x):
    """The size of ``x``'s slot axis (1): a Python int when static (the degree tiers of
    ``map_blocks_by_degree`` are then static sizes, what XLA needs), else a scalar tensor."""
    import tensorflow as tf

    return x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]


def with_zero_row(rows):
    """``rows`` with one zero row appended (what empty slots gather)."""
    import tensorflow as tf

    # tf.pad, not a concat with a zero row: the gradient of a gather is IndexedSlices, which
    # concat's gradient splits with tf.where, and XLA's bounds analysis of that Where took
    # minutes at 10k nodes (pad's gradient makes the slices dense instead)
    return tf.pad(rows, [[0, 1], [0, 0]])


def pad_to_blocks(num_nodes, num_edges, chunk, slots, sender_slots, *node_rows):
    """Rows padded from ``num_nodes`` to a whole number of blocks of ``chunk`` receivers.

    The extra receivers have only empty slots (``num_edges`` and ``num_nodes``, as in
    ``receiver_layout``); extra rows of ``node_rows`` (per-receiver tensors) are zeros.
    """
    import tensorflow as tf

    num_blocks = (num_nodes + chunk - 1) // chunk
    pad = [[0, num_blocks * chunk - num_nodes], [0, 0]]
    return (tf.pad(slots, pad, constant_values=num_edges), tf.pad(sender_slots, pad, constant_values=num_nodes),
            *(tf.pad(rows, pad) for rows in node_rows))


def map_blocks(block, per_receiver, shared, chunk, width, dtype):
    """``block`` over blocks of ``chunk`` rows (receivers or edges), one after another,
    recomputed in the backward pass.

    Args:
        block: ``block(*per_receiver_block, *shared) -> [chunk, width]``.
        per_receiver: tensors whose leading dimension is a whole number of blocks.
        shared: tensors every block receives whole (weights, passed explicitly so
            that ``tf.recompute_grad`` differentiates them).
        chunk: rows per block.
        width: the static width of ``block``'s output (kept when there is no block).
        dtype: the output dtype.

    Returns:
        ``[num_blocks * chunk, width]``. Memory is that of one block (``tf.recompute_grad``),
        which also has no gradients of gradients.
    """
    import tensorflow as tf

    recomputed = tf.recompute_grad(block)
    out = tf.map_fn(lambda e: recomputed(*e, *shared), tuple(_blocks(rows, chunk) for rows in per_receiver),
                    fn_output_signature=tf.TensorSpec((chunk, width), dtype))
    return tf.reshape(out, (-1, width))


def degree_order(slots, num_edges, chunk):
    """Receivers sorted by in-degree (largest first) for ``map_blocks_by_degree``.

    Args:
        slots: ``[M, K]`` padded slots (``receiver_layout``, ``pad_to_blocks``); empty
            slots hold ``num_edges``.
        num_edges: ``E``.
        chunk: receivers per block (``M`` a whole number of blocks).

    Returns:
        ``(order, inverse, block_slots)``: ``order [M]`` the permutation of the receivers
        (gather rows with it to sort them), ``inverse [M]`` its inverse (gather the sorted
        results with it to put them back in the graph's order); ``block_slots [M / chunk]``
        the number of slots in use in each block of the sorted receivers (its first
        receiver's in-degree).
    """
    import tensorflow as tf

    degree = tf.reduce_sum(tf.cast(slots < num_edges, "int32"), axis=1)
    order = tf.argsort(degree, direction="DESCENDING", stable=True)
    # a scatter, not tf.math.invert_permutation: InvertPermutation is no TFLite builtin
    inverse = tf.scatter_nd(order[:, None], tf.range(tf.size(order)), tf.shape(order))
    return order, inverse, tf.reshape(tf.gather(degree, order), (-1, chunk))[:, 0]


def slot_tiers(max_slots, num_tiers=4):
    """Slot counts of the tiers, largest first: ``ceil(K j / num_tiers)``, ``j = num_tiers .. 1``
    (Python ints, duplicates dropped, when ``K`` is static; tensors otherwise)."""
    tiers = [(max_slots * j + num_tiers - 1) // num_tiers for j in range(num_tiers, 0, -1)]
    if isinstance(max_slots, int):
        tiers = sorted(set(tiers), reverse=True)
    return tiers


def map_blocks_by_degree(block, per_receiver, slot_axes, shared, chunk, width, dtype, block_slots, max_slots,
                         num_tiers=4, tables=None):
    """``map_blocks`` over receivers sorted by in-degree, each block using only the slots it needs.

    A block of receivers with at most ``d`` incoming edges runs ``block`` on the
    first ``T`` slots, ``T`` the smallest of ``slot_tiers(K)`` that is ``>= d``
    (nested ``tf.cond`` over a few static sizes, so that XLA compiles it): with
    the receivers sorted by degree (``degree_order``) the padding of a block is at
    most ``K / 4`` slots instead of ``K`` minus its degree. Same numbers as
    ``map_blocks`` (the dropped slots are empty), and the same memory: the
    backward pass recomputes each block under the same switch.

    Rows looked up through the slots (sender features, edge harmonics, radial
    features) are best passed as ``tables``: each block then gathers its own rows,
    so the padded ``[M, K, ...]`` copies of the whole graph never exist in the
    forward pass (at 100k nodes they were most of the memory). The backward pass
    adds each block's row gradients into the tables' gradients: under XLA in the
    loop carry, which XLA updates in place; elsewhere (TensorFlow's kernels would
    copy the carry in every block) stacked, padded back to ``K`` slots, and added
    with one segment sum after the loop.

    Args:
        block, shared, chunk, width, dtype: as ``map_blocks``.
        per_receiver: tensors with a leading whole number of blocks, most with a slot axis;
            float, except the indices of ``tables``.
        slot_axes: the slot axis of each ``per_receiver`` tensor (>= 1), or None for one
            without (per-receiver rows such as queries, passed whole to every tier).
        block_slots: ``[num_blocks]`` slots in use per block (``degree_order``).
        max_slots: ``K`` (int, or a scalar tensor when only known at run time).
        num_tiers: number of slot counts (``slot_tiers``).
        tables: None, or one entry per ``per_receiver`` tensor: None, or rows ``[R, ...]``;
            that ``per_receiver`` tensor then holds int32 row indices ``[M, K]`` (slot axis
            1; or ``[M]`` with slot axis None, as for chunks of edges) and ``block`` receives
            the rows they select, ``[chunk, T, ...]`` (``[chunk, ...]``). Slots past a
            block's tier are not read, so a row only they point at (the zero row of empty
            slots, which the layers drop) gets no gradient from them.

    Returns:
        ``[num_blocks * chunk, width]``. No gradients of gradients.
    """
    import tensorflow as tf

    tiers = slot_tiers(max_slots, num_tiers)
    tier_of_block = tf.reduce_sum(
        tf.cast(block_slots[:, None] <= tf.stack([tf.cast(t, "int32") for t in tiers])[None, :], "int32"), axis=1
    ) - 1
    n_args = len(per_receiver)
    tables = [None] * n_args if tables is None else list(tables)
    looked_up = [i for i, rows in enumerate(tables) if rows is not None]
    n_rows = len(looked_up)

    def inputs_of(args, rows, t):  # a block's inputs on tier t's slots, the table rows gathered
        xs = [_take_slots(x, axis, tiers[t]) for x, axis in zip(args, slot_axes)]
        for j, i in enumerate(looked_up):
            xs[i] = tf.gather(rows[j], xs[i])
        return xs

    @tf.custom_gradient
    def mapped(*inputs):
        args, rows, weights = list(inputs[:n_args]), list(inputs[n_args:n_args + n_rows]), list(inputs[n_args + n_rows:])

        def forward(e):
            block_args, tier = list(e[:-1]), e[-1]
            return _switch(tier, [(lambda t=t: block(*inputs_of(block_args, rows, t), *weights))
                                  for t in range(len(tiers))])

        blocks_in = tuple(_blocks(x, chunk) for x in args) + (tier_of_block,)
        out = tf.map_fn(forward, blocks_in, fn_output_signature=tf.TensorSpec((chunk, width), dtype))

        def grad(d_blocks):  # [num_blocks, chunk, width], as map_fn's output

            def block_grads(i):  # the block's input gradients (slots padded back to K) and weight gradients
                block_args = [x[i] for x in blocks_in[:-1]]

                def branch(t):
                    def g():
                        xs = inputs_of(block_args, rows, t)
                        with tf.GradientTape() as tape:
                            tape.watch(xs + weights)
                            o = block(*xs, *weights)
                        gs = tape.gradient(o, xs + weights, output_gradients=d_blocks[i],
                                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
                        gs = [tf.convert_to_tensor(v) for v in gs]
                        padded = [_pad_slots(v, axis, max_slots - tiers[t]) for v, axis in zip(gs[:n_args], slot_axes)]
                        return padded + gs[n_args:]
                    return g

                return _switch(blocks_in[-1][i], [branch(t) for t in range(len(tiers))])

            # under XLA each block's row gradients are added into the tables' gradients in the loop
            # carry (XLA updates it in place); TensorFlow's kernels would copy the whole carry per
            # block, so elsewhere they are stacked and summed once after the loop
            in_place = in_xla_context()

            def body(i, collected, sums):
                gs = block_grads(i)
                updated = []
                for n, (c, v) in enumerate(zip(collected, gs[:n_args])):
                    if in_place and n in looked_up:
                        v = tf.reshape(v, tf.concat([[-1], tf.shape(c)[1:]], axis=0))
                        updated.append(tf.tensor_scatter_nd_add(c, tf.reshape(blocks_in[n][i], (-1, 1)), v))
                    else:
                        updated.append(c.write(i, v))
                return i + 1, updated, [a + v for a, v in zip(sums, gs[n_args:])]

            num_blocks = tf.shape(tier_of_block)[0]
            k = max_slots if isinstance(max_slots, int) else None
            collected = []
            for i, x in enumerate(args):  # one block's gradient each: [chunk, K, row...] or [chunk, ...] like x
                if i in looked_up:
                    x = rows[looked_up.index(i)]
                    if in_place:
                        collected.append(tf.zeros_like(x))
                        continue
                    slots = [] if slot_axes[i] is None else [k]
                    shape = tf.TensorShape([chunk] + slots).concatenate(x.shape[1:])
                else:
                    shape = tf.TensorShape([chunk]).concatenate(x.shape[1:])
                collected.append(tf.TensorArray(x.dtype, size=num_blocks, element_shape=shape))
            sums = [tf.zeros_like(w) for w in weights]
            _, collected, sums = tf.while_loop(lambda i, *_: i < num_blocks, body, (tf.constant(0), collected, sums))
            arg_grads = [None] * n_args
            for i in range(n_args):
                if i not in looked_up:
                    arg_grads[i] = tf.reshape(collected[i].stack(), tf.shape(args[i]))
            row_grads = []
            for j, i in enumerate(looked_up):  # the gathered rows' gradients, added into their tables at once
                if in_place:
                    row_grads.append(collected[i])
                    continue
                g = collected[i].stack()  # [num_blocks, chunk, K, row...] ([num_blocks, chunk, row...] without slots)
                g = tf.reshape(g, tf.concat([[-1], tf.shape(rows[j])[1:]], axis=0))
                row_grads.append(tf.math.unsorted_segment_sum(g, tf.reshape(args[i], (-1,)), tf.shape(rows[j])[0]))
            return [None if g is None else _no_second_order(g) for g in arg_grads + row_grads + sums]

        return out, grad

    out = mapped(*per_receiver, *[tables[i] for i in looked_up], *shared)
    return tf.reshape(out, (-1, width))


def _blocks(rows, chunk):
    """``[num_blocks * chunk, ...] -> [num_blocks, chunk, ...]``."""
    import tensorflow as tf

    return tf.reshape(rows, tf.concat([[-1, chunk], tf.shape(rows)[1:]], axis=0))


def _switch(index, branches):
    """``branches[index]()`` as nested ``tf.cond``: If ops are TFLite builtins, Case is not."""
    import tensorflow as tf

    if len(branches) == 1:
        return branches[0]()
    return tf.cond(index <= 0, branches[0], lambda: _switch(index - 1, branches[1:]))


def _take_slots(x, axis, n):
    if axis is None:
        return x
    return x[(slice(None),) * axis + (slice(0, n),)]  # a strided slice keeps the other axes' static sizes


def _pad_slots(x, axis, n):
    import tensorflow as tf

    if axis is None:
        return x
    pad = [[0, 0]] * len(x.shape)
    pad[axis] = [0, n]
    return tf.pad(x, pad)


def _no_second_order(x):
    """``x`` unchanged, with a gradient that raises (blocks have no gradients of gradients)."""
    import tensorflow as tf

    @tf.custom_gradient
    def identity(v):
        def grad(_):
            raise NotImplementedError(
                "Gradients of gradients (e.g. forces in the loss) are not supported through node blocks "
                "(node_chunk): their backward pass recomputes each block. Use node_chunk=None for those."
            )
        return tf.identity(v), grad

    return identity(x)
