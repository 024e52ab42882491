"""Where results go: feature shards (TFRecord of tf.train.Example) and dead letters (JSON lines).

Extraction commits both in units (``CommitFeatures``, ``CommitFailures``; see ``transforms/write/committers.py``) so an
interrupted run can resume; ``WriteFailures`` is the plain dead-letter sink of jobs that need no resuming."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.schema.elements import Failure
from transforms.schema.fields import OutputSpec
from transforms.schema.layout import ERRORS_DIR, SHARD_PREFIX
from transforms.worker.process import WorkerDoFn
from transforms.write.committers import DEFAULT_RECORDS_PER_COMMIT, FailureCommitFn, FeatureCommitFn, dead_letter

__all__ = ["CommitFeatures", "CommitFailures", "WriteFailures"]


class CommitFeatures(beam.PTransform):
    """``((key, label, split, version, source), {output: vector})`` -> committed
    ``OUTDIR/features/part-<id>.tfrecord`` shards of about ``records_per_shard`` records each (and ``.parquet``
    shards of the same records when ``formats`` names parquet), made for feature set ``generation``; returns the
    PCollection of their ``Commit`` records."""

    def __init__(self, output_dir: str, outputs: Sequence[OutputSpec],
                 records_per_shard: int = DEFAULT_RECORDS_PER_COMMIT, formats: Sequence[str] = ("tfrecord",),
                 generation: int = 1):
        super().__init__()
        self._fn = FeatureCommitFn(output_dir, outputs, formats, records_per_commit=records_per_shard,
                                   generation=generation)

    def expand(self, embedded):
        return embedded | "Write and commit shards" >> beam.ParDo(self._fn)


class CommitFailures(beam.PTransform):
    """``Failure`` -> committed ``OUTDIR/errors/part-<id>.jsonl`` dead letters; returns their ``Commit``s."""

    def __init__(self, output_dir: str, records_per_file: int = DEFAULT_RECORDS_PER_COMMIT, generation: int = 1):
        super().__init__()
        self._fn = FailureCommitFn(output_dir, records_per_commit=records_per_file, generation=generation)

    def expand(self, failures):
        return failures | "Write and commit dead letters" >> beam.ParDo(self._fn)


class _DeadLetterFn(WorkerDoFn):
    def process(self, failure: Failure):
        yield dead_letter(failure)


class WriteFailures(beam.PTransform):
    """``Failure`` -> ``OUTDIR/errors/part-SSSSS-of-NNNNN.jsonl``, one JSON object per failed record."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._prefix = FileSystems.join(output_dir, ERRORS_DIR, SHARD_PREFIX)

    def expand(self, failures):
        return (
            failures
            | "Count and serialise failure" >> beam.ParDo(_DeadLetterFn())
            | "Write JSON lines" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl", skip_if_empty=True)
        )
