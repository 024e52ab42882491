"""Outputs committed in units, so a job that dies keeps what it finished and a rerun can resume.

A ``CommitFn`` writes its elements to a pending file and, every ``records_per_commit`` elements or
``seconds_per_commit`` seconds (and at the end of each bundle), commits it:

1. the pending file is renamed to its final name (``features/part-<id>.tfrecord`` or ``errors/part-<id>.jsonl``);
   with ``--format parquet`` the same records go to ``features/part-<id>.parquet`` too (or only there), and
   every file of the commit is renamed first;
2. its keys go to a side file ``commits/<id>.keys`` (pending name, then renamed): one JSON line
   ``[key, label, split]`` per record, in the file's order;
3. then a marker ``commits/<id>.json`` is written (pending name, then renamed): the commit record. It is a
   summary whose size does not grow with the records: the file, its size and sha256 (so a resumed run can
   tell that the file is still the one committed), the keys file's size and sha256, the record count, and
   the labels, splits and failure reasons in it (a Parquet copy's size and sha256 under ``also``).

A file without a marker was never committed: readers ignore it and a resumed run deletes it. The keys files
tell a resumed run what is done and the de-duplication which keys repeat, both read on the workers; the
final step reads only markers to write the manifest (``commit_checks.py`` reads them).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms.schema.elements import METRICS_NAMESPACE, Failure
from transforms.schema.fields import OutputSpec
from transforms.schema.layout import (
    COMMITS_DIR,
    ERRORS_DIR,
    FEATURES_DIR,
    FORMATS,
    PENDING_DIR,
    SHARD_PREFIX,
    shard_format,
)
from transforms.worker.process import WorkerDoFn
from transforms.write.shards import HashingFile, JsonLinesShard, feature_shard

__all__ = ["Commit", "CommittedFile", "place_file",
           "CommitRecordError", "CommitFn", "FeatureCommitFn", "FailureCommitFn", "dead_letter",
           "write_atomically", "commit_files", "keys_path", "key_line", "parse_key_lines", "KEYS_SUFFIX",
           "DEFAULT_RECORDS_PER_COMMIT", "DEFAULT_SECONDS_PER_COMMIT"]

DEFAULT_RECORDS_PER_COMMIT = 10_000
DEFAULT_SECONDS_PER_COMMIT = 300.0


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

    @property
    def files(self) -> tuple[CommittedFile, ...]:
        """Every data file of the commit, the first one first."""
        return (CommittedFile(self.path, self.bytes, self.sha256), *self.also)

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "kind": self.kind, "path": self.path, "records": self.records,
                           "bytes": self.bytes, "sha256": self.sha256, "keys_bytes": self.keys_bytes,
                           "keys_sha256": self.keys_sha256, "labels": list(self.labels),
                           "splits": list(self.splits), "reasons": self.reasons,
                           "also": [f._asdict() for f in self.also]}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Commit:
        """A commit record; ``CommitRecordError`` when it is not one (damaged, truncated, not JSON)."""
        try:
            d = json.loads(text)
            commit = cls(str(d["id"]), str(d["kind"]), str(d["path"]), int(d["records"]),
                         tuple(d.get("labels", ())), tuple(d.get("splits", ())), dict(d.get("reasons", {})),
                         d["bytes"], d["sha256"], d["keys_bytes"], d["keys_sha256"],
                         tuple(CommittedFile(str(f["path"]), int(f["bytes"]), str(f["sha256"]))
                               for f in d.get("also", ())))
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


def keys_path(commit_id: str) -> str:
    return f"{COMMITS_DIR}/{commit_id}{KEYS_SUFFIX}"


KEYS_SUFFIX = ".keys"


def key_line(key: str, label: str | None = None, split: str | None = None) -> bytes:
    """One record's line in a keys file."""
    return (json.dumps([key, label, split], ensure_ascii=False) + "\n").encode("utf-8")


