"""What an ``--input`` names, checked at launch by every command that reads raw records (extract, finetune,
predict): one file is listed, nothing is read, and a mistake is a ``ConfigError`` that says what to change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import ConfigError
from pipeline.folders import absolute
from transforms.read import tables
from transforms.read.files import open_regular
from transforms.read.input_specs import (
    AUDIO_FORMATS,
    AUTO,
    AUTO_TEXT,
    IMAGE_FORMATS,
    TEXT_FORMATS,
    InputSpec,
    escape_glob,
    is_glob,
    local_path,
)
from transforms.read.tables import InputFields
from transforms.worker.storage import bucket_exists, bucket_of, is_remote

__all__ = ["resolve_input", "check_formats", "check_text_field", "missing_bucket", "first_line"]


def missing_bucket(uri: str) -> str | None:
    found = bucket_of(uri)
    if found and bucket_exists(uri, FileSystems._pipeline_options) is False:
        scheme, bucket = found
        return f"bucket {scheme}://{bucket} does not exist"
    return None


def check_formats(inputs: Sequence[InputSpec], modality: str, backbone: str) -> None:
    """Every input in a format a backbone of ``modality`` can read: images and audio from loose files,
    manifests, tar shards and TFRecord files; texts from tables, lines, and loose files (or manifests of them)
    of one text each."""
    allowed = {"text": TEXT_FORMATS, "audio": AUDIO_FORMATS}.get(modality, IMAGE_FORMATS)
    for spec in inputs:
        if spec.format in allowed or spec.format in (AUTO, AUTO_TEXT):
            continue
        if modality == "text":
            raise ConfigError(f"backbone {backbone} embeds text, but input {spec.uri} is read as images "
                              f"({spec.format}): give .jsonl/.csv/.tsv tables, .txt files, or --input-format lines")
        if modality == "audio":
            raise ConfigError(f"input {spec.uri} is read as texts (--input-format {spec.format}), but backbone "
                              f"{backbone} embeds audio; give audio files, a .jsonl/.csv/.tsv manifest of them, .tar "
                              f"shards or .tfrecord files (--input-format {', '.join(AUDIO_FORMATS)} or auto)")
        raise ConfigError(f"input {spec.uri} is read as texts (--input-format {spec.format}), but backbone "
                          f"{backbone} embeds images; choose a text backbone (minilm_l6)")


def check_text_field(spec: InputSpec, fields: InputFields) -> None:
    """A text table given as one file whose first row has no ``--text-field`` is refused, naming the fields it
    has (one line is read). Globs and directories are left to the workers, which record each such row."""
    if spec.format != "text" or spec.pattern != escape_glob(spec.uri):
        return
    try:
        with open_regular(spec.uri) as f:
            first = next(tables.iter_rows(spec.uri, tables.bounded_lines(f, fields.max_input_bytes)), None)
    except Exception:  # what cannot be read is recorded by the workers, with its reason
        return
    if first is None or not isinstance(first[1], dict) or fields.text in first[1]:
        return
    names = ", ".join(repr(name) for name in list(first[1])[:12]) or "none"
    raise ConfigError(f"input {spec.uri}: its first row has no field {fields.text!r} (it has {names}); name the "
                      "field that holds the text with --text-field")


def resolve_input(uri: str, input_format: str = "auto", modality: str = "image") -> InputSpec:
    """Classify one ``--input`` and check, cheaply, that it names at least one file (no data is read).

    A path that exists (a file or directory; an object or prefix) is taken literally, glob characters and all;
    only then is it a glob. A ``file://`` URI is the local path it names. ``auto`` formats follow the file
    extension as read by a backbone of ``modality`` ("image", "text" or "audio"): a ``.jsonl`` is a manifest of
    images or recordings, or a table of texts."""
    try:
        uri = absolute(local_path(uri))
    except ValueError as e:
        raise ConfigError(f"input {e}") from None
    fmt = None if input_format == "auto" else input_format
    if is_remote(uri) and (missing := missing_bucket(uri)):
        raise ConfigError(f"input {uri}: {missing}")
    literal = _literal_input(uri, fmt, modality)
    if literal is not None:
        return literal
    if is_glob(uri):
        spec = InputSpec.glob(uri, fmt, modality)
        try:
            (result,) = FileSystems.match([spec.pattern], limits=[1])
        except Exception as e:
            raise ConfigError(f"cannot list input {uri}: {first_line(e)}") from None
        if result.metadata_list:
            return spec
    elif not is_remote(uri):
        raise ConfigError(f"input {uri} does not exist")
    raise ConfigError(f"input {uri} matches no files")


def _literal_input(uri: str, fmt: str | None, modality: str = "image") -> InputSpec | None:
    """The spec of an input that exists as named, taken literally: a file or object, or a directory or prefix
    that holds files (an empty directory is a ``ConfigError``); None when nothing has that very name.

    Checked without matching the spec's escaped pattern, which would list all that lies under the part of the
    path before its first glob character (the workers do match it)."""
    if not is_remote(uri):
        if os.path.isfile(uri):
            return InputSpec.file(uri, fmt, modality)
        if not os.path.isdir(uri):
            return None
        if not any(files for _, _, files in os.walk(uri)):
            raise ConfigError(f"input {uri} matches no files")
        return InputSpec.directory(uri, fmt or "files")
    if not uri.endswith("/") and FileSystems.exists(uri):
        return InputSpec.file(uri, fmt, modality)
    try:  # the store's listing of a literal prefix, first page only
        listing = FileSystems.get_filesystem(uri)._list(uri.rstrip("/") + "/")
        holds_objects = next(iter(listing), None) is not None
    except Exception as e:
        raise ConfigError(f"cannot list input {uri}: {first_line(e)}") from None
    return InputSpec.directory(uri, fmt or "files") if holds_objects else None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
