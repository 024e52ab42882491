"""The output contract: how one feature record and the feature set's manifest look.

Writer, readers, trainer and tests import this module, so they cannot drift apart (like a TFX feature
spec). A feature record is a ``tf.train.Example`` with

- ``key``   bytes, the stable id of the input (its URI, or ``URI#member`` inside an archive);
- ``label`` bytes, absent when the input has no label;
- ``split`` bytes, absent unless the input named one (a manifest's split column, say);
- one float list per extracted output, under the Example key that the manifest names for it; with the
  output's ``dtype`` float16, one bytes value instead: its float16 values, little-endian (half the bytes).

The same records can also be written as Parquet shards (``--format parquet``), one row per record: ``key``,
``label`` and ``split`` (strings, null when absent) and one ``FixedSizeList<float32>`` (or ``<float16>``) column
per output, named as the output. ``arrow_schema`` is that schema; ``read_shard`` reads either format.

``manifest.json`` next to the ``features/`` directory describes the set completely: a reader needs nothing
else to parse the shards.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from transforms.framing import iter_frames

__all__ = [
    "FORMAT_VERSION",
    "KEY",
    "record_key",
    "LABEL",
    "SPLIT",
    "FEATURES_DIR",
    "ERRORS_DIR",
    "MANIFEST_NAME",
    "RETIRED_DIR",
    "LEASE_NAME",
    "OutputSpec",
    "Manifest",
    "FeatureRecord",
    "encode_example",
    "decode_example",
    "tf_feature_description",
    "read_records",
    "read_shard",
    "iter_parquet",
    "shard_format",
    "tf_vectors",
    "iter_serialized",
    "arrow_schema",
    "arrow_table",
    "FORMATS",
    "FEATURE_DTYPES",
    "read_manifest",
    "write_manifest",
]

FORMAT_VERSION = 1
KEY = "key"
LABEL = "label"
SPLIT = "split"
FEATURES_DIR = "features"
ERRORS_DIR = "errors"
COMMITS_DIR = "commits"    # one commit record per committed features/ or errors/ file
PENDING_DIR = ".pending"   # files being written; never read
RETIRED_DIR = "retired"    # commit records of damaged files, moved out of commits/ by --resume (inputs redone)
LEASE_NAME = "lease.json"  # the live run's claim on OUTDIR (owner, heartbeat); absent when none runs
RUN_NAME = "run.json"      # the settings a run was started with (what --resume must match)
MANIFEST_NAME = "manifest.json"
SHARD_PREFIX = "part"
SHARD_SUFFIX = ".tfrecord"
PARQUET_SUFFIX = ".parquet"
FORMATS = {"tfrecord": SHARD_SUFFIX, "parquet": PARQUET_SUFFIX}  # --format: what shards are written as
FEATURE_DTYPES = ("float32", "float16")  # how vectors are stored; readers always return float32
RESERVED_COLUMNS = (KEY, LABEL, SPLIT)


def shard_format(path: str) -> str:
    """"parquet" or "tfrecord", from a shard's name."""
    return "parquet" if path.endswith(PARQUET_SUFFIX) else "tfrecord"


def record_key(uri: str, part: str | int | None = None) -> str:
    """The stable id of an input, the one place keys are made: its URI, or ``URI#PART`` for one record of a
    file (a tar shard's image member, a TFRecord file's record number from 0, a manifest or text row, a text
    row's id)."""
    return uri if part is None else f"{uri}#{part}"


@dataclass(frozen=True)
class OutputSpec:
    """One extracted vector per record: which layer, how it was pooled, where it sits in the Example."""

    name: str
    layer: str
    pooling: str
    dim: int
    dtype: str = "float32"

    @property
    def example_key(self) -> str:
        return f"feature/{self.name}"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "example_key": self.example_key}

    @classmethod
    def from_json(cls, d: Mapping) -> OutputSpec:
        spec = cls(d["name"], d["layer"], d["pooling"], int(d["dim"]), d.get("dtype", "float32"))
        if d.get("example_key", spec.example_key) != spec.example_key:
            raise ValueError(f"manifest output {spec.name!r} names an unexpected Example key {d['example_key']!r}")
        return spec


@dataclass(frozen=True)
class FeatureRecord:
    key: str
    label: str | None
    vectors: Mapping[str, np.ndarray]
    split: str | None = None


