"""Outputs committed in units, so a job that dies keeps what it finished and a rerun can resume.

A ``CommitFn`` writes its elements to a pending file and, every ``records_per_commit`` elements or
``seconds_per_commit`` seconds (and at the end of each bundle), commits it:

1. the pending file is renamed to its final name (``features/part-<id>.tfrecord`` or ``errors/part-<id>.jsonl``);
2. then a marker ``commits/<id>.json`` is written (pending name, then renamed): the commit record. It lists the
   file, its size and sha256 (so a resumed run can tell that the file is still the one committed), its record
   count, every key it holds, and the labels, splits and failure reasons in it.

A file without a marker was never committed: readers ignore it and a resumed run deletes it. The markers'
keys tell a resumed run what is done, and the final step reads only markers to write the manifest
(``committed.py`` reads them).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from transforms import schema
from transforms.framing import frame
from transforms.process import ready_process
from transforms.records import METRICS_NAMESPACE, Failure

__all__ = ["Commit", "CommitRecordError", "CommitFn", "FeatureCommitFn", "FailureCommitFn", "dead_letter",
           "write_atomically",
           "DEFAULT_RECORDS_PER_COMMIT", "DEFAULT_SECONDS_PER_COMMIT"]

DEFAULT_RECORDS_PER_COMMIT = 10_000
DEFAULT_SECONDS_PER_COMMIT = 300.0


@dataclass(frozen=True)
class Commit:
    """One committed file: what it is, what it holds."""

    id: str
    kind: str                 # "features" | "errors"
    path: str                 # relative to OUTDIR
    records: int
    keys: tuple[str, ...]
    labels: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    reasons: dict = field(default_factory=dict)  # errors: reason -> [count, one key]
    bytes: int | None = None  # the file's size and sha256 when it was committed (None: not recorded)
    sha256: str | None = None

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "kind": self.kind, "path": self.path, "records": self.records,
                           "bytes": self.bytes, "sha256": self.sha256, "labels": list(self.labels),
                           "splits": list(self.splits), "reasons": self.reasons, "keys": list(self.keys)},
                          ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Commit:
        """A commit record; ``CommitRecordError`` when it is not one (damaged, truncated, not JSON)."""
        try:
            d = json.loads(text)
            commit = cls(str(d["id"]), str(d["kind"]), str(d["path"]), int(d["records"]),
                         tuple(str(k) for k in d["keys"]), tuple(d.get("labels", ())), tuple(d.get("splits", ())),
                         dict(d.get("reasons", {})), d.get("bytes"), d.get("sha256"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CommitRecordError(f"not a commit record ({type(e).__name__}: {e})") from None
        if commit.records != len(commit.keys) or commit.kind not in (schema.FEATURES_DIR, schema.ERRORS_DIR):
            raise CommitRecordError(f"commit record {commit.id} does not add up ({commit.records} records, "
                                    f"{len(commit.keys)} keys, kind {commit.kind!r})")
        return commit

    @property
    def marker(self) -> str:
        """The commit record's path, relative to OUTDIR."""
        return f"{schema.COMMITS_DIR}/{self.id}.json"


class CommitRecordError(ValueError):
    """A file in ``commits/`` that cannot be read as a commit record."""


