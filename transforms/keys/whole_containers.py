"""Which listed containers an update keeps whole, without indexing them or listing their keys.

A container is a file of many records, each keyed ``URI#place``: a tar shard, a TFRecord file, a text file read as
a table or as lines. An update of a finished feature set keeps one whole when

- it is listed once, with a source version;
- the set holds records of it (its commits' sources files, ``transforms/write/commit_sources.py``), every one read
  at that version, and none of them was dropped as a copy of a key held twice;
- no earlier commit turned out damaged (one may have held some of its records; then nothing is kept whole).

A finished generation holds every record of every container it listed, read at the version it was listed with,
so such a container's records are all held and all current. It is not expanded, its held records are counted as
skipped, and they stay out of the record-by-record join (``done_keys.py``), which decides the rest as before: new
and changed containers, those no longer listed, loose files and manifest rows. Only an update that starts from a
published generation whose every commit has a sources file takes this way (``EarlierRun.whole_containers``); a
resumed run, or an update finishing an interrupted one, joins record by record.

The join is keyed by container URI on the workers: the listed containers, and per commit and container the
versions and number of records it holds. A commit whose records all belong to containers kept whole is not read
again; the others' keys are read, and those of kept containers left out of the join (None).
"""

from __future__ import annotations

import apache_beam as beam

from transforms.worker.process import WorkerDoFn
from transforms.write import commit_checks
from transforms.write.commit_sources import held_per_container

__all__ = ["CONTAINER_FORMATS", "KeepWholeContainers", "KEPT", "TO_READ", "decide_container", "rows_outside"]

CONTAINER_FORMATS = ("tar", "tfrecord", "text", "lines")
TO_READ, KEPT = "to_read", "kept"  # outputs: sources to expand and read; record counts of containers kept whole
_LISTED, _HELD, _COMMIT, _WHOLE = "listed", "held", "commit", "whole"


def decide_container(listed, held, damaged_commits: int) -> bool:
    """Whether a container is kept whole: ``listed``, the ``SourceFile``s listing it; ``held``, per commit that holds
    records of it, ``(commit id, versions, records)``."""
    if damaged_commits or len(listed) != 1 or not held:
        return False
    (source,) = listed
    return source.version is not None and all(versions == [source.version] for _, versions, _ in held)


def held_containers(verified):
    """(a verified earlier ``Commit``, its sources runs) -> ``(container, (HELD, (commit id, versions, records)))``
    for each container it holds records of."""
    commit, runs = verified
    for container, (versions, count) in held_per_container(runs or ()).items():
        yield container, (_HELD, (commit.id, sorted(versions, key=str), count))


class _DecideFn(WorkerDoFn):
    """(container URI, its listings and holdings) -> the ``SourceFile`` to read (main output), or, kept whole, its
    record count (``KEPT``) and ``(commit id, (WHOLE, URI))`` for each commit holding it (``_WHOLE``)."""

    def process(self, element, damaged_commits=0):
        uri, values = element
        values = list(values)
        listed = [v for tag, v in values if tag == _LISTED]
        held = [v for tag, v in values if tag == _HELD]
        if not decide_container(listed, held, damaged_commits):
            yield from listed
            return
        yield beam.pvalue.TaggedOutput(KEPT, sum(count for _, _, count in held))
        for commit_id in sorted({commit_id for commit_id, _, _ in held}):
            yield beam.pvalue.TaggedOutput(_WHOLE, (commit_id, (_WHOLE, uri)))


def rows_outside(runs, whole: set[str], n: int) -> list[bool]:
    """Which of a commit's ``n`` records (its ``runs``) belong to no container in ``whole``."""
    if runs is None:
        return [True] * n
    return [container not in whole for container, _, count in runs for _ in range(count)]


class _RowsFn(WorkerDoFn):
    """(commit id, [(COMMIT, (Commit, its sources runs)), (WHOLE, URI), ...]) -> ``(Commit, entries)`` for the
    record-by-record join, an entry None where its record belongs to a container kept whole; nothing for a commit
    that holds only such records (its keys file is not read)."""

    def __init__(self, output: str):
        self._output = output

    def process(self, element):
        _, values = element
        values = list(values)
        whole = {v for tag, v in values if tag == _WHOLE}
        for commit, runs in (v for tag, v in values if tag == _COMMIT):
            outside = rows_outside(runs if whole else None, whole, commit.records)
            if not any(outside):
                continue
            entries = [(key, version) for key, _, _, version in commit_checks.read_commit_entries(self._output,
                                                                                                 commit)]
            yield commit, [entry if out else None for entry, out in zip(entries, outside, strict=True)]


class KeepWholeContainers(beam.PTransform):
    """Listed ``SourceFile``s -> ``{TO_READ: the sources to expand and read, KEPT: record counts of the containers
    kept whole, "commits": (Commit, entries) of the verified earlier commits for the record-by-record join}``.

    ``verified``: ``(Commit, its sources runs)`` of the verified earlier commits (``VerifyCommitFn`` without
    ``parse``); ``damaged``: a one-element
    PCollection, how many earlier commits were found damaged and retired."""

    def __init__(self, output: str, verified, damaged):
        super().__init__()
        self._output = output
        self._verified = verified
        self._damaged = damaged

    def expand(self, sources):
        split = sources | "Containers or not" >> beam.Partition(
            lambda source, _: int(source.format in CONTAINER_FORMATS), 2)
        listed = split[1] | "Key containers" >> beam.Map(lambda source: (source.uri, (_LISTED, source)))
        held = self._verified | "Containers held" >> beam.FlatMap(held_containers)
        decided = ((listed, held)
                   | "Listed and held" >> beam.Flatten()
                   | "Group by container" >> beam.GroupByKey()
                   | "Keep whole or read" >> beam.ParDo(
                       _DecideFn(), damaged_commits=beam.pvalue.AsSingleton(self._damaged)).with_outputs(
                           KEPT, _WHOLE, main=TO_READ))
        commits = self._verified | "Key commits" >> beam.Map(lambda v: (v[0].id, (_COMMIT, v)))
        rows = ((commits, decided[_WHOLE])
                | "Commits and kept containers" >> beam.Flatten()
                | "Group by commit" >> beam.GroupByKey()
                | "Rows to join" >> beam.ParDo(_RowsFn(self._output)))
        to_read = (split[0], decided[TO_READ]) | "Sources to read" >> beam.Flatten()
        return {TO_READ: to_read, KEPT: decided[KEPT], "commits": rows}
