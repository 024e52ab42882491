"""``featurebeam export FEATURES --to parquet|npy --output DIR``: a feature set in the format the next tool reads.

A Beam job, so a set of any size converts on Dataflow as well as here (local, gs://, s3://):

1. the source's shards (either format, per its manifest) are spread over the workers;
2. ``--to parquet``: each shard becomes ``DIR/features/<its name>.parquet`` (``arrow_schema``, written
   under a pending name, then renamed), and the last step writes ``DIR/manifest.json``: the source's, listing
   the Parquet shards (the dead-letter files are copied beside them). ``train``, ``inspect`` and ``report``
   read the result as any feature set;
3. ``--to npy``: each shard becomes a part of raw float32 rows per output, then the last step streams the
   parts, in the shards' order, into one ``DIR/<output>.npy`` matrix per output (memory-mappable with
   ``np.load(..., mmap_mode="r")``) and ``DIR/keys.parquet`` (key, label, split of each row, in the same order),
   and writes ``DIR/export.json``. The assembly copies bytes through one process, a few MB at a time: its
   memory is flat, its time grows with the set's bytes.

``--feature-dtype float16`` stores Parquet vectors as float16 (``.npy`` matrices are always float32).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.train.feature_sets import FeatureSetError, read_feature_manifest
from transforms.schema.fields import FEATURE_DTYPES, OutputSpec
from transforms.schema.layout import ERRORS_DIR, FEATURES_DIR, PARQUET_SUFFIX, PENDING_DIR
from transforms.schema.manifest import Manifest, read_manifest, read_shard, write_manifest
from transforms.schema.parquet import arrow_schema, arrow_table
from transforms.worker.process import WorkerDoFn, ready_process
from transforms.worker.storage import is_remote
from transforms.write.commit_format import write_atomically
from transforms.write.shards import HashingFile, ParquetShard

__all__ = ["ExportConfig", "run_export", "format_export", "TARGETS", "npy_name"]

TARGETS = ("parquet", "npy")
PARTS_DIR = ".parts"
EXPORT_NAME = "export.json"
KEYS_NAME = "keys.parquet"
COPY_BYTES = 4 << 20


@dataclass(frozen=True)
class ExportConfig:
    source: str
    target: str                        # "parquet" | "npy"
    output: str
    feature_dtype: str | None = None   # parquet: float32 | float16 (default: the source's)
    overwrite: bool = False

    @classmethod
    def create(cls, source: str, target: str, output: str, feature_dtype: str | None = None,
               overwrite: bool = False) -> ExportConfig:
        """Checked at launch: a finished source set, a target it can be, an OUTDIR that is empty (or
        ``overwrite``) and not the source."""
        if target not in TARGETS:
            raise FeatureSetError(f"--to {target!r}: choose parquet or npy")
        if feature_dtype is not None and feature_dtype not in FEATURE_DTYPES:
            raise FeatureSetError(f"--feature-dtype {feature_dtype!r}: choose float32 or float16")
        if feature_dtype == "float16" and target == "npy":
            raise FeatureSetError("--to npy writes float32 matrices; --feature-dtype float16 is for --to parquet")
        if output.rstrip("/") == source.rstrip("/"):
            raise FeatureSetError("--output must be another directory than the feature set it exports")
        read_feature_manifest(source)  # a finished set, or one clear line
        if not overwrite and _holds_files(output):
            raise FeatureSetError(f"{output} is not empty; pass --overwrite to replace what is there")
        return cls(source, target, output, feature_dtype, overwrite)


def _holds_files(path: str) -> bool:
    (match,) = FileSystems.match([FileSystems.join(path, "**")])
    return bool(match.metadata_list)


def npy_name(output: OutputSpec) -> str:
    """The ``.npy`` file of one output (its name, with characters that paths do not take replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", output.name) + ".npy"


def _part_name(shard: str) -> str:
    return shard.rsplit("/", 1)[-1].rsplit(".", 1)[0]


class _ShardToParquetFn(WorkerDoFn):
    """A source shard -> ``DIR/features/<name>.parquet``; outputs (its path relative to DIR, records, labels)."""

    def __init__(self, config: ExportConfig, outputs: Sequence[OutputSpec],
                 stored: Sequence[OutputSpec]):
        self._config, self._outputs, self._stored = config, tuple(outputs), tuple(stored)

    def process(self, shard: str):
        rel = f"{FEATURES_DIR}/{_part_name(shard)}{PARQUET_SUFFIX}"
        pending = FileSystems.join(self._config.output, PENDING_DIR, f"{uuid.uuid4().hex}.parquet")
        writer = ParquetShard(HashingFile(FileSystems.create(pending)), self._stored)
        records, labels = 0, set()
        for record in read_shard(FileSystems.join(self._config.source, shard), self._outputs):
            writer.add(((record.key, record.label, record.split), record.vectors))
            records += 1
            labels.update(v for v in (record.label,) if v is not None)
        writer.close()
        FileSystems.rename([pending], [FileSystems.join(self._config.output, rel)])
        yield rel, records, sorted(labels)


class _ShardToNpyPartsFn(WorkerDoFn):
    """A source shard (with its index) -> raw float32 rows per output and a keys table, under ``DIR/.parts/``;
    outputs (index, records)."""

    def __init__(self, config: ExportConfig, outputs: Sequence[OutputSpec]):
        self._config, self._outputs = config, tuple(outputs)

    def process(self, indexed: tuple[int, str]):
        import pyarrow.parquet as pq

        index, shard = indexed
        keys, labels, splits = [], [], []
        streams = {o.name: FileSystems.create(self._part(index, o.name)) for o in self._outputs}
        for record in read_shard(FileSystems.join(self._config.source, shard), self._outputs):
            keys.append(record.key)
            labels.append(record.label)
            splits.append(record.split)
            for o in self._outputs:
                streams[o.name].write(np.asarray(record.vectors[o.name], "<f4").tobytes())
        for stream in streams.values():
            stream.close()
        table = arrow_table(keys, labels, splits, {}, ())
        with FileSystems.create(self._part(index, "keys")) as f:
            pq.write_table(table, f)
        yield index, len(keys)

    def _part(self, index: int, name: str) -> str:
        return FileSystems.join(self._config.output, PARTS_DIR, f"{index:08d}.{name}")


def _copy(source: str, sink) -> None:
    with FileSystems.open(source, compression_type="uncompressed") as f:
        for chunk in iter(lambda: f.read(COPY_BYTES), b""):
            sink.write(chunk)


def _assemble_npy(parts: list[tuple[int, int]], config: ExportConfig, outputs: Sequence[OutputSpec]) -> int:
    """The parts, in the shards' order, streamed into one ``.npy`` per output and ``keys.parquet``; returns rows."""
    import pyarrow.parquet as pq

    ready_process()
    parts = sorted(parts)
    rows = sum(n for _, n in parts)
    part = lambda index, name: FileSystems.join(config.output, PARTS_DIR, f"{index:08d}.{name}")  # noqa: E731
    for o in outputs:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (rows, o.dim)})
        pending = FileSystems.join(config.output, PENDING_DIR, f"{uuid.uuid4().hex}.npy")
        with FileSystems.create(pending) as f:
            f.write(header.getvalue())
            for index, _ in parts:
                _copy(part(index, o.name), f)
        FileSystems.rename([pending], [FileSystems.join(config.output, npy_name(o))])
    pending = FileSystems.join(config.output, PENDING_DIR, f"{uuid.uuid4().hex}.parquet")
    with FileSystems.create(pending) as f:
        writer = pq.ParquetWriter(f, arrow_schema(()))
        for index, _ in parts:
            with FileSystems.open(part(index, "keys"), compression_type="uncompressed") as keys:
                writer.write_table(pq.read_table(io.BytesIO(keys.read())))
        writer.close()
    FileSystems.rename([pending], [FileSystems.join(config.output, KEYS_NAME)])
    (match,) = FileSystems.match([FileSystems.join(config.output, PARTS_DIR, "*")])
    if match.metadata_list:
        FileSystems.delete([m.path for m in match.metadata_list])
    return rows


