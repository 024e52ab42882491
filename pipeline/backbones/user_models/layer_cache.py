"""What loading a model file once told about it (its input shape, its layer table, the layers worth listing), kept
by the file's sha256, so a later launch with the same bytes does not import Keras and load the model again (five
seconds of every ``extract``, ``--update`` and ``layers`` with a model file, before any work).

An entry is ``CACHE_DIR/model-files/<sha256>.json``; ``CACHE_DIR`` is ``$FEATUREBEAM_CACHE_DIR``, else
``$XDG_CACHE_HOME/featurebeam``, else ``~/.cache/featurebeam``. Entries are written only after the file loaded in
Keras' safe mode, whole or not at all; one that cannot be read, or was written by another ``FORMAT``, is ignored
and written again; a cache folder that cannot be written is no cache (the model is loaded every time).
"""

from __future__ import annotations

import json
import os
import tempfile

__all__ = ["CACHE_VARIABLE", "FORMAT", "cache_dir", "read_entry", "write_entry"]

CACHE_VARIABLE = "FEATUREBEAM_CACHE_DIR"
FORMAT = 1  # raised whenever what an entry holds, or how it is computed, changes


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(CACHE_VARIABLE) or os.path.join(base, "featurebeam")


def _entry_path(sha256: str) -> str:
    return os.path.join(cache_dir(), "model-files", f"{sha256}.json")


def read_entry(sha256: str, fields: tuple[str, ...] = ()) -> dict | None:
    """The entry of the model file with this sha256, holding ``fields``, or None."""
    try:
        with open(_entry_path(sha256), encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("sha256") != sha256 \
            or any(name not in entry for name in fields):
        return None
    return entry


def write_entry(sha256: str, entry: dict) -> None:
    """Keep ``entry`` (JSON) for the model file with this sha256; silently nothing when the folder is not writable."""
    path, pending = _entry_path(sha256), None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, pending = tempfile.mkstemp(prefix=".pending-", dir=os.path.dirname(path))
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump({**entry, "format": FORMAT, "sha256": sha256}, f)
        os.replace(pending, path)
    except OSError:
        if pending is not None and os.path.exists(pending):
            os.remove(pending)
