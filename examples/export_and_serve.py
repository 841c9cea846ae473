"""Export an N-body SE(3)-Transformer for TF Serving and TFLite, and run both.

Takes ``<output-dir>/<name>.keras`` when it exists (``examples/nbody.py`` writes
``saved_models/nbody_se3.keras``) or builds a small untrained model of the same
shape (node input: velocity ``1x1o``; edges: the fully connected graph and the
invariant ``q_i q_j``; output ``2x1o`` = (dx, dv)). Then:

1. writes the SavedModel for TF Serving to ``<output-dir>/<name>/<version>/`` and
   prints its signatures the way ``saved_model_cli show --all`` does;
2. converts it to TFLite (float32, float16 weights, dynamic-range int8; builtin
   ops only), printing each file's size and its largest change against Keras;
3. runs the float32 ``.tflite`` with the LiteRT interpreter at two graph sizes;
4. writes a TF Serving REST request body next to the model and prints it
   (truncated) with the ``docker`` and ``curl`` command lines that serve it.

Run:
    python examples/export_and_serve.py
    python examples/export_and_serve.py --output-dir /tmp/served --channels 16
"""

import argparse
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tfequivariant import export
from tfequivariant import graph as tfe_graph
from tfequivariant import models as tfe_models  # also registers the model classes for keras.models.load_model
from tfequivariant.datasets import nbody

