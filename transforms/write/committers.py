"""DoFns that commit a job's outputs as they go, so a job that dies keeps what it finished and a rerun can resume.

A ``CommitFn`` writes its elements to pending files and, every ``records_per_commit`` elements or
``seconds_per_commit`` seconds (and at the end of each bundle), commits them: the files renamed to their final
names, then the keys file, then the commit record (``commit_format.py`` says what each holds). Two kinds:
``FeatureCommitFn`` (feature shards, TFRecord and/or Parquet) and ``FailureCommitFn`` (dead letters).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

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
from transforms.write.commit_format import Commit, commit_files, key_line, place_file
from transforms.write.commit_sources import Runs, container_of
from transforms.write.shards import HashingFile, JsonLinesShard, feature_shard

__all__ = ["CommitFn", "FeatureCommitFn", "FailureCommitFn", "dead_letter",
           "DEFAULT_RECORDS_PER_COMMIT", "DEFAULT_SECONDS_PER_COMMIT"]

DEFAULT_RECORDS_PER_COMMIT = 10_000
DEFAULT_SECONDS_PER_COMMIT = 300.0


class CommitFn(WorkerDoFn):
    """Writes elements into committed files of about ``records_per_commit`` records; outputs each ``Commit``.

    Subclasses say which files a commit writes (``suffixes`` and ``writer``), and what an element's key,
    label, split and failure reason are."""

    kind = ""

    def __init__(self, output_dir: str, records_per_commit: int = DEFAULT_RECORDS_PER_COMMIT,
                 seconds_per_commit: float = DEFAULT_SECONDS_PER_COMMIT, generation: int = 1):
        self._output = output_dir
        self._generation = generation
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
        self._runs = Runs()  # which containers they came from

    def process(self, element):
        if self._open_files is None:
            self._open()
        for _, _, _, writer in self._open_files:
            self.wrote(writer.add(element))
        key, label, split, version, source = self.meta(element)
        self._keys.append(key_line(key, label, split, version))
        self._runs.add(container_of(key, source, self.kind == ERRORS_DIR), version)
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
        commit = commit_files(self._output, self._id, self.kind, placed, b"".join(self._keys), self._runs.to_bytes(),
                              records=len(self._keys), labels=tuple(sorted(self._labels)),
                              splits=tuple(sorted(self._splits)), reasons=self._reasons,
                              generation=self._generation)
        self._keys = []
        self._commits.inc()
        return commit

    def suffixes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def writer(self, suffix: str, stream):
        """The writer of one of a commit's files (``transforms/write/shards.py``)."""
        raise NotImplementedError

    def meta(self, element) -> tuple[str, str | None, str | None, str | None, str | None]:
        """The element's (key, label, split, source version, the file it was read from), for the keys and sources
        files."""
        raise NotImplementedError

    def wrote(self, size: int) -> None:
        """A writer wrote ``size`` bytes of an element."""

    def note(self, element) -> None:
        """Remember what the commit record should say about this element."""


class FeatureCommitFn(CommitFn):
    """``((key, label, split, version, source), {output: vector})`` -> committed ``features/part-<id>.tfrecord``
    shards (and ``.parquet`` shards of the same records, with ``formats`` naming parquet)."""

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
        (key, label, split, *read_from), _ = element  # (version, source), when known
        version, source = (*read_from, None, None)[:2]
        return key, label, split, version, source

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
        return failure.key, None, None, failure.version, failure.source

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
