"""Which keys of each unit of reading work an earlier run already committed, found by a join on the workers.

A resumed run must not read again what is done, and no process may hold every done key. So the question is
asked per fingerprint bucket (``transforms/keys/fingerprints.py``):

1. the keys of every unit (from its index: nothing is read) are packed by bucket with the unit they belong
   to; the keys of every verified earlier commit (from its keys file) likewise;
2. each bucket, on one worker, matches the two: the done keys of each unit go out keyed by the unit;
3. ``ReadRecords`` groups them with the unit itself, and reads the unit skipping those keys.

Packs (1.) and the done keys of a unit (2.) cross the shuffle as references to scratch files under ``scratch``
(``transforms/keys/spill.py``) once they are more than a few KB, so the runner carries no fingerprints.
"""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np

from transforms.keys.fingerprints import (
    PACK_ROWS,
    PackKeysFn,
    Packs,
    as_fingerprints,
    column,
    fingerprint,
    in_global_window,
)
from transforms.keys.spill import spill, unspill
from transforms.worker.process import WorkerDoFn

__all__ = ["DoneKeysOfUnits", "unit_id", "done_per_unit", "done_set"]

DONE, WANTED = "done", "wanted"
_DONE, _WANTED = DONE.encode(), WANTED.encode()  # a pack's first column


def unit_id(unit, keys) -> str:
    """What groups a unit with its done keys: its first key (units that share one are read alike)."""
    return f"{type(unit).__name__}:{keys[0] if keys else ''}"


class _WantedFn(WorkerDoFn):
    """(unit id, keys) -> ``(bucket, pack)`` per bundle, a pack's columns ``(WANTED, unit ids as JSON, unit of
    each key, fingerprints)``."""

    def __init__(self, scratch: str):
        self._scratch = scratch

    def start_bundle(self):
        self._ids, self._packs, self._n = [], Packs(columns=(np.int32,), rows=1 << 62), 0

    def process(self, element):
        uid, keys = element
        index = len(self._ids)
        self._ids.append(uid)
        for key in keys:
            self._packs.add(fingerprint(key), index)
        self._n += len(keys)
        if self._n >= PACK_ROWS:
            yield from self._drain()

    def finish_bundle(self):
        for pack in self._drain():
            yield in_global_window(pack)

    def _drain(self):
        for bucket, (fps, indices) in self._packs.drain():
            used, local = np.unique(column(indices, np.int32), return_inverse=True)
            ids = json.dumps([self._ids[i] for i in used]).encode("utf-8")
            yield bucket, spill(self._scratch, (_WANTED, ids, local.astype(np.int32).tobytes(), fps))
        self.start_bundle()


def _keys_of_commit(verified) -> list[str]:
    """(a verified earlier ``Commit``, its keys) -> its keys."""
    return verified[1]


def done_per_unit(packs):
    """One bucket's packs (their columns) -> ``(unit id, fingerprints of its done keys)`` for each unit with any."""
    packs = list(packs)
    done = [as_fingerprints(p[1]) for p in packs if p[0] == _DONE]
    if not done:
        return
    done = np.unique(np.concatenate(done))
    for tag, *rest in packs:
        if tag != _WANTED:
            continue
        ids, local, fps = rest
        ids, fps, local = json.loads(ids), as_fingerprints(fps), column(local, np.int32)
        hit = np.isin(fps, done)
        if not hit.any():
            continue
        fps, local = fps[hit], local[hit]
        order = np.argsort(local, kind="stable")
        fps, local = fps[order], local[order]
        starts = np.flatnonzero(np.r_[True, local[1:] != local[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(local)], strict=True):
            yield ids[local[start]], fps[start:end].tobytes()


class _MatchDoneKeysFn(WorkerDoFn):
    """(bucket, packs) -> ``(unit id, done fingerprints)`` for each unit with done keys there, ``spill``ed."""

    def __init__(self, scratch: str):
        self._scratch = scratch

    def process(self, element):
        _, packs = element
        for uid, fps in done_per_unit(unspill(packs)):
            yield uid, spill(self._scratch, (fps,))


class DoneKeysOfUnits(beam.PTransform):
    """``(unit id, keys)`` of every unit, and ``(Commit, keys)`` of the verified earlier commits ->
    ``(unit id, done fingerprints)``, inline or spilled under ``scratch`` (``done_set`` reads them)."""

    def __init__(self, done_commits, scratch: str):
        super().__init__()
        self._done_commits = done_commits
        self._scratch = scratch

    def expand(self, unit_keys):
        wanted = unit_keys | "Pack keys of units" >> beam.ParDo(_WantedFn(self._scratch))
        done = self._done_commits | "Pack committed keys" >> beam.ParDo(
            PackKeysFn(self._scratch, _keys_of_commit, _DONE))
        return ((wanted, done)
                | "Both" >> beam.Flatten()
                | "Group buckets" >> beam.GroupByKey()
                | "Match done keys" >> beam.ParDo(_MatchDoneKeysFn(self._scratch)))


def done_set(packs) -> frozenset[bytes]:
    """The done fingerprints of a unit, from what ``DoneKeysOfUnits`` gave it (inline or spilled), as a set."""
    return frozenset(fp.tobytes() for (data,) in unspill(packs) for fp in as_fingerprints(data))
