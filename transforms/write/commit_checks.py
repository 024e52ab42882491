"""Reading what a run committed, and trusting it only when it checks out.

- ``read_commit_records``: every commit record in OUTDIR, and the ones that cannot be read;
- ``verify_commit``: whether a committed file is still the one committed (present, its size, its sha256);
- ``read_commit_keys``: the keys, labels and splits of one commit, from its keys file;
- ``retire_commit``: a damaged commit's record moves to ``retired/`` (with the reason) and its files go, so
  its inputs are done again;
- ``drop_records``: a commit rewritten without some of its records (the copies de-duplication drops);
- ``VerifyCommitFn``: ``verify_commit`` as a Beam step, so a resumed run checks earlier commits on the workers.

What a commit holds on disk is ``commit_format.py``, the write side ``committers.py``; which copies repeat is
found on the workers by ``transforms/keys/dedupe.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.schema.elements import METRICS_NAMESPACE, Failure
from transforms.schema.layout import (
    COMMITS_DIR,
    ERRORS_DIR,
    FEATURES_DIR,
    FORMATS,
    PENDING_DIR,
    RETIRED_DIR,
    SHARD_PREFIX,
)
from transforms.worker.process import WorkerDoFn
from transforms.write.commit_format import (
    KEYS_SUFFIX,
    Commit,
    CommitRecordError,
    commit_files,
    key_line,
    keys_path,
    parse_key_lines,
    place_file,
    write_atomically,
)
from transforms.write.shards import rewrite_without

__all__ = ["read_commits", "read_commit_records", "uncommitted_files", "failure_reasons", "verify_commit",
           "verified_keys", "read_commit_keys", "retire_commit", "drop_records", "conflict_failure", "VerifyCommitFn",
           "DUPLICATE_CONFLICT", "REDONE"]

DUPLICATE_CONFLICT = "ConflictingDuplicates"  # error type of a key whose copies disagree on label or split


def read_commit_records(output: str) -> tuple[list[Commit], list[str]]:
    """(every readable commit record in OUTDIR in a stable order, the paths of those that cannot be read)."""
    pattern = FileSystems.join(output, COMMITS_DIR, "*.json")
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
    """Files in features/, errors/, the pending folder (at any depth: the shuffles' scratch files too) and keys
    files in commits/ that no commit record names (a crash's leftovers)."""
    named = {FileSystems.join(output, p) for c in commits for p in (*(f.path for f in c.files), c.keys_path)}
    leftovers = []
    for folder, pattern in ((FEATURES_DIR, "*"), (ERRORS_DIR, "*"), (PENDING_DIR, "**"),
                            (COMMITS_DIR, f"*{KEYS_SUFFIX}")):
        (match,) = FileSystems.match([FileSystems.join(output, folder, pattern)])
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


def _check_file(output: str, rel: str, size: int, sha256: str) -> str | None:
    path = FileSystems.join(output, rel)
    (match,) = FileSystems.match([path])
    if not match.metadata_list:
        return f"{rel} is missing"
    found = match.metadata_list[0].size_in_bytes
    if found != size:
        return f"{rel} has {found} bytes, {size} were committed"
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return None if digest.hexdigest() == sha256 else f"{rel} fails its sha256"


def verify_commit(output: str, commit: Commit) -> str | None:
    """Why the committed file or its keys file is not the one committed (missing, another size, another
    sha256), or None."""
    return verified_keys(output, commit)[0]


def verified_keys(output: str, commit: Commit) -> tuple[str | None, list[str]]:
    """(``verify_commit``'s answer, the commit's keys when both files check out): its keys file is read once,
    to check and to parse (one commit's keys: bounded)."""
    for file in commit.files:
        problem = _check_file(output, file.path, file.bytes, file.sha256)
        if problem:
            return problem, []
    path = FileSystems.join(output, commit.keys_path)
    if not FileSystems.exists(path):
        return f"{commit.keys_path} is missing", []
    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read()
    if len(data) != commit.keys_bytes:
        return f"{commit.keys_path} has {len(data)} bytes, {commit.keys_bytes} were committed", []
    if hashlib.sha256(data).hexdigest() != commit.keys_sha256:
        return f"{commit.keys_path} fails its sha256", []
    try:
        return None, [key for key, _, _ in parse_key_lines(data)]
    except CommitRecordError as e:
        return f"{commit.keys_path} is damaged ({e})", []


def retire_commit(output: str, marker: str, data_paths: Sequence[str], reason: str) -> None:
    """Move a commit record out of ``commits/`` into ``retired/`` (with why), then delete its file(s) and keys
    file: what it held is no longer committed, so a resumed run does it again. ``marker`` and ``data_paths`` are
    relative."""
    source = FileSystems.join(output, marker)
    name = marker.rsplit("/", 1)[-1]
    try:
        with FileSystems.open(source, compression_type="uncompressed") as f:
            original = f.read().decode("utf-8", errors="replace")
    except Exception:  # already gone: retiring is idempotent
        original = None
    if original is not None:
        note = json.dumps({"reason": reason, "record": original}, ensure_ascii=False).encode("utf-8")
        pending = FileSystems.join(output, PENDING_DIR, f"retired-{name}")
        write_atomically(FileSystems.join(output, RETIRED_DIR, name), pending, note)
        FileSystems.delete([source])
    commit_id = name.removesuffix(".json")
    present = [FileSystems.join(output, p) for p in (*data_paths, keys_path(commit_id))
               if FileSystems.exists(FileSystems.join(output, p))]
    if present:
        FileSystems.delete(present)


def read_commit_keys(output: str, commit: Commit) -> list[tuple[str, str | None, str | None]]:
    """The (key, label, split) of each record of a commit, in its file's order (one commit: bounded)."""
    with FileSystems.open(FileSystems.join(output, commit.keys_path), compression_type="uncompressed") as f:
        return parse_key_lines(f.read())


def _read_file(output: str, rel: str) -> bytes:
    with FileSystems.open(FileSystems.join(output, rel), compression_type="uncompressed") as f:
        return f.read()


def drop_records(output: str, commit: Commit, drop: set[int]) -> Commit | None:
    """The commit without the records at positions ``drop``: each of its files (every format), its keys file and
    its record are written again (each atomically); None when nothing is left (record, keys file and files
    deleted, the record first)."""
    keys = read_commit_keys(output, commit)
    if set(range(len(keys))) <= drop:
        FileSystems.delete([FileSystems.join(output, commit.marker)])  # the record first: a crash in between
        present = [FileSystems.join(output, p)  # leaves uncommitted files
                   for p in (commit.keys_path, *(f.path for f in commit.files))
                   if FileSystems.exists(FileSystems.join(output, p))]
        if present:
            FileSystems.delete(present)
        return None
    kept = [i for i in range(len(keys)) if i not in drop]
    labels, splits, reasons = set(), set(), {}
    if commit.kind == ERRORS_DIR:
        lines = _read_file(output, commit.path).decode("utf-8").splitlines()
        for i in kept:
            failure = Failure(**json.loads(lines[i]))
            count, example = reasons.get(failure.reason, (0, keys[i][0]))
            reasons[failure.reason] = [count + 1, min(example, keys[i][0])]
    for i in kept:
        _, label, split = keys[i]
        labels.update(v for v in (label,) if v is not None)
        splits.update(v for v in (split,) if v is not None)
    placed = [place_file(output, commit.id, f.path, data=rewrite_without(_read_file(output, f.path), f.path, drop))
              for f in commit.files]
    return commit_files(output, commit.id, commit.kind, placed, b"".join(key_line(*keys[i]) for i in kept),
                        records=len(kept), labels=tuple(sorted(labels)), splits=tuple(sorted(splits)),
                        reasons=reasons)


def conflict_failure(key: str, metas: Sequence[tuple]) -> Failure:
    """The failure of a key whose embedded copies disagree on label or split (``metas``: their (label, split))."""
    shown = sorted({f"label {label!r}" + (f", split {split!r}" if split is not None else "")
                    for label, split in metas})
    return Failure(key, key, "dedupe", DUPLICATE_CONFLICT,
                   f"the input appears {len(metas)} times with different labels or splits ({'; '.join(shown)[:300]});"
                   " none is kept: make its copies agree or remove all but one")


REDONE = "redone"  # tag of the record counts of earlier commits found damaged and retired


def data_paths_of(commit_id: str) -> list[str]:
    """Where a commit's file can be, by its id (for a commit record too damaged to name it)."""
    features = [f"{FEATURES_DIR}/{SHARD_PREFIX}-{commit_id}{s}" for s in FORMATS.values()]
    return [*features, f"{ERRORS_DIR}/{SHARD_PREFIX}-{commit_id}.jsonl"]


class VerifyCommitFn(WorkerDoFn):
    """Commit record path -> ``(Commit, its keys)``, when its files are still the ones committed; otherwise the
    commit is retired (``retire_commit``) and its record count goes to ``redone``: its inputs are done again."""

    def __init__(self, output: str):
        self._output = output
        self._retired = Metrics.counter(METRICS_NAMESPACE, "earlier_commits_retired")

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
        problem, keys = verified_keys(self._output, commit)
        if problem is None:
            yield commit, keys
            return
        retire_commit(self._output, commit.marker, [f.path for f in commit.files], problem)
        self._retired.inc()
        yield beam.pvalue.TaggedOutput(REDONE, commit.records)
