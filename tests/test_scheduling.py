"""The suite's files are handed out longest first, by the seconds a recorded full run measured them at."""

from __future__ import annotations

import json
import os

from tests.scheduling import SECONDS_FILE, longest_first

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recorded_files_go_longest_first_and_new_ones_after_them_in_their_order():
    files = ["tests/a.py", "tests/new_b.py", "tests/c.py", "tests/d.py", "tests/new_a.py"]
    seconds = {"tests/a.py": 3.0, "tests/c.py": 80.0, "tests/d.py": 12.5, "tests/gone.py": 99.0}
    assert longest_first(files, seconds) == ["tests/c.py", "tests/d.py", "tests/a.py", "tests/new_b.py",
                                             "tests/new_a.py"]


def test_this_collection_runs_in_that_order(request):
    with open(SECONDS_FILE) as f:
        seconds = json.load(f)
    collected = list(dict.fromkeys(item.nodeid.split("::", 1)[0] for item in request.session.items))
    recorded = [name for name in collected if name in seconds]
    assert recorded == sorted(recorded, key=lambda name: -seconds[name])
    assert collected[:len(recorded)] == recorded  # the recorded ones first


def test_the_recorded_seconds_name_test_files_of_this_tree():
    with open(SECONDS_FILE) as f:
        seconds = json.load(f)
    assert seconds and all(s >= 0 for s in seconds.values())
    assert all(os.path.basename(name).startswith("test_") and name.endswith(".py") for name in seconds)
    assert [name for name in seconds if not os.path.isfile(os.path.join(REPO, name))] == []  # record again
