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
from transforms.write import commit_sources
from transforms.write.commit_format import (
    SIDE_SUFFIXES,
    Commit,
    CommitRecordError,
    commit_files,
    key_line,
    parse_key_entries,
    place_file,
    side_paths,
    write_atomically,
)
from transforms.write.shards import rewrite_without

__all__ = ["read_commit", "read_commit_by_id", "read_commits", "read_commit_records", "uncommitted_files",
           "failure_reasons", "verify_commit", "verified_keys", "verified_entries", "read_commit_keys",
           "read_commit_entries", "retire_commit", "drop_records", "replacement_id", "delete_commit",
           "VerifyCommitFn", "DUPLICATE_CONFLICT", "REDONE"]

DUPLICATE_CONFLICT = "ConflictingDuplicates"  # error type of a key whose copies disagree on label or split


def read_commit(path: str) -> Commit:
    """One commit record, by its path; ``CommitRecordError`` (or ``UnicodeDecodeError``) when it is not one."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return Commit.from_json(f.read().decode("utf-8"))


def read_commit_by_id(output: str, commit_id: str) -> Commit:
    """The commit record of ``commit_id`` in OUTDIR."""
    return read_commit(FileSystems.join(output, COMMITS_DIR, f"{commit_id}.json"))


def read_commit_records(output: str) -> tuple[list[Commit], list[str]]:
    """(every readable commit record in OUTDIR in a stable order, the paths of those that cannot be read)."""
    pattern = FileSystems.join(output, COMMITS_DIR, "*.json")
    (match,) = FileSystems.match([pattern])
    commits, unreadable = [], []
    for path in sorted(m.path for m in match.metadata_list):
        try:
            commits.append(read_commit(path))
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
    and sources files in commits/ that no commit record names (a crash's leftovers)."""
    named = {FileSystems.join(output, p) for c in commits for p in (*(f.path for f in c.files), *c.side_paths)}
    leftovers = []
    for folder, pattern in ((FEATURES_DIR, "*"), (ERRORS_DIR, "*"), (PENDING_DIR, "**"),
                            *((COMMITS_DIR, f"*{suffix}") for suffix in SIDE_SUFFIXES)):
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
    """Why a commit's files are not the ones committed (missing, another size or sha256), or None."""
    return verified_entries(output, commit, parse=False)[0]


def verified_keys(output: str, commit: Commit) -> tuple[str | None, list[str]]:
    """(``verify_commit``'s answer, the commit's keys when both files check out)."""
    problem, entries = verified_entries(output, commit)
    return problem, [key for key, _ in entries]


def verified_entries(output: str, commit: Commit, parse: bool = True) -> tuple[str | None, list | None]:
    """(``verify_commit``'s answer, the (key, source version) of each of its records when its files check out, or
    without ``parse`` its sources runs instead): each side file is read once, to check and to parse."""
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
    problem, runs = commit_sources.checked_runs(output, commit)
    if problem or not parse:
        return problem, [] if problem else runs
    try:
        return None, [(key, version) for key, _, _, version in parse_key_entries(data)]
    except CommitRecordError as e:
        return f"{commit.keys_path} is damaged ({e})", []


def retire_commit(output: str, marker: str, data_paths: Sequence[str], reason: str) -> None:
    """Move a commit record out of ``commits/`` into ``retired/`` (with why), then delete its file(s), keys file
    and sources file: what it held is no longer committed, so a resumed run does it again. ``marker`` and
    ``data_paths`` are relative."""
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
    present = [FileSystems.join(output, p) for p in (*data_paths, *side_paths(commit_id))
               if FileSystems.exists(FileSystems.join(output, p))]
    if present:
        FileSystems.delete(present)


def read_commit_keys(output: str, commit: Commit) -> list[tuple[str, str | None, str | None]]:
    """The (key, label, split) of each record of a commit, in its file's order (one commit: bounded)."""
    return [entry[:3] for entry in read_commit_entries(output, commit)]


def read_commit_entries(output: str, commit: Commit) -> list[tuple[str, str | None, str | None, str | None]]:
    """The (key, label, split, source version) of each record of a commit, in its file's order."""
    with FileSystems.open(FileSystems.join(output, commit.keys_path), compression_type="uncompressed") as f:
        return parse_key_entries(f.read())


def delete_commit(output: str, commit: Commit) -> None:
    """A commit gone: its record first (a crash in between leaves uncommitted files, which a later run deletes),
    then its keys file and data files; idempotent."""
    marker = FileSystems.join(output, commit.marker)
    if FileSystems.exists(marker):
        FileSystems.delete([marker])
    present = [FileSystems.join(output, p) for p in (*commit.side_paths, *(f.path for f in commit.files))
               if FileSystems.exists(FileSystems.join(output, p))]
    if present:
        FileSystems.delete(present)


