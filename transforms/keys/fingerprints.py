"""Keys as 16-byte fingerprints, gathered in buckets: how the job answers per-key questions (which keys repeat,
which an earlier run committed) on the workers, with no process holding every key.

A key's fingerprint is its 128-bit BLAKE2b digest: two different keys share one with probability about
n² / 2¹²⁹ (10⁻²² for 10⁸ keys). Its first byte picks one of ``BUCKETS`` buckets. Steps pack fingerprints
(with any fixed-width columns they need) into one pack per bucket and bundle, ``Packs``, write each pack to a
scratch file (``transforms/keys/spill.py``) and group the references by bucket, so the runner's shuffle carries a
reference per pack, not bytes per key, and each bucket (about 1 / ``BUCKETS`` of the keys) is examined by one
worker with numpy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.keys.spill import spill_packs
from transforms.worker.process import WorkerDoFn

__all__ = ["BUCKETS", "FINGERPRINT", "fingerprint", "bucket_of", "as_fingerprints", "Packs", "in_global_window",
           "column", "repeats", "PackKeysFn"]

BUCKETS = 64
FINGERPRINT = np.dtype("V16")
PACK_ROWS = 100_000  # packs are handed out once this many rows are held (bounds a worker's buffer)


def fingerprint(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


def bucket_of(fp: bytes) -> int:
    return fp[0] % BUCKETS


def as_fingerprints(data: bytes) -> np.ndarray:
    """Concatenated fingerprints as a numpy array (sortable, comparable, ``np.isin``-able)."""
    return np.frombuffer(data, dtype=FINGERPRINT)


def in_global_window(value) -> WindowedValue:
    """An element output from ``finish_bundle`` of a batch job."""
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


class Packs:
    """Rows of a fingerprint and further columns (more fingerprints, or int32) gathered per bucket. ``add``
    returns every pack once ``rows`` rows are held (else nothing), ``drain`` the rest. A pack is
    ``(bucket, (column bytes, ...))``: the fingerprints, then each column as bytes (``column`` reads one back);
    packs come in bucket order, rows in the order they were added. Rows are held column by column and sorted
    into buckets at once when drained (numpy), so adding one costs a few list appends."""

    def __init__(self, columns=(), rows: int = PACK_ROWS):
        self._dtypes = (FINGERPRINT, *(np.dtype(c) for c in columns))
        self._rows = rows
        self._cols = [[] for _ in self._dtypes]

    def add(self, fp: bytes, *values) -> list:
        for column, value in zip(self._cols, (fp, *values), strict=True):
            column.append(value)
        return list(self.drain()) if len(self._cols[0]) >= self._rows else []

    def drain(self) -> Iterator:
        cols, self._cols = self._cols, [[] for _ in self._dtypes]
        if not cols[0]:
            return
        arrays = [np.frombuffer(b"".join(c), FINGERPRINT) if dtype == FINGERPRINT else np.asarray(c, dtype=dtype)
                  for c, dtype in zip(cols, self._dtypes, strict=True)]
        buckets = np.frombuffer(arrays[0].tobytes(), np.uint8)[::FINGERPRINT.itemsize] % BUCKETS
        order = np.argsort(buckets, kind="stable")
        ordered = buckets[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(order)], strict=True):
            rows = order[start:end]
            yield int(ordered[start]), tuple(a[rows].tobytes() for a in arrays)


def column(data: bytes, dtype) -> np.ndarray:
    """One column of a pack as an array."""
    return np.frombuffer(data, dtype=dtype)


def repeats(fps: np.ndarray) -> int:
    """How many fingerprints repeat one given before (copies beyond the first)."""
    return int(len(fps) - len(np.unique(fps))) if len(fps) else 0


class PackKeysFn(WorkerDoFn):
    """Keys -> ``(bucket, pack)`` of their fingerprints, per bundle, each pack spilled under ``scratch``
    (``transforms.keys.spill``). ``keys_of``: an element's keys (default: the element is one key, or a tuple of
    them); ``tag``: a first column put before the fingerprints, to tell packs of several sources apart in one
    bucket."""

    def __init__(self, scratch: str, keys_of=None, tag: bytes | None = None):
        self._scratch = scratch
        self._keys_of = keys_of
        self._tag = tag

    def start_bundle(self):
        self._packs = Packs()

    def process(self, element):
        keys = self._keys_of(element) if self._keys_of else element if isinstance(element, tuple) else (element,)
        for key in keys:
            yield from self._spilled(self._packs.add(fingerprint(key)))

    def finish_bundle(self):
        for pack in self._spilled(self._packs.drain()):
            yield in_global_window(pack)

    def _spilled(self, packs):
        if self._tag is not None:
            packs = ((bucket, (self._tag, *columns)) for bucket, columns in packs)
        return spill_packs(self._scratch, packs)
