"""Live progress across worker processes: counting steps write small files that the launcher sums.

``CountProgress(directory, stage)`` passes elements through unchanged and keeps a per-instance count in
``directory/<stage>-<pid>-<id>.count`` (rewritten atomically at most twice a second and at the end of each
bundle). ``read_progress(directory)`` sums the counts per stage. Any worker process on the machine can write
there, which Beam's metrics do not offer a local launcher while the job runs.
"""

from __future__ import annotations

import collections
import os
import time
import uuid

from transforms.worker.process import WorkerDoFn

__all__ = ["CountProgress", "read_progress"]


class CountProgress(WorkerDoFn):
    """Counts the elements passing through (or ``weight(element)`` of each) into ``directory`` for ``stage``."""

    def __init__(self, directory: str, stage: str, every_seconds: float = 0.5, weight=None):
        self._directory = directory
        self._stage = stage
        self._every = every_seconds
        self._weight = weight

    def setup(self):
        super().setup()
        self._path = os.path.join(self._directory, f"{self._stage}-{os.getpid()}-{uuid.uuid4().hex[:8]}.count")
        self._count = 0
        self._written = 0.0

    def _write(self):
        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(self._count))
        os.replace(tmp, self._path)
        self._written = time.monotonic()

    def process(self, element):
        self._count += 1 if self._weight is None else self._weight(element)
        if time.monotonic() - self._written >= self._every:
            self._write()
        yield element

    def finish_bundle(self):
        if self._count:
            self._write()


def read_progress(directory: str) -> dict[str, int]:
    totals: dict[str, int] = collections.Counter()
    try:
        names = os.listdir(directory)
    except OSError:
        return dict(totals)
    for name in names:
        if not name.endswith(".count"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                totals[name.split("-", 1)[0]] += int(f.read() or 0)
        except (OSError, ValueError):
            continue  # being replaced right now: next reading has it
    return dict(totals)
