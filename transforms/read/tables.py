"""Rows of CSV and JSONL files, streamed, and what they become: manifest rows (files to read) or text inputs.

A row that cannot be parsed is not the end of the file: it comes back as a ``RowError`` with its row number,
and the caller records it as a failure and goes on.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from transforms.schema.elements import Failure, FileRef, Record
from transforms.schema.fields import record_key
from transforms.worker.storage import is_remote

__all__ = ["InputFields", "InputTooLarge", "RowError", "iter_rows", "bounded_lines", "table_kind", "resolve_relative",
           "outside_folder", "manifest_refs", "text_key", "text_records", "line_records", "URI_FIELDS",
           "DEFAULT_MAX_INPUT_BYTES"]

URI_FIELDS = ("uri", "path", "filepath", "file", "filename", "image")  # tried in order when --uri-field is not given
DEFAULT_MAX_INPUT_BYTES = 256 << 20


@dataclass(frozen=True)
class InputFields:
    """Which fields of manifests, text files, tar samples and TFRecord Examples hold what, and what the backbone
    reads (``modality``): a tar sample's image or audio member, a TFRecord's ``image_feature`` or
    ``audio_feature``, a loose recording named (``LazyFile``, its size held to ``max_input_bytes``) rather than
    read whole."""

    uri: str | None = None                    # manifest: each file's URI (None: the first of URI_FIELDS present)
    label: str = "label"                      # manifest, text, tar sample .json
    split: str = "split"                      # manifest, text, tar sample .json
    text: str = "text"                        # text inputs
    id: str = "id"                            # text inputs: key = URI#id=ID (URI#row=N without it)
    image_feature: str = "image/encoded"      # TFRecord Examples: encoded image bytes
    label_feature: str = "image/class/label"  # TFRecord Examples: label (bytes or int64)
    audio_feature: str = "audio/encoded"      # TFRecord Examples: encoded audio bytes (modality "audio")
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES  # the most one input may hold: a file, row, tar member, record
    allow_outside_paths: bool = False         # manifest: local paths may lie outside the manifest's folder
    modality: str = "image"                   # the backbone's: "image", "text" or "audio"

    def to_json(self) -> dict:
        return dict(self.__dict__)


class RowError(ValueError):
    """One row of a table could not be parsed; the message says why."""


class InputTooLarge(ValueError):
    """One input holds more bytes than ``--max-input-bytes``; it is refused before (or instead of) reading it all."""

    @classmethod
    def of(cls, what: str, size: int | None, limit: int) -> InputTooLarge:
        """``what`` is ``size`` bytes (None: more than the limit, found while reading), over ``limit``."""
        held = f"more than {limit:,}" if size is None else f"{size:,}"
        return cls(f"{what} is {held} bytes, over the limit of {limit:,} (--max-input-bytes)")


def table_kind(uri: str) -> str:
    """``csv`` or ``jsonl`` from the file name."""
    name = uri.lower()
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    raise RowError(f"{uri}: a table must be .csv, .tsv, .jsonl, .ndjson or .json")


def _has_undecodable(values: Iterable[str]) -> bool:
    return any(any("\udc80" <= ch <= "\udcff" for ch in v) for v in values if v)


def _csv_rows(lines: Iterator[bytes], delimiter: str) -> Iterator[tuple[int, dict | RowError]]:
    decoded = (line.decode("utf-8", errors="surrogateescape") for line in lines)
    reader = csv.reader(decoded, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    if _has_undecodable(header):
        raise RowError("the header row is not valid UTF-8")
    row = 0
    for values in reader:
        if not values or values == [""]:
            continue
        if _has_undecodable(values):
            yield row, RowError(f"row {row} is not valid UTF-8")
        elif len(values) > len(header):
            yield row, RowError(f"row {row} has {len(values)} values but the header names {len(header)} columns")
        else:
            yield row, {name: value for name, value in zip(header, values, strict=False)}
        row += 1


def _jsonl_rows(lines: Iterator[bytes]) -> Iterator[tuple[int, dict | RowError]]:
    row = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield row, RowError(f"row {row} is not valid UTF-8")
        except json.JSONDecodeError as e:
            yield row, RowError(f"row {row} is not valid JSON: {e.msg} at column {e.colno}")
        else:
            yield row, value if isinstance(value, dict) else RowError(f"row {row} is not a JSON object")
        row += 1


def bounded_lines(fileobj, limit: int) -> Iterator[bytes]:
    """The lines of a file, none read past ``limit`` bytes (plus its line end): a longer line is ``InputTooLarge``,
    so a file without line breaks is never read whole into memory."""
    number = 0
    while line := fileobj.readline(limit + 2):
        number += 1
        if len(line.rstrip(b"\r\n")) > limit:
            raise InputTooLarge.of(f"line {number}", None, limit)
        yield line


def iter_rows(uri: str, lines: Iterable[bytes]) -> Iterator[tuple[int, dict | RowError]]:
    """(row number from 0, fields) for each non-blank data row of a CSV (header first) or JSONL file."""
    kind = table_kind(uri)
    if kind == "csv":
        return _csv_rows(iter(lines), "\t" if uri.lower().endswith(".tsv") else ",")
    return _jsonl_rows(iter(lines))


def _text_field(row: dict, name: str) -> str | None:
    value = row.get(name)
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def resolve_relative(table_uri: str, ref: str) -> str:
    """A URI in a table: absolute as given, relative ones against the table's own folder."""
    if is_remote(ref) or ref.startswith("/"):
        return ref
    base = table_uri.rsplit("/", 1)[0]
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        bucket, _, path = rest.partition("/")
        joined = posixpath.normpath(posixpath.join("/" + path, ref))
        return f"{scheme}://{bucket}{joined}"
    return os.path.normpath(os.path.join(base, ref))


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def outside_folder(table_uri: str, target: str) -> str | None:
    """Where a local path named by a table leads when that lies outside the table's own folder (after ``..`` and
    after symlinks), else None. Object-store URIs are never outside; any local path named by a remote table is."""
    if is_remote(target):
        return None
    if is_remote(table_uri):
        return os.path.normpath(target)
    folder = os.path.dirname(os.path.abspath(table_uri))
    plain, real = os.path.normpath(os.path.abspath(target)), os.path.realpath(target)
    if not _within(plain, folder):
        return plain
    return None if _within(real, os.path.realpath(folder)) else real


