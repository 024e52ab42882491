"""Fixtures of the extraction tests."""

from __future__ import annotations

import os
import shutil

import pytest

from transforms.keys import spill


@pytest.fixture
def every_pack_spilled(monkeypatch):
    """Every pack of the job's per-key shuffles goes through a scratch file, however small (for a job run in this
    process); the list of the files read back."""
    read, real = [], spill._read
    monkeypatch.setattr(spill, "INLINE_BYTES", 0)
    monkeypatch.setattr(spill, "_read", lambda pack: read.append(pack.path) or real(pack))
    return read


@pytest.fixture
def archive(tmp_path, colours):
    """A copy of ``colours`` in two class folders, to change between runs (the ``--update`` tests)."""
    root = tmp_path / "archive"
    for i, name in enumerate(sorted(os.listdir(colours))):
        (root / ("warm" if i % 2 else "cool")).mkdir(parents=True, exist_ok=True)
        shutil.copy(colours / name, root / ("warm" if i % 2 else "cool") / name)
    return root
