"""Where results go: feature shards (TFRecord of tf.train.Example) and dead letters (JSON lines)."""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import schema
from transforms.records import Failure

__all__ = ["WriteFeatures", "WriteFailures"]


class WriteFeatures(beam.PTransform):
    """``((key, label), {output: vector})`` -> ``OUTDIR/features/part-SSSSS-of-NNNNN.tfrecord``.

    Returns the PCollection of shard paths written.
    """

    def __init__(self, output_dir: str, outputs: Sequence[schema.OutputSpec], num_shards: int = 0):
        super().__init__()
        self._prefix = FileSystems.join(output_dir, schema.FEATURES_DIR, schema.SHARD_PREFIX)
        self._outputs = tuple(outputs)
        self._num_shards = num_shards

    def expand(self, embedded):
        outputs = self._outputs
        return (
            embedded
            | "Encode tf.train.Example" >> beam.MapTuple(
                lambda meta, vectors: schema.encode_example(meta[0], meta[1], vectors, outputs))
            | "Write TFRecord shards" >> beam.io.WriteToTFRecord(
                self._prefix, file_name_suffix=schema.SHARD_SUFFIX, num_shards=self._num_shards)
        )


class WriteFailures(beam.PTransform):
    """``Failure`` -> ``OUTDIR/errors/part-SSSSS-of-NNNNN.jsonl``, one JSON object per failed record."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._prefix = FileSystems.join(output_dir, schema.ERRORS_DIR, schema.SHARD_PREFIX)

    def expand(self, failures):
        return (
            failures
            | "Failure to JSON" >> beam.Map(Failure.to_json)
            | "Write JSON lines" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl")
        )
