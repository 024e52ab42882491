"""Where results go: feature shards (TFRecord of tf.train.Example) and dead letters (JSON lines)."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import schema
from transforms.records import METRICS_NAMESPACE, Failure

__all__ = ["WriteFeatures", "WriteFailures"]


class WriteFeatures(beam.PTransform):
    """``((key, label, split), {output: vector})`` -> ``OUTDIR/features/part-SSSSS-of-NNNNN.tfrecord``.

    Returns the PCollection of shard paths written.
    """

    def __init__(self, output_dir: str, outputs: Sequence[schema.OutputSpec], num_shards: int = 0):
        super().__init__()
        self._prefix = FileSystems.join(output_dir, schema.FEATURES_DIR, schema.SHARD_PREFIX)
        self._outputs = tuple(outputs)
        self._num_shards = num_shards

    def expand(self, embedded):
        return (
            embedded
            | "Encode tf.train.Example" >> beam.ParDo(_EncodeExampleFn(self._outputs))
            | "Write TFRecord shards" >> beam.io.WriteToTFRecord(
                self._prefix, file_name_suffix=schema.SHARD_SUFFIX, num_shards=self._num_shards)
        )


class _EncodeExampleFn(beam.DoFn):
    def __init__(self, outputs):
        self._outputs = outputs
        self._embedded = Metrics.counter(METRICS_NAMESPACE, "records_embedded")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "feature_bytes_written")

    def process(self, element):
        (key, label, split), vectors = element
        data = schema.encode_example(key, label, vectors, self._outputs, split)
        self._embedded.inc()
        self._bytes.inc(len(data))
        yield data


class _CountFailureFn(beam.DoFn):
    def process(self, failure: Failure):
        Metrics.counter(METRICS_NAMESPACE, "records_failed").inc()
        Metrics.counter(METRICS_NAMESPACE, f"failed {failure.reason}").inc()
        yield failure.to_json()


class WriteFailures(beam.PTransform):
    """``Failure`` -> ``OUTDIR/errors/part-SSSSS-of-NNNNN.jsonl``, one JSON object per failed record."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._prefix = FileSystems.join(output_dir, schema.ERRORS_DIR, schema.SHARD_PREFIX)

    def expand(self, failures):
        return (
            failures
            | "Count and serialise failure" >> beam.ParDo(_CountFailureFn())
            | "Write JSON lines" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl")
        )
