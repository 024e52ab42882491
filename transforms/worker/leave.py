"""Leaving a process at once: what is written is flushed, then the process ends without the interpreter's teardown
of every module it imported (TensorFlow's alone takes over a second). Used once a process's work is done: a local
run's worker processes (``process.exit_without_teardown``) and the featurebeam command (``pipeline.process_exit``).
Imports nothing heavy: the command registers its exit handler before anything else is imported."""

from __future__ import annotations

import os
import sys

__all__ = ["leave_without_teardown"]


def leave_without_teardown(code: int) -> None:
    """Flush logging's handlers (if logging is in use) and the standard streams, then end with ``code``."""
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