def parse_key_lines(data: bytes) -> list[tuple[str, str | None, str | None]]:
    """A keys file's (key, label, split) entries, in order; ``CommitRecordError`` when it is damaged."""
    try:
        entries = [tuple(json.loads(line)) for line in data.decode("utf-8").splitlines()]
    except (ValueError, UnicodeDecodeError) as e:
        raise CommitRecordError(f"not a keys file ({type(e).__name__}: {e})") from None
    if any(len(e) != 3 or not isinstance(e[0], str) for e in entries):
        raise CommitRecordError("not a keys file (an entry is not [key, label, split])")
    return entries


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


def commit_files(output: str, commit_id: str, kind: str, files, keys: bytes, **summary) -> Commit:
    """Commit placed data files (``place_file``; the first one is the commit's ``path``): then its keys file,
    then the commit record, each whole or not at all. ``summary``: the ``Commit`` fields records, labels,
    splits, reasons."""
    first, *also = files
    pending = FileSystems.join(output, PENDING_DIR, commit_id)
    write_atomically(FileSystems.join(output, keys_path(commit_id)), pending + KEYS_SUFFIX, keys)
    commit = Commit(commit_id, kind, first.path, bytes=first.bytes, sha256=first.sha256, keys_bytes=len(keys),
                    keys_sha256=hashlib.sha256(keys).hexdigest(), also=tuple(also), **summary)
    write_atomically(FileSystems.join(output, commit.marker), pending + ".json", commit.to_json().encode("utf-8"))
    return commit


class CommitRecordError(ValueError):
    """A file in ``commits/`` that cannot be read as a commit record."""


