"""Test helper: import a script (an example, a benchmark) that is not in a package."""

import importlib.util


def load_script(path, name):
    """The module from the Python file at ``path``, imported under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