def _finish_parquet(written: list[tuple[str, int, list[str]]], config: ExportConfig, manifest: Manifest,
                    stored: Sequence[OutputSpec]) -> None:
    ready_process()
    error_files = []
    for name in manifest.error_files:  # the dead letters go along: the export says what failed, too
        FileSystems.copy([FileSystems.join(config.source, name)], [FileSystems.join(config.output, name)])
        error_files.append(name)
    embedded = sum(n for _, n, _ in written)
    if embedded != int(manifest.counts.get("embedded", embedded)):
        raise FeatureSetError(f"{config.source}: its shards hold {embedded} records, its manifest counts "
                              f"{manifest.counts['embedded']}")
    exported = dataclasses.replace(manifest, outputs=tuple(stored), shards=(),
                                   parquet_shards=tuple(sorted(rel for rel, n, _ in written if n)),
                                   error_files=tuple(error_files))
    write_manifest(config.output, exported)


def build_export(p: beam.Pipeline, config: ExportConfig, manifest: Manifest) -> None:
    shards = [s for s in (manifest.shards or manifest.parquet_shards)]
    outputs = tuple(manifest.outputs)
    listed = p | "Source shards" >> beam.Create(shards if config.target == "parquet" else list(enumerate(shards)))
    spread = listed | "Spread shards over workers" >> beam.Reshuffle()
    if config.target == "parquet":
        stored = tuple(dataclasses.replace(o, dtype=config.feature_dtype or o.dtype) for o in outputs)
        written = spread | "Write Parquet shards" >> beam.ParDo(_ShardToParquetFn(config, outputs, stored))
        _ = (written
             | "Every shard written" >> beam.combiners.ToList()
             | "Write manifest" >> beam.Map(_finish_parquet, config, manifest, stored))
    else:
        parts = spread | "Write row parts" >> beam.ParDo(_ShardToNpyPartsFn(config, outputs))
        _ = (parts
             | "Every part written" >> beam.combiners.ToList()
             | "Assemble matrices" >> beam.Map(_assemble_npy, config, outputs)
             | "Describe export" >> beam.Map(_describe_npy, config, manifest))


