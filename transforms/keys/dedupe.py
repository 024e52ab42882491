"""Each key once: which keys were given more than once, and one committed copy of each, decided on the workers.

Copies come from inputs given twice (the same file in a manifest twice, a folder given twice) and from a
distributed runner retrying a bundle after some of its commits were made. Those commits are on disk but not
in the pipeline, so ``ResolveDuplicates`` starts from every commit record in OUTDIR, once the run's last
commit is made:

1. each commit's keys file is read on a worker and packed by fingerprint bucket (``transforms/keys/fingerprints.py``):
   a fingerprint, its position in the commit, and a fingerprint of its label and split; a pack of more than
   a few KB goes to a scratch file (``transforms/keys/spill.py``), so the shuffle carries references, not keys;
2. each bucket is examined on one worker: of the copies of a key, an embedded copy is kept over a failed
   one, then the one of the lowest (commit id, position), whatever the order commits are found in; when the
   embedded copies disagree on label or split, none is kept and the key becomes one ``ConflictingDuplicates``
   failure;
3. each commit with copies to drop is rewritten (``commit_checks.drop_records``); the conflicting keys are
   committed as dead letters.

``CountRepeatedKeys`` counts the input keys given more than once the same way, from fingerprints.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms.keys.fingerprints import (
    FINGERPRINT,
    PackKeysFn,
    Packs,
    as_fingerprints,
    column,
    fingerprint,
    repeats,
)
from transforms.keys.spill import scratch_folder, spill, unspill
from transforms.schema.elements import Failure
from transforms.schema.layout import FEATURES_DIR
from transforms.worker.process import WorkerDoFn
from transforms.write import commit_checks
from transforms.write.commit_format import current_commits
from transforms.write.committers import FailureCommitFn

__all__ = ["ResolveDuplicates", "CountRepeatedKeys", "keep_one_copy", "conflict_failure"]

_EMBEDDED, _FAILED = 0, 1  # ranks: an embedded copy is kept over a failed one


def _meta(label, split) -> bytes:
    return fingerprint(json.dumps([label, split]))


class _ListCommitsFn(WorkerDoFn):
    """(after the barrier) -> the path of every commit record in OUTDIR; none when they hold as many records
    as there are distinct input keys.

    That shortcut is exact: every distinct input key is in at least one commit (each input is embedded or
    failed, or skipped because a verified commit holds it), so commits holding no more records than there are
    distinct keys hold each key once, and nothing else."""

    def __init__(self, output: str):
        self._output = output

    def process(self, _, barrier=None, distinct_keys=None):
        commits, unreadable = commit_checks.read_commit_records(self._output)
        commits = current_commits(commits)  # a replaced commit's records are in its replacement
        if not unreadable and distinct_keys is not None and sum(c.records for c in commits) == distinct_keys:
            return
        yield from sorted([FileSystems.join(self._output, c.marker) for c in commits] + unreadable)


class _CopiesFn(WorkerDoFn):
    """Commit record path -> ``(bucket, pack)``, one per bucket its keys fall in; a pack's columns are the
    commit id, its rank, and the fingerprints, metas and positions of its keys there (``spill``ed)."""

    def __init__(self, output: str, scratch: str):
        self._output = output
        self._scratch = scratch

    def process(self, marker: str):
        commit = commit_checks.read_commit(marker)
        rank = _EMBEDDED if commit.kind == FEATURES_DIR else _FAILED
        packs = Packs(columns=(FINGERPRINT, np.int32), rows=1 << 62)
        for pos, (key, label, split) in enumerate(commit_checks.read_commit_keys(self._output, commit)):
            packs.add(fingerprint(key), _meta(label, split), pos)
        for bucket, (fps, metas, positions) in packs.drain():
            yield bucket, spill(self._scratch, (commit.id.encode("ascii"), bytes([rank]), fps, metas, positions))


class _KeepOneCopyFn(WorkerDoFn):
    """(bucket, packs) -> ``(commit id, (positions to drop, of which conflicting))`` (``keep_one_copy``)."""

    def process(self, element):
        _, packs = element
        yield from keep_one_copy((commit_id.decode("ascii"), rank[0], fps, metas, positions)
                                 for commit_id, rank, fps, metas, positions in unspill(packs)).items()


def keep_one_copy(packs) -> dict[str, tuple[set[int], set[int]]]:
    """One bucket's packs -> commit id -> (positions to drop, of which conflicting embedded copies).

    Pure: which copy stays depends only on the copies, not on the order of the packs."""
    ids, fps, metas, ranks, positions, owners = [], [], [], [], [], []
    for commit_id, rank, fp, meta, pos in packs:
        n = len(fp) // FINGERPRINT.itemsize
        fps.append(as_fingerprints(fp))
        metas.append(as_fingerprints(meta))
        positions.append(column(pos, np.int32))
        ranks.append(np.full(n, rank, dtype=np.int8))
        owners.append(np.full(n, len(ids), dtype=np.int32))
        ids.append(commit_id)
    if not ids:
        return {}
    fps = np.concatenate(fps)
    _, inverse, counts = np.unique(fps, return_inverse=True, return_counts=True)
    repeated = np.nonzero(counts[inverse] > 1)[0]
    if not len(repeated):
        return {}
    metas, ranks, positions, owners = (np.concatenate(a) for a in (metas, ranks, positions, owners))
    groups = defaultdict(list)
    for i in repeated:
        groups[int(inverse[i])].append((int(ranks[i]), ids[owners[i]], int(positions[i]), metas[i].tobytes()))
    result: dict[str, tuple[set[int], set[int]]] = defaultdict(lambda: (set(), set()))
    for copies in groups.values():
        embedded = [c for c in copies if c[0] == _EMBEDDED]
        conflict = len({c[3] for c in embedded}) > 1
        keep = None if conflict else min(copies)[:3]
        for rank, commit_id, pos, _ in copies:
            if (rank, commit_id, pos) != keep:
                drop, conflicting = result[commit_id]
                drop.add(pos)
                if conflict and rank == _EMBEDDED:
                    conflicting.add(pos)
    return dict(result)


class _DropCopiesFn(WorkerDoFn):
    """(commit id, [(drop, conflicting), ...]) -> the commit rewritten without them; outputs (1, copies dropped,
    smallest key dropped) and, tagged ``conflicts``, ``(key, (label, split))`` of each conflicting copy."""

    def __init__(self, output: str, generation: int):
        self._output = output
        self._generation = generation

    def process(self, element):
        commit_id, decisions = element
        drop, conflicting = set(), set()
        for d, c in decisions:
            drop |= d
            conflicting |= c
        commit = commit_checks.read_commit_by_id(self._output, commit_id)
        keys = commit_checks.read_commit_keys(self._output, commit)
        for pos in sorted(conflicting):
            key, label, split = keys[pos]
            yield beam.pvalue.TaggedOutput("conflicts", (key, (label, split)))
        dropped = [keys[pos][0] for pos in drop - conflicting]
        commit_checks.drop_records(self._output, commit, drop, self._generation, copies=True)
        yield 1, len(drop), min(dropped) if dropped else None


def conflict_failure(key: str, metas: Sequence[tuple]) -> Failure:
    """The failure of a key whose embedded copies disagree on label or split (``metas``: their (label, split))."""
    shown = sorted({f"label {label!r}" + (f", split {split!r}" if split is not None else "")
                    for label, split in metas})
    return Failure(key, key, "dedupe", commit_checks.DUPLICATE_CONFLICT,
                   f"the input appears {len(metas)} times with different labels or splits ({'; '.join(shown)[:300]});"
                   " none is kept: make its copies agree or remove all but one")


class _SummaryFn(beam.CombineFn):
    """(commits rewritten, copies dropped, smallest key dropped) tuples, summed."""

    def create_accumulator(self):
        return 0, 0, None

    def add_input(self, acc, summary):
        return self.merge_accumulators([acc, summary])

    def merge_accumulators(self, accumulators):
        rewritten, dropped, examples = 0, 0, []
        for r, d, e in accumulators:
            rewritten, dropped = rewritten + r, dropped + d
            examples += [e] if e is not None else []
        return rewritten, dropped, min(examples) if examples else None

    def extract_output(self, acc):
        return acc


class ResolveDuplicates(beam.PTransform):
    """``barrier`` (a PCollection ready once every commit of the run is made) -> a one-element PCollection
    ``(commits rewritten, copies dropped, smallest key dropped)``, ready once every commit is rewritten and
    every conflict committed.

    ``distinct_keys``: optionally, a one-element PCollection, the number of distinct keys the set should hold;
    when the commits hold exactly that many records, no key repeats and nothing more is read. Commits are
    rewritten (and conflicts committed) for feature set ``generation`` (``commit_checks.drop_records``)."""

    def __init__(self, output: str, records_per_commit: int, distinct_keys=None, generation: int = 1):
        super().__init__()
        self._output = output
        self._scratch = scratch_folder(output, "duplicates")
        self._records_per_commit = records_per_commit
        self._distinct_keys = distinct_keys
        self._generation = generation

    def expand(self, barrier):
        distinct = () if self._distinct_keys is None else (beam.pvalue.AsSingleton(self._distinct_keys),)
        dropped = (
            barrier.pipeline
            | "Start" >> beam.Create([None])
            | "List commit records" >> beam.ParDo(_ListCommitsFn(self._output), beam.pvalue.AsSingleton(barrier),
                                                  *distinct)
            | "Spread commits" >> beam.Reshuffle()
            | "Pack keys by bucket" >> beam.ParDo(_CopiesFn(self._output, self._scratch))
            | "Group buckets" >> beam.GroupByKey()
            | "Keep one copy" >> beam.ParDo(_KeepOneCopyFn())
            | "Group by commit" >> beam.GroupByKey()
            | "Drop copies" >> beam.ParDo(_DropCopiesFn(self._output, self._generation)).with_outputs(
                "conflicts", main="summaries")
        )
        commit_failures = FailureCommitFn(self._output, records_per_commit=self._records_per_commit,
                                          generation=self._generation)
        conflicts = (
            dropped.conflicts
            | "Group conflicts" >> beam.GroupByKey()
            | "One failure per key" >> beam.MapTuple(conflict_failure)
            | "Commit conflicts" >> beam.ParDo(commit_failures)
            | "Conflicts committed" >> beam.Map(lambda _: (0, 0, None))
        )
        return ((dropped.summaries, conflicts)
                | "Everything resolved" >> beam.Flatten()
                | "Summary" >> beam.CombineGlobally(_SummaryFn()))


class _RepeatsFn(WorkerDoFn):
    """(bucket, packs) -> how many of its fingerprints repeat one given before."""

    def process(self, element):
        _, packs = element
        yield repeats(np.concatenate([as_fingerprints(fps) for (fps,) in unspill(packs)]))


class CountRepeatedKeys(beam.PTransform):
    """Keys (one PCollection, or several) -> a one-element PCollection: how many repeat a key given before
    (copies beyond the first), over all of them.

    Each PCollection's keys are packed where they are produced, before anything joins them: a Flatten of
    single keys would have a local runner hold every key between steps. Packs go through the shuffle as
    references to files under ``scratch`` (``transforms/keys/spill.py``), so neither does the shuffle."""

    def __init__(self, scratch: str):
        super().__init__()
        self._scratch = scratch

    def expand(self, keys):
        sources = keys if isinstance(keys, (tuple, list)) else (keys,)
        return ([pcoll | f"Pack by bucket {i}" >> beam.ParDo(PackKeysFn(self._scratch))
                 for i, pcoll in enumerate(sources)]
                | "Every pack" >> beam.Flatten()
                | "Group buckets" >> beam.GroupByKey()
                | "Repeats per bucket" >> beam.ParDo(_RepeatsFn())
                | "Sum" >> beam.CombineGlobally(sum))
