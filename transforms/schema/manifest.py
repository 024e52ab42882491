"""``manifest.json``: everything needed to read and trust a feature set, and the shards it lists.

A reader needs nothing else to parse the shards: ``read_manifest``, then ``read_shard`` on each of
``shard_paths`` (either format, local or remote, vectors as float32).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from transforms.schema.example import decode_example, iter_serialized, read_records
from transforms.schema.fields import FeatureRecord, OutputSpec
from transforms.schema.layout import FORMAT_VERSION, MANIFEST_NAME, PENDING_DIR, join, shard_format
from transforms.schema.parquet import iter_parquet
from transforms.worker.storage import is_remote

__all__ = ["Manifest", "read_manifest", "write_manifest", "shard_paths", "read_shard"]


@dataclass(frozen=True)
class Manifest:
    """Everything needed to read and trust a feature set."""

    backbone: Mapping            # name, weights_sha256, preprocessing, ...
    outputs: Sequence[OutputSpec]
    labels: Sequence[str]
    counts: Mapping[str, int]    # inputs + retained = embedded + failed + duplicates
    shards: Sequence[str]        # relative to the feature set's root
    inputs: Mapping              # the input spec as given at launch
    error_files: Sequence[str] = ()
    failures_by_reason: Mapping[str, int] = field(default_factory=dict)
    failure_examples: Mapping[str, str] = field(default_factory=dict)  # reason -> one key that failed so
    created: str = ""
    splits: Sequence[str] = ()   # split names the inputs carried (manifest split column, ...), if any
    resumed_records: int = 0     # inputs an interrupted earlier run had committed and the last run skipped
    format_version: int = FORMAT_VERSION
    duplicate_example: str | None = None  # the smallest key of a copy dropped as a repeat (None: none was dropped)
    retired_commits: int = 0     # earlier commits --resume found damaged (or unreadable) and retired
    redone_records: int = 0      # the inputs of those commits, done again by the last run (where known)
    parquet_shards: Sequence[str] = ()  # the same records as Parquet (--format parquet), relative to the root
    runtime: Mapping = field(default_factory=dict)  # how the forward pass ran: the CPU, oneDNN, precision
    generation: int = 1          # 1 for a fresh run, one more for each --update
    generations: Sequence[Mapping] = ()  # per generation: generation, created, new, changed, removed, kept

    @property
    def formats(self) -> tuple[str, ...]:
        """The formats the set's records are stored in ("tfrecord", "parquet")."""
        return tuple(f for f, files in (("tfrecord", self.shards), ("parquet", self.parquet_shards)) if files)

    def to_json(self) -> str:
        d = {
            "format_version": self.format_version,
            "created": self.created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backbone": dict(self.backbone),
            "outputs": [o.to_json() for o in self.outputs],
            "labels": list(self.labels),
            "splits": list(self.splits),
            "counts": dict(self.counts),
            "resumed_records": self.resumed_records,
            "retired_commits": self.retired_commits,
            "redone_records": self.redone_records,
            "duplicate_example": self.duplicate_example,
            "failures_by_reason": dict(self.failures_by_reason),
            "failure_examples": dict(self.failure_examples),
            "shards": list(self.shards),
            "parquet_shards": list(self.parquet_shards),
            "error_files": list(self.error_files),
            "inputs": dict(self.inputs),
            "runtime": dict(self.runtime),
            "generation": self.generation,
            "generations": [dict(g) for g in self.generations],
        }
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported feature set format version {d.get('format_version')!r}")
        return cls(
            backbone=d["backbone"],
            outputs=tuple(OutputSpec.from_json(o) for o in d["outputs"]),
            labels=tuple(d["labels"]),
            counts=d["counts"],
            shards=tuple(d["shards"]),
            inputs=d["inputs"],
            error_files=tuple(d.get("error_files", ())),
            failures_by_reason=d.get("failures_by_reason", {}),
            failure_examples=d.get("failure_examples", {}),
            created=d["created"],
            splits=tuple(d.get("splits", ())),
            resumed_records=int(d.get("resumed_records", 0)),
            format_version=d["format_version"],
            duplicate_example=d.get("duplicate_example"),
            retired_commits=int(d.get("retired_commits", 0)),
            redone_records=int(d.get("redone_records", 0)),
            parquet_shards=tuple(d.get("parquet_shards", ())),
            runtime=d.get("runtime", {}),
            generation=int(d.get("generation", 1)),
            generations=tuple(d.get("generations", ())),
        )


def write_manifest(root: str, manifest: Manifest) -> str:
    """Written whole or not at all (a pending name, then renamed), so a manifest is never half a file."""
    import uuid

    from apache_beam.io.filesystems import FileSystems

    path = join(root, MANIFEST_NAME)
    pending = join(root, f"{PENDING_DIR}/{MANIFEST_NAME}.{uuid.uuid4().hex}")
    with FileSystems.create(pending, mime_type="application/json") as f:
        f.write(manifest.to_json().encode("utf-8"))
    FileSystems.rename([pending], [path])
    return path


def read_manifest(root: str) -> Manifest:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(join(root, MANIFEST_NAME)) as f:
        return Manifest.from_json(f.read().decode("utf-8"))


def shard_paths(root: str, manifest: Manifest, format: str | None = None) -> list[str]:
    """The shards of one format (default: TFRecord when the set has it, else Parquet)."""
    format = format or ("tfrecord" if manifest.shards or not manifest.parquet_shards else "parquet")
    return [join(root, s) for s in (manifest.shards if format == "tfrecord" else manifest.parquet_shards)]


def read_shard(path: str, outputs: Sequence[OutputSpec]) -> Iterator[FeatureRecord]:
    """The records of one shard of either format, local or remote, vectors as float32."""
    if shard_format(path) == "parquet":
        for keys, labels, splits, vectors in iter_parquet(path, outputs):
            for i, key in enumerate(keys):
                yield FeatureRecord(key, labels[i], {name: x[i] for name, x in vectors.items()}, splits[i])
        return
    if not is_remote(path):
        try:
            yield from read_records(path, outputs)
            return
        except ImportError:
            pass
    for raw in iter_serialized(path):
        yield decode_example(raw, outputs)
