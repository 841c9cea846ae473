"""Training graph models under ``tf.distribute``: per-replica pipelines and a global loss.

A merged batch is one disjoint graph; a strategy that splits the rows of a
batch across replicas would cut graphs apart. So each replica builds,
merges and pads its own batch (DESIGN.md section 3), and the pieces here
make that the default:

* :func:`distributed_graph_dataset` wraps a function making a dataset of
  single graphs into ``strategy.distribute_datasets_from_function``: every
  input pipeline (one per worker) shards the graphs by
  ``input_context.input_pipeline_id``, merges
  ``input_context.get_per_replica_batch_size(global_batch_size)`` graphs per
  replica batch, pads them to fixed sizes or buckets (padding weighted 0) and
  splits them into ``model.fit``'s ``(inputs, targets, sample_weight)``.
  :func:`graph_dataset_fn` is the per-pipeline function itself.
* :class:`GlobalWeightedMean` is the loss reduction that makes a step on
  ``R`` replicas equal to the single-device step on the global batch.
* :func:`prepare_distributed_fit` works around two places where Keras 3's
  ``fit``/``evaluate`` fail under ``tf.distribute`` (every
  ``MultiWorkerMirroredStrategy`` run; ``MirroredStrategy`` with buckets).

**Why a loss of its own.** Keras sums the replicas' gradients. With
``reduction="mean_with_sample_weight"`` each replica returns
``sum_r(w l) / sum_r(w) / R``, so a step follows the *mean of the replicas'
means*. It equals the global mean ``sum(w l) / sum(w)`` only when every
replica holds the same total weight; with graphs of different sizes (or a
different number of real nodes per replica) the nodes of a replica with
fewer nodes weigh more, and the step differs from the single-device one.
Rescaling the weights inside one pipeline cannot help: that mean is
invariant to scaling, and a pipeline does not see the other replicas'
batches. :class:`GlobalWeightedMean` returns ``sum_r(w l) / W`` on replica
``r``, where ``W = sum(w)`` over all replicas is summed by one scalar
all-reduce in the forward pass (outside the gradient), and it skips Keras'
division by ``R``. Summed over replicas that is exactly the global weighted
mean, so gradients, and every optimizer step, match the single-device step on
the global batch up to float rounding. On one device it is
``mean_with_sample_weight``.

Usage, the same code on one device, several GPUs or several hosts::

    strategy = tf.distribute.MirroredStrategy()   # or MultiWorkerMirroredStrategy()
    train = distributed_graph_dataset(
        strategy, lambda ctx: my_single_graphs(), global_batch_size=64,
        target_key="node_targets", sizes=(512, 4096, 33),  # per replica (2 GPUs): 32 graphs + padding
        repeat=True)
    with strategy.scope():
        model = build_model()
        model.compile(optimizer="adam",
                      loss=GlobalWeightedMean(keras.losses.MeanSquaredError()))
    prepare_distributed_fit(model)
    model.fit(train, epochs=10, steps_per_epoch=num_graphs // 64)
"""

import collections.abc
import numbers

import keras
import tensorflow as tf

from tfequivariant import graph as tfe_graph

__all__ = ["GlobalWeightedMean", "distributed_graph_dataset", "graph_dataset_fn", "prepare_distributed_fit"]


