"""Which records of each unit of reading work an earlier run already committed, and which committed records are
stale, found by one join on the workers.

A resumed or updated run must not read again what is done, must drop what no longer matches its input, and no
process may hold every key. A committed record is done while its input is listed with the source version it was
read at (``transforms/read/versions.py``); it is stale when its input is listed with another version (changed) or
not at all (removed). The question is asked per fingerprint bucket (``transforms/keys/fingerprints.py``):

1. the keys of every unit (from its index: nothing is read) are packed by bucket with the unit they belong to
   and a fingerprint of key and version; the records of every verified earlier commit (from its keys file)
   likewise, with their positions in the commit;
2. each bucket, on one worker, matches the two (``match_bucket``): the done keys of each unit go out keyed by
   the unit, the positions of each commit's stale records keyed by the commit (with how many changed and how
   many were removed), and the number of records kept though their input is gone (``keep_removed``);
3. ``ReadRecords`` groups done keys with the unit itself, and reads the unit skipping those keys; the job drops
   the stale records from their commits (``DropStaleRecords``).

Packs (1.) and the done keys of a unit (2.) cross the shuffle as references to scratch files under ``scratch``
(``transforms/keys/spill.py``) once they are more than a few KB, so the runner carries no fingerprints.
"""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np

from transforms.keys.fingerprints import (
    FINGERPRINT,
    PACK_ROWS,
    Packs,
    as_fingerprints,
    column,
    fingerprint,
    in_global_window,
)
from transforms.keys.spill import spill, unspill
from transforms.worker.process import WorkerDoFn
from transforms.write import commit_checks

__all__ = ["MatchCommitted", "DropStaleRecords", "unit_id", "match_bucket", "done_set", "version_fingerprint",
           "DONE", "STALE", "RETAINED"]

DONE, STALE, RETAINED = "done", "stale", "retained"  # the outputs of ``MatchCommitted``
_COMMITTED, _WANTED = b"committed", b"wanted"  # a pack's first column


def unit_id(unit, keys) -> str:
    """What groups a unit with its done keys: its first key (units that share one are read alike)."""
    return f"{type(unit).__name__}:{keys[0] if keys else ''}"


def version_fingerprint(key: str, version: str | None) -> bytes:
    """A record's key and source version as one fingerprint: equal only for the same key at the same version."""
    return fingerprint(f"{key}\x00{version or ''}")


class _WantedFn(WorkerDoFn):
    """(unit id, keys, version) -> ``(bucket, pack)`` per bundle, a pack's columns ``(WANTED, unit ids as JSON,
    key fingerprints, key-and-version fingerprints, unit of each key)``."""

    def __init__(self, scratch: str):
        self._scratch = scratch

    def start_bundle(self):
        self._ids, self._packs, self._n = [], Packs(columns=(FINGERPRINT, np.int32), rows=1 << 62), 0

    def process(self, element):
        uid, keys, version = element
        index = len(self._ids)
        self._ids.append(uid)
        for key in keys:
            self._packs.add(fingerprint(key), version_fingerprint(key, version), index)
        self._n += len(keys)
        if self._n >= PACK_ROWS:
            yield from self._drain()

    def finish_bundle(self):
        for pack in self._drain():
            yield in_global_window(pack)

    def _drain(self):
        for bucket, (fps, kvs, indices) in self._packs.drain():
            used, local = np.unique(column(indices, np.int32), return_inverse=True)
            ids = json.dumps([self._ids[i] for i in used]).encode("utf-8")
            yield bucket, spill(self._scratch, (_WANTED, ids, fps, kvs, local.astype(np.int32).tobytes()))
        self.start_bundle()


class _CommittedFn(WorkerDoFn):
    """(a verified earlier ``Commit``, its (key, version) entries) -> ``(bucket, pack)`` per bucket its keys fall
    in, a pack's columns ``(COMMITTED, commit id, key fingerprints, key-and-version fingerprints, positions)``; an
    entry None stays out of the join (its container is kept whole: ``whole_containers.py``)."""

    def __init__(self, scratch: str):
        self._scratch = scratch

    def process(self, verified):
        commit, entries = verified
        packs = Packs(columns=(FINGERPRINT, np.int32), rows=1 << 62)
        for pos, entry in enumerate(entries):
            if entry is not None:
                packs.add(fingerprint(entry[0]), version_fingerprint(*entry), pos)
        for bucket, columns in packs.drain():
            yield bucket, spill(self._scratch, (_COMMITTED, commit.id.encode("ascii"), *columns))


def _rows(packs, tag: bytes):
    return [rest for t, *rest in packs if t == tag]


def _fingerprint_set(columns) -> set[bytes]:
    """The fingerprints of several pack columns as one set (a bucket's share of the keys: hashing beats sorting
    16-byte values, which numpy compares byte by byte)."""
    return {fp for data in columns for fp in as_fingerprints(data).tolist()}


def _member(column_bytes: bytes, of: set[bytes]) -> np.ndarray:
    """Which fingerprints of a pack column are in ``of``, as a boolean array."""
    fps = as_fingerprints(column_bytes).tolist()
    return np.fromiter((fp in of for fp in fps), dtype=bool, count=len(fps))


