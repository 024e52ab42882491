"""The elements that flow between the transforms: a raw record, and a failure that says why.

A record's payload is its bytes, or for a loose recording a ``LazyFile``: the file named, not read (an hour of
audio is hundreds of MB), opened by whoever decodes it. ``check_regular`` (which ``LazyFile.open`` and every
read of an input goes through) refuses a local FIFO, device, directory or socket before anything opens it.
"""

from __future__ import annotations

import json
import os
import stat
from typing import BinaryIO, NamedTuple

from transforms.worker.storage import is_remote

__all__ = ["SourceFile", "FileRef", "LazyFile", "Record", "Failure", "FAILED", "METRICS_NAMESPACE", "error_message",
           "NotARegularFile", "file_type", "check_regular", "payload_bytes"]

FAILED = "failed"  # tag of every transform's failure output
METRICS_NAMESPACE = "featurebeam"  # every Beam metric of the project, so the Dataflow UI groups them


class SourceFile(NamedTuple):
    """A listed file and how to read it: one input (``files``) or many (a manifest, an archive, text)."""

    uri: str
    label: str | None
    format: str = "files"
    version: str | None = None  # the file's source version when it was listed (``transforms/read/versions.py``)


class FileRef(NamedTuple):
    """One input that is a whole file of its own: a loose file, or a row of a manifest."""

    key: str
    uri: str
    label: str | None
    split: str | None = None
    version: str | None = None  # the file's source version (``transforms/read/versions.py``)


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


class LazyFile(NamedTuple):
    """A loose file as a payload, named and not read: its URI and its size in bytes when read (None: unknown)."""

    uri: str
    size: int | None = None

    def open(self) -> BinaryIO:
        """A seekable binary reader over the file (close it, or use ``with``); its type is checked first, so a
        path that became a FIFO or a device since it was listed is ``NotARegularFile``, never opened."""
        from apache_beam.io.filesystems import FileSystems

        check_regular(self.uri)
        return FileSystems.open(self.uri, compression_type="uncompressed")


class Record(NamedTuple):
    """One input: its stable key, raw payload, label, split, and the file it was read from (a tar shard, a
    TFRecord or text file, the file a manifest row names; None: the key).

    The payload is encoded bytes (an image; a recording from a tar member or TFRecord Example), ``str`` for text,
    or a ``LazyFile`` for a loose recording (a file of its own or a manifest row), opened when it is decoded."""

    key: str
    payload: bytes | str | LazyFile
    label: str | None
    split: str | None = None
    source: str | None = None
    version: str | None = None  # the source version of what it was read from (``transforms/read/versions.py``)

    @property
    def origin(self) -> str:
        """The file this record was read from, for its failures: ``source``, else the key."""
        return self.key if self.source is None else self.source


def payload_bytes(payload: bytes | str | LazyFile) -> int:
    """How much a payload holds, for the read metrics: a ``LazyFile``'s size (0 when unknown), else its length."""
    return (payload.size or 0) if isinstance(payload, LazyFile) else len(payload)


class Failure(NamedTuple):
    """A record that could not be processed: which one, at which stage, and why."""

    key: str
    source: str
    stage: str
    error_type: str
    message: str
    version: str | None = None  # the source version of the input that failed, when known

    @property
    def reason(self) -> str:
        return f"{self.stage}: {self.error_type}"

    def to_json(self) -> str:
        fields = self._asdict()
        if fields["version"] is None:
            del fields["version"]
        return json.dumps(fields, ensure_ascii=False, sort_keys=True)

    def with_version(self, version: str | None) -> Failure:
        """This failure, with the source version of its input unless it has one."""
        return self if self.version is not None or version is None else self._replace(version=version)

    @classmethod
    def from_exception(cls, key: str, source: str, stage: str, error: BaseException) -> Failure:
        return cls(key, source, stage, type(error).__name__, error_message(error))


# Lines of an error message that say where, not what (TensorFlow's graph errors are mostly these).
_NOISE = ("File ", "Detected at node", "Graph execution error", "[[", "Traceback")


def error_message(error: BaseException, limit: int = 500) -> str:
    """One line that says what went wrong: the first line of the message that is not a location."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(_NOISE)]
    return (meaningful or lines or [type(error).__name__])[0][:limit]
