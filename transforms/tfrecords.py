"""TFRecord files of ``tf.train.Example``s holding encoded images: index, cut into chunks, read a chunk.

A TFRecord frame is ``length (uint64 LE) | masked crc32c(length) | data | masked crc32c(data)``. Indexing
reads only the 12-byte headers and seeks over the data, so the launcher never reads data and a big file can be
read by several workers, one byte range each. Record ``N`` (from 0) of ``URI`` has the key ``URI#N``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from transforms.records import Failure, Record
from transforms.tables import InputFields

__all__ = ["TFRecordChunk", "TFRecordError", "index_tfrecord", "read_tfrecord_chunk", "example_record",
           "masked_crc32c"]

_HEADER = 12


class TFRecordError(ValueError):
    """The file is not a (readable) TFRecord file at this point."""


class FramingError(TFRecordError):
    """A frame header is damaged: where the following records start cannot be known."""


class TFRecordChunk(NamedTuple):
    uri: str
    start: int        # byte offset of the chunk's first frame
    end: int          # byte offset just past its last frame
    first_index: int  # record number of its first frame in the file
    count: int


def masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_header(fileobj, position: int) -> int | None:
    header = fileobj.read(_HEADER)
    if not header:
        return None
    if len(header) < _HEADER:
        raise FramingError(f"truncated record header at byte {position}")
    length, length_crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != length_crc:
        raise FramingError(f"corrupt record header at byte {position} (not a TFRecord file, or damaged)")
    return length


def index_tfrecord(uri: str, fileobj, chunk_bytes: int) -> Iterator[TFRecordChunk | Failure]:
    """Chunks of about ``chunk_bytes`` covering every frame; damage ends the index with a ``Failure``."""
    start = position = 0
    index = first = 0
    while True:
        try:
            length = _read_header(fileobj, position)
        except TFRecordError as e:
            if index > first:
                yield TFRecordChunk(uri, start, position, first, index - first)
            yield Failure(f"{uri}#{index}", uri, "read", "TFRecordError", f"{e}; records from {index} on are lost")
            return
        if length is None:
            break
        position += _HEADER + length + 4
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
        key = f"{chunk.uri}#{index}"
        try:
            length = _read_header(fileobj, position)
            if length is None:
                raise TFRecordError(f"file ends before record {index}")
            data = fileobj.read(length + 4)
            position += _HEADER + length + 4
            if len(data) < length + 4:
                raise TFRecordError(f"record {index} is truncated ({len(data)} of {length + 4} bytes)")
            if masked_crc32c(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
                raise TFRecordError(f"record {index} fails its checksum")
            yield example_record(key, data[:-4], fields)
        except FramingError as e:  # the file changed since it was indexed: the rest of the chunk is lost
            for lost in range(index, end):
                yield Failure(f"{chunk.uri}#{lost}", chunk.uri, "read", "TFRecordError", str(e))
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
