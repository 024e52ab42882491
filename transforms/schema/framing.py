"""TFRecord framing, the one implementation every writer and reader of the project uses.

A frame is ``length (uint64 LE) | masked crc32c(length) | data | masked crc32c(data)``, the format of
TensorFlow's ``TFRecordWriter`` (uncompressed). Damage to a frame's data loses that record
(``TFRecordError``); damage to a header (``FramingError``) loses where the following frames start.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["HEADER_BYTES", "TFRecordError", "FramingError", "masked_crc32c", "frame", "read_header", "read_frame",
           "iter_frames"]

HEADER_BYTES = 12
FOOTER_BYTES = 4


class TFRecordError(ValueError):
    """The file is not a (readable) TFRecord file at this point."""


class FramingError(TFRecordError):
    """A frame header is damaged: where the following records start cannot be known."""


def masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record as a TFRecord frame."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def read_header(fileobj, position: int = 0) -> int | None:
    """The data length of the frame that starts here; None at the end of the file (``position``: for messages)."""
    header = fileobj.read(HEADER_BYTES)
    if not header:
        return None
    if len(header) < HEADER_BYTES:
        raise FramingError(f"truncated record header at byte {position}")
    length, length_crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != length_crc:
        raise FramingError(f"corrupt record header at byte {position} (not a TFRecord file, or damaged)")
    return length


def read_frame(fileobj, length: int, index: int) -> bytes:
    """The data of a frame whose header was just read (``index``: the record number, for messages)."""
    data = fileobj.read(length + FOOTER_BYTES)
    if len(data) < length + FOOTER_BYTES:
        raise TFRecordError(f"record {index} is truncated ({len(data)} of {length + FOOTER_BYTES} bytes)")
    if masked_crc32c(data[:-FOOTER_BYTES]) != struct.unpack("<I", data[-FOOTER_BYTES:])[0]:
        raise TFRecordError(f"record {index} fails its checksum")
    return data[:-FOOTER_BYTES]


def iter_frames(fileobj) -> Iterator[bytes]:
    """Every record of a file object, checksums checked; damage raises ``TFRecordError`` (a ``ValueError``)."""
    position = index = 0
    while (length := read_header(fileobj, position)) is not None:
        yield read_frame(fileobj, length, index)
        position += HEADER_BYTES + length + FOOTER_BYTES
        index += 1