def encode_example(key: str, label: str | None, vectors: Mapping[str, np.ndarray],
                   outputs: Sequence[OutputSpec], split: str | None = None) -> bytes:
    """Serialise one record; every output in ``outputs`` must be present with its declared dim."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    feature = example.features.feature
    feature[KEY].bytes_list.value.append(key.encode("utf-8"))
    if label is not None:
        feature[LABEL].bytes_list.value.append(label.encode("utf-8"))
    if split is not None:
        feature[SPLIT].bytes_list.value.append(split.encode("utf-8"))
    for out in outputs:
        vector = np.asarray(vectors[out.name], dtype=np.float32).reshape(-1)
        if vector.shape[0] != out.dim:
            raise ValueError(f"output {out.name!r} of {key!r} has {vector.shape[0]} values, expected {out.dim}")
        if out.dtype == "float16":
            feature[out.example_key].bytes_list.value.append(vector.astype("<f2").tobytes())
        else:
            feature[out.example_key].float_list.value.extend(vector.tolist())
    return example.SerializeToString()


def _stored_vector(feature, out: OutputSpec) -> np.ndarray:
    """One output's float32 vector from a parsed Example's feature map."""
    if out.dtype == "float16":
        values = feature[out.example_key].bytes_list.value
        return np.frombuffer(values[0], "<f2").astype(np.float32) if values else np.zeros(0, np.float32)
    return np.asarray(feature[out.example_key].float_list.value, dtype=np.float32)


def decode_example(serialized: bytes, outputs: Sequence[OutputSpec]) -> FeatureRecord:
    """Parse one serialised Example back into a ``FeatureRecord`` (protobuf only, no TF runtime)."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(serialized)
    feature = example.features.feature
    key = feature[KEY].bytes_list.value[0].decode("utf-8")
    label = feature[LABEL].bytes_list.value[0].decode("utf-8") if LABEL in feature else None
    split = feature[SPLIT].bytes_list.value[0].decode("utf-8") if SPLIT in feature else None
    vectors = {out.name: _stored_vector(feature, out) for out in outputs}
    return FeatureRecord(key, label, vectors, split)


def tf_feature_description(outputs: Sequence[OutputSpec]) -> dict:
    """The ``tf.io.parse_example`` spec of a feature record (label defaults to b"" when absent); a float16
    output parses as its bytes: ``tf_vectors`` turns either into float32."""
    import tensorflow as tf

    desc = {
        KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.string, default_value=b""),
        SPLIT: tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }
    for out in outputs:
        desc[out.example_key] = (tf.io.FixedLenFeature([], tf.string) if out.dtype == "float16"
                                 else tf.io.FixedLenFeature([out.dim], tf.float32))
    return desc


def tf_vectors(parsed: Mapping, out: OutputSpec):
    """The float32 ``(batch, dim)`` vectors of one output from ``tf.io.parse_example(..., tf_feature_description)``."""
    import tensorflow as tf

    if out.dtype == "float16":
        return tf.cast(tf.io.decode_raw(parsed[out.example_key], tf.float16, little_endian=True), tf.float32)
    return parsed[out.example_key]


def iter_serialized(path: str) -> Iterator[bytes]:
    """Serialized records of one shard through Beam's FileSystems (local, gs://, s3://), CRCs checked;
    a truncated or corrupt record raises ``ValueError``."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        yield from iter_frames(f)


def read_records(path: str, outputs: Sequence[OutputSpec]) -> Iterator[FeatureRecord]:
    """Fast TF-free reading of one local shard with tfrecord-lite (raises ImportError without it)."""
    import tfrecord_lite

    names = [KEY, LABEL, SPLIT] + [out.example_key for out in outputs]

    def vector(d, out):
        values = d.get(out.example_key)
        if out.dtype == "float16":
            return np.frombuffer(values[0], "<f2").astype(np.float32) if values else np.zeros(0, np.float32)
        return np.asarray(values if values is not None else [], dtype=np.float32)

    def records():
        for d in tfrecord_lite.tf_record_iterator(path, names=names):
            labels, splits = d.get(LABEL) or [], d.get(SPLIT) or []
            yield FeatureRecord(
                key=d[KEY][0].decode("utf-8"),
                label=labels[0].decode("utf-8") if len(labels) else None,
                vectors={out.name: vector(d, out) for out in outputs},
                split=splits[0].decode("utf-8") if len(splits) else None,
            )

    return records()


def arrow_schema(outputs: Sequence[OutputSpec]):
    """The Parquet shards' schema: key, label, split, then one fixed-size list column per output."""
    import pyarrow as pa

    fields = [pa.field(KEY, pa.string(), nullable=False), pa.field(LABEL, pa.string()), pa.field(SPLIT, pa.string())]
    for out in outputs:
        value = pa.float16() if out.dtype == "float16" else pa.float32()
        fields.append(pa.field(out.name, pa.list_(value, out.dim), nullable=False))
    return pa.schema(fields, metadata={b"featurebeam.format_version": str(FORMAT_VERSION).encode()})


