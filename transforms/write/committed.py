"""Reading what a run committed, and trusting it only when it checks out.

- ``read_commit_records``: every commit record in OUTDIR, and the ones that cannot be read;
- ``verify_commit``: whether a committed file is still the one committed (present, its size, its sha256);
- ``retire_commit``: a damaged commit's record moves to ``retired/`` (with the reason) and its file goes, so
  its inputs are done again;
- ``resolve_duplicates``: each key in exactly one commit, chosen the same way whatever the order of commits
  (embedded over failed, then the lowest commit id and position); copies that disagree on label or split keep
  neither and become one failure;
- ``VerifyCommitFn``: ``verify_commit`` as a Beam step, so a resumed run checks earlier commits on the workers.

The write side of the protocol is ``commits.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import schema
from transforms.framing import frame, iter_frames
from transforms.process import ready_process
from transforms.records import METRICS_NAMESPACE, Failure
from transforms.write.commits import Commit, CommitRecordError, write_atomically

__all__ = ["read_commits", "read_commit_records", "uncommitted_files", "failure_reasons", "verify_commit",
           "retire_commit", "resolve_duplicates", "VerifyCommitFn", "DUPLICATE_CONFLICT", "REDONE"]

DUPLICATE_CONFLICT = "ConflictingDuplicates"  # error type of a key whose copies disagree on label or split


def read_commit_records(output: str) -> tuple[list[Commit], list[str]]:
    """(every readable commit record in OUTDIR in a stable order, the paths of those that cannot be read)."""
    pattern = FileSystems.join(output, schema.COMMITS_DIR, "*.json")
    (match,) = FileSystems.match([pattern])
    commits, unreadable = [], []
    for path in sorted(m.path for m in match.metadata_list):
        try:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                commits.append(Commit.from_json(f.read().decode("utf-8")))
        except (CommitRecordError, UnicodeDecodeError):
            unreadable.append(path)
    return commits, unreadable


def read_commits(output: str) -> list[Commit]:
    """Every commit record in OUTDIR, in a stable order; one that cannot be read is an error."""
    commits, unreadable = read_commit_records(output)
    if unreadable:
        raise CommitRecordError(f"{unreadable[0]} is not a readable commit record")
    return commits


def uncommitted_files(output: str, commits: Iterable[Commit]) -> list[str]:
    """Files in features/, errors/ and the pending folder that no commit record names (a crash's leftovers)."""
    named = {FileSystems.join(output, c.path) for c in commits}
    leftovers = []
    for folder in (schema.FEATURES_DIR, schema.ERRORS_DIR, schema.PENDING_DIR):
        (match,) = FileSystems.match([FileSystems.join(output, folder, "*")])
        leftovers += [m.path for m in match.metadata_list if m.path not in named]
    return sorted(leftovers)


def failure_reasons(commits: Iterable[Commit]) -> dict[str, tuple[int, str]]:
    """reason -> (count, smallest example key) over the error commits."""
    counts, examples = Counter(), {}
    for c in commits:
        for reason, (n, key) in c.reasons.items():
            counts[reason] += n
            examples[reason] = key if reason not in examples else min(examples[reason], key)
    return {reason: (counts[reason], examples[reason]) for reason in sorted(counts)}


def _count_records(commit: Commit, data: bytes) -> int:
    if commit.kind == schema.FEATURES_DIR:
        return sum(1 for _ in iter_frames(io.BytesIO(data)))
    return len(data.decode("utf-8").splitlines())


def verify_commit(output: str, commit: Commit) -> str | None:
    """Why the committed file is not the one committed (missing, another size, another sha256), or None.

    A record without size and checksum (older runs) is checked by reading the file's records instead."""
    path = FileSystems.join(output, commit.path)
    (match,) = FileSystems.match([path])
    if not match.metadata_list:
        return f"{commit.path} is missing"
    size = match.metadata_list[0].size_in_bytes
    if commit.bytes is not None and size != commit.bytes:
        return f"{commit.path} has {size} bytes, {commit.bytes} were committed"
    digest = hashlib.sha256()
    chunks = []
    with FileSystems.open(path, compression_type="uncompressed") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
            if commit.sha256 is None:
                chunks.append(chunk)
    if commit.sha256 is not None:
        return None if digest.hexdigest() == commit.sha256 else f"{commit.path} fails its sha256"
    try:
        found = _count_records(commit, b"".join(chunks))
    except ValueError as e:
        return f"{commit.path} is damaged ({e})"
    return None if found == commit.records else f"{commit.path} holds {found} records, {commit.records} were committed"


def retire_commit(output: str, marker: str, data_paths: Sequence[str], reason: str) -> None:
    """Move a commit record out of ``commits/`` into ``retired/`` (with why), then delete its file(s): what it
    held is no longer committed, so a resumed run does it again. ``marker`` and ``data_paths`` are relative."""
    source = FileSystems.join(output, marker)
    name = marker.rsplit("/", 1)[-1]
    try:
        with FileSystems.open(source, compression_type="uncompressed") as f:
            original = f.read().decode("utf-8", errors="replace")
    except Exception:  # already gone: retiring is idempotent
        original = None
    if original is not None:
        note = json.dumps({"reason": reason, "record": original}, ensure_ascii=False).encode("utf-8")
        pending = FileSystems.join(output, schema.PENDING_DIR, f"retired-{name}")
        write_atomically(FileSystems.join(output, schema.RETIRED_DIR, name), pending, note)
        FileSystems.delete([source])
    present = [FileSystems.join(output, p) for p in data_paths if FileSystems.exists(FileSystems.join(output, p))]
    if present:
        FileSystems.delete(present)


def _feature_meta(serialized: bytes) -> tuple[str, str | None, str | None]:
    from tensorflow.core.example import example_pb2

    features = example_pb2.Example.FromString(serialized).features.feature

    def text(name):
        values = features[name].bytes_list.value if name in features else []
        return values[0].decode("utf-8") if values else None

    return text(schema.KEY), text(schema.LABEL), text(schema.SPLIT)


def _read_entries(output: str, commit: Commit) -> list[tuple[str, tuple, bytes]]:
    """(key, (label, split) or None for a failure, the bytes to write it again) of each record, in order."""
    with FileSystems.open(FileSystems.join(output, commit.path), compression_type="uncompressed") as f:
        data = f.read()
    if commit.kind == schema.FEATURES_DIR:
        entries = []
        for record in iter_frames(io.BytesIO(data)):
            key, label, split = _feature_meta(record)
            entries.append((key, (label, split), frame(record)))
        return entries
    return [(Failure(**json.loads(line)).key, None, line.encode("utf-8"))
            for line in data.decode("utf-8").splitlines(keepends=True)]


def _rewrite(output: str, commit: Commit, entries, keep: set[int]) -> Commit | None:
    """The commit with only the records at positions ``keep``; None (file and record deleted) when none is left."""
    path = FileSystems.join(output, commit.path)
    marker = FileSystems.join(output, commit.marker)
    if not keep:
        FileSystems.delete([marker])  # the record first: a crash in between leaves an uncommitted file, not a lie
        FileSystems.delete([path])
        return None
    kept = [entries[i] for i in sorted(keep)]
    data = b"".join(raw for _, _, raw in kept)
    labels, splits, reasons = set(), set(), {}
    for key, meta, raw in kept:
        if meta is None:
            failure = Failure(**json.loads(raw))
            count, example = reasons.get(failure.reason, (0, key))
            reasons[failure.reason] = [count + 1, min(example, key)]
        else:
            labels.update(v for v in meta[:1] if v is not None)
            splits.update(v for v in meta[1:] if v is not None)
    fixed = Commit(commit.id, commit.kind, commit.path, len(kept), tuple(k for k, _, _ in kept),
                   tuple(sorted(labels)), tuple(sorted(splits)), reasons, len(data), hashlib.sha256(data).hexdigest())
    pending = FileSystems.join(output, schema.PENDING_DIR, f"{commit.id}.rewrite")
    write_atomically(path, pending, data)
    write_atomically(marker, pending + ".json", fixed.to_json().encode("utf-8"))
    return fixed


def _commit_failures(output: str, failures: Sequence[Failure]) -> Commit:
    """Dead letters found after the run (conflicting duplicates), committed as one more errors file."""
    data = "".join(f.to_json() + "\n" for f in failures).encode("utf-8")
    commit_id = uuid.uuid4().hex
    reasons = {}
    for f in failures:
        count, example = reasons.get(f.reason, (0, f.key))
        reasons[f.reason] = [count + 1, min(example, f.key)]
    commit = Commit(commit_id, schema.ERRORS_DIR, f"{schema.ERRORS_DIR}/{schema.SHARD_PREFIX}-{commit_id}.jsonl",
                    len(failures), tuple(f.key for f in failures), (), (), reasons, len(data),
                    hashlib.sha256(data).hexdigest())
    pending = FileSystems.join(output, schema.PENDING_DIR, f"{commit_id}")
    write_atomically(FileSystems.join(output, commit.path), pending + ".jsonl", data)
    write_atomically(FileSystems.join(output, commit.marker), pending + ".json", commit.to_json().encode("utf-8"))
    return commit


def _conflict(key: str, metas: Sequence[tuple]) -> Failure:
    shown = sorted({f"label {label!r}" + (f", split {split!r}" if split is not None else "")
                    for label, split in metas})
    return Failure(key, key, "dedupe", DUPLICATE_CONFLICT,
                   f"the input appears {len(metas)} times with different labels or splits ({'; '.join(shown)[:300]});"
                   " none is kept: make its copies agree or remove all but one")


def resolve_duplicates(output: str, commits: Sequence[Commit]) -> list[Commit]:
    """Keep each key in exactly one commit, rewriting the files that hold a copy to drop.

    Copies come from inputs given twice (the same file in a manifest twice, a folder given twice) and from a
    distributed runner retrying a bundle after some of its commits were made. Which copy stays does not depend
    on the order commits are found: an embedded copy over a failed one, then the lowest (commit id, position).
    When embedded copies disagree on label or split, none stays: the key becomes one ``ConflictingDuplicates``
    failure. A file left with no record is deleted with its commit record. Returns the commits afterwards."""
    ordered = sorted(commits, key=lambda c: c.id)
    copies: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for ci, commit in enumerate(ordered):
        for pos, key in enumerate(commit.keys):
            copies[key].append((ci, pos))
    repeated = {key: where for key, where in copies.items() if len(where) > 1}
    if not repeated:
        return ordered
    affected = sorted({ci for where in repeated.values() for ci, _ in where})
    entries = {ci: _read_entries(output, ordered[ci]) for ci in affected}
    drop: dict[int, set[int]] = defaultdict(set)
    conflicts = []
    for key, where in sorted(repeated.items()):
        embedded = [(ci, pos) for ci, pos in where if entries[ci][pos][1] is not None]
        metas = [entries[ci][pos][1] for ci, pos in embedded]
        if len(set(metas)) > 1:
            conflicts.append(_conflict(key, metas))
            keep = None
        else:
            keep = min(embedded) if embedded else min(where)
        for ci, pos in where:
            if (ci, pos) != keep:
                drop[ci].add(pos)
    result = []
    for ci, commit in enumerate(ordered):
        if ci not in drop:
            result.append(commit)
            continue
        fixed = _rewrite(output, commit, entries[ci], set(range(len(entries[ci]))) - drop[ci])
        if fixed is not None:
            result.append(fixed)
    if conflicts:
        result.append(_commit_failures(output, conflicts))
    return result


REDONE = "redone"  # tag of the record counts of earlier commits found damaged and retired


def data_paths_of(commit_id: str) -> list[str]:
    """Where a commit's file can be, by its id (for a commit record too damaged to name it)."""
    return [f"{schema.FEATURES_DIR}/{schema.SHARD_PREFIX}-{commit_id}{schema.SHARD_SUFFIX}",
            f"{schema.ERRORS_DIR}/{schema.SHARD_PREFIX}-{commit_id}.jsonl"]


class VerifyCommitFn(beam.DoFn):
    """Commit record path -> the keys it holds, when its file is still the one committed; otherwise the commit
    is retired (``retire_commit``) and its record count goes to ``redone``: its inputs are done again."""

    def __init__(self, output: str):
        self._output = output
        self._retired = Metrics.counter(METRICS_NAMESPACE, "earlier_commits_retired")

    def setup(self):
        ready_process()

    def process(self, marker_path: str):
        rel = marker_path[len(self._output.rstrip("/")) + 1:]
        try:
            with FileSystems.open(marker_path, compression_type="uncompressed") as f:
                commit = Commit.from_json(f.read().decode("utf-8"))
        except (CommitRecordError, UnicodeDecodeError) as e:
            commit_id = rel.rsplit("/", 1)[-1].removesuffix(".json")
            retire_commit(self._output, rel, data_paths_of(commit_id), f"unreadable commit record: {e}")
            self._retired.inc()
            yield beam.pvalue.TaggedOutput(REDONE, 0)
            return
        problem = verify_commit(self._output, commit)
        if problem is None:
            yield from commit.keys
            return
        retire_commit(self._output, commit.marker, [commit.path], problem)
        self._retired.inc()
        yield beam.pvalue.TaggedOutput(REDONE, commit.records)
