"""How one committed file's records are written, per format: each writer streams its elements to an open file.

- ``TFRecordShard``: framed ``tf.train.Example`` records (``encode_example``);
- ``ParquetShard``: rows of ``arrow_schema``, in row groups of about ``ROW_GROUP_BYTES`` (only the
  group being filled is held);
- ``JsonLinesShard``: dead letters, one JSON object a line.

``HashingFile`` counts the bytes and the sha256 of what goes through it, so a commit record can say what the
file held without reading it back. ``rewrite_without`` makes a committed file's bytes again without some of
its records (the copies de-duplication drops), in the file's own format.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np

from transforms.schema.example import encode_example
from transforms.schema.fields import OutputSpec
from transforms.schema.framing import frame, iter_frames
from transforms.schema.layout import PARQUET_SUFFIX, SHARD_SUFFIX
from transforms.schema.parquet import arrow_schema, arrow_table

__all__ = ["HashingFile", "TFRecordShard", "ParquetShard", "JsonLinesShard", "feature_shard", "rewrite_without",
           "ROW_GROUP_BYTES"]

ROW_GROUP_BYTES = 32 << 20  # about this many bytes of vectors a Parquet row group: large for readers, bounded here


class HashingFile:
    """A writable file that also counts its bytes and their sha256."""

    def __init__(self, stream):
        self._stream = stream
        self.size = 0
        self._digest = hashlib.sha256()

    def write(self, data) -> int:
        data = bytes(data)
        self._stream.write(data)
        self.size += len(data)
        self._digest.update(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._stream.flush()

    @property
    def closed(self) -> bool:
        return self._stream.closed

    def close(self) -> None:
        self._stream.close()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class TFRecordShard:
    """``((key, label, split, ...), {output: vector})`` elements as framed Examples; returns each record's size."""

    def __init__(self, stream, outputs: Sequence[OutputSpec]):
        self._stream, self._outputs = stream, tuple(outputs)

    def add(self, element) -> int:
        (key, label, split, *_), vectors = element
        data = frame(encode_example(key, label, vectors, self._outputs, split))
        self._stream.write(data)
        return len(data)

    def close(self) -> None:
        self._stream.close()


class ParquetShard:
    """The same elements as rows of a Parquet file, a row group at a time."""

    def __init__(self, stream, outputs: Sequence[OutputSpec], row_group_bytes: int = ROW_GROUP_BYTES):
        import pyarrow.parquet as pq

        self._outputs = tuple(outputs)
        self._writer = pq.ParquetWriter(stream, arrow_schema(self._outputs), compression="zstd")
        self._stream = stream
        row_bytes = sum(4 * o.dim for o in self._outputs) + 64
        self._group_rows = max(1, row_group_bytes // row_bytes)
        self._rows: list = []

    def add(self, element) -> int:
        self._rows.append(element)
        if len(self._rows) >= self._group_rows:
            self._flush()
        return 0

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(rows_table(self._rows, self._outputs), row_group_size=len(self._rows))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        if not self._stream.closed:
            self._stream.close()


def rows_table(elements, outputs: Sequence[OutputSpec]):
    """``((key, label, split, ...), {output: vector})`` elements as one Arrow table of the Parquet schema."""
    keys = [meta[0] for meta, _ in elements]
    labels = [meta[1] for meta, _ in elements]
    splits = [meta[2] for meta, _ in elements]
    vectors = {o.name: np.stack([np.asarray(v[o.name], np.float32).reshape(-1) for _, v in elements])
               for o in outputs}
    for o in outputs:
        if vectors[o.name].shape[1] != o.dim:
            raise ValueError(f"output {o.name!r} has {vectors[o.name].shape[1]} values, expected {o.dim}")
    return arrow_table(keys, labels, splits, vectors, outputs)


class JsonLinesShard:
    """Lines of text (dead letters), each written as UTF-8."""

    def __init__(self, stream):
        self._stream = stream

    def add(self, line: str) -> int:
        data = line.encode("utf-8")
        self._stream.write(data)
        return len(data)

    def close(self) -> None:
        self._stream.close()


def feature_shard(format: str, stream, outputs: Sequence[OutputSpec]):
    """The writer of one feature format ("tfrecord" or "parquet") over ``stream``."""
    return ParquetShard(stream, outputs) if format == "parquet" else TFRecordShard(stream, outputs)


def rewrite_without(data: bytes, rel: str, drop: set[int]) -> bytes:
    """A committed file's bytes without the records at positions ``drop`` (its format from its name)."""
    if rel.endswith(PARQUET_SUFFIX):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        kept = [i for i in range(table.num_rows) if i not in drop]
        out = io.BytesIO()
        pq.write_table(table.take(kept), out, compression="zstd", row_group_size=max(1, len(kept)))
        return out.getvalue()
    if rel.endswith(SHARD_SUFFIX):
        records = list(iter_frames(io.BytesIO(data)))
        return b"".join(frame(r) for i, r in enumerate(records) if i not in drop)
    lines = data.decode("utf-8").splitlines(keepends=True)
    return "".join(line for i, line in enumerate(lines) if i not in drop).encode("utf-8")