def write_atomically(path: str, pending: str, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all: written under ``pending``, then renamed."""
    with FileSystems.create(pending) as f:
        f.write(data)
    if "://" not in path:  # a local rename needs the folder; object stores have none to make
        os.makedirs(os.path.dirname(path), exist_ok=True)
    FileSystems.rename([pending], [path])


class CommitFn(beam.DoFn):
    """Writes elements into committed files of about ``records_per_commit`` records; outputs each ``Commit``.

    Subclasses say what a record's bytes, key, label, split and failure reason are."""

    kind = ""
    suffix = ""

    def __init__(self, output_dir: str, records_per_commit: int = DEFAULT_RECORDS_PER_COMMIT,
                 seconds_per_commit: float = DEFAULT_SECONDS_PER_COMMIT):
        self._output = output_dir
        self._every = records_per_commit
        self._seconds = seconds_per_commit
        self._commits = Metrics.counter(METRICS_NAMESPACE, f"{self.kind}_files_committed")

    def setup(self):
        ready_process()
        for folder in (self.kind, schema.COMMITS_DIR, schema.PENDING_DIR):
            path = FileSystems.join(self._output, folder)
            if not FileSystems.exists(path):  # local disks need the folders; object stores have none to make
                try:
                    FileSystems.mkdirs(path)
                except OSError:
                    pass  # another worker made it first

    def start_bundle(self):
        self._file = None

    def _open(self):
        self._id = uuid.uuid4().hex
        self._pending = FileSystems.join(self._output, schema.PENDING_DIR, f"{self._id}{self.suffix}")
        self._file = FileSystems.create(self._pending)
        self._opened = time.monotonic()
        self._keys, self._labels, self._splits, self._reasons = [], set(), set(), {}
        self._size, self._digest = 0, hashlib.sha256()

    def process(self, element):
        if self._file is None:
            self._open()
        key, data = self.encode(element)
        self._file.write(data)
        self._size += len(data)
        self._digest.update(data)
        self._keys.append(key)
        self.note(element)
        if len(self._keys) >= self._every or time.monotonic() - self._opened >= self._seconds:
            yield self._commit()

    def finish_bundle(self):
        if self._file is not None:
            yield WindowedValue(self._commit(), MIN_TIMESTAMP, [GlobalWindow()])

    def _commit(self) -> Commit:
        self._file.close()
        self._file = None
        rel = f"{self.kind}/{schema.SHARD_PREFIX}-{self._id}{self.suffix}"
        FileSystems.rename([self._pending], [FileSystems.join(self._output, rel)])
        commit = Commit(self._id, self.kind, rel, len(self._keys), tuple(self._keys), tuple(sorted(self._labels)),
                        tuple(sorted(self._splits)), self._reasons, self._size, self._digest.hexdigest())
        marker = FileSystems.join(self._output, schema.COMMITS_DIR, f"{self._id}.json")
        pending = FileSystems.join(self._output, schema.PENDING_DIR, f"{self._id}.json")
        write_atomically(marker, pending, commit.to_json().encode("utf-8"))
        self._commits.inc()
        return commit

    def encode(self, element) -> tuple[str, bytes]:
        raise NotImplementedError

    def note(self, element) -> None:
        """Remember what the commit record should say about this element."""


class FeatureCommitFn(CommitFn):
    """``((key, label, split), {output: vector})`` -> committed ``features/part-<id>.tfrecord`` shards."""

    kind = schema.FEATURES_DIR
    suffix = schema.SHARD_SUFFIX

    def __init__(self, output_dir: str, outputs: Sequence[schema.OutputSpec], **kwargs):
        super().__init__(output_dir, **kwargs)
        self._outputs = tuple(outputs)
        self._embedded = Metrics.counter(METRICS_NAMESPACE, "records_embedded")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "feature_bytes_written")

    def encode(self, element):
        (key, label, split), vectors = element
        example = schema.encode_example(key, label, vectors, self._outputs, split)
        self._embedded.inc()
        self._bytes.inc(len(example))
        return key, frame(example)

    def note(self, element):
        (_, label, split), _ = element
        if label is not None:
            self._labels.add(label)
        if split is not None:
            self._splits.add(split)


def dead_letter(failure: Failure) -> str:
    """A failed input's line in ``errors/``, counted in the job's metrics (``records_failed``, ``failed REASON``):
    the one encoding of a dead letter, committed or not."""
    Metrics.counter(METRICS_NAMESPACE, "records_failed").inc()
    Metrics.counter(METRICS_NAMESPACE, f"failed {failure.reason}").inc()
    return failure.to_json()


class FailureCommitFn(CommitFn):
    """``Failure`` -> committed ``errors/part-<id>.jsonl`` dead-letter files, one JSON object per line."""

    kind = schema.ERRORS_DIR
    suffix = ".jsonl"

    def __init__(self, output_dir: str, **kwargs):
        super().__init__(output_dir, **kwargs)

    def encode(self, failure: Failure):
        return failure.key, (dead_letter(failure) + "\n").encode("utf-8")

    def note(self, failure: Failure):
        count, example = self._reasons.get(failure.reason, (0, None))
        self._reasons[failure.reason] = [count + 1, failure.key if example is None else min(example, failure.key)]
