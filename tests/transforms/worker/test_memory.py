"""Freed memory given back to the system (glibc's malloc_trim), and at most two malloc arenas for a local run."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from transforms.worker import memory

glibc = pytest.mark.skipif(memory._glibc() is None, reason="the C library is not glibc")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@glibc
def test_freed_small_blocks_go_back_to_the_system_when_trimmed():
    held = [np.ones(2000, np.uint8).tobytes() + bytes([i % 256]) for i in range(60_000)]  # ~120 MB of small blocks
    keep = held[-1]  # one live block at the top of the heap: glibc alone would keep everything below it
    del held
    before = _rss_mb()
    assert memory.trim_freed_memory()
    assert _rss_mb() < before - 50
    assert keep


@glibc
def test_the_trimmer_trims_until_stopped_and_a_run_limits_its_workers_arenas(monkeypatch):
    threads = []  # the thread of each call: a local run in this process may have left its own trimmer running
    monkeypatch.setattr(memory, "trim_freed_memory", lambda: threads.append(threading.current_thread()) or True)
    trimmer = memory.FreedMemoryTrimmer(every=0.05)

    def calls() -> int:
        return sum(thread is trimmer._thread for thread in threads)

    with trimmer:
        deadline = time.monotonic() + 60  # a few periods, however busy the machine
        while calls() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    trimmer._thread.join(timeout=60)  # stop() waits a bounded time; a starved thread may take longer to end
    stopped = calls()
    time.sleep(0.2)
    assert stopped >= 3 and calls() == stopped and not trimmer._thread.is_alive()
    monkeypatch.delenv(memory.ARENAS_VARIABLE, raising=False)
    assert memory.limit_malloc_arenas(2)
    assert os.environ[memory.ARENAS_VARIABLE] == "2"