def _check_int(name, value, minimum, where):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _padding_of(sizes, buckets, where):
    """Returns (pad function, largest num_graphs) for exactly one of sizes/buckets."""
    if (sizes is None) == (buckets is None):
        raise ValueError(
            f"{where}: give exactly one of sizes=(num_nodes, num_edges, num_graphs) (one fixed "
            f"padded size) or buckets (tfequivariant.graph.SizeBuckets, e.g. from buckets_for with "
            f"the per-replica batch size). Received: sizes={sizes!r}, buckets={buckets!r}"
        )
    if sizes is not None:
        if (
            isinstance(sizes, (str, bytes))
            or not isinstance(sizes, collections.abc.Sequence)
            or len(sizes) != 3
        ):
            raise ValueError(
                f"{where}: sizes must be (num_nodes, num_edges, num_graphs). Received: sizes={sizes!r}"
            )
        # SizeBuckets checks the three ints and their minimums.
        bucket = tfe_graph.SizeBuckets([sizes])[0]
        return (lambda g: tfe_graph.pad_to_sizes(g, *bucket)), bucket.num_graphs
    if not isinstance(buckets, tfe_graph.SizeBuckets):
        buckets = tfe_graph.SizeBuckets(buckets)
    return buckets.pad, max(b.num_graphs for b in buckets)


