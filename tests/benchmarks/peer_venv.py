"""The virtualenvs the benchmarks run their peers in (musicnn's own extractor, sentence-transformers, ONNX
Runtime): never the project's own environment; made once, in the user's cache unless the user names one. A
benchmark imports this module as its neighbour (``python tests/benchmarks/NAME.py`` puts this folder first on the
path)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

__all__ = ["cached_venv", "ensure_venv"]


def cached_venv(name: str, variable: str | None = None) -> str:
    """Where a peer's virtualenv lives: ``$variable`` when set, else ``featurebeam/NAME`` in the user's cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return (os.environ.get(variable) if variable else None) or os.path.join(cache, "featurebeam", name)


def ensure_venv(path: str, installs: Sequence[Sequence[str]], imports: str, what: str, cwd: str | None = None) -> str:
    """The virtualenv's python, the venv created and filled first (one ``pip install`` per entry of ``installs``)
    when it cannot ``import`` every module of ``imports`` (comma-separated)."""
    python = os.path.join(path, "bin", "python")
    check = [python, "-c", f"import {imports}"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating the {what} virtualenv in {path} (once) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    for args in installs:
        subprocess.run([python, "-m", "pip", "install", "--quiet", *args], check=True, cwd=cwd)
    subprocess.run(check, check=True)
    return python
