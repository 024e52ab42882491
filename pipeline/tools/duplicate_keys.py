"""Which record keys repeat, in memory bounded by a bucket, however many records there are.

1. ``add`` takes each key's 16-byte BLAKE2b fingerprint with where the record is (shard index, 1-based
   record number in the shard); rows (24 bytes each) gather in a fixed buffer, then are appended to one of
   2**bits bucket files in a temporary folder on local disk, the bucket being the fingerprint's first bits;
2. ``repeats`` reads one bucket at a time, sorts it with numpy and finds equal neighbours. A bucket larger
   than ``bucket_rows`` (the expected count was too low) is first split on the next bits, streamed.

``bits`` is chosen from the expected number of keys so that a bucket holds about ``bucket_rows`` rows. Two
different keys share a fingerprint with probability about n² / 2¹²⁹ (10⁻²² for 10⁸ keys). The temporary folder
holds 24 bytes a key until ``close``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from array import array
from dataclasses import dataclass

import numpy as np

from transforms.keys.fingerprints import fingerprint

__all__ = ["DuplicateKeys", "Repeat", "fingerprint", "BUCKET_ROWS"]

BUCKET_ROWS = 1_000_000
_MAX_BITS = 16        # at most 65,536 bucket files up front; larger buckets are split when read
_SPLIT_BITS = 4       # an oversized bucket becomes 16
ROW = np.dtype([("hi", ">u8"), ("lo", ">u8"), ("shard", "<u4"), ("record", "<u4")])
_FOUND = np.dtype([("shard", "<u4"), ("record", "<u4"), ("first_shard", "<u4"), ("hi", ">u8"), ("lo", ">u8")])


@dataclass(frozen=True)
class Repeat:
    """A record whose key an earlier record (in shard ``first_shard``) already had."""

    shard: int
    record: int
    first_shard: int
    fingerprint: bytes


def bucket_bits(expected: int, bucket_rows: int = BUCKET_ROWS) -> int:
    """Fingerprint bits that pick a bucket, so that ``expected`` keys make buckets of at most ``bucket_rows``."""
    if expected <= bucket_rows:
        return 0
    return min(_MAX_BITS, math.ceil(math.log2(expected / bucket_rows)))


def _top_bits(hi: np.ndarray, start: int, bits: int) -> np.ndarray:
    """Bits ``start`` .. ``start + bits`` (from the most significant) of the fingerprints' first 8 bytes."""
    if bits == 0:
        return np.zeros(len(hi), np.int64)
    return ((hi << np.uint64(start)) >> np.uint64(64 - bits)).astype(np.int64)


def _append_by_bucket(rows: np.ndarray, buckets: np.ndarray, path_of) -> None:
    order = np.argsort(buckets, kind="stable")
    rows, buckets = rows[order], buckets[order]
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    for begin, end in zip(starts, np.r_[starts[1:], len(rows)], strict=True):
        with open(path_of(int(buckets[begin])), "ab") as f:
            rows[begin:end].tofile(f)


def repeats_in(rows: np.ndarray, limit: int) -> tuple[int, np.ndarray]:
    """(how many rows repeat an earlier row's fingerprint, the first ``limit`` of them in reading order)."""
    if len(rows) < 2:
        return 0, np.empty(0, _FOUND)
    rows = rows[np.lexsort((rows["record"], rows["shard"], rows["lo"], rows["hi"]))]
    same = (rows["hi"][1:] == rows["hi"][:-1]) & (rows["lo"][1:] == rows["lo"][:-1])
    later = np.flatnonzero(same) + 1
    starts = np.flatnonzero(np.r_[True, ~same])
    first = starts[np.searchsorted(starts, later, side="right") - 1]
    found = np.empty(len(later), _FOUND)
    found["shard"], found["record"] = rows["shard"][later], rows["record"][later]
    found["first_shard"], found["hi"], found["lo"] = rows["shard"][first], rows["hi"][later], rows["lo"][later]
    return len(later), _earliest(found, limit)


def _earliest(found: np.ndarray, limit: int) -> np.ndarray:
    return found[np.lexsort((found["record"], found["shard"]))[:limit]]


class DuplicateKeys:
    """Fingerprints of keys spread over bucket files; see the module docstring. Use as a context manager."""

    def __init__(self, expected: int, bucket_rows: int = BUCKET_ROWS, buffer_rows: int = BUCKET_ROWS,
                 directory: str | None = None):
        self._bucket_rows = max(1, bucket_rows)
        self._buffer_rows = max(1, buffer_rows)
        self._bits = bucket_bits(expected, self._bucket_rows)
        self._dir = tempfile.mkdtemp(prefix="featurebeam-keys-", dir=directory)
        self._fps = bytearray()
        self._shards = array("I")
        self._records = array("I")

    def __enter__(self) -> DuplicateKeys:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def buckets(self) -> int:
        return 2 ** self._bits

    def add(self, key: str, shard: int, record: int) -> None:
        self._fps += fingerprint(key)
        self._shards.append(shard)
        self._records.append(record)
        if len(self._shards) >= self._buffer_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._shards:
            return
        rows = np.empty(len(self._shards), ROW)
        fps = np.frombuffer(self._fps, ">u8").reshape(-1, 2)
        rows["hi"], rows["lo"] = fps[:, 0], fps[:, 1]
        rows["shard"], rows["record"] = np.asarray(self._shards), np.asarray(self._records)
        _append_by_bucket(rows, _top_bits(rows["hi"], 0, self._bits), lambda b: os.path.join(self._dir, f"{b:05d}"))
        self._fps, self._shards, self._records = bytearray(), array("I"), array("I")

    def repeats(self, limit: int) -> tuple[int, list[Repeat]]:
        """(how many records repeat an earlier record's key, the first ``limit`` of them in reading order)."""
        self._flush()
        total, kept = 0, np.empty(0, _FOUND)
        for name in sorted(os.listdir(self._dir)):
            n, found = self._check(os.path.join(self._dir, name), self._bits, limit)
            total += n
            kept = _earliest(np.concatenate([kept, found]), limit)
        return total, [Repeat(int(r["shard"]), int(r["record"]), int(r["first_shard"]),
                              int(r["hi"]).to_bytes(8, "big") + int(r["lo"]).to_bytes(8, "big")) for r in kept]

    def _check(self, path: str, bits: int, limit: int) -> tuple[int, np.ndarray]:
        """Repeats in one bucket file (deleted once read), split first when it holds too many rows."""
        size = os.path.getsize(path) // ROW.itemsize
        if size <= self._bucket_rows or bits + _SPLIT_BITS > 64:
            rows = np.fromfile(path, ROW)
            os.remove(path)
            return repeats_in(rows, limit)
        for offset in range(0, size, self._bucket_rows):
            chunk = np.fromfile(path, ROW, count=self._bucket_rows, offset=offset * ROW.itemsize)
            _append_by_bucket(chunk, _top_bits(chunk["hi"], bits, _SPLIT_BITS), lambda b: f"{path}.{b:02d}")
        os.remove(path)
        total, kept = 0, np.empty(0, _FOUND)
        for part in sorted(p for p in os.listdir(self._dir) if p.startswith(os.path.basename(path) + ".")):
            n, found = self._check(os.path.join(self._dir, part), bits + _SPLIT_BITS, limit)
            total += n
            kept = _earliest(np.concatenate([kept, found]), limit)
        return total, kept
