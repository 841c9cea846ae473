"""Shared pytest setup: quiet TensorFlow logs and exact float32 matmuls on GPUs."""

import os

# Must be set before TensorFlow is imported anywhere.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import tensorflow as tf  # noqa: E402

# TF32 matmuls (Ampere and later) break the float32 equivariance tolerances.
tf.config.experimental.enable_tensor_float_32_execution(False)
