"""Opening one input safely: regular files and object-store objects only (a local path's type is checked with
``os.stat`` before it is opened: opening a FIFO blocks, a device never ends), and never more than a limit read.

``read_whole`` reads a file that is one input; ``lazy_file`` names one that is read later, a piece at a time
(a long recording): its type and size are checked here, its bytes read by ``LazyFile.open``. The type check
itself (``check_regular``) lives with ``LazyFile`` in ``transforms.schema.elements``, so opening a payload
needs nothing from this package.
"""

from __future__ import annotations

import io

from apache_beam.io.filesystems import FileSystems

from transforms.read.tables import InputTooLarge
from transforms.schema.elements import LazyFile, NotARegularFile, check_regular, file_type

__all__ = ["NotARegularFile", "file_type", "check_regular", "open_regular", "read_whole", "lazy_file"]


def _open(uri: str):
    return FileSystems.open(uri, compression_type="uncompressed")


def open_regular(uri: str):
    """A read channel on a regular file or object, its type checked before it is opened."""
    check_regular(uri)
    return _open(uri)


def _object_size(f) -> int | None:
    """An open object's size, from seeking to its end (object stores know it from the open, no data is read)."""
    try:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        f.seek(0)
    except (OSError, ValueError, AttributeError):
        return None
    return size


def read_whole(uri: str, limit: int) -> bytes:
    """All bytes of one file, refused when over ``limit``: from its size before reading, and by reading at most
    ``limit + 1`` bytes (a file that grows, or whose size is unknown)."""
    size = check_regular(uri)
    with _open(uri) as f:
        size = _object_size(f) if size is None else size
        if size is not None and size > limit:
            raise InputTooLarge.of(uri, size, limit)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InputTooLarge.of(uri, None, limit)
    return data


def lazy_file(uri: str, limit: int) -> LazyFile:
    """One file named for reading later, nothing of it read: a regular file (``NotARegularFile`` otherwise) whose
    size is at most ``limit`` (``InputTooLarge`` otherwise). An object's size is asked of the store by opening it
    (no data is read); a size the store does not tell stays None."""
    size = check_regular(uri)
    if size is None:
        with _open(uri) as f:
            size = _object_size(f)
    if size is not None and size > limit:
        raise InputTooLarge.of(uri, size, limit)
    return LazyFile(uri, size)
