"""What a commit is on disk: the format that lets a job that dies keep what it finished and a rerun resume.

A commit makes one unit of output durable in three steps, each whole or not at all (written under a pending
name, then renamed):

1. its data file gets its final name (``features/part-<id>.tfrecord`` or ``errors/part-<id>.jsonl``); with
   ``--format parquet`` the same records go to ``features/part-<id>.parquet`` too (or only there), and every
   file of the commit is renamed first;
2. its keys go to a side file ``commits/<id>.keys``: one JSON line ``[key, label, split, version]`` per record,
   in the file's order (``version``: the record's source version, ``transforms/read/versions.py``; absent in
   sets made before versions were recorded), and which containers its records came from to
   ``commits/<id>.sources`` (``commit_sources.py``; absent in sets made before);
3. then a marker ``commits/<id>.json``: the commit record. It is a summary whose size does not grow with the
   records: the file, its size and sha256 (so a resumed run can tell that the file is still the one
   committed), the keys and sources files' sizes and sha256, the record count, and the labels, splits and
   failure reasons in it (a Parquet copy's size and sha256 under ``also``), and the generation of the feature
   set it was made for (``--update`` makes a new one).

A commit of an older generation is never changed in place: the manifest of that generation lists its files.
When an update drops records from it, the rest go to a new commit of the update's generation that ``replaces``
it (saying how many it dropped, and why: ``stale``), and the old one is deleted only once the new manifest is
written; until then readers of the old manifest read it, and the job reads the replacement
(``current_commits``).

A file without a marker was never committed: readers ignore it and a resumed run deletes it. The keys files
tell a resumed run what is done and the de-duplication which keys repeat, both read on the workers; the
final step reads only markers to write the manifest. ``committers.py`` commits a job's outputs as it goes;
``commit_checks.py`` reads commits back.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems

from transforms.schema.layout import COMMITS_DIR, ERRORS_DIR, FEATURES_DIR, PENDING_DIR
from transforms.worker.storage import is_remote
from transforms.write.commit_sources import SOURCES_SUFFIX, sources_path

__all__ = ["Commit", "CommittedFile", "CommitRecordError", "place_file", "commit_files", "write_atomically",
           "keys_path", "side_paths", "key_line", "parse_key_lines", "parse_key_entries", "current_commits",
           "superseded_commits", "KEYS_SUFFIX", "SIDE_SUFFIXES"]

KEYS_SUFFIX = ".keys"
SIDE_SUFFIXES = (KEYS_SUFFIX, SOURCES_SUFFIX)  # a commit's files in commits/ besides its record


class CommitRecordError(ValueError):
    """A file in ``commits/`` that cannot be read as a commit record."""


class CommittedFile(NamedTuple):
    """One file of a commit, relative to OUTDIR, with its size and sha256 when it was committed."""

    path: str
    bytes: int | None
    sha256: str | None


@dataclass(frozen=True)
class Commit:
    """One committed file (and its copies in other formats): what it is, what it holds."""

    id: str
    kind: str                 # "features" | "errors"
    path: str                 # relative to OUTDIR
    records: int
    labels: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    reasons: dict = field(default_factory=dict)  # errors: reason -> [count, one key]
    bytes: int | None = None  # the file's size and sha256 when it was committed (None: not recorded)
    sha256: str | None = None
    keys_bytes: int | None = None  # the same for its keys file
    keys_sha256: str | None = None
    also: tuple[CommittedFile, ...] = ()  # the same records in other formats (a Parquet shard)
    generation: int = 1       # the feature set generation it was committed for
    replaces: str | None = None  # the id of an older generation's commit it holds the rest of
    stale: dict = field(default_factory=dict)  # records dropped from what it replaces: "changed", "removed"
    sources_bytes: int | None = None  # its sources file's size and sha256 (None: made before there were any)
    sources_sha256: str | None = None

    @property
    def files(self) -> tuple[CommittedFile, ...]:
        """Every data file of the commit, the first one first."""
        return (CommittedFile(self.path, self.bytes, self.sha256), *self.also)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "kind": self.kind, "path": self.path, "records": self.records,
                           "bytes": self.bytes, "sha256": self.sha256, "keys_bytes": self.keys_bytes,
                           "keys_sha256": self.keys_sha256, "labels": list(self.labels),
                           "splits": list(self.splits), "reasons": self.reasons,
                           "also": [f._asdict() for f in self.also], "generation": self.generation,
                           "replaces": self.replaces, "stale": self.stale, "sources_bytes": self.sources_bytes,
                           "sources_sha256": self.sources_sha256}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Commit:
        """A commit record; ``CommitRecordError`` when it is not one (damaged, truncated, not JSON)."""
        try:
            d = json.loads(text)
            commit = cls(str(d["id"]), str(d["kind"]), str(d["path"]), int(d["records"]),
                         tuple(d.get("labels", ())), tuple(d.get("splits", ())), dict(d.get("reasons", {})),
                         d["bytes"], d["sha256"], d["keys_bytes"], d["keys_sha256"],
                         tuple(CommittedFile(str(f["path"]), int(f["bytes"]), str(f["sha256"]))
                               for f in d.get("also", ())),
                         int(d.get("generation", 1)), d.get("replaces"),
                         {str(k): int(v) for k, v in d.get("stale", {}).items()},
                         d.get("sources_bytes"), d.get("sources_sha256"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CommitRecordError(f"not a commit record ({type(e).__name__}: {e})") from None
        if commit.records < 0 or commit.kind not in (FEATURES_DIR, ERRORS_DIR):
            raise CommitRecordError(f"commit record {commit.id} does not add up ({commit.records} records, "
                                    f"kind {commit.kind!r})")
        return commit

    @property
    def marker(self) -> str:
        """The commit record's path, relative to OUTDIR."""
        return f"{COMMITS_DIR}/{self.id}.json"

    @property
    def keys_path(self) -> str:
        """Its keys file's path, relative to OUTDIR."""
        return keys_path(self.id)

    @property
    def side_paths(self) -> tuple[str, ...]:
        """Its files in ``commits/`` besides its record: the keys file, and the sources file if it has one."""
        return side_paths(self.id)[:1 if self.sources_sha256 is None else 2]