def manifest_refs(uri: str, rows: Iterable[tuple[int, dict | RowError]],
                  fields: InputFields) -> Iterator[FileRef | Failure]:
    """Rows of a manifest -> one ``FileRef`` per row (key = the file's URI), or a ``Failure`` for a bad row (one
    whose local path leads outside the manifest's folder, unless ``allow_outside_paths``)."""
    for row, value in rows:
        key = record_key(uri, row)
        if isinstance(value, RowError):
            yield Failure(key, uri, "read", "RowError", str(value))
            continue
        names = [fields.uri] if fields.uri else [n for n in URI_FIELDS if n in value][:1]
        ref = _text_field(value, names[0]) if names else None
        if ref is None:
            wanted = repr(fields.uri) if fields.uri else "one of " + ", ".join(URI_FIELDS)
            yield Failure(key, uri, "read", "MissingField", f"row {row} has no file URI (field {wanted})")
            continue
        target = resolve_relative(uri, ref)
        escape = None if fields.allow_outside_paths else outside_folder(uri, target)
        if escape is not None:
            folder = uri.rsplit("/", 1)[0]
            yield Failure(key, uri, "read", "OutsidePath",
                          f"row {row} names {ref!r}, which leads to {escape}, outside the manifest's folder {folder}; "
                          "pass --allow-outside-paths to read it")
            continue
        yield FileRef(record_key(target), target, _text_field(value, fields.label), _text_field(value, fields.split))


def text_key(uri: str, row: int, row_id: str | None) -> str:
    """``URI#id=ID`` for a row with an id, ``URI#row=N`` for one without: the two never collide."""
    return record_key(uri, f"row={row}" if row_id is None else f"id={row_id}")


def text_records(uri: str, rows: Iterable[tuple[int, dict | RowError]],
                 fields: InputFields) -> Iterator[Record | Failure]:
    """Rows of a text file -> ``Record`` with the text as payload (key = URI#id=ID, or URI#row=N), or a
    ``Failure``; a repeated id is a failure of the later row (keyed by its row), the first one is kept.
    An empty text is a text (the backbone embeds it as its tokenizer does); a missing or non-string one fails."""
    first_row: dict[str, int] = {}
    for row, value in rows:
        if isinstance(value, RowError):
            yield Failure(text_key(uri, row, None), uri, "read", "RowError", str(value))
            continue
        row_id = _text_field(value, fields.id)
        if row_id in first_row:
            yield Failure(text_key(uri, row, None), uri, "read", "DuplicateId",
                          f"row {row} repeats id {row_id!r} of row {first_row[row_id]}; the first is kept")
            continue
        if row_id is not None:
            first_row[row_id] = row
        key = text_key(uri, row, row_id)
        text = value.get(fields.text)
        if not isinstance(text, str):
            problem = "no" if text is None else f"a non-string ({type(text).__name__})"
            yield Failure(key, uri, "read", "MissingField", f"row {row} has {problem} {fields.text!r} field")
        else:
            yield Record(key, text, _text_field(value, fields.label), _text_field(value, fields.split), uri)


def line_records(uri: str, lines: Iterable[bytes]) -> Iterator[Record | Failure]:
    """Lines of a plain text file -> one ``Record`` per line (key = URI#line=N, counted from 1 as editors do),
    its line break removed; an empty line is an empty text. A line that is not UTF-8 is a ``Failure``."""
    for number, line in enumerate(lines, start=1):
        key = record_key(uri, f"line={number}")
        line = line[:-1] if line.endswith(b"\n") else line
        line = line[:-1] if line.endswith(b"\r") else line
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            yield Failure(key, uri, "read", "NotText", f"line {number} is not UTF-8 text (byte {e.start})")
            continue
        yield Record(key, text, None, None, uri)