def write_atomically(path: str, pending: str, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all: written under ``pending``, then renamed."""
    with FileSystems.create(pending) as f:
        f.write(data)
    if "://" not in path:  # a local rename needs the folder; object stores have none to make
        os.makedirs(os.path.dirname(path), exist_ok=True)
    FileSystems.rename([pending], [path])


class CommitFn(WorkerDoFn):
    """Writes elements into committed files of about ``records_per_commit`` records; outputs each ``Commit``.

    Subclasses say which files a commit writes (``suffixes`` and ``writer``), and what an element's key,
    label, split and failure reason are."""

    kind = ""

    def __init__(self, output_dir: str, records_per_commit: int = DEFAULT_RECORDS_PER_COMMIT,
                 seconds_per_commit: float = DEFAULT_SECONDS_PER_COMMIT):
        self._output = output_dir
        self._every = records_per_commit
        self._seconds = seconds_per_commit
        self._commits = Metrics.counter(METRICS_NAMESPACE, f"{self.kind}_files_committed")

    def setup(self):
        super().setup()
        for folder in (self.kind, COMMITS_DIR, PENDING_DIR):
            path = FileSystems.join(self._output, folder)
            if not FileSystems.exists(path):  # local disks need the folders; object stores have none to make
                try:
                    FileSystems.mkdirs(path)
                except OSError:
                    pass  # another worker made it first

    def start_bundle(self):
        self._open_files = None

    def _open(self):
        self._id = uuid.uuid4().hex
        self._open_files = []  # (suffix, pending path, hashing file, writer)
        for suffix in self.suffixes():
            pending = FileSystems.join(self._output, PENDING_DIR, f"{self._id}{suffix}")
            stream = HashingFile(FileSystems.create(pending))
            self._open_files.append((suffix, pending, stream, self.writer(suffix, stream)))
        self._opened = time.monotonic()
        self._keys, self._labels, self._splits, self._reasons = [], set(), set(), {}  # keys: one commit's lines

    def process(self, element):
        if self._open_files is None:
            self._open()
        for _, _, _, writer in self._open_files:
            self.wrote(writer.add(element))
        key, label, split = self.meta(element)
        self._keys.append(key_line(key, label, split))
        if label is not None:
            self._labels.add(label)
        if split is not None:
            self._splits.add(split)
        self.note(element)
        if len(self._keys) >= self._every or time.monotonic() - self._opened >= self._seconds:
            yield self._commit()

    def finish_bundle(self):
        if self._open_files is not None:
            yield WindowedValue(self._commit(), MIN_TIMESTAMP, [GlobalWindow()])

    def _commit(self) -> Commit:
        placed = []
        for suffix, pending, stream, writer in self._open_files:
            writer.close()
            rel = f"{self.kind}/{SHARD_PREFIX}-{self._id}{suffix}"
            placed.append(place_file(self._output, self._id, rel, pending, size=stream.size, sha256=stream.sha256))
        self._open_files = None
        commit = commit_files(self._output, self._id, self.kind, placed, b"".join(self._keys),
                              records=len(self._keys), labels=tuple(sorted(self._labels)),
                              splits=tuple(sorted(self._splits)), reasons=self._reasons)
        self._keys = []
        self._commits.inc()
        return commit

    def suffixes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def writer(self, suffix: str, stream):
        """The writer of one of a commit's files (``transforms/write/shards.py``)."""
        raise NotImplementedError

    def meta(self, element) -> tuple[str, str | None, str | None]:
        """The element's (key, label, split), for the keys file."""
        raise NotImplementedError

    def wrote(self, size: int) -> None:
        """A writer wrote ``size`` bytes of an element."""

    def note(self, element) -> None:
        """Remember what the commit record should say about this element."""


class FeatureCommitFn(CommitFn):
    """``((key, label, split), {output: vector})`` -> committed ``features/part-<id>.tfrecord`` shards (and
    ``.parquet`` shards of the same records, with ``formats`` naming parquet)."""

    kind = FEATURES_DIR

    def __init__(self, output_dir: str, outputs: Sequence[OutputSpec],
                 formats: Sequence[str] = ("tfrecord",), **kwargs):
        super().__init__(output_dir, **kwargs)
        self._outputs = tuple(outputs)
        self._formats = tuple(formats)
        self._embedded = Metrics.counter(METRICS_NAMESPACE, "records_embedded")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "feature_bytes_written")

    def suffixes(self):
        return tuple(FORMATS[f] for f in self._formats)

    def writer(self, suffix, stream):
        return feature_shard(shard_format(suffix), stream, self._outputs)

    def meta(self, element):
        (key, label, split), _ = element
        return key, label, split

    def wrote(self, size):
        self._bytes.inc(size)

    def note(self, element):
        self._embedded.inc()


def dead_letter(failure: Failure) -> str:
    """A failed input's line in ``errors/``, counted in the job's metrics (``records_failed``, ``failed REASON``):
    the one encoding of a dead letter, committed or not."""
    Metrics.counter(METRICS_NAMESPACE, "records_failed").inc()
    Metrics.counter(METRICS_NAMESPACE, f"failed {failure.reason}").inc()
    return failure.to_json()


class FailureCommitFn(CommitFn):
    """``Failure`` -> committed ``errors/part-<id>.jsonl`` dead-letter files, one JSON object per line."""

    kind = ERRORS_DIR

    def suffixes(self):
        return (".jsonl",)

    def writer(self, suffix, stream):
        shard = JsonLinesShard(stream)
        return _FailureLines(shard)

    def meta(self, failure: Failure):
        return failure.key, None, None

    def note(self, failure: Failure):
        count, example = self._reasons.get(failure.reason, (0, None))
        self._reasons[failure.reason] = [count + 1, failure.key if example is None else min(example, failure.key)]


class _FailureLines:
    """Dead letters as JSON lines, each counted in the job's metrics."""

    def __init__(self, shard: JsonLinesShard):
        self._shard = shard

    def add(self, failure: Failure) -> int:
        return self._shard.add(dead_letter(failure) + "\n")

    def close(self) -> None:
        self._shard.close()
