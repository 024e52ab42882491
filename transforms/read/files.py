"""Opening one input safely: regular files and object-store objects only (a local path's type is checked with
``os.stat`` before it is opened: opening a FIFO blocks, a device never ends), and never more than a limit read.
"""

from __future__ import annotations

import io
import os
import stat

from apache_beam.io.filesystems import FileSystems

from transforms.read.tables import InputTooLarge
from transforms.worker.storage import is_remote

__all__ = ["NotARegularFile", "file_type", "check_regular", "open_regular", "read_whole"]


class NotARegularFile(OSError):
    """A local path names a FIFO, a device, a directory or a socket: it is never opened."""


_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_type(mode: int) -> str:
    """What an ``os.stat`` mode names, in words."""
    return next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")


def check_regular(uri: str) -> int | None:
    """The size of a local regular file, from ``os.stat`` before anything opens it; ``NotARegularFile`` for anything
    else (a symlink counts as what it points to). None for an object-store URI, whose objects are all files."""
    if is_remote(uri):
        return None
    info = os.stat(uri)
    if not stat.S_ISREG(info.st_mode):
        raise NotARegularFile(f"{uri} is {file_type(info.st_mode)}, not a regular file: not read")
    return info.st_size


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
