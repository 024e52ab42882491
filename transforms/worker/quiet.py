"""TensorFlow's start-up lines, kept off a command's stderr. Importing TensorFlow writes, from C++ straight to file
descriptor 2 and whatever ``TF_CPP_MIN_LOG_LEVEL`` says, absl's "All log messages before absl::InitializeLog() ..."
and the oneDNN "custom operations are on" line, twice a process (TensorFlow 2.21, CPU), and below level 2 the
cpu_feature_guard lines; on GPU builds, factory-registration and TensorRT lines. ``quiet_tensorflow_import()``
makes this process's first import of ``tensorflow`` (direct, or through Keras) write fd 2 to a temporary file,
then copy back every line but those: warnings and errors printed meanwhile still show, only after the import. The
featurebeam command installs it in its own process (``pipeline.logs.quiet_beam``) and in its local worker
processes (``transforms.worker.process``), unless FEATUREBEAM_DEBUG=1.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

__all__ = ["STARTUP_LINE", "drop_startup_lines", "filtered_stderr", "quiet_tensorflow_import",
           "unquiet_tensorflow_import"]

_GLOG = rb"[IWE]\d{4} \d+:\d+:\d+\.\d+ +\d+ \S+:\d+\] "  # absl's prefix: severity, date, time, thread, file:line
STARTUP_LINE = re.compile(rb"^(?:" + rb"|".join([
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    _GLOG + rb"oneDNN custom operations are on\. .*",
    _GLOG + rb"This TensorFlow binary is optimized to use available CPU instructions in performance-critical .*",
    rb"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.",
    # the `tensorflow` (GPU) wheel, on import
    _GLOG + rb"Unable to register cu(?:DNN|FFT|BLAS) factory: Attempting to register factory for plugin .*",
    _GLOG + rb"Computation placer already registered\. .*",
    _GLOG + rb"TF-TRT Warning: Could not find TensorRT",
]) + rb")\r?$")


def drop_startup_lines(data: bytes) -> bytes:
    """``data`` less its lines that match ``STARTUP_LINE``; every other byte as it was."""
    return b"".join(line for line in data.splitlines(keepends=True)
                    if not STARTUP_LINE.match(line.rstrip(b"\r\n")))


@contextlib.contextmanager
def filtered_stderr():
    """While inside, file descriptor 2 (C++ and Python alike) goes to a temporary file; on the way out it is put
    back and what was written, less the start-up lines, is written to it."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    captured = tempfile.TemporaryFile()
    try:
        os.dup2(captured.fileno(), 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        kept = memoryview(drop_startup_lines(captured.read()))
        captured.close()
        while kept:
            kept = kept[os.write(2, kept):]


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first ``import tensorflow`` it takes itself off ``sys.meta_path``, lets the
    other finders find TensorFlow, and runs the module's body inside ``filtered_stderr()``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        unquiet_tensorflow_import()
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def quiet_exec_module(module):
            try:
                with filtered_stderr():
                    exec_module(module)
            finally:
                with contextlib.suppress(AttributeError):
                    del loader.exec_module  # the loader's own method again

        loader.exec_module = quiet_exec_module
        return spec


def quiet_tensorflow_import() -> None:
    """Filter TensorFlow's start-up lines from this process's first import of it (nothing if already imported)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def unquiet_tensorflow_import() -> None:
    """Undo ``quiet_tensorflow_import()`` if TensorFlow has not been imported since."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietImport)]
