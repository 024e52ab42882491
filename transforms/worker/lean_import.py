"""TensorFlow imported without what its import pulls in for nothing.

Importing TensorFlow imports Keras, whose scikit-learn wrappers import scikit-learn when it is installed, and with
it SciPy: 1.7 of a worker's 6.9 s to load a backbone (measured on a 2-core AMD EPYC), for estimators no worker
uses. ``import_tensorflow()`` imports TensorFlow with scikit-learn hidden, which Keras' wrappers take as absent
(they are written to), and makes it importable again at once: a later ``import sklearn`` works as ever.
"""

from __future__ import annotations

import sys

__all__ = ["import_tensorflow"]

_HIDDEN = ("sklearn",)


def import_tensorflow():
    """The ``tensorflow`` module, imported now (without scikit-learn) unless this process has imported it."""
    if "tensorflow" not in sys.modules:
        hidden = [name for name in _HIDDEN if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # an import of it raises ImportError
        try:
            import tensorflow  # noqa: F401
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
    return sys.modules["tensorflow"]
