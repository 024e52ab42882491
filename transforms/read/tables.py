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

from transforms.records import Failure, FileRef, Record
from transforms.schema import record_key

__all__ = ["InputFields", "RowError", "iter_rows", "table_kind", "resolve_relative", "manifest_refs",
           "text_records", "URI_FIELDS"]

URI_FIELDS = ("uri", "path", "filepath", "file", "filename", "image")  # tried in order when --uri-field is not given


@dataclass(frozen=True)
class InputFields:
    """Which fields of manifests, text files, tar samples and TFRecord Examples hold what."""

    uri: str | None = None                    # manifest: each file's URI (None: the first of URI_FIELDS present)
    label: str = "label"                      # manifest, text, tar sample .json
    split: str = "split"                      # manifest, text, tar sample .json
    text: str = "text"                        # text inputs
    id: str = "id"                            # text inputs: key = URI#id (URI#ROW without it)
    image_feature: str = "image/encoded"      # TFRecord Examples: encoded image bytes
    label_feature: str = "image/class/label"  # TFRecord Examples: label (bytes or int64)

    def to_json(self) -> dict:
        return dict(self.__dict__)


class RowError(ValueError):
    """One row of a table could not be parsed; the message says why."""


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
    if "://" in ref or ref.startswith("/"):
        return ref
    base = table_uri.rsplit("/", 1)[0]
    if "://" in base:
        scheme, rest = base.split("://", 1)
        bucket, _, path = rest.partition("/")
        joined = posixpath.normpath(posixpath.join("/" + path, ref))
        return f"{scheme}://{bucket}{joined}"
    return os.path.normpath(os.path.join(base, ref))


def manifest_refs(uri: str, rows: Iterable[tuple[int, dict | RowError]],
                  fields: InputFields) -> Iterator[FileRef | Failure]:
    """Rows of a manifest -> one ``FileRef`` per row (key = the file's URI), or a ``Failure`` for a bad row."""
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
        yield FileRef(record_key(target), target, _text_field(value, fields.label), _text_field(value, fields.split))


def text_records(uri: str, rows: Iterable[tuple[int, dict | RowError]],
                 fields: InputFields) -> Iterator[Record | Failure]:
    """Rows of a text file -> ``Record`` with the text as payload (key = URI#id, or URI#ROW), or a ``Failure``."""
    for row, value in rows:
        if isinstance(value, RowError):
            yield Failure(record_key(uri, row), uri, "read", "RowError", str(value))
            continue
        row_id = _text_field(value, fields.id)
        key = record_key(uri, row if row_id is None else row_id)
        text = value.get(fields.text)
        if not isinstance(text, str):
            problem = "no" if text is None else f"a non-string ({type(text).__name__})"
            yield Failure(key, uri, "read", "MissingField", f"row {row} has {problem} {fields.text!r} field")
        elif not text.strip():
            yield Failure(key, uri, "read", "EmptyText", f"row {row} has an empty {fields.text!r} field")
        else:
            yield Record(key, text, _text_field(value, fields.label), _text_field(value, fields.split))