def match_bucket(packs, keep_removed: bool = False):
    """One bucket's packs (their columns) -> ``(DONE, unit id, fingerprints of its done keys)`` for each unit with
    any, ``(STALE, commit id, (positions, changed, removed))`` for each commit with stale records to drop, and
    ``(RETAINED, n)``: records kept though no input lists their key (``keep_removed``)."""
    packs = list(packs)
    wanted, committed = _rows(packs, _WANTED), _rows(packs, _COMMITTED)
    if not committed:
        return
    committed_kvs = _fingerprint_set(c[2] for c in committed)
    for ids, fps, kvs, local in wanted:
        hit = _member(kvs, committed_kvs)
        if not hit.any():
            continue
        ids, fps, local = json.loads(ids), as_fingerprints(fps)[hit], column(local, np.int32)[hit]
        order = np.argsort(local, kind="stable")
        fps, local = fps[order], local[order]
        starts = np.flatnonzero(np.r_[True, local[1:] != local[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(local)], strict=True):
            yield DONE, ids[local[start]], fps[start:end].tobytes()
    del committed_kvs
    wanted_kvs, wanted_keys = _fingerprint_set(w[2] for w in wanted), None
    retained = 0
    for commit_id, fps, kvs, positions in committed:
        stale = ~_member(kvs, wanted_kvs)
        if not stale.any():
            continue
        wanted_keys = _fingerprint_set(w[1] for w in wanted) if wanted_keys is None else wanted_keys
        listed = _member(as_fingerprints(fps)[stale].tobytes(), wanted_keys)
        positions = column(positions, np.int32)[stale]
        if keep_removed:
            retained += int((~listed).sum())
            positions, listed = positions[listed], listed[listed]
        if len(positions):
            yield STALE, commit_id.decode("ascii"), (positions.tobytes(), int(listed.sum()), int((~listed).sum()))
    if retained:
        yield RETAINED, retained


class _MatchFn(WorkerDoFn):
    """(bucket, packs) -> ``match_bucket``'s answers, tagged: done fingerprints (``spill``ed) keyed by unit as the
    main output, ``STALE`` decisions keyed by commit, ``RETAINED`` counts."""

    def __init__(self, scratch: str, keep_removed: bool):
        self._scratch = scratch
        self._keep_removed = keep_removed

    def process(self, element):
        _, packs = element
        for answer in match_bucket(unspill(packs), self._keep_removed):
            if answer[0] == DONE:
                yield answer[1], spill(self._scratch, (answer[2],))
            elif answer[0] == STALE:
                yield beam.pvalue.TaggedOutput(STALE, answer[1:])
            else:
                yield beam.pvalue.TaggedOutput(RETAINED, answer[1])


class MatchCommitted(beam.PTransform):
    """``(unit id, keys, version)`` of every unit, and ``(Commit, [(key, version), ...])`` of the verified earlier
    commits -> ``{DONE: (unit id, done fingerprints, inline or spilled under scratch; ``done_set`` reads them),
    STALE: (commit id, (positions as int32 bytes, changed, removed)), RETAINED: counts}``."""

    def __init__(self, done_commits, scratch: str, keep_removed: bool = False):
        super().__init__()
        self._done_commits = done_commits
        self._scratch = scratch
        self._keep_removed = keep_removed

    def expand(self, unit_keys):
        wanted = unit_keys | "Pack keys of units" >> beam.ParDo(_WantedFn(self._scratch))
        committed = self._done_commits | "Pack committed keys" >> beam.ParDo(_CommittedFn(self._scratch))
        matched = ((wanted, committed)
                   | "Both" >> beam.Flatten()
                   | "Group buckets" >> beam.GroupByKey()
                   | "Match committed keys" >> beam.ParDo(_MatchFn(self._scratch, self._keep_removed)).with_outputs(
                       STALE, RETAINED, main=DONE))
        return {DONE: matched[DONE], STALE: matched[STALE], RETAINED: matched[RETAINED]}


def done_set(packs) -> frozenset[bytes]:
    """The done fingerprints of a unit, from what ``MatchCommitted`` gave it (inline or spilled), as a set."""
    return frozenset(fp.tobytes() for (data,) in unspill(packs) for fp in as_fingerprints(data))


class _DropStaleFn(WorkerDoFn):
    """(commit id, [(positions, changed, removed), ...]) -> the commit without those records
    (``commit_checks.drop_records``: in place, or a replacement for a commit of an older generation); outputs
    the records dropped."""

    def __init__(self, output: str, generation: int):
        self._output = output
        self._generation = generation

    def process(self, element):
        commit_id, decisions = element
        drop, changed, removed = set(), 0, 0
        for positions, c, r in decisions:
            drop.update(int(p) for p in column(positions, np.int32))
            changed, removed = changed + c, removed + r
        commit = commit_checks.read_commit_by_id(self._output, commit_id)
        commit_checks.drop_records(self._output, commit, drop, self._generation,
                                   {"changed": changed, "removed": removed})
        yield len(drop)


class DropStaleRecords(beam.PTransform):
    """``MatchCommitted``'s ``STALE`` decisions -> each commit rewritten without its stale records, once; a
    PCollection of how many records each commit dropped."""

    def __init__(self, output: str, generation: int):
        super().__init__()
        self._output = output
        self._generation = generation

    def expand(self, stale):
        return (stale
                | "Group by commit" >> beam.GroupByKey()
                | "Drop stale records" >> beam.ParDo(_DropStaleFn(self._output, self._generation)))
