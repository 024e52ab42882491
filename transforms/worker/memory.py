"""Freed memory given back to the system, so a long local run's processes do not grow with its length.

glibc's ``malloc`` keeps what a process frees in per-thread arenas (up to 8 per core) and returns it to the
system only from the top of the heap. A local run's launcher and workers carry many gRPC and Beam threads that
allocate and free message buffers all run long, so their resident size creeps up with the run's length though
what they hold does not. Two standard remedies, both no-ops where the C library is not glibc:

- ``limit_malloc_arenas``: at most ``n`` arenas (``mallopt(M_ARENA_MAX)``; ``MALLOC_ARENA_MAX`` for the processes
  this one starts);
- ``FreedMemoryTrimmer``: a daemon thread that calls ``malloc_trim(0)`` every few seconds, which returns the
  free pages of every arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

__all__ = ["limit_malloc_arenas", "trim_freed_memory", "FreedMemoryTrimmer", "ARENAS", "ARENAS_VARIABLE"]

ARENAS = 2
ARENAS_VARIABLE = "MALLOC_ARENA_MAX"  # read by glibc when a process starts
_M_ARENA_MAX = -8  # mallopt parameter, <malloc.h>


def _glibc():
    if not hasattr(_glibc, "lib"):
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            _glibc.lib = lib if lib is not None and hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None
        except OSError:
            _glibc.lib = None
    return _glibc.lib


def limit_malloc_arenas(n: int = ARENAS) -> bool:
    """At most ``n`` malloc arenas in this process from now on, and in the processes it starts; False where
    that cannot be set (not glibc)."""
    lib = _glibc()
    if lib is None:
        return False
    os.environ.setdefault(ARENAS_VARIABLE, str(n))
    return bool(lib.mallopt(_M_ARENA_MAX, n))


def trim_freed_memory() -> bool:
    """Return the free pages of every arena to the system now; False where nothing can be (not glibc)."""
    lib = _glibc()
    return bool(lib is not None and lib.malloc_trim(0))


class FreedMemoryTrimmer:
    """A context (or ``start()``) in which a daemon thread calls ``trim_freed_memory`` every ``every`` seconds."""

    def __init__(self, every: float = 2.0):
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="featurebeam-trim", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            trim_freed_memory()

    def start(self) -> FreedMemoryTrimmer:
        if _glibc() is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._every + 1.0)

    def __enter__(self) -> FreedMemoryTrimmer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
