"""Where records come from: input specs, listing on the workers, and reading each file's bytes.

``ReadRecords`` turns input specs into ``Record``s:

1. each spec becomes a match pattern (cheap; the launcher only checks that something matches);
2. the workers list the files (``FileSystems.match``) and give each its label;
3. a Reshuffle spreads the files over all workers;
4. each file's bytes are read; a file that cannot be read becomes a ``Failure``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.records import FAILED, METRICS_NAMESPACE, Failure, Record, SourceFile

__all__ = ["InputSpec", "label_from_path", "list_source_files", "ReadRecords", "ReadFileFn"]

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class InputSpec:
    """One ``--input``: a directory (recursive) or a glob of files.

    Files in first-level subfolders of ``root`` take that folder's name as label (ImageFolder layout);
    files directly in ``root`` have no label.
    """

    kind: str      # "directory" | "glob"
    uri: str       # as resolved at launch (absolute for local paths)
    pattern: str   # what FileSystems.match lists
    root: str      # where labels are read from

    @classmethod
    def directory(cls, uri: str) -> InputSpec:
        root = uri.rstrip("/")
        return cls("directory", root, f"{root}/**", root)

    @classmethod
    def glob(cls, pattern: str) -> InputSpec:
        prefix = pattern[: _GLOB_CHARS.search(pattern).start()]
        root = prefix if prefix.endswith("/") else posixpath.dirname(prefix)
        return cls("glob", pattern, pattern, root.rstrip("/"))

    def to_json(self) -> dict:
        return {"kind": self.kind, "uri": self.uri, "pattern": self.pattern, "label_root": self.root}


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
    """List the files of one input spec with their labels, in a stable order."""
    (result,) = FileSystems.match([spec.pattern])
    for path in sorted(m.path for m in result.metadata_list):
        yield SourceFile(path, label_from_path(spec.root, path))


class ReadFileFn(beam.DoFn):
    """SourceFile -> Record with the file's bytes; unreadable files go to the ``failed`` output."""

    def __init__(self):
        self._read = Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "bytes_read")

    def process(self, source: SourceFile):
        try:
            with FileSystems.open(source.uri, compression_type="uncompressed") as f:
                payload = f.read()
        except Exception as e:  # any storage error is this record's failure, not the job's
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(source.uri, source.uri, "read", e))
            return
        self._read.inc()
        self._bytes.inc(len(payload))
        yield Record(source.uri, payload, source.label)


class ReadRecords(beam.PTransform):
    """Input specs -> ``{"sources": SourceFile, "records": Record, "failed": Failure}`` PCollections."""

    def __init__(self, specs: Sequence[InputSpec]):
        super().__init__()
        self._specs = list(specs)

    def expand(self, pbegin):
        sources = (
            pbegin
            | "Input specs" >> beam.Create(self._specs)
            | "List input files" >> beam.FlatMap(list_source_files)
        )
        read = (
            sources
            | "Spread files over workers" >> beam.Reshuffle()
            | "Read file bytes" >> beam.ParDo(ReadFileFn()).with_outputs(FAILED, main="records")
        )
        return {"sources": sources, "records": read.records, FAILED: read[FAILED]}
