"""tfequivariant: E(3)/SE(3)-equivariant graph neural networks for TensorFlow/Keras 3.

The SO(3)/O(3) core (``Irrep``, ``Irreps``, ``spherical_harmonics``,
``wigner_3j``, ``wigner_D``) follows e3nn's conventions numerically, so data,
weights and papers carry over. Subpackages: ``layers``, ``graph``, ``models``,
``export``, ``datasets``, ``testing``, ``distribute`` (imported on first
attribute access).
"""

import importlib

from tfequivariant.irreps import Irrep, Irreps
from tfequivariant.so3 import (
    angles_to_matrix,
    matrix_to_angles,
    rand_angles,
    rand_matrix,
    wigner_3j,
    wigner_D,
)
from tfequivariant.spherical_harmonics import spherical_harmonics

# Layers and models register their classes with Keras on import, so a saved
# .keras model loads after a plain `import tfequivariant`.
from tfequivariant import distribute, layers, models  # noqa: E402,F401  (after the core they use)

__version__ = "0.1.0.dev0"

_SUBMODULES = ("so3", "layers", "graph", "models", "export", "datasets", "testing", "distribute")

__all__ = [
    "Irrep",
    "Irreps",
    "spherical_harmonics",
    "wigner_3j",
    "wigner_D",
    "rand_matrix",
    "rand_angles",
    "angles_to_matrix",
    "matrix_to_angles",
    *_SUBMODULES,
]


def __getattr__(name):
    # Subpackages load on first use so that `import tfequivariant` stays light
    # and optional dependencies are only needed by the parts that use them.
    if name in _SUBMODULES:
        module = importlib.import_module(f"tfequivariant.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'tfequivariant' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
