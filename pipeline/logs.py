"""How much a command prints while it runs: one line for a failed job, not every worker's traceback."""

from __future__ import annotations

import contextlib
import logging
import os

from transforms.worker.process import QUIET_WORKERS
from transforms.worker.quiet import quiet_tensorflow_import, unquiet_tensorflow_import

__all__ = ["quiet_beam"]


@contextlib.contextmanager
def quiet_beam(quiet: bool):
    """Beam logs a failed bundle's traceback from every worker that ran it (hundreds of lines) before the job
    fails; the command's one line says why. While a command runs, Beam's loggers (its own and the root one) and
    local worker processes (``transforms.worker.process``) stay quiet, unless FEATUREBEAM_DEBUG=1; then put back. So do
    TensorFlow's start-up lines, here and in those workers (``transforms.worker.quiet``)."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("", "apache_beam")]
    levels, previous = [logger.level for logger in loggers], os.environ.get(QUIET_WORKERS)
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    os.environ[QUIET_WORKERS] = str(os.getpid())
    quiet_tensorflow_import()
    try:
        yield
    finally:
        unquiet_tensorflow_import()
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if previous is None:
            os.environ.pop(QUIET_WORKERS, None)
        else:
            os.environ[QUIET_WORKERS] = previous