def keys_path(commit_id: str) -> str:
    """A commit's keys file, relative to OUTDIR."""
    return f"{COMMITS_DIR}/{commit_id}{KEYS_SUFFIX}"


def side_paths(commit_id: str) -> tuple[str, str]:
    """Where a commit's keys and sources files are, relative to OUTDIR, by its id."""
    return keys_path(commit_id), sources_path(commit_id)


def key_line(key: str, label: str | None = None, split: str | None = None, version: str | None = None) -> bytes:
    """One record's line in a keys file."""
    return (json.dumps([key, label, split, version], ensure_ascii=False) + "\n").encode("utf-8")


def parse_key_entries(data: bytes) -> list[tuple[str, str | None, str | None, str | None]]:
    """A keys file's (key, label, split, version) entries, in order (version None where a line has none);
    ``CommitRecordError`` when it is damaged."""
    try:
        lines = data.decode("utf-8").splitlines()
        entries = json.loads("[" + ",".join(lines) + "]")  # one parse: a line's own would cost twice as much
    except (ValueError, UnicodeDecodeError) as e:
        raise CommitRecordError(f"not a keys file ({type(e).__name__}: {e})") from None
    if len(entries) != len(lines) or any(not isinstance(e, list) or len(e) not in (3, 4) or not isinstance(e[0], str)
                                         for e in entries):
        raise CommitRecordError("not a keys file (an entry is not [key, label, split, version])")
    return [(*e, None) if len(e) == 3 else tuple(e) for e in entries]


def parse_key_lines(data: bytes) -> list[tuple[str, str | None, str | None]]:
    """A keys file's (key, label, split) entries, in order; ``CommitRecordError`` when it is damaged."""
    return [e[:3] for e in parse_key_entries(data)]


def superseded_commits(commits) -> set[str]:
    """The ids of commits that another of ``commits`` replaces."""
    return {c.replaces for c in commits if c.replaces}


def current_commits(commits) -> list:
    """``commits`` without those another one replaces: what the feature set holds once its next manifest is
    written."""
    gone = superseded_commits(commits)
    return [c for c in commits if c.id not in gone]


def write_atomically(path: str, pending: str, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all: written under ``pending``, then renamed."""
    with FileSystems.create(pending) as f:
        f.write(data)
    if not is_remote(path):  # a local rename needs the folder; object stores have none to make
        os.makedirs(os.path.dirname(path), exist_ok=True)
    FileSystems.rename([pending], [path])


def place_file(output: str, commit_id: str, rel: str, pending: str | None = None, data: bytes | None = None,
               size: int | None = None, sha256: str | None = None) -> CommittedFile:
    """A commit's data file at ``OUTDIR/rel``, whole or not at all: renamed from ``pending`` (written earlier, its
    ``size`` and ``sha256`` known) or ``data`` written under a pending name, then renamed."""
    if pending is not None:
        FileSystems.rename([pending], [FileSystems.join(output, rel)])
        return CommittedFile(rel, size, sha256)
    write_atomically(FileSystems.join(output, rel),
                     FileSystems.join(output, PENDING_DIR, f"{commit_id}.{uuid.uuid4().hex[:8]}.data"), data)
    return CommittedFile(rel, len(data), hashlib.sha256(data).hexdigest())


def commit_files(output: str, commit_id: str, kind: str, files, keys: bytes, sources: bytes | None = None,
                 **summary) -> Commit:
    """Commit placed data files (``place_file``; the first one is the commit's ``path``): then its keys file and
    its ``sources`` file (``commit_sources.py``; None: none), then the commit record, each whole or not at all.
    ``summary``: the ``Commit`` fields records, labels, splits, reasons."""
    first, *also = files
    pending = FileSystems.join(output, PENDING_DIR, commit_id)
    write_atomically(FileSystems.join(output, keys_path(commit_id)), pending + KEYS_SUFFIX, keys)
    if sources is not None:
        write_atomically(FileSystems.join(output, sources_path(commit_id)), pending + SOURCES_SUFFIX, sources)
        summary.update(sources_bytes=len(sources), sources_sha256=hashlib.sha256(sources).hexdigest())
    commit = Commit(commit_id, kind, first.path, bytes=first.bytes, sha256=first.sha256, keys_bytes=len(keys),
                    keys_sha256=hashlib.sha256(keys).hexdigest(), also=tuple(also), **summary)
    write_atomically(FileSystems.join(output, commit.marker), pending + ".json", commit.to_json().encode("utf-8"))
    return commit