_INT_KEYS = ("senders", "receivers", "node_graph_index", "graph_sizes")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--name", default="nbody_se3", help="model name (TF Serving's MODEL_NAME)")
    p.add_argument("--output-dir", default="saved_models", help="where the SavedModel, .tflite files and request go")
    p.add_argument("--version", type=int, default=1, help="SavedModel version folder")
    p.add_argument(
        "--keras-model", default=None, help="a .keras model to export (default: <output-dir>/<name>.keras if present)"
    )
    p.add_argument("--channels", type=int, default=8, help="hidden channels per degree of a new model")
    p.add_argument("--max-degree", type=int, default=1, help="hidden lmax of a new model")
    p.add_argument("--layers", type=int, default=1, help="attention blocks of a new model")
    p.add_argument("--heads", type=int, default=2, help="attention heads of a new model")
    p.add_argument("--radial-hidden", type=int, default=64, help="hidden units of the radial networks of a new model")
    p.add_argument("--trajectories", type=int, default=6, help="N-body graphs in the larger test batch")
    p.add_argument("--preview", type=int, default=300, help="characters of the REST body to print")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def as_functional(model):
    """A functional model over named inputs (what export_saved_model serves)."""
    try:
        if isinstance(model.input, dict):
            return model
    except (AttributeError, ValueError):  # a subclassed model has no symbolic input
        pass
    shapes = (model.get_build_config() or {}).get("input_shape")
    if not isinstance(shapes, dict):
        raise ValueError(f"{model.name} is neither a functional model over named inputs nor a built graph model")
    inputs = {
        key: keras.Input(shape=tuple(shape[1:]), dtype="int32" if key in _INT_KEYS else "float32", name=key)
        for key, shape in shapes.items()
    }
    return keras.Model(inputs, model(inputs), name=f"{model.name}_functional")


def load_or_build(args):
    path = args.keras_model or os.path.join(args.output_dir, f"{args.name}.keras")
    if os.path.exists(path):
        print(f"loading {path}")
        return as_functional(keras.models.load_model(path, compile=False)), path
    if args.keras_model:
        raise FileNotFoundError(f"--keras-model {args.keras_model} does not exist")
    keras.utils.set_random_seed(args.seed)
    model = tfe_models.build_se3_transformer(
        nbody.NODE_FEATURES_IRREPS,
        nbody.TARGETS_IRREPS,
        edge_attr_dim=1,
        channels=args.channels,
        max_degree=args.max_degree,
        num_layers=args.layers,
        num_heads=args.heads,
        radial_hidden=(args.radial_hidden,),
        num_radial_basis=16,
        cutoff=10.0,  # the N-body graphs are fully connected
        avg_num_neighbors=4.0,
    )
    return model, None


def signature_summary(saved_model_dir):
    """The SignatureDefs of a SavedModel, printed like ``saved_model_cli show --all``."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    lines, inputs = [], {}
    for meta_graph in proto.meta_graphs:
        for key, sig in sorted(meta_graph.signature_def.items()):
            if key.startswith("__"):
                continue
            lines.append(f"signature_def['{key}']  (method {sig.method_name}):")
            for kind, tensors in (("inputs", sig.inputs), ("outputs", sig.outputs)):
                for name, info in sorted(tensors.items()):
                    shape = "(" + ", ".join(str(d.size) for d in info.tensor_shape.dim) + ")"
                    dtype = types_pb2.DataType.Name(info.dtype)
                    lines.append(f"  {kind}['{name}']".ljust(38) + f"{dtype:<10} shape {shape}")
            inputs[key] = sorted(sig.inputs)
    return "\n".join(lines), inputs


def keras_output(model, graph):
    return np.asarray(model({k: graph[k] for k in model.input}))


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()

    examples = nbody.make_examples(nbody.simulate(max(2, args.trajectories), num_steps=1501, seed=args.seed), delta=4)
    small = tfe_graph.merge_graphs(examples[:1])
    large = tfe_graph.merge_graphs(examples[: max(2, args.trajectories)])
    model, source = load_or_build(args)
    missing = [k for k in model.input if k not in small]
    if missing:
        raise ValueError(f"the model takes inputs {missing} that the N-body graphs do not have")
    print(f"model: {model.name}, {model.count_params():,} parameters "
          f"({'trained, from ' + source if source else 'new, untrained'}); inputs {list(model.input)}")
    reference = {"small": keras_output(model, small), "large": keras_output(model, large)}

    base = os.path.join(args.output_dir, args.name)
    saved = export.export_saved_model(model, base, version=args.version)
    summary, signature_inputs = signature_summary(saved)
    print(f"\nSavedModel written to {saved}; its signatures (saved_model_cli show --all --dir {saved}):")
    print(summary)
    serve = tf.saved_model.load(saved).signatures["serving_default"]
    served = serve(**{k: tf.constant(large[k]) for k in signature_inputs["serving_default"]})["output"].numpy()
    saved_error = max_abs(served, reference["large"])
    print(f"SavedModel serving_default vs Keras on {len(large['positions'])} nodes: "
          f"max abs difference {saved_error:.1e}")

    print("\nTFLite (builtin ops only):")
    changes, sizes = {}, {}
    for quantization in (None, "float16", "dynamic_int8"):
        label = quantization or "float32"
        path = os.path.join(args.output_dir, f"{args.name}_{label}.tflite")
        ops = export.to_tflite(saved, path, quantization=quantization)
        out = export.TFLiteRunner(path)(large)
        changes[label], sizes[label] = max_abs(out, reference["large"]), os.path.getsize(path)
        print(f"  {label:<13} {sizes[label] / 1024:8.1f} KiB  {len(ops)} op types  "
              f"max abs change vs Keras {changes[label]:.1e}  -> {path}")
    print(f"  (max |y| = {np.max(np.abs(reference['large'])):.3f}; dynamic int8 leaves weight tensors of "
          f"about 1024 elements or fewer in float32, so a very small model does not change at all)")

    runner = export.TFLiteRunner(os.path.join(args.output_dir, f"{args.name}_float32.tflite"))
    print("\nLiteRT interpreter, float32 model, one interpreter resized per graph:")
    sizes_run = []
    for label in ("small", "large", "small"):
        graph = small if label == "small" else large
        n, e = len(graph["positions"]), len(graph["senders"])
        err = max_abs(runner(graph), reference[label])
        sizes_run.append((n, err))
        print(f"  N={n:3d} nodes, E={e:3d} edges: max abs difference vs Keras {err:.1e}")

    body = export.rest_request_body(small, input_keys=signature_inputs["serving_default"])
    request_path = os.path.join(args.output_dir, f"{args.name}_request.json")
    with open(request_path, "w") as f:
        json.dump(body, f)
    text = json.dumps(body)
    print(f"\nTF Serving REST body ({len(text)} characters, written to {request_path}):")
    print(text[: args.preview] + (" ..." if len(text) > args.preview else ""))
    source_dir = base if os.path.isabs(base) else f"$PWD/{base}"
    print("\nServe it with TF Serving (CPU image, XLA off) and send the request:")
    print(f"  docker run -p 8501:8501 --mount type=bind,source={source_dir},target=/models/{args.name} "
          f"-e MODEL_NAME={args.name} -t tensorflow/serving")
    print(f"  curl -d @{request_path} -H 'Content-Type: application/json' "
          f"http://localhost:8501/v1/models/{args.name}:predict")
    try:
        request = export.predict_request(small, args.name, input_keys=signature_inputs["serving_default"])
        print(f"  (gRPC: a PredictRequest of {request.ByteSize()} bytes to localhost:8500, "
              f"tensorflow_serving.apis.prediction_service_pb2_grpc)")
    except ImportError:
        print("  (gRPC requests need: pip install --no-deps tensorflow-serving-api)")

    worst = max(err for _, err in sizes_run)
    print(
        f"\nRESULT: exported {saved} (signatures {', '.join(signature_inputs)}); SavedModel matches Keras to "
        f"{saved_error:.0e}, TFLite float32 to {worst:.0e} at N={sizes_run[0][0]} and N={sizes_run[1][0]}; "
        f"float16 / dynamic int8 change the output by {changes['float16']:.1e} / {changes['dynamic_int8']:.1e} "
        f"({sizes['float32'] // 1024} / {sizes['float16'] // 1024} / {sizes['dynamic_int8'] // 1024} KiB) "
        f"in {time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