def _describe_npy(rows: int, config: ExportConfig, manifest: Manifest) -> None:
    description = {"source": config.source, "rows": rows, "keys": KEYS_NAME,
                   "outputs": [{"name": o.name, "dim": o.dim, "dtype": "float32", "file": npy_name(o)}
                               for o in manifest.outputs],
                   "backbone": dict(manifest.backbone), "labels": list(manifest.labels)}
    write_atomically(FileSystems.join(config.output, EXPORT_NAME),
                     FileSystems.join(config.output, PENDING_DIR, f"{EXPORT_NAME}.{uuid.uuid4().hex}"),
                     (json.dumps(description, indent=2) + "\n").encode("utf-8"))


def _prepare(config: ExportConfig) -> None:
    """OUTDIR emptied (with --overwrite) and its folders made (local disks need them)."""
    if config.overwrite and _holds_files(config.output):
        _delete_under_all(config.output)
    if not is_remote(config.output):  # local disks need the folders; object stores have none to make
        folders = (FEATURES_DIR, ERRORS_DIR) if config.target == "parquet" else (PARTS_DIR,)
        for path in (config.output, *(FileSystems.join(config.output, f) for f in (PENDING_DIR, *folders))):
            if not FileSystems.exists(path):
                FileSystems.mkdirs(path)


def _tidy(config: ExportConfig) -> None:
    """The working folders go once the export is written (local disks; object stores have no folders)."""
    if is_remote(config.output):
        return
    for folder in (PENDING_DIR, PARTS_DIR, ERRORS_DIR):
        path = FileSystems.join(config.output, folder)
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


def _delete_under_all(root: str) -> None:
    (match,) = FileSystems.match([FileSystems.join(root, "**")])
    if match.metadata_list:
        FileSystems.delete([m.path for m in match.metadata_list])


def run_export(config: ExportConfig, options) -> dict:
    """Run the export; returns what was written (target, rows, files)."""
    manifest = read_feature_manifest(config.source)
    _prepare(config)
    with beam.Pipeline(options=options) as p:
        build_export(p, config, manifest)
    _tidy(config)
    if config.target == "parquet":
        exported = read_manifest(config.output)
        return {"target": "parquet", "rows": int(exported.counts.get("embedded", 0)),
                "files": list(exported.parquet_shards), "dtype": exported.outputs[0].dtype}
    with FileSystems.open(FileSystems.join(config.output, EXPORT_NAME)) as f:
        described = json.loads(f.read().decode("utf-8"))
    return {"target": "npy", "rows": described["rows"],
            "files": [o["file"] for o in described["outputs"]] + [KEYS_NAME], "dtype": "float32"}


def format_export(summary: dict, output: str, seconds: float) -> str:
    files = summary["files"]
    shown = ", ".join(files[:4]) + (f" and {len(files) - 4} more" if len(files) > 4 else "")
    return (f"featurebeam export: {summary['rows']} records as {summary['target']} ({summary['dtype']}) in "
            f"{output.rstrip('/')}/ in {seconds:.1f}s: {shown}")