def graph_dataset_fn(
    make_dataset_fn,
    global_batch_size,
    target_key,
    sizes=None,
    buckets=None,
    weight_key=None,
    input_keys=None,
    shard=True,
    shuffle_buffer=None,
    seed=None,
    repeat=False,
    validate=True,
):
    """The per-input-pipeline function of :func:`distributed_graph_dataset`.

    ``dataset_fn(input_context)`` builds one worker's pipeline:

    1. ``make_dataset_fn(input_context)``: a ``tf.data.Dataset`` of single
       graphs (the input of :func:`tfequivariant.graph.batch_graphs`), in the
       same order on every worker;
    2. if its cardinality is known: the graphs after the last complete
       global batch (this worker's share of it with ``shard=False``) are
       dropped, so every worker gets the same number of steps;
    3. ``shard(num_input_pipelines, input_pipeline_id)`` (if ``shard``);
    4. optional ``shuffle`` (after sharding, so workers need no common seed)
       and ``repeat``;
    5. ``batch_graphs`` with the per-replica batch size
       ``input_context.get_per_replica_batch_size(global_batch_size)``,
       dropping an incomplete batch;
    6. padding to ``sizes`` or the smallest fitting bucket (one padding
       graph, padding edges masked, ``node_mask``/``edge_mask``/``graph_mask``
       0 on padding);
    7. whole groups of one batch per local replica (a worker's consecutive
       elements go to its replicas in turn; a step never sees a replica
       without data);
    8. ``to_keras_inputs(graph, target_key, weight_key, input_keys)``:
       ``(inputs, targets, sample_weight)`` with weight 0 on padding.

    Args:
        make_dataset_fn: callable ``(input_context) -> tf.data.Dataset`` of
            single-graph dicts. Called once per worker, inside the strategy's
            input device scope. Shuffle here only with the same seed on all
            workers (or use ``shuffle_buffer``); with ``shard=False`` shard
            here yourself (e.g. by files). With several workers give it a
            known length (``tf.data.experimental.assert_cardinality`` on a
            generator), so that all workers run the same number of steps.
        global_batch_size: graphs per step over all replicas, a multiple of
            the number of replicas.
        target_key: key of the targets (``node_*``, ``edge_*`` or ``graph_*``).
        sizes: ``(num_nodes, num_edges, num_graphs)`` every replica batch is
            padded to (``num_graphs >= per-replica batch + 1``,
            ``num_nodes >= its real nodes + 1``).
        buckets: instead of ``sizes``, a :class:`tfequivariant.graph.SizeBuckets`
            (or triples) chosen for the *per-replica* batch size.
        weight_key: optional per-item weights, as in ``to_keras_inputs``.
        input_keys: keys kept as model inputs (default: all but target and
            weight); a functional model with named inputs needs exactly its
            own (include ``edge_mask``: padding edges must be masked).
        shard: shard by ``input_pipeline_id`` when there are several input
            pipelines.
        shuffle_buffer: optional buffer size of a per-worker shuffle of the
            single graphs (reshuffled each epoch).
        seed: seed of that shuffle (offset by the pipeline id).
        repeat: repeat forever (then give ``fit`` a ``steps_per_epoch`` of
            ``number of graphs // global_batch_size``, and ``evaluate`` or
            ``fit`` a ``validation_steps``); see :func:`distributed_graph_dataset`
            for when to prefer it.
        validate: keep ``batch_graphs``' index checks.

    Returns:
        ``dataset_fn(input_context) -> tf.data.Dataset`` of per-replica
        ``(inputs, targets, sample_weight)``.

    Example:
        >>> graphs = [{"positions": np.full((n, 3), n, "float32"),
        ...            "senders": np.zeros(1, "int32"), "receivers": np.ones(1, "int32"),
        ...            "node_targets": np.ones((n, 1), "float32")} for n in (2, 3, 4, 5)]
        >>> fn = graph_dataset_fn(lambda ctx: tf.data.Dataset.from_generator(
        ...     lambda: iter(graphs), output_signature={
        ...         "positions": tf.TensorSpec([None, 3]), "senders": tf.TensorSpec([1], tf.int32),
        ...         "receivers": tf.TensorSpec([1], tf.int32),
        ...         "node_targets": tf.TensorSpec([None, 1])}),
        ...     global_batch_size=4, target_key="node_targets", sizes=(16, 4, 3),
        ...     input_keys=["positions", "senders", "receivers", "edge_mask"])
        >>> ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
        ...                                  num_replicas_in_sync=2)
        >>> [float(w.numpy().sum()) for _, _, w in fn(ctx)]  # worker 1: graphs 1 and 3, 3 + 5 nodes
        [8.0]
    """
    where = "graph_dataset_fn"
    if not callable(make_dataset_fn):
        raise ValueError(
            f"{where}: make_dataset_fn must be a callable (input_context) -> tf.data.Dataset of "
            f"single graphs. Received: {make_dataset_fn!r}"
        )
    global_batch_size = _check_int("global_batch_size", global_batch_size, 1, where)
    pad, max_graphs = _padding_of(sizes, buckets, where)
    if shuffle_buffer is not None:
        shuffle_buffer = _check_int("shuffle_buffer", shuffle_buffer, 1, where)
    if seed is not None:
        seed = _check_int("seed", seed, 0, where)
    for name, flag in (("shard", shard), ("repeat", repeat), ("validate", validate)):
        if not isinstance(flag, bool):
            raise ValueError(f"{where}: {name} must be a bool. Received: {name}={flag!r}")

    def dataset_fn(input_context):
        if input_context is None:
            input_context = tf.distribute.InputContext()
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        if per_replica + 1 > max_graphs:
            raise ValueError(
                f"{where}: a replica batch holds {per_replica} graphs plus one padding graph, but "
                f"the padded sizes allow num_graphs={max_graphs}. Use num_graphs >= "
                f"{per_replica + 1} (global_batch_size {global_batch_size} over "
                f"{input_context.num_replicas_in_sync} replicas)."
            )
        pipelines = input_context.num_input_pipelines
        local_replicas = max(1, input_context.num_replicas_in_sync // pipelines)
        dataset = make_dataset_fn(input_context)
        if not isinstance(dataset, tf.data.Dataset):
            raise ValueError(
                f"{where}: make_dataset_fn must return a tf.data.Dataset of single graphs. "
                f"Received: {type(dataset).__name__}"
            )
        count = tf.get_static_value(dataset.cardinality())
        if count is not None and count >= 0:
            # Equal shards: a worker left with an extra batch would meet the
            # others' end of data mid-step (empty dummy batches, or a hang).
            sharding_here = shard and pipelines > 1
            unit = global_batch_size if sharding_here else per_replica * local_replicas
            dataset = dataset.take(count // unit * unit)
        if shard and pipelines > 1:
            dataset = dataset.shard(pipelines, input_context.input_pipeline_id)
        if shuffle_buffer is not None:
            shuffle_seed = None if seed is None else seed + input_context.input_pipeline_id
            dataset = dataset.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
        dataset = tfe_graph.batch_graphs(dataset, per_replica, drop_remainder=True, validate=validate)
        dataset = dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE)
        spec = dataset.element_spec
        if local_replicas > 1:
            # Whole groups of one batch per local replica. ragged_batch takes
            # bucketed (differently shaped) batches; after unbatch, dims that
            # were unknown come back ragged and are made dense again below.
            dataset = dataset.ragged_batch(local_replicas, drop_remainder=True).unbatch()

        def to_inputs(g):
            g = {
                k: tf.ensure_shape(v.to_tensor() if isinstance(v, tf.RaggedTensor) else v, spec[k].shape)
                for k, v in g.items()
            }
            return tfe_graph.to_keras_inputs(g, target_key, weight_key=weight_key, input_keys=input_keys)

        dataset = dataset.map(to_inputs, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def distributed_graph_dataset(
    strategy,
    make_dataset_fn,
    global_batch_size,
    target_key,
    sizes=None,
    buckets=None,
    **kwargs,
):
    """Per-replica merged, padded graph batches for ``model.fit`` under a strategy.

    Calls ``strategy.distribute_datasets_from_function`` with
    :func:`graph_dataset_fn`: each worker shards the single graphs by its
    input pipeline id and each replica gets its own merged batch of
    ``global_batch_size / num_replicas`` graphs, padded to ``sizes`` or to a
    bucket, padding weighted 0. No graph is ever split between replicas.
    Compile the model with :class:`GlobalWeightedMean` so that the step equals
    the single-device step on the global batch.

    Epochs: with one replica per worker (one device, or
    ``MultiWorkerMirroredStrategy`` with one device per worker) a finite
    dataset tells Keras the right number of steps. With several replicas per
    worker (``MirroredStrategy``), TensorFlow reports the per-worker number of
    *replica* batches as the cardinality, so Keras expects that many times
    too many steps: every epoch still sees each graph once, but the progress
    bar over-counts and Keras warns "Your input ran out of data" at each
    epoch's end. Pass ``repeat=True`` and
    ``fit(..., steps_per_epoch=num_graphs // global_batch_size)`` (and
    ``validation_steps``) there. Also call :func:`prepare_distributed_fit`
    on the model.

    Args:
        strategy: a ``tf.distribute.Strategy``; ``None`` means the current
            one (``tf.distribute.get_strategy()``, the default strategy
            outside any scope: then the result is the per-replica pipeline
            itself, a plain ``tf.data.Dataset``).
        make_dataset_fn: callable ``(input_context) -> tf.data.Dataset`` of
            single graphs, the same sequence on every worker.
        global_batch_size: graphs per step over all replicas.
        target_key: key of the targets.
        sizes: fixed padded ``(num_nodes, num_edges, num_graphs)`` per replica.
        buckets: or padding buckets for the per-replica batch size.
        **kwargs: ``weight_key``, ``input_keys``, ``shard``, ``shuffle_buffer``,
            ``seed``, ``repeat``, ``validate`` of :func:`graph_dataset_fn`.

    Returns:
        What ``model.fit``/``evaluate`` accept: a ``DistributedDataset`` of
        ``(inputs, targets, sample_weight)`` (a ``tf.data.Dataset`` under the
        default strategy).

    Example:
        >>> strategy = tf.distribute.get_strategy()  # one device; same call under any strategy
        >>> def single_graphs(ctx):
        ...     g = {"positions": np.zeros((3, 3), "float32"), "senders": np.array([0, 1], "int32"),
        ...          "receivers": np.array([1, 2], "int32"), "node_y": np.ones((3, 1), "float32")}
        ...     return tf.data.Dataset.from_tensors(g).repeat(4)
        >>> ds = distributed_graph_dataset(strategy, single_graphs, 2, "node_y", sizes=(8, 4, 3))
        >>> inputs, y, w = next(iter(ds))
        >>> tuple(inputs["positions"].shape), w.numpy().tolist()
        ((8, 3), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    """
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.Strategy):
        raise ValueError(
            f"distributed_graph_dataset: strategy must be a tf.distribute.Strategy or None. "
            f"Received: {strategy!r}"
        )
    dataset_fn = graph_dataset_fn(
        make_dataset_fn, global_batch_size, target_key, sizes=sizes, buckets=buckets, **kwargs
    )
    return strategy.distribute_datasets_from_function(dataset_fn)


def prepare_distributed_fit(model):
    """Lets ``model.fit``/``evaluate`` start on per-replica graph batches; returns ``model``.

    Works around two places where Keras 3's TensorFlow trainer (measured
    with Keras 3.15 and TensorFlow 2.21) fails under ``tf.distribute``, on
    this model instance only:

    1. Before the first step, ``fit``/``evaluate`` read the input shapes from
       the first batch after averaging it *across replicas*
       (``strategy.reduce("MEAN", batch)``). That fails under
       ``MultiWorkerMirroredStrategy`` for every model (its ``reduce`` takes
       no nested structures, and a batch is at least ``(x, y)``) and under
       ``MirroredStrategy`` whenever replicas hold batches of different
       shapes (padding buckets). Here the same build reads the first *local*
       replica's batch instead, with no communication.
    2. With several workers, each step's logged metrics are averaged with
       ``strategy.reduce("MEAN", value, axis=0)``, which rejects the scalar
       metric values. Here ``train_step``/``test_step`` return them with
       shape ``[1]`` in that mode, so the average is taken over replicas
       (the epoch's logs are read from the synchronized metrics as before).

    Models created outside a strategy scope, other backends and Keras
    versions without these steps are left unchanged. Call it once after
    ``compile``; calling it again does nothing.

    Args:
        model: a ``keras.Model``, created (and compiled) under the strategy's scope.

    Returns:
        ``model``.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> prepare_distributed_fit(model) is model
        True
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"prepare_distributed_fit: model must be a keras.Model. Received: {model!r}")
    original = getattr(model, "_maybe_symbolic_build", None)
    symbolic_build = getattr(model, "_symbolic_build", None)
    if (
        keras.backend.backend() != "tensorflow"
        or original is None
        or symbolic_build is None
        or getattr(original, "_tfe_local_build", False)
    ):
        return model

    def maybe_symbolic_build(iterator=None, data_batch=None):
        strategy = getattr(model, "_distribute_strategy", None)
        if strategy is None:  # Keras builds when it traces the step: nothing to replace
            return original(iterator=iterator, data_batch=data_batch)
        if iterator is not None:
            # Keras' epoch iterators yield (first step, last step, iterator).
            for _, _, it in iterator:
                data_batch = next(it)
                break

        def first_local(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        data_batch = tf.nest.map_structure(first_local, data_batch)
        with strategy.scope():
            symbolic_build(data_batch=data_batch)

    maybe_symbolic_build._tfe_local_build = True
    model._maybe_symbolic_build = maybe_symbolic_build

    strategy = getattr(model, "_distribute_strategy", None)
    in_multi_worker_mode = getattr(getattr(strategy, "extended", None), "_in_multi_worker_mode", None)
    if (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and callable(in_multi_worker_mode)
        and in_multi_worker_mode()
    ):

        def rank_one(step):
            def step_with_rank_one_logs(data):
                logs = step(data)
                return tf.nest.map_structure(
                    lambda v: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v, logs
                )

            return step_with_rank_one_logs

        model.train_step = rank_one(model.train_step)
        model.test_step = rank_one(model.test_step)
        model.train_function = model.test_function = None  # rebuilt from the new steps
    return model


def _unreduced(loss):
    """A callable (y_true, y_pred) -> per-item losses, from a Keras loss spec."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        config["reduction"] = "none"
        return loss.__class__.from_config(config)
    if callable(loss):
        return loss
    raise ValueError(
        f"GlobalWeightedMean: loss must be a Keras loss name, a keras.losses.Loss or a "
        f"function (y_true, y_pred) -> per-item losses. Received: {loss!r}"
    )


@keras.saving.register_keras_serializable(package="tfequivariant")
class GlobalWeightedMean(keras.losses.Loss):
    """A loss's weighted mean over the *global* batch, under any ``tf.distribute`` strategy.

    On replica ``r`` it returns ``sum_r(w * l) / W``, with ``l`` the wrapped
    loss per item (e.g. per node: ``MeanSquaredError`` averages the last
    axis), ``w`` the sample weights (0 on padding) and ``W`` the sum of the
    weights over all replicas of the step (a scalar all-reduce, kept out of
    the gradient). Keras sums gradients over replicas, so the step is the
    gradient of ``sum(w l) / sum(w)`` over the global batch: the
    single-device step, whatever the number of real nodes per replica.
    Keras' ``mean_with_sample_weight`` instead averages the replicas' own
    weighted means, which differs when replicas hold different weights (see
    the module docstring). On one device both are the same; outside a
    replica context (no strategy), ``W`` is the local sum.

    The reported ``loss`` equals the global weighted mean when all replicas
    pad to the same sizes; with buckets of different sizes on different
    replicas, Keras weighs the replicas' contributions to the *displayed*
    loss by their padded row counts (the gradients stay exact).

    A model saved with this loss reloads with its compile state after
    ``import tfequivariant.distribute`` (subpackages load lazily, and Keras
    must have seen the class), or with ``keras.models.load_model(...,
    compile=False)``.

    Args:
        loss: the per-item loss: a Keras loss name, a ``keras.losses.Loss``
            (its own reduction is ignored) or a function
            ``(y_true, y_pred) -> losses``. Default ``"mean_squared_error"``.
        name: name of the loss.
        dtype: dtype of the loss computation (default: Keras' floatx).

    Example:
        >>> loss = GlobalWeightedMean(keras.losses.MeanSquaredError())
        >>> y, p = np.zeros((3, 2), "float32"), np.array([[1, 1], [2, 2], [5, 5]], "float32")
        >>> float(loss(y, p, sample_weight=np.array([1, 1, 0], "float32")))  # (1 + 4) / 2
        2.5
    """

    def __init__(self, loss="mean_squared_error", name="global_weighted_mean", dtype=None):
        super().__init__(name=name, reduction="mean_with_sample_weight", dtype=dtype)
        self.loss = loss
        self._per_item = _unreduced(loss)

    def __call__(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        with keras.name_scope(self.name):
            values = ops.convert_to_tensor(self._per_item(y_true, y_pred), dtype=self.dtype)
            if sample_weight is None:
                weights = ops.ones_like(values)
            else:
                weights = ops.convert_to_tensor(sample_weight, dtype=self.dtype)
                while len(weights.shape) > len(values.shape) and weights.shape[-1] == 1:
                    weights = ops.squeeze(weights, axis=-1)
            # Keras' rule: weights [N] on losses [N, ...] weigh whole rows and
            # the denominator is sum(weights), not their broadcast.
            broadcast = weights
            while len(broadcast.shape) < len(values.shape):
                broadcast = ops.expand_dims(broadcast, axis=-1)
            numerator = ops.sum(values * broadcast)
            denominator = ops.sum(weights)
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                denominator = context.all_reduce(
                    tf.distribute.ReduceOp.SUM, tf.stop_gradient(denominator)
                )
            return ops.divide_no_nan(numerator, denominator)

    def call(self, y_true, y_pred):
        return self._per_item(y_true, y_pred)

    def get_config(self):
        loss = self.loss
        if not isinstance(loss, str):
            loss = keras.saving.serialize_keras_object(loss)
        return {"loss": loss, "name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
