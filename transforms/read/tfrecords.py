"""TFRecord files of ``tf.train.Example``s holding encoded images: index, cut into chunks, read a chunk.

Frames are read with ``transforms.framing`` (the format is described there). Indexing
reads only the 12-byte headers and seeks over the data, so the launcher never reads data and a big file can be
read by several workers, one byte range each. Record ``N`` (from 0) of ``URI`` has the key ``URI#N``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from transforms.framing import FOOTER_BYTES, HEADER_BYTES, FramingError, TFRecordError, read_frame, read_header
from transforms.read.tables import InputFields
from transforms.records import Failure, Record
from transforms.schema import record_key

__all__ = ["TFRecordChunk", "TFRecordError", "index_tfrecord", "read_tfrecord_chunk", "example_record"]


class TFRecordChunk(NamedTuple):
    uri: str
    start: int        # byte offset of the chunk's first frame
    end: int          # byte offset just past its last frame
    first_index: int  # record number of its first frame in the file
    count: int


def index_tfrecord(uri: str, fileobj, chunk_bytes: int) -> Iterator[TFRecordChunk | Failure]:
    """Chunks of about ``chunk_bytes`` covering every frame; damage ends the index with a ``Failure``."""
    start = position = 0
    index = first = 0
    while True:
        try:
            length = read_header(fileobj, position)
        except TFRecordError as e:
            if index > first:
                yield TFRecordChunk(uri, start, position, first, index - first)
            yield Failure(record_key(uri, index), uri, "read", "TFRecordError",
                          f"{e}; records from {index} on are lost")
            return
        if length is None:
            break
        position += HEADER_BYTES + length + FOOTER_BYTES
        fileobj.seek(position)
        index += 1
        if position - start >= chunk_bytes:
            yield TFRecordChunk(uri, start, position, first, index - first)
            start, first = position, index
    if index > first:
        yield TFRecordChunk(uri, start, position, first, index - first)


def read_tfrecord_chunk(fileobj, chunk: TFRecordChunk, fields: InputFields) -> Iterator[Record | Failure]:
    """The records of one chunk; a record whose data is damaged is a ``Failure``, its neighbours go on."""
    fileobj.seek(chunk.start)
    position = chunk.start
    end = chunk.first_index + chunk.count
    for index in range(chunk.first_index, end):
        key = record_key(chunk.uri, index)
        try:
            length = read_header(fileobj, position)
            if length is None:
                raise TFRecordError(f"file ends before record {index}")
            position += HEADER_BYTES + length + FOOTER_BYTES
            yield example_record(key, read_frame(fileobj, length, index), fields)
        except FramingError as e:  # the file changed since it was indexed: the rest of the chunk is lost
            for lost in range(index, end):
                yield Failure(record_key(chunk.uri, lost), chunk.uri, "read", "TFRecordError", str(e))
            return
        except (OSError, ValueError) as e:
            yield Failure.from_exception(key, chunk.uri, "read", e)


def _feature_values(feature):
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def example_record(key: str, data: bytes, fields: InputFields) -> Record:
    """A serialised ``tf.train.Example`` -> ``Record`` (image bytes and label from the configured features)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(data)
    except DecodeError:
        raise TFRecordError("record is not a tf.train.Example") from None
    features = example.features.feature
    image = _feature_values(features[fields.image_feature]) if fields.image_feature in features else []
    if not image or not isinstance(image[0], bytes):
        present = ", ".join(sorted(features)) or "none"
        raise TFRecordError(f"record has no bytes feature {fields.image_feature!r} (features: {present})")
    label = None
    if fields.label_feature in features:
        values = _feature_values(features[fields.label_feature])
        if values:
            label = values[0].decode("utf-8") if isinstance(values[0], bytes) else str(values[0])
    return Record(key, image[0], label)