def arrow_table(keys: Sequence[str], labels: Sequence[str | None], splits: Sequence[str | None],
                vectors: Mapping[str, np.ndarray], outputs: Sequence[OutputSpec]):
    """Rows of a Parquet shard; ``vectors[name]`` is an ``(n, dim)`` array per output."""
    import pyarrow as pa

    columns = [pa.array(list(keys), pa.string()), pa.array(list(labels), pa.string()),
               pa.array(list(splits), pa.string())]
    for out in outputs:
        x = np.asarray(vectors[out.name], np.float32).reshape(len(keys), out.dim)
        flat = x.reshape(-1).astype(np.float16 if out.dtype == "float16" else np.float32)
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), out.dim))
    return pa.Table.from_arrays(columns, schema=arrow_schema(outputs))


def iter_parquet(path: str, outputs: Sequence[OutputSpec], batch_rows: int = 4096):
    """``(keys, labels, splits, {output: (n, dim) float32})`` blocks of one Parquet shard, a row group at a time
    (local, gs:// or s3://, through Beam's FileSystems)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        reader = pq.ParquetFile(f)
        names = list(reader.schema_arrow.names)
        missing = [c for c in (KEY, LABEL, SPLIT, *(o.name for o in outputs)) if c not in names]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r}")
        for batch in reader.iter_batches(batch_size=batch_rows, columns=[KEY, LABEL, SPLIT] +
                                         [o.name for o in outputs]):
            n = batch.num_rows
            vectors = {}
            for out in outputs:
                column = batch.column(out.name)
                values = column.flatten().to_numpy(zero_copy_only=False)
                if len(values) != n * out.dim:
                    raise ValueError(f"{path}: output {out.name!r} does not hold {out.dim} values a row")
                vectors[out.name] = values.astype(np.float32).reshape(n, out.dim)
            yield (batch.column(KEY).to_pylist(), batch.column(LABEL).to_pylist(), batch.column(SPLIT).to_pylist(),
                   vectors)


def read_shard(path: str, outputs: Sequence[OutputSpec]) -> Iterator[FeatureRecord]:
    """The records of one shard of either format, local or remote, vectors as float32."""
    if shard_format(path) == "parquet":
        for keys, labels, splits, vectors in iter_parquet(path, outputs):
            for i, key in enumerate(keys):
                yield FeatureRecord(key, labels[i], {name: x[i] for name, x in vectors.items()}, splits[i])
        return
    if "://" not in path:
        try:
            yield from read_records(path, outputs)
            return
        except ImportError:
            pass
    for raw in iter_serialized(path):
        yield decode_example(raw, outputs)


@dataclass(frozen=True)
class Manifest:
    """Everything needed to read and trust a feature set."""

    backbone: Mapping            # name, weights_sha256, preprocessing, ...
    outputs: Sequence[OutputSpec]
    labels: Sequence[str]
    counts: Mapping[str, int]    # inputs = embedded + failed + duplicates
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
        )


def _join(root: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(root, name)


def write_manifest(root: str, manifest: Manifest) -> str:
    """Written whole or not at all (a pending name, then renamed), so a manifest is never half a file."""
    import uuid

    from apache_beam.io.filesystems import FileSystems

    path = _join(root, MANIFEST_NAME)
    pending = _join(root, f"{PENDING_DIR}/{MANIFEST_NAME}.{uuid.uuid4().hex}")
    with FileSystems.create(pending, mime_type="application/json") as f:
        f.write(manifest.to_json().encode("utf-8"))
    FileSystems.rename([pending], [path])
    return path


def read_manifest(root: str) -> Manifest:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(_join(root, MANIFEST_NAME)) as f:
        return Manifest.from_json(f.read().decode("utf-8"))


def shard_paths(root: str, manifest: Manifest, format: str | None = None) -> list[str]:
    """The shards of one format (default: TFRecord when the set has it, else Parquet)."""
    format = format or ("tfrecord" if manifest.shards or not manifest.parquet_shards else "parquet")
    return [_join(root, s) for s in (manifest.shards if format == "tfrecord" else manifest.parquet_shards)]
