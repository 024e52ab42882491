"""What a worker process readies once, before its first element: TensorFlow's oneDNN kernels on any CPU, unless
the environment or the job says otherwise (``transforms.worker.cpu``), object storage as the job sees it
(``transforms.worker.storage.ready_storage``) and, when the featurebeam command asked for it, a quiet worker.

Every DoFn of the project is a ``WorkerDoFn``, whose ``setup()`` does it; a ``ModelHandler`` calls
``ready_process()`` from ``load_model()``. The command sets ``FEATUREBEAM_QUIET_WORKERS`` to its own process id
(unless ``FEATUREBEAM_DEBUG``); a local worker process started under it then neither logs nor prints (Beam's
harness prints a failed bundle's traceback to stderr as well as logging it), so a failure is reported once, by
the command, in one line; nor does it write TensorFlow's start-up lines when it imports it
(``transforms.worker.quiet``). The command's own process and other pipelines are untouched. A local run's worker
also gives its freed memory back to the system every few seconds (``transforms.worker.memory``), and ends
without tearing TensorFlow down (``exit_without_teardown``): everything it wrote is committed by then, and the
teardown took over a second per worker at the end of every local run.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

import apache_beam as beam

from transforms.worker.cpu import use_onednn
from transforms.worker.leave import leave_without_teardown
from transforms.worker.memory import FreedMemoryTrimmer
from transforms.worker.quiet import quiet_tensorflow_import
from transforms.worker.storage import ready_storage

__all__ = ["WorkerDoFn", "ready_process", "exit_without_teardown", "QUIET_WORKERS", "TRIM_MEMORY"]

QUIET_WORKERS = "FEATUREBEAM_QUIET_WORKERS"
TRIM_MEMORY = "FEATUREBEAM_TRIM_MEMORY"  # set by a local run: its workers give freed memory back as they go
SDK_WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"  # what a local run's worker process runs


def ready_process() -> None:
    use_onednn("auto")  # unless the job chose otherwise (``BackboneHandler``), before TensorFlow is imported
    ready_storage()
    if os.environ.get(TRIM_MEMORY) and not hasattr(ready_process, "trimmer"):
        ready_process.trimmer = FreedMemoryTrimmer().start()  # once per process, for its life
        if _is_sdk_worker():
            atexit.register(exit_without_teardown)
    launcher = os.environ.get(QUIET_WORKERS)
    if launcher and launcher != str(os.getpid()):
        for name in ("", "apache_beam"):  # Beam's own loggers may carry a level of their own
            logging.getLogger(name).setLevel(logging.CRITICAL)
        sys.stderr = open(os.devnull, "w")  # for the life of the worker process
        quiet_tensorflow_import()  # TensorFlow's start-up lines, written to fd 2 from C++


def _is_sdk_worker() -> bool:
    """Whether this process is a Beam SDK worker that a local run started (never the command, nor a test)."""
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) == SDK_WORKER_MAIN


def exit_without_teardown() -> None:
    """At the exit of a local run's worker process, once its harness has returned: flush and leave, skipping the
    interpreter's teardown of TensorFlow's modules (over a second, per worker, at the end of every local run). A
    worker whose harness failed (its traceback printed: ``sys.last_value``) exits the usual way, with its code."""
    if not hasattr(sys, "last_value"):
        leave_without_teardown(0)


class WorkerDoFn(beam.DoFn):
    """A DoFn whose process is ready (``ready_process``) before its first element. A subclass with a ``setup()``
    of its own calls ``super().setup()`` first."""

    def setup(self):
        ready_process()
