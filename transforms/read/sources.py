"""Where records come from: input specs, listing, expanding manifests and archives, reading the bytes.

``ReadRecords`` turns input specs into ``Record``s in three steps, each on the workers:

1. each spec's files are listed (``FileSystems.match``; the launcher only checks that something matches);
2. each listed file is expanded into units of reading work: a loose file is one unit; a manifest gives one
   unit per row; a tar shard or TFRecord file is indexed (headers only) and cut into chunks of consecutive
   records; a text file gives its rows as records;
3. a Reshuffle spreads the units over all workers, which read them, so a few big shards do not pin the job
   to a few workers, and reading is separated from inference.

Anything that cannot be listed, parsed or read becomes a ``Failure`` with its key and reason. Only regular files
and object-store objects are opened (a local path's type is checked with ``os.stat`` first: opening a FIFO blocks,
a device never ends), and no input is read past ``InputFields.max_input_bytes``.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import stat
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.process import ready_process
from transforms.read import tables, tar_shards, tfrecords
from transforms.read.tables import InputFields, InputTooLarge
from transforms.records import FAILED, METRICS_NAMESPACE, Failure, FileRef, Record, SourceFile
from transforms.schema import record_key

__all__ = ["InputSpec", "InputFields", "FORMATS", "AUTO", "detect_format", "glob_format", "escape_glob", "local_path",
           "label_from_path", "list_source_files", "ReadRecords", "ExpandSourceFn", "ReadUnitFn", "SKIPPED",
           "NotARegularFile", "check_regular", "open_regular", "read_whole"]

_GLOB_CHARS = re.compile(r"[*?\[]")

FORMATS = ("files", "manifest", "tar", "tfrecord", "text")
AUTO = "auto"  # a glob's format when its files' names differ in it: each listed file's own, by its extension
_EXTENSION_FORMATS = {".tar": "tar", ".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfrec": "tfrecord",
                      ".csv": "manifest", ".tsv": "manifest", ".jsonl": "manifest", ".ndjson": "manifest"}
DEFAULT_CHUNK_BYTES = 64 << 20
MAX_FIELD_CHARS = 1024  # the longest label or split value kept; a longer one is that record's failure


def detect_format(pattern: str) -> str:
    """The format a glob or file name implies: ``.tar`` shards, ``.tfrecord`` files, ``.csv``/``.jsonl``
    manifests, anything else loose files. Text is never guessed (a ``.jsonl`` is a manifest unless told)."""
    name = pattern.rsplit("/", 1)[-1].lower()
    for extension, fmt in _EXTENSION_FORMATS.items():
        if name.endswith(extension):
            return fmt
    return "files"


def glob_format(pattern: str) -> str:
    """The format every file a glob matches has by its name (``*.tar``: tar, ``*.jpg``: files), or ``AUTO`` when
    the names it matches can differ in it (``*``, ``*.t*``): then each listed file is read by its own extension."""
    tail = re.split(r"[*?\[\]]", pattern)[-1].lower()  # what every matched name ends with
    if any(len(extension) > len(tail) and extension.endswith(tail) for extension in _EXTENSION_FORMATS):
        return AUTO
    return detect_format(tail)


def escape_glob(path: str) -> str:
    """A pattern that matches ``path`` only, taken literally: each ``[``, ``*`` and ``?`` in brackets (fnmatch)."""
    return _GLOB_CHARS.sub(lambda m: f"[{m.group()}]", path)


_FILE_URI = re.compile(r"(?i)file:(//[^/]*)?(?=/)")


def local_path(uri: str) -> str:
    """A ``file://`` URI as the local path it names (percent-escapes decoded); anything else as given.
    ``ValueError`` for a file URI that names another host."""
    found = _FILE_URI.match(uri)
    if not found:
        return uri
    host = (found.group(1) or "//")[2:]
    if host.lower() not in ("", "localhost"):
        raise ValueError(f"{uri} names a file on host {host!r}; only local files can be read as paths")
    return urllib.parse.unquote(uri[found.end():])


@dataclass(frozen=True)
class InputSpec:
    """One ``--input``: a directory (recursive), one file or a glob of files, and the format of those files.

    For loose files, files in first-level subfolders of ``root`` take that folder's name as label
    (ImageFolder layout); files directly in ``root`` have no label. Other formats carry their own labels.
    ``AUTO``: each listed file's format is its extension's. A directory's or a file's ``pattern`` is its path
    with glob characters escaped, so it matches that path only.
    """

    kind: str      # "directory" | "glob" (a glob, or one file: a pattern that matches itself)
    uri: str       # as resolved at launch (absolute for local paths)
    pattern: str   # what FileSystems.match lists
    root: str      # where labels are read from
    format: str = "files"

    @classmethod
    def directory(cls, uri: str, format: str = "files") -> InputSpec:
        root = local_path(uri).rstrip("/")
        return cls("directory", root, f"{escape_glob(root)}/**", root, format)

    @classmethod
    def file(cls, uri: str, format: str | None = None) -> InputSpec:
        path = local_path(uri)
        return cls("glob", path, escape_glob(path), posixpath.dirname(path), format or detect_format(path))

    @classmethod
    def glob(cls, pattern: str, format: str | None = None) -> InputSpec:
        pattern = local_path(pattern)
        prefix = pattern[: m.start()] if (m := _GLOB_CHARS.search(pattern)) else pattern
        root = prefix if prefix.endswith("/") else posixpath.dirname(prefix)
        return cls("glob", pattern, pattern, root.rstrip("/"), format or glob_format(pattern))

    def to_json(self) -> dict:
        return {"kind": self.kind, "uri": self.uri, "pattern": self.pattern, "label_root": self.root,
                "format": self.format}


def is_glob(path: str) -> bool:
    return bool(_GLOB_CHARS.search(path))


def label_from_path(root: str, uri: str) -> str | None:
    """The first-level folder under ``root`` that holds ``uri``, or None for files directly in ``root``."""
    prefix = root.rstrip("/") + "/"
    if not uri.startswith(prefix):
        return None
    parts = uri[len(prefix):].split("/")
    return parts[0] if len(parts) > 1 else None


def list_source_files(spec: InputSpec) -> Iterator[SourceFile]:
    """List the files of one input spec with their labels and format (``AUTO``: each file's own), in a stable
    order."""
    ready_process()
    (result,) = FileSystems.match([local_path(spec.pattern)])
    root = local_path(spec.root)
    for path in sorted(m.path for m in result.metadata_list):
        fmt = detect_format(path) if spec.format == AUTO else spec.format
        yield SourceFile(path, label_from_path(root, path) if fmt == "files" else None, fmt)


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
    if "://" in uri:
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


def expand_source(source: SourceFile, fields: InputFields, chunk_bytes: int):
    """One listed file -> its units of reading work (``FileRef``, tar or TFRecord chunks, text ``Record``s)
    and ``Failure``s, as a pure generator over the file's contents."""
    if source.format == "files":
        yield FileRef(record_key(source.uri), source.uri, source.label)
        return
    with open_regular(source.uri) as f:
        if source.format in ("manifest", "text"):
            rows = tables.iter_rows(source.uri, tables.bounded_lines(f, fields.max_input_bytes))
            make = tables.manifest_refs if source.format == "manifest" else tables.text_records
            yield from make(source.uri, rows, fields)
        elif source.format == "tar":
            samples = tar_shards.index_tar(f, fields.max_input_bytes)
            yield from tar_shards.chunk_samples(source.uri, samples, chunk_bytes)
        elif source.format == "tfrecord":
            yield from tfrecords.index_tfrecord(source.uri, f, chunk_bytes)
        else:
            raise ValueError(f"unknown input format {source.format!r}")


def read_unit(unit, fields: InputFields) -> Iterator[Record | Failure]:
    """One unit of reading work -> its ``Record``s (and ``Failure``s for what cannot be read, or whose label or
    split is longer than ``MAX_FIELD_CHARS``: no such value reaches the manifest or a summary)."""
    for item in _read_unit(unit, fields):
        too_long = isinstance(item, Record) and next(
            ((name, value) for name, value in (("label", item.label), ("split", item.split))
             if value is not None and len(value) > MAX_FIELD_CHARS), None)
        if too_long:
            name, value = too_long
            yield Failure(item.key, item.origin, "read", "FieldTooLong",
                          f"its {name} is {len(value):,} characters, over {MAX_FIELD_CHARS:,}: {value[:60]!r}...")
        else:
            yield item


def _read_unit(unit, fields: InputFields) -> Iterator[Record | Failure]:
    if isinstance(unit, Record):
        yield unit
    elif isinstance(unit, FileRef):
        yield Record(unit.key, read_whole(unit.uri, fields.max_input_bytes), unit.label, unit.split, unit.uri)
    elif isinstance(unit, tar_shards.TarChunk):
        with open_regular(unit.uri) as f:
            yield from tar_shards.read_tar_chunk(f, unit, fields)
    elif isinstance(unit, tfrecords.TFRecordChunk):
        with open_regular(unit.uri) as f:
            yield from tfrecords.read_tfrecord_chunk(f, unit, fields)
    else:
        raise TypeError(f"not a unit of reading work: {type(unit).__name__}")


def unit_keys(unit) -> list[str]:
    """The keys of every record a unit holds (to record them all when the unit cannot be opened)."""
    if isinstance(unit, (Record, FileRef)):
        return [unit.key]
    if isinstance(unit, tar_shards.TarChunk):
        return [record_key(unit.uri, s.member(tar_shards.IMAGE_EXTENSIONS).name) for s in unit.samples]
    return [record_key(unit.uri, i) for i in range(unit.first_index, unit.first_index + unit.count)]


def _describe(error: BaseException) -> BaseException:
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"file does not exist: {error.filename or error}")
    return error


class ExpandSourceFn(beam.DoFn):
    """SourceFile -> units of reading work; a file that cannot be opened or parsed goes to ``failed``."""

    def __init__(self, fields: InputFields, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self._fields = fields
        self._chunk_bytes = chunk_bytes

    def setup(self):
        ready_process()

    def process(self, source: SourceFile):
        try:
            for unit in expand_source(source, self._fields, self._chunk_bytes):
                yield beam.pvalue.TaggedOutput(FAILED, unit) if isinstance(unit, Failure) else unit
        except Exception as e:  # a file we cannot read is this file's failure, not the job's
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(source.uri, source.uri, "read",
                                                                          _describe(e)))


SKIPPED = "skipped"  # tag of the keys a resumed run does not read again


class ReadUnitFn(beam.DoFn):
    """Unit of reading work -> ``Record``s; what cannot be read goes to ``failed``.

    With a ``done`` side input (keys already committed by an earlier run), those keys go to ``skipped``
    instead: a unit whose keys are all done is not even opened."""

    def __init__(self, fields: InputFields):
        self._fields = fields
        self._done = None
        self._read = Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "bytes_read")
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "records_skipped_as_committed")

    def setup(self):
        ready_process()

    def process(self, unit, done=()):
        if self._done is None:
            self._done = frozenset(done)  # the same for every bundle of a batch job: build the set once
        keys = unit_keys(unit)
        if self._done and all(k in self._done for k in keys):
            self._skipped.inc(len(keys))
            for key in keys:
                yield beam.pvalue.TaggedOutput(SKIPPED, key)
            return
        seen = set()
        try:
            for item in read_unit(unit, self._fields):
                seen.add(item.key)
                if item.key in self._done:
                    self._skipped.inc()
                    yield beam.pvalue.TaggedOutput(SKIPPED, item.key)
                elif isinstance(item, Failure):
                    yield beam.pvalue.TaggedOutput(FAILED, item)
                else:
                    self._read.inc()
                    self._bytes.inc(len(item.payload))
                    yield item
        except Exception as e:  # storage errors: every record of the unit not yet read fails with the reason
            source = unit.origin if isinstance(unit, Record) else unit.uri
            for key in keys:
                if key not in seen and key not in self._done:
                    yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(key, source, "read", _describe(e)))
                elif key not in seen:
                    yield beam.pvalue.TaggedOutput(SKIPPED, key)


