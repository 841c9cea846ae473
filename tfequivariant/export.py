"""Export: SavedModel for TF Serving (flat and ragged signatures) and TFLite (builtin ops only).

DESIGN.md section 4 holds the measured facts this follows: export through
``keras.export.ExportArchive`` (what ``model.export`` uses) without XLA, named
``TensorSpec``s with ``None`` for the node, edge and graph dimensions, and
TFLite conversion from that SavedModel with builtin ops only.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tfequivariant import graph as tfe_graph

__all__ = [
    "export_saved_model",
    "to_tflite",
    "tflite_ops",
    "TFLiteRunner",
    "predict_request",
    "rest_request_body",
]

_INT_KEYS = ("senders", "receivers", "node_graph_index", "graph_sizes", "neighbor_values", "neighbor_row_splits")


def _input_specs(model):
    """Named ``TensorSpec``s of a functional model's dict inputs (leading dims ``None``)."""
    inputs = model.inputs
    names = getattr(model, "input_names", None) or [t.name for t in inputs]
    structure = model._inputs_struct if hasattr(model, "_inputs_struct") else None
    if not isinstance(structure, dict):
        raise ValueError(
            "export_saved_model needs a functional model over a dict of named inputs, as built by "
            "tfequivariant.models.build_tensor_field_network / build_se3_transformer. "
            f"Received a model with inputs {names}"
        )
    specs = {}
    for key, tensor in structure.items():
        shape = (None,) + tuple(tensor.shape[1:])
        specs[key] = tf.TensorSpec(shape, tf.as_dtype(tensor.dtype), name=key)
    for key in ("positions", "senders", "receivers"):
        if key not in specs:
            raise ValueError(f"The model's inputs lack {key!r}. Received inputs: {sorted(specs)}")
    return specs


def _checks(inputs):
    """Serving-time checks (TF Serving runs the SavedModel without XLA, so asserts work)."""
    n = tf.shape(inputs["positions"], out_type=tf.int32)[0]
    senders, receivers = inputs["senders"], inputs["receivers"]
    checks = [
        tf.debugging.assert_equal(
            tf.shape(senders)[0], tf.shape(receivers)[0], message="senders and receivers must have equal lengths"
        ),
        tf.debugging.assert_non_negative(senders, message="senders contains a negative index"),
        tf.debugging.assert_non_negative(receivers, message="receivers contains a negative index"),
        tf.debugging.assert_less(senders, tf.maximum(n, 1), message="senders contains an index >= number of nodes"),
        tf.debugging.assert_less(receivers, tf.maximum(n, 1), message="receivers contains an index >= number of nodes"),
        tf.debugging.assert_equal(
            tf.shape(inputs["node_features"])[0], n, message="node_features and positions have different numbers of rows"
        ),
    ]
    if "node_graph_index" in inputs:
        g = tf.shape(inputs["graph_sizes"])[0]
        checks += [
            tf.debugging.assert_equal(
                tf.shape(inputs["node_graph_index"])[0], n, message="node_graph_index must have one entry per node"
            ),
            tf.debugging.assert_non_negative(inputs["node_graph_index"], message="node_graph_index is negative"),
            tf.debugging.assert_less(
                inputs["node_graph_index"], tf.maximum(g, 1), message="node_graph_index >= number of graphs"
            ),
        ]
    return checks


