"""What an ``--input`` names: its format, its files (listed on the workers), and paths taken literally.

``InputSpec`` is one ``--input`` (a directory, one file, or a glob) and the format of its files; a path that
exists is matched with its glob characters escaped, so it names itself only; ``file://`` URIs are the local
paths they name. ``list_source_files`` lists a spec's files with their labels (ImageFolder layout) and formats.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from transforms.read.versions import version_of
from transforms.schema.elements import SourceFile
from transforms.worker.process import ready_process

__all__ = ["InputSpec", "FORMATS", "IMAGE_FORMATS", "TEXT_FORMATS", "AUDIO_FORMATS", "AUTO", "AUTO_TEXT",
           "detect_format", "glob_format", "escape_glob", "local_path", "is_glob", "label_from_path",
           "list_source_files"]

_GLOB_CHARS = re.compile(r"[*?\[]")

FORMATS = ("files", "manifest", "tar", "tfrecord", "text", "lines")
IMAGE_FORMATS = ("files", "manifest", "tar", "tfrecord")  # what an image backbone can read
TEXT_FORMATS = ("files", "manifest", "text", "lines")     # what a text backbone can read: files are texts
AUDIO_FORMATS = ("files", "manifest", "tar", "tfrecord")  # what an audio backbone can read: files are recordings
AUTO = "auto"            # a glob's format when its files' names differ in it: each listed file's own, by extension
AUTO_TEXT = "auto-text"  # the same for a text backbone, whose tables are texts
_TABLES = (".csv", ".tsv", ".jsonl", ".ndjson")
_EXTENSION_FORMATS = {".tar": "tar", ".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfrec": "tfrecord",
                      **{extension: "manifest" for extension in _TABLES}}


def detect_format(pattern: str, modality: str = "image") -> str:
    """The format a glob or file name implies for a backbone of ``modality``.

    Images and audio: ``.tar`` shards, ``.tfrecord`` files, ``.csv``/``.tsv``/``.jsonl`` manifests, anything
    else loose files (``.jpg``, ``.wav``). Text: ``.csv``/``.tsv``/``.jsonl`` tables of texts (``text``),
    ``.tar``/``.tfrecord`` as for images (refused at launch), anything else (``.txt``) loose files of one text
    each."""
    name = pattern.rsplit("/", 1)[-1].lower()
    for extension, fmt in _EXTENSION_FORMATS.items():
        if name.endswith(extension):
            return "text" if modality == "text" and fmt == "manifest" else fmt
    return "files"


def glob_format(pattern: str, modality: str = "image") -> str:
    """The format every file a glob matches has by its name (``*.tar``: tar, ``*.jpg``: files), or ``AUTO``
    (``AUTO_TEXT`` for a text backbone) when the names it matches can differ in it (``*``, ``*.t*``): then each
    listed file is read by its own extension."""
    tail = re.split(r"[*?\[\]]", pattern)[-1].lower()  # what every matched name ends with
    if any(len(extension) > len(tail) and extension.endswith(tail) for extension in _EXTENSION_FORMATS):
        return AUTO_TEXT if modality == "text" else AUTO
    return detect_format(tail, modality)


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
    def file(cls, uri: str, format: str | None = None, modality: str = "image") -> InputSpec:
        path = local_path(uri)
        return cls("glob", path, escape_glob(path), posixpath.dirname(path), format or detect_format(path, modality))

    @classmethod
    def glob(cls, pattern: str, format: str | None = None, modality: str = "image") -> InputSpec:
        pattern = local_path(pattern)
        prefix = pattern[: m.start()] if (m := _GLOB_CHARS.search(pattern)) else pattern
        root = prefix if prefix.endswith("/") else posixpath.dirname(prefix)
        return cls("glob", pattern, pattern, root.rstrip("/"), format or glob_format(pattern, modality))

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
    """List the files of one input spec with their labels, format (``AUTO``: each file's own) and source version, in
    a stable order."""
    ready_process()
    (result,) = FileSystems.match([local_path(spec.pattern)])
    root = local_path(spec.root)
    auto = {AUTO: "image", AUTO_TEXT: "text"}.get(spec.format)  # audio reads extensions as images do
    for m in sorted(result.metadata_list, key=lambda m: m.path):
        fmt = detect_format(m.path, auto) if auto else spec.format
        yield SourceFile(m.path, label_from_path(root, m.path) if fmt == "files" else None, fmt,
                         version_of(m.size_in_bytes, m.last_updated_in_seconds))