class ReadRecords(beam.PTransform):
    """Input specs -> ``{"sources": SourceFile, "records": Record, "failed": Failure, "skipped": key}``.

    ``done_keys``: an optional PCollection of keys to skip (committed by an earlier run of the same job)."""

    def __init__(self, specs: Sequence[InputSpec], fields: InputFields = InputFields(),
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, done_keys=None):
        super().__init__()
        self._specs = list(specs)
        self._fields = fields
        self._chunk_bytes = chunk_bytes
        self._done_keys = done_keys

    def expand(self, pbegin):
        sources = (
            pbegin
            | "Input specs" >> beam.Create(self._specs)
            | "List input files" >> beam.FlatMap(list_source_files)
        )
        expanded = (
            sources
            | "Spread files over workers" >> beam.Reshuffle()
            | "Expand manifests and archives" >> beam.ParDo(
                ExpandSourceFn(self._fields, self._chunk_bytes)).with_outputs(FAILED, main="units")
        )
        done = () if self._done_keys is None else (beam.pvalue.AsList(self._done_keys),)
        read = (
            expanded.units
            | "Spread reading over workers" >> beam.Reshuffle()
            | "Read records" >> beam.ParDo(ReadUnitFn(self._fields), *done).with_outputs(
                FAILED, SKIPPED, main="records")
        )
        expand_failed, skipped = expanded[FAILED], read[SKIPPED]
        if self._done_keys is not None:
            kept = expand_failed | "Skip committed failures" >> beam.ParDo(_SkipDoneFn(), *done).with_outputs(
                SKIPPED, main="failed")
            expand_failed = kept.failed
            skipped = (skipped, kept[SKIPPED]) | "All skipped" >> beam.Flatten()
        failed = (expand_failed, read[FAILED]) | "Reading failures" >> beam.Flatten()
        return {"sources": sources, "units": expanded.units, "records": read.records, FAILED: failed,
                SKIPPED: skipped}


class _SkipDoneFn(beam.DoFn):
    """Failure -> itself, or its key to ``skipped`` when an earlier run already committed it."""

    def __init__(self):
        self._done = None

    def process(self, failure: Failure, done=()):
        if self._done is None:
            self._done = frozenset(done)
        if failure.key in self._done:
            yield beam.pvalue.TaggedOutput(SKIPPED, failure.key)
        else:
            yield failure