def export_saved_model(model, directory, version=1, output_name="output", validate=True):
    """Write ``model`` as a TF Serving SavedModel at ``<directory>/<version>/``.

    Two signatures:

    * ``serving_default``: the flat graph tensors of the model's named inputs
      (``positions``, ``node_features``, ``senders``, ``receivers`` and, for
      per-graph models, ``node_graph_index``, ``graph_sizes``; plus any
      ``edge_attr``/``edge_mask``/``edge_shifts`` the model takes), ``None`` for the
      node, edge and graph dimensions;
    * ``serving_ragged``: the same with the neighbour lists as two dense tensors,
      ``neighbor_values [E]`` and ``neighbor_row_splits [N+1]`` (row ``i`` lists
      the senders of node ``i``), instead of ``senders``/``receivers``; not added
      when the model takes per-edge inputs (their order would be ambiguous).

    Both return ``{output_name: [N or G, dim]}``. No XLA (TF Serving's CPU build
    runs with XLA off). With ``validate`` the signatures check lengths and index
    ranges and fail the request with a clear message instead of computing on
    bad indices (``keras.ops.take`` would read ``-1`` as the last node).

    Args:
        model: a functional model over a dict of named inputs
            (``tfequivariant.models.build_tensor_field_network`` and friends).
        directory: base path of the model (TF Serving's ``model_base_path``).
        version: integer version subdirectory (default 1).
        output_name: name of the output tensor (default ``"output"``).
        validate: add the serving-time checks (default True).

    Returns:
        The path of the version directory.
    """
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(f"version must be an int >= 0 (TF Serving's version folders). Received: version={version!r}")
    specs = _input_specs(model)
    path = os.path.join(os.fspath(directory), str(int(version)))
    archive = keras.export.ExportArchive()
    archive.track(model)
    keys = list(specs)

    def flat(*args):
        inputs = dict(zip(keys, args))
        deps = _checks(inputs) if validate else []
        with tf.control_dependencies(deps):
            inputs = {k: tf.identity(v) for k, v in inputs.items()}
        return {output_name: model(inputs, training=False)}

    archive.add_endpoint("serving_default", flat, input_signature=[specs[k] for k in keys])

    if not any(k.startswith("edge_") for k in keys):
        ragged_keys = [k for k in keys if k not in ("senders", "receivers")]
        ragged_specs = [specs[k] for k in ragged_keys] + [
            tf.TensorSpec((None,), tf.int32, name="neighbor_values"),
            tf.TensorSpec((None,), tf.int32, name="neighbor_row_splits"),
        ]

        def ragged(*args):
            inputs = dict(zip(ragged_keys, args[:-2]))
            values, splits = args[-2], args[-1]
            deps = []
            if validate:
                n = tf.shape(inputs["positions"], out_type=tf.int32)[0]
                deps = [
                    tf.debugging.assert_equal(
                        tf.shape(splits)[0], n + 1, message="neighbor_row_splits must have N + 1 entries"
                    ),
                    tf.debugging.assert_equal(splits[0], 0, message="neighbor_row_splits must start at 0"),
                    tf.debugging.assert_equal(
                        splits[-1], tf.shape(values)[0], message="neighbor_row_splits must end at len(neighbor_values)"
                    ),
                    tf.debugging.assert_non_negative(
                        splits[1:] - splits[:-1], message="neighbor_row_splits must be non-decreasing"
                    ),
                ]
            with tf.control_dependencies(deps):
                senders, receivers = tfe_graph.edges_from_row_splits(values, splits, validate=False)
            return flat(*[{**inputs, "senders": senders, "receivers": receivers}[k] for k in keys])

        archive.add_endpoint("serving_ragged", ragged, input_signature=ragged_specs)
    archive.write_out(path, verbose=False)
    return path


def _converter(saved_model_dir, static_sizes):
    if static_sizes is None:
        return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    loaded = tf.saved_model.load(saved_model_dir)
    fn = loaded.signatures["serving_default"]
    _, kwargs = fn.structured_input_signature
    sizes = {"N": None, "E": None, "G": None}
    sizes.update({k: v for k, v in dict(static_sizes).items()})
    by_key = {
        "positions": "N", "node_features": "N", "node_graph_index": "N", "node_mask": "N",
        "senders": "E", "receivers": "E", "edge_attr": "E", "edge_mask": "E", "edge_shifts": "E",
        "graph_sizes": "G", "graph_mask": "G",
    }
    specs = []
    names = sorted(kwargs)
    for name in names:
        spec = kwargs[name]
        lead = sizes.get(by_key.get(name))
        if lead is None:
            raise ValueError(
                f"static_sizes must give the padded size of input {name!r} "
                f"({by_key.get(name, '?')}). Received: static_sizes={static_sizes!r}"
            )
        specs.append(tf.TensorSpec((lead,) + tuple(spec.shape[1:]), spec.dtype, name=name))

    @tf.function(input_signature=specs)
    def static(*args):
        return fn(**dict(zip(names, args)))

    return tf.lite.TFLiteConverter.from_concrete_functions([static.get_concrete_function()], loaded)