def _read_file(output: str, rel: str) -> bytes:
    with FileSystems.open(FileSystems.join(output, rel), compression_type="uncompressed") as f:
        return f.read()


def replacement_id(commit_id: str, generation: int) -> str:
    """The id of the commit that holds the rest of ``commit_id`` in ``generation``: the same every time it is
    asked, so an update done again after a crash rewrites the same replacement."""
    return hashlib.sha256(f"{commit_id}:{generation}".encode("ascii")).hexdigest()[:32]


def drop_records(output: str, commit: Commit, drop: set[int], generation: int = 1,
                 stale: dict | None = None, copies: bool = False) -> Commit | None:
    """The commit without the records at positions ``drop``.

    A commit of ``generation`` is rewritten in place: each of its files (every format), its keys file and its
    record again (each atomically); when nothing is left it is deleted (the record first), unless it replaces an
    older commit, which it must go on hiding. A commit of an older generation is left as it is (that
    generation's manifest lists it): the rest goes to a new commit of ``generation`` that ``replaces`` it.
    ``stale``: why the records are dropped (``{"changed": n, "removed": m}``), added up in the commit record of a
    replacement; ``copies``: the records are copies of keys held twice (``commit_sources.runs_without``). Returns
    the commit that now holds the rest (None: deleted)."""
    entries = parse_key_entries(_read_file(output, commit.keys_path))
    kept = [i for i in range(len(entries)) if i not in drop]
    replacing = commit.generation < generation
    if not kept and not replacing and not commit.replaces:
        delete_commit(output, commit)
        return None
    labels, splits, reasons = set(), set(), {}
    if commit.kind == ERRORS_DIR:
        lines = _read_file(output, commit.path).decode("utf-8").splitlines()
        for i in kept:
            failure = Failure(**json.loads(lines[i]))
            count, example = reasons.get(failure.reason, (0, entries[i][0]))
            reasons[failure.reason] = [count + 1, min(example, entries[i][0])]
    for i in kept:
        _, label, split, _ = entries[i]
        labels.update(v for v in (label,) if v is not None)
        splits.update(v for v in (split,) if v is not None)
    new_id = replacement_id(commit.id, generation) if replacing else commit.id
    placed = [place_file(output, new_id, f.path.replace(commit.id, new_id) if replacing else f.path,
                         data=rewrite_without(_read_file(output, f.path), f.path, drop))
              for f in commit.files]
    dropped = dict(commit.stale) if commit.replaces and not replacing else {}
    for why, n in (stale or {}).items():
        dropped[why] = dropped.get(why, 0) + n
    runs = commit_sources.read_runs(output, commit)
    sources = None if runs is None else commit_sources.runs_without(runs, drop, copies).to_bytes()
    return commit_files(output, new_id, commit.kind, placed, b"".join(key_line(*entries[i]) for i in kept), sources,
                        records=len(kept), labels=tuple(sorted(labels)), splits=tuple(sorted(splits)),
                        reasons=reasons, generation=max(generation, commit.generation),
                        replaces=commit.id if replacing else commit.replaces,
                        stale=dropped if (replacing or commit.replaces) else {})


REDONE = "redone"  # tag of the record counts of earlier commits found damaged and retired


def data_paths_of(commit_id: str) -> list[str]:
    """Where a commit's file can be, by its id (for a commit record too damaged to name it)."""
    features = [f"{FEATURES_DIR}/{SHARD_PREFIX}-{commit_id}{s}" for s in FORMATS.values()]
    return [*features, f"{ERRORS_DIR}/{SHARD_PREFIX}-{commit_id}.jsonl"]


class VerifyCommitFn(WorkerDoFn):
    """Commit record path -> ``(Commit, [(key, source version), ...])`` (``parse``; else ``(Commit, its sources
    runs)``), when its files are still the ones committed; otherwise the commit is retired (``retire_commit``) and
    its record count goes to ``redone``: its inputs are done again."""

    def __init__(self, output: str, parse: bool = True):
        self._output = output
        self._parse = parse
        self._retired = Metrics.counter(METRICS_NAMESPACE, "earlier_commits_retired")

    def process(self, marker_path: str):
        rel = marker_path[len(self._output.rstrip("/")) + 1:]
        try:
            commit = read_commit(marker_path)
        except (CommitRecordError, UnicodeDecodeError) as e:
            commit_id = rel.rsplit("/", 1)[-1].removesuffix(".json")
            retire_commit(self._output, rel, data_paths_of(commit_id), f"unreadable commit record: {e}")
            self._retired.inc()
            yield beam.pvalue.TaggedOutput(REDONE, 0)
            return
        problem, entries = verified_entries(self._output, commit, self._parse)
        if problem is None:
            yield commit, entries
            return
        retire_commit(self._output, commit.marker, [f.path for f in commit.files], problem)
        self._retired.inc()
        yield beam.pvalue.TaggedOutput(REDONE, commit.records)
