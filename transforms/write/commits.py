"""Outputs committed in units, so a job that dies keeps what it finished and a rerun can resume.

A ``CommitFn`` writes its elements to a pending file and, every ``records_per_commit`` elements or
``seconds_per_commit`` seconds (and at the end of each bundle), commits it:

1. the pending file is renamed to its final name (``features/part-<id>.tfrecord`` or ``errors/part-<id>.jsonl``);
2. its keys go to a side file ``commits/<id>.keys`` (pending name, then renamed): one JSON line
   ``[key, label, split]`` per record, in the file's order;
3. then a marker ``commits/<id>.json`` is written (pending name, then renamed): the commit record. It is a
   summary whose size does not grow with the records: the file, its size and sha256 (so a resumed run can
   tell that the file is still the one committed), the keys file's size and sha256, the record count, and
   the labels, splits and failure reasons in it.

A file without a marker was never committed: readers ignore it and a resumed run deletes it. The keys files
tell a resumed run what is done and the de-duplication which keys repeat, both read on the workers; the
final step reads only markers to write the manifest (``committed.py`` reads them).
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
           "write_atomically", "commit_files", "keys_path", "key_line", "parse_key_lines", "KEYS_SUFFIX",
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
    labels: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    reasons: dict = field(default_factory=dict)  # errors: reason -> [count, one key]
    bytes: int | None = None  # the file's size and sha256 when it was committed (None: not recorded)
    sha256: str | None = None
    keys_bytes: int | None = None  # the same for its keys file
    keys_sha256: str | None = None

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "kind": self.kind, "path": self.path, "records": self.records,
                           "bytes": self.bytes, "sha256": self.sha256, "keys_bytes": self.keys_bytes,
                           "keys_sha256": self.keys_sha256, "labels": list(self.labels),
                           "splits": list(self.splits), "reasons": self.reasons}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Commit:
        """A commit record; ``CommitRecordError`` when it is not one (damaged, truncated, not JSON)."""
        try:
            d = json.loads(text)
            commit = cls(str(d["id"]), str(d["kind"]), str(d["path"]), int(d["records"]),
                         tuple(d.get("labels", ())), tuple(d.get("splits", ())), dict(d.get("reasons", {})),
                         d["bytes"], d["sha256"], d["keys_bytes"], d["keys_sha256"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CommitRecordError(f"not a commit record ({type(e).__name__}: {e})") from None
        if commit.records < 0 or commit.kind not in (schema.FEATURES_DIR, schema.ERRORS_DIR):
            raise CommitRecordError(f"commit record {commit.id} does not add up ({commit.records} records, "
                                    f"kind {commit.kind!r})")
        return commit

    @property
    def marker(self) -> str:
        """The commit record's path, relative to OUTDIR."""
        return f"{schema.COMMITS_DIR}/{self.id}.json"

    @property
    def keys_path(self) -> str:
        """Its keys file's path, relative to OUTDIR."""
        return keys_path(self.id)


def keys_path(commit_id: str) -> str:
    return f"{schema.COMMITS_DIR}/{commit_id}{KEYS_SUFFIX}"


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


def commit_files(output: str, commit_id: str, kind: str, rel: str, data_pending: str | None, data: bytes | None,
                 keys: bytes, **summary) -> Commit:
    """Commit a file: its data (renamed from ``data_pending``, or ``data`` written), then its keys file, then
    the commit record, each whole or not at all. ``summary``: the ``Commit`` fields records, labels, splits,
    reasons, bytes, sha256."""
    if data_pending is not None:
        FileSystems.rename([data_pending], [FileSystems.join(output, rel)])
    else:
        write_atomically(FileSystems.join(output, rel),
                         FileSystems.join(output, schema.PENDING_DIR, f"{commit_id}.data"), data)
        summary = {**summary, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    pending = FileSystems.join(output, schema.PENDING_DIR, commit_id)
    write_atomically(FileSystems.join(output, keys_path(commit_id)), pending + KEYS_SUFFIX, keys)
    commit = Commit(commit_id, kind, rel, keys_bytes=len(keys), keys_sha256=hashlib.sha256(keys).hexdigest(),
                    **summary)
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
        self._keys, self._labels, self._splits, self._reasons = [], set(), set(), {}  # keys: one commit's lines
        self._size, self._digest = 0, hashlib.sha256()

    def process(self, element):
        if self._file is None:
            self._open()
        key, data = self.encode(element)
        self._file.write(data)
        self._size += len(data)
        self._digest.update(data)
        self._keys.append(key_line(key, *self.meta(element)))
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
        commit = commit_files(self._output, self._id, self.kind, rel, self._pending, None, b"".join(self._keys),
                              records=len(self._keys), labels=tuple(sorted(self._labels)),
                              splits=tuple(sorted(self._splits)), reasons=self._reasons, bytes=self._size,
                              sha256=self._digest.hexdigest())
        self._keys = []
        self._commits.inc()
        return commit

    def encode(self, element) -> tuple[str, bytes]:
        raise NotImplementedError

    def meta(self, element) -> tuple[str | None, str | None]:
        """The element's (label, split), for the keys file."""
        return None, None

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

    def meta(self, element):
        (_, label, split), _ = element
        return label, split

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