def to_tflite(saved_model_dir, path, quantization=None, static_sizes=None, representative_graph=None):
    """Convert a SavedModel's ``serving_default`` signature to a ``.tflite`` file, builtin ops only.

    Args:
        saved_model_dir: a version directory written by ``export_saved_model``.
        path: the ``.tflite`` file to write.
        quantization: None (float32), ``"float16"`` (float16 weights) or
            ``"dynamic_int8"`` (dynamic-range int8 weights).
        static_sizes: None for dynamic node/edge/graph counts (resize the inputs
            before each call), or ``{"N": nodes, "E": edges, "G": graphs}`` for a
            model with fixed input shapes (pad graphs with
            ``tfequivariant.graph.pad_to_sizes``), for accelerators that need them.
        representative_graph: unused placeholder for full-integer quantization
            (not supported yet; passing it raises).

    Returns:
        The list of op names in the converted model (all TFLite builtins).

    Raises:
        ValueError: an argument is invalid, or the model would need an op outside
            TFLite's builtins (the message names it).
    """
    if quantization not in (None, "float16", "dynamic_int8"):
        raise ValueError(
            f"quantization must be None, 'float16' or 'dynamic_int8'. Received: quantization={quantization!r}"
        )
    if representative_graph is not None:
        raise ValueError("Full-integer quantization is not supported yet; use 'dynamic_int8'.")
    converter = _converter(os.fspath(saved_model_dir), static_sizes)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        flatbuffer = converter.convert()
    except Exception as e:  # the converter raises ConverterError with the op list in its text
        raise ValueError(
            "TFLite conversion with builtin ops only failed; the model uses an op TFLite has no "
            f"builtin for (see the converter's message): {e}"
        ) from e
    with open(path, "wb") as f:
        f.write(flatbuffer)
    ops = tflite_ops(path)
    bad = [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    if bad:
        raise ValueError(f"The converted model contains non-builtin ops {bad}; it would need Flex delegates.")
    return ops


def tflite_ops(path):
    """Names of the ops in a ``.tflite`` file (e.g. ``["GATHER", "UNSORTED_SEGMENT_SUM", ...]``)."""
    analyzer = tf.lite.experimental.Analyzer
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        analyzer.analyze(model_path=os.fspath(path))
    ops = []
    for line in buffer.getvalue().splitlines():
        line = line.strip()
        if line.startswith("Op#"):
            name = line.split(" ", 1)[1].split("(", 1)[0]
            ops.append(name)
    return sorted(set(ops))


class TFLiteRunner:
    """Run a ``.tflite`` graph model with the LiteRT interpreter (``ai-edge-litert``).

    Resizes the inputs to each graph's sizes (dynamic models) and feeds them by
    name; for static models pass graphs padded to the model's sizes.

    Example:
        runner = TFLiteRunner("model.tflite")
        out = runner(graph)  # graph: dict of NumPy arrays with the signature's input names
    """

    def __init__(self, path, num_threads=None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ImportError(
                "Running .tflite files needs the LiteRT interpreter: pip install 'tfequivariant[export]' "
                "(the ai-edge-litert package)."
            ) from None
        self.path = os.fspath(path)
        self.interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        self.signature = self.interpreter.get_signature_list()

    @staticmethod
    def _check_indices(graph):
        n = len(np.asarray(graph["positions"])) if "positions" in graph else None
        if n is None:
            return
        if "senders" in graph and "receivers" in graph:
            if np.shape(graph["senders"]) != np.shape(graph["receivers"]):
                raise ValueError(
                    f"senders and receivers must have equal lengths. Received: {np.shape(graph['senders'])} "
                    f"and {np.shape(graph['receivers'])}"
                )
        for key in ("senders", "receivers"):
            _check_index(graph, key, n, "number of nodes")
        if "graph_sizes" in graph:
            _check_index(graph, "node_graph_index", len(np.asarray(graph["graph_sizes"])), "number of graphs")

    def __call__(self, graph):
        interp = self.interpreter
        details = {d["name"]: d for d in interp.get_input_details()}
        # Input tensor names are "serving_default_<key>:0" (SavedModel) or the key itself.
        def key_of(name):
            base = name.split(":")[0]
            return base[len("serving_default_") :] if base.startswith("serving_default_") else base

        self._check_indices(graph)
        for name, d in details.items():
            key = key_of(name)
            if key not in graph:
                raise ValueError(f"The graph lacks {key!r}, an input of {self.path}. Received keys: {sorted(graph)}")
            value = np.asarray(graph[key], dtype=d["dtype"])
            if tuple(d["shape"]) != value.shape:
                if -1 not in tuple(d["shape_signature"]) and tuple(d["shape_signature"]) != value.shape:
                    raise ValueError(
                        f"{key!r} must have the static shape {tuple(d['shape_signature'])} of this model "
                        f"(pad the graph with tfequivariant.graph.pad_to_sizes). Received shape: {value.shape}"
                    )
                interp.resize_tensor_input(d["index"], value.shape, strict=False)
        interp.allocate_tensors()
        for name, d in details.items():
            interp.set_tensor(d["index"], np.asarray(graph[key_of(name)], dtype=d["dtype"]))
        try:
            interp.invoke()
        except RuntimeError as e:
            if "scatter_nd index out of bounds" not in str(e):
                raise
            # the one scatter with data-dependent indices is the neighbour layout of layers
            # built with a static max_neighbors; the SavedModel's assertion naming it is dropped
            raise RuntimeError(
                f"{e}. In a tfequivariant model this means a node receives more edges than the "
                "max_neighbors a layer was built with (TFLite has no assert op to say so): check graphs "
                "with tfequivariant.graph.validate_graph(graph, max_neighbors=K), or cap them with "
                "radius_graph(..., max_neighbors=K)."
            ) from e
        outs = interp.get_output_details()
        if len(outs) == 1:
            return interp.get_tensor(outs[0]["index"])
        return {o["name"]: interp.get_tensor(o["index"]) for o in outs}


def _check_index(graph, key, upper, upper_name):
    if key not in graph:
        return
    idx = np.asarray(graph[key])
    bad = (idx < 0) | (idx >= upper)
    if bad.any():
        raise ValueError(
            f"{key} contains {int(idx[bad][0])} out of range [0, {upper}) ({upper_name}); TFLite has no "
            "assert op, so indices are checked here before the interpreter runs."
        )


def predict_request(graph, model_name, signature_name="serving_default", input_keys=None):
    """A TF Serving gRPC ``PredictRequest`` for ``graph`` (needs ``tensorflow-serving-api``).

    Install it with ``pip install --no-deps tensorflow-serving-api`` (it declares a
    dependency on the full ``tensorflow`` wheel).
    """
    try:
        from tensorflow_serving.apis import predict_pb2
    except ImportError:
        raise ImportError(
            "predict_request needs tensorflow-serving-api: pip install --no-deps tensorflow-serving-api"
        ) from None
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for key in input_keys or sorted(graph):
        value = np.asarray(graph[key])
        dtype = np.int32 if key in _INT_KEYS else np.float32
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value.astype(dtype)))
    return request


def rest_request_body(graph, signature_name="serving_default", input_keys=None):
    """The JSON body of a TF Serving REST ``:predict`` request (columnar ``inputs`` format)."""
    body = {"signature_name": signature_name, "inputs": {}}
    for key in input_keys or sorted(graph):
        value = np.asarray(graph[key])
        dtype = np.int32 if key in _INT_KEYS else np.float32
        body["inputs"][key] = value.astype(dtype).tolist()
    return body
