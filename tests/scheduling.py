"""The order in which the suite's files are handed to ``make test``'s two processes: the longest first.

pytest-xdist (``--dist loadfile --no-loadscope-reorder``) gives each process the next file of the collection as
it finishes one. Handed out longest first, the short files fill the end and both processes finish together;
in xdist's own order (most tests first) the long files with one or two tests (an hour of audio, a fine-tuning)
came last, and one process ran them alone for a minute while the other had nothing left.

A file's length is what a recorded full run measured it at: ``file_seconds.json`` beside this module, seconds
per file (setup, call and teardown of all its tests). ``pytest --record-file-seconds`` writes it again at the end
of a run that ran every test and failed none. A file it does not name (a new one) keeps its place after those it
does. The order changes how long a run takes, never what it runs."""

from __future__ import annotations

import collections
import json
import os

import pytest

__all__ = ["SECONDS_FILE", "pytest_addoption", "pytest_collection_modifyitems", "pytest_runtest_logreport",
           "pytest_sessionfinish", "longest_first"]

SECONDS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "file_seconds.json")
_measured: collections.Counter = collections.Counter()


def pytest_addoption(parser):
    parser.addoption("--record-file-seconds", action="store_true",
                     help=f"after a full run with no failure, write each test file's seconds to {SECONDS_FILE}")


def longest_first(files: list[str], seconds: dict[str, float]) -> list[str]:
    """``files`` (in collection order), the recorded ones longest first, then the others in their order."""
    known = sorted((f for f in files if f in seconds), key=lambda f: -seconds[f])
    return known + [f for f in files if f not in seconds]


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    try:
        with open(SECONDS_FILE) as f:
            seconds = json.load(f)
    except (OSError, ValueError):
        return
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(_file_of(item.nodeid), []).append(item)
    items[:] = [item for name in longest_first(list(by_file), seconds) for item in by_file[name]]


def pytest_runtest_logreport(report):
    _measured[_file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not config.getoption("--record-file-seconds") or hasattr(config, "workerinput"):
        return  # in xdist's processes: the controller sees every report and records
    everything = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not (
        config.getoption("--fast") or config.getoption("keyword") or config.getoption("markexpr"))
    if exitstatus != 0 or not everything:
        return  # only a full run that passed measures every file
    with open(SECONDS_FILE, "w") as f:
        json.dump({name: round(s, 1) for name, s in sorted(_measured.items())}, f, indent=0, sort_keys=True)
        f.write("\n")
