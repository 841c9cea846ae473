"""The on-disk cache shared by the datasets (simulations, parsed files)."""

import os
import tempfile

import numpy as np


def cache_dir(cache_dir, name):
    """``cache_dir`` if given, else ``$TFEQUIVARIANT_CACHE/<name>`` or ``~/.cache/tfequivariant/<name>``."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    root = os.environ.get("TFEQUIVARIANT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tfequivariant")
    return os.path.join(root, name)


def write_npz(path, data):
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename), creating the directory."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **data)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
