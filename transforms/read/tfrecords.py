"""TFRecord files of ``tf.train.Example``s holding encoded images (or audio): index, cut into chunks, read a chunk.

Frames are read with ``transforms.schema.framing`` (the format is described there). Indexing
reads only the 12-byte headers and seeks over the data, so the launcher never reads data and a big file can be
read by several workers, one byte range each. Record ``N`` (from 0) of ``URI`` has the key ``URI#N``.

A damaged header loses where every following frame starts, so records from there on cannot be numbered (nor
keyed). Its one failure says exactly what is lost: the file is scanned forward, in blocks, for the next intact
frame (header and data checksums valid), and the intact frames from there to the end are counted.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Iterator
from typing import NamedTuple

from transforms.read.tables import InputFields, InputTooLarge
from transforms.schema.elements import Failure, Record
from transforms.schema.fields import record_key
from transforms.schema.framing import (
    FOOTER_BYTES,
    HEADER_BYTES,
    FramingError,
    TFRecordError,
    masked_crc32c,
    read_frame,
    read_header,
)

__all__ = ["TFRecordChunk", "TFRecordError", "index_tfrecord", "read_tfrecord_chunk", "example_record",
           "header_offsets", "next_intact_frame", "Damage", "damage_extent", "describe_damage", "SCAN_BLOCK"]

SCAN_BLOCK = 1 << 20  # bytes read (and header checksums computed at once) per step of a scan for the next frame


class TFRecordChunk(NamedTuple):
    uri: str
    start: int        # byte offset of the chunk's first frame
    end: int          # byte offset just past its last frame
    first_index: int  # record number of its first frame in the file
    count: int
    version: str | None = None  # the file's source version (``transforms/read/versions.py``)


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
                          f"{e}; records from {index} on are not read: {describe_damage(fileobj, position)}")
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


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # as framing.masked_crc32c


@functools.lru_cache(maxsize=1)
def _length_crc_tables():
    """crc32c is affine in its input bits: for an 8-byte length, crc = crc(0) ^ T[0][b0] ^ ... ^ T[7][b7], so the
    header checksum of every offset of a block is a few array lookups, not one call per byte."""
    import google_crc32c
    import numpy as np

    zero = google_crc32c.value(bytes(8))
    tables = np.array([[google_crc32c.value(bytes(j) + bytes([v]) + bytes(7 - j)) ^ zero for v in range(256)]
                       for j in range(8)], np.uint32)
    return zero, tables


def header_offsets(block: bytes) -> list[int]:
    """The offsets in ``block`` where 12 bytes form a frame header whose length checksum is valid."""
    import numpy as np

    data = np.frombuffer(block, np.uint8)
    n = len(data) - HEADER_BYTES + 1
    if n <= 0:
        return []
    zero, tables = _length_crc_tables()
    crc = np.full(n, zero, np.uint32)
    stored = np.zeros(n, np.uint32)
    for j in range(8):
        crc ^= tables[j][data[j:j + n]]
    for j in range(4):
        stored |= data[8 + j:8 + j + n].astype(np.uint32) << np.uint32(8 * j)
    masked = ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)
    return np.flatnonzero(masked == stored).tolist()


def _data_intact(fileobj, start: int, length: int) -> bool:
    """Whether ``length`` bytes of data at ``start`` and the checksum after them agree, read piecewise."""
    import google_crc32c

    fileobj.seek(start)
    crc, left = 0, length
    while left:
        piece = fileobj.read(min(left, SCAN_BLOCK))
        if not piece:
            return False
        crc, left = google_crc32c.extend(crc, piece), left - len(piece)
    footer = fileobj.read(FOOTER_BYTES)
    return len(footer) == FOOTER_BYTES and _mask(crc) == struct.unpack("<I", footer)[0]


def _intact_at(fileobj, block: bytes, base: int, i: int, size: int) -> bool:
    """Whether the header at ``block[i]`` (file offset ``base + i``) starts a whole frame with intact data; data
    that lies within the block is checked there, without reading again."""
    length = struct.unpack("<Q", block[i:i + 8])[0]
    data, end = i + HEADER_BYTES, i + HEADER_BYTES + length + FOOTER_BYTES
    if base + end > size:
        return False
    if end <= len(block):
        return masked_crc32c(block[data:end - FOOTER_BYTES]) == struct.unpack("<I", block[end - FOOTER_BYTES:end])[0]
    return _data_intact(fileobj, base + data, length)


def next_intact_frame(fileobj, start: int, size: int) -> int | None:
    """The first offset from ``start`` where an intact frame begins (header and data checksums valid), scanning
    the file in blocks of ``SCAN_BLOCK``; None when no intact frame follows."""
    base = start
    while base + HEADER_BYTES + FOOTER_BYTES <= size:
        fileobj.seek(base)
        block = fileobj.read(SCAN_BLOCK + HEADER_BYTES - 1)
        for i in header_offsets(block):
            if i < SCAN_BLOCK and _intact_at(fileobj, block, base, i, size):
                return base + i
        base += SCAN_BLOCK
    return None


class Damage(NamedTuple):
    """What lies after a damaged header, as a scan to the end of the file finds it."""

    resume: int | None  # where the next intact frame starts (None: nowhere)
    intact: int         # intact frames from there to the end
    damaged: int        # frames from there with a valid header but damaged data
    unreadable: int     # bytes from there that belong to no frame (further damaged headers)


def damage_extent(fileobj, position: int, size: int) -> Damage:
    """What follows a damaged header at ``position``: where the next intact frame starts, and what lies from
    there to the end (frames are followed as a reader would; a further damaged header is scanned over too)."""
    resume = next_intact_frame(fileobj, position + 1, size)
    intact = damaged = unreadable = 0
    offset = size if resume is None else resume
    while offset < size:
        fileobj.seek(offset)
        try:
            length = read_header(fileobj, offset)
        except FramingError:
            length = None
        if length is None or offset + HEADER_BYTES + length + FOOTER_BYTES > size:
            found = next_intact_frame(fileobj, offset + 1, size)
            unreadable += (size if found is None else found) - offset
            offset = size if found is None else found
            continue
        if _data_intact(fileobj, offset + HEADER_BYTES, length):
            intact += 1
        else:
            damaged += 1
        offset += HEADER_BYTES + length + FOOTER_BYTES
    return Damage(resume, intact, damaged, unreadable)


def _intact_records(n: int) -> str:
    return f"{n} intact record" if n == 1 else f"{n} intact records"


def describe_damage(fileobj, position: int) -> str:
    """What a damaged header at ``position`` costs, in words: the unreadable bytes and the intact records after
    them, which are not read because their record numbers (and so their keys) cannot be known."""
    fileobj.seek(0, io.SEEK_END)
    size = fileobj.tell()
    found = damage_extent(fileobj, position, size)
    if found.resume is None:
        return f"the rest of the file ({size - position} bytes from byte {position}) is unreadable"
    text = (f"bytes {position}-{found.resume} ({found.resume - position} bytes) are unreadable; bytes "
            f"{found.resume}-{size} after them hold {_intact_records(found.intact)}, not read: after a damaged header "
            "record numbers are unknown, so those records cannot get stable keys")
    further = [f"records failing their checksums: {found.damaged}"] if found.damaged else []
    further += [f"further unreadable bytes: {found.unreadable}"] if found.unreadable else []
    return text + (f"; among them, {', '.join(further)}" if further else "")


def read_tfrecord_chunk(fileobj, chunk: TFRecordChunk, fields: InputFields) -> Iterator[Record | Failure]:
    """The records of one chunk; a record whose data is damaged, or whose header claims more than
    ``max_input_bytes``, is a ``Failure`` (the latter before anything is allocated), its neighbours go on."""
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
            if length > fields.max_input_bytes:
                fileobj.seek(position)
                raise InputTooLarge.of(f"record {index}", length, fields.max_input_bytes)
            yield example_record(key, read_frame(fileobj, length, index), fields)._replace(source=chunk.uri)
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
    """A serialised ``tf.train.Example`` -> ``Record`` (the encoded bytes of ``fields.image_feature``, or of
    ``fields.audio_feature`` for ``fields.modality`` "audio", and the label of ``fields.label_feature``)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(data)
    except DecodeError:
        raise TFRecordError("record is not a tf.train.Example") from None
    features = example.features.feature
    name = fields.audio_feature if fields.modality == "audio" else fields.image_feature
    payload = _feature_values(features[name]) if name in features else []
    if not payload or not isinstance(payload[0], bytes):
        present = ", ".join(sorted(features)) or "none"
        raise TFRecordError(f"record has no bytes feature {name!r} (features: {present})")
    label = None
    if fields.label_feature in features:
        values = _feature_values(features[fields.label_feature])
        if values:
            label = values[0].decode("utf-8") if isinstance(values[0], bytes) else str(values[0])
    return Record(key, payload[0], label)
