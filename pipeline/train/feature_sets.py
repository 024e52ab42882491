"""Reading feature sets for training: validated against their manifests, split by a hash of the key.

A feature set is a directory with ``manifest.json`` and ``features/part-*.tfrecord`` or ``.parquet`` shards
(see ``transforms/schema/``; a set with both is read from its TFRecord shards; float16 vectors come back
float32). Small local sets load into memory with tfrecord-lite; remote or large ones stream
through ``tf.data`` (``stream_examples``) so nothing larger than a batch is held.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.train.splits import TRAIN, SplitRule
from transforms.schema.example import iter_serialized, tf_feature_description, tf_vectors
from transforms.schema.fields import KEY, LABEL, SPLIT, OutputSpec
from transforms.schema.layout import MANIFEST_NAME, shard_format
from transforms.schema.manifest import Manifest, read_manifest, read_shard, shard_paths
from transforms.schema.parquet import iter_parquet
from transforms.worker.storage import is_remote

__all__ = ["FeatureSetError", "FeatureTable", "open_feature_sets", "read_feature_manifest", "load_table",
           "stream_examples", "count_labels"]

PARSE_BLOCK = 256  # records parsed together when streaming


class FeatureSetError(ValueError):
    """A feature set that cannot be trained on; the message names the file."""


@dataclass(frozen=True)
class FeatureSource:
    root: str
    manifest: Manifest
    output: OutputSpec

    @property
    def shards(self) -> list[str]:
        return shard_paths(self.root, self.manifest)


@dataclass
class FeatureTable:
    """Rows of one output of one or more feature sets, in memory."""

    keys: np.ndarray      # (n,) object (str)
    labels: np.ndarray    # (n,) object (str or None)
    x: np.ndarray         # (n, dim) float32
    splits: np.ndarray | None = None  # (n,) object (str or None): each record's split, where the input named one

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray) -> FeatureTable:
        """The rows a boolean mask or an index array selects, in that order."""
        splits = None if self.splits is None else self.splits[rows]
        return FeatureTable(self.keys[rows], self.labels[rows], self.x[rows], splits)


def read_feature_manifest(root: str) -> Manifest:
    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(root, MANIFEST_NAME)
    if not FileSystems.exists(path):
        raise FeatureSetError(f"{path} is missing: not a finished feature set (run featurebeam extract first)")
    try:
        return read_manifest(root)
    except (ValueError, KeyError, TypeError) as e:
        raise FeatureSetError(f"{path} is not a valid manifest: {e}") from None


def open_feature_sets(roots: Sequence[str], output_name: str | None = None) -> list[FeatureSource]:
    """Check that every set has a manifest, the same backbone and the chosen output; return them."""
    sources = []
    for root in roots:
        manifest = read_feature_manifest(root)
        names = [o.name for o in manifest.outputs]
        name = output_name or names[0]
        if name not in names:
            raise FeatureSetError(f"{root}: no output {name!r} in its manifest (it has {', '.join(names)})")
        sources.append(FeatureSource(root, manifest, next(o for o in manifest.outputs if o.name == name)))
    first = sources[0]
    for other in sources[1:]:
        if other.manifest.backbone.get("weights_sha256") != first.manifest.backbone.get("weights_sha256"):
            raise FeatureSetError(f"{other.root} was extracted with other backbone weights than {first.root}")
        if other.output != first.output:
            raise FeatureSetError(f"{other.root}: output {other.output.name!r} differs from {first.root}'s "
                                  f"({other.output} vs {first.output})")
    return sources


def _check_dim(vector, source: FeatureSource, path: str, key: str) -> None:
    if len(vector) != source.output.dim:
        raise FeatureSetError(f"{path}: record {key!r} has {len(vector)} values for output "
                              f"{source.output.name!r}, but the manifest says {source.output.dim}")


def _read_shard(source: FeatureSource, path: str):
    """(keys, labels, splits, rows) of one shard, each row's dim checked against the manifest."""
    keys, labels, splits, rows = [], [], [], []
    name = source.output.name
    try:
        for record in read_shard(path, [source.output]):  # either format, local or remote
            _check_dim(record.vectors[name], source, path, record.key)
            keys.append(record.key)
            labels.append(record.label)
            splits.append(record.split)
            rows.append(record.vectors[name])
    except FeatureSetError:
        raise
    except Exception as e:  # a damaged shard: name it
        raise FeatureSetError(f"{path}: cannot read feature records ({type(e).__name__}: {e})") from None
    return keys, labels, splits, rows


def load_table(sources: Sequence[FeatureSource]) -> FeatureTable:
    """Every record of the chosen output, in memory (one preallocated array); counts are checked against
    each manifest."""
    dim = sources[0].output.dim
    expected_total = sum(int(s.manifest.counts.get("embedded", 0)) for s in sources)
    x = np.empty((expected_total, dim), np.float32)
    keys, labels, splits = [], [], []
    for source in sources:
        n_before = len(keys)
        for path in source.shards:
            k, lab, split, rows = _read_shard(source, path)
            if len(keys) + len(k) > expected_total:
                raise FeatureSetError(f"{path}: the shards hold more records than the manifest counts")
            if rows:
                x[len(keys):len(keys) + len(k)] = rows
            keys += k
            labels += lab
            splits += split
        expected = source.manifest.counts.get("embedded")
        if expected is not None and len(keys) - n_before != expected:
            raise FeatureSetError(f"{os.path.join(source.root, MANIFEST_NAME)}: manifest counts {expected} "
                                  f"embedded records, the shards hold {len(keys) - n_before}")
    return FeatureTable(np.array(keys, dtype=object), np.array(labels, dtype=object), x[:len(keys)],
                        np.array(splits, dtype=object))


def stream_examples(sources: Sequence[FeatureSource], vocabulary: Sequence[str], rule: SplitRule | None,
                    parts: Sequence[int], batch_size: int, shuffle: bool = False, seed: int = 0):
    """A tf.data pipeline of (x, class index) batches of the records ``rule`` puts in one of ``parts``
    (``splits.TRAIN``, ``VALIDATION``, ``TEST``; ``rule`` None: every record), streamed from the shards.

    Records without a label or with a label outside ``vocabulary`` are skipped here (training); the rule is
    the one the in-memory table is split by.
    """
    import tensorflow as tf

    output = sources[0].output
    files = [p for s in sources for p in s.shards]
    spec = tf_feature_description([output])
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(vocabulary)), tf.range(len(vocabulary), dtype=tf.int64)),
        default_value=-1)
    wanted = tf.constant(list(parts), tf.int32)

    def select(keys, labels, splits, x):
        y = table.lookup(labels)
        keep = y >= 0
        if rule is not None:
            keep = tf.logical_and(keep, tf.reduce_any(tf.equal(rule.tf_split(keys, splits)[:, None], wanted), axis=1))
        return tf.boolean_mask(x, keep), tf.boolean_mask(y, keep)

    def parse(raw):  # a block of records at once: per-record tf.data steps cost more than the parsing
        ex = tf.io.parse_example(raw, spec)
        return select(ex[KEY], ex[LABEL], ex[SPLIT], tf_vectors(ex, output))

    def blocks():  # (keys, labels, splits, x) blocks of any shards, Parquet ones a row group at a time
        for f in files:
            if shard_format(f) == "parquet":
                for keys, labels, splits, vectors in iter_parquet(f, [output], batch_rows=8 * PARSE_BLOCK):
                    yield keys, [label or "" for label in labels], [s or "" for s in splits], vectors[output.name]
                continue
            records = list(read_shard(f, [output]))  # one TFRecord shard beside Parquet ones: bounded
            for start in range(0, len(records), PARSE_BLOCK):
                block = records[start:start + PARSE_BLOCK]
                yield ([r.key for r in block], [r.label or "" for r in block], [r.split or "" for r in block],
                       np.stack([r.vectors[output.name] for r in block]))

    # Fixed parallelism: with AUTOTUNE, tf.data's buffers grew by ~60 MB an epoch on a 100k-record set.
    if any(shard_format(f) == "parquet" for f in files):
        ds = tf.data.Dataset.from_generator(blocks, output_signature=(
            tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.string),
            tf.TensorSpec([None, output.dim], tf.float32)))
        ds = ds.map(select, num_parallel_calls=2)
    else:
        if all(not is_remote(f) for f in files):
            ds = tf.data.TFRecordDataset(files, num_parallel_reads=2)
        else:  # TensorFlow may lack the object store's filesystem: read through Beam's
            ds = tf.data.Dataset.from_generator(lambda: (r for f in files for r in iter_serialized(f)),
                                                output_signature=tf.TensorSpec([], tf.string))
        ds = ds.batch(PARSE_BLOCK).map(parse, num_parallel_calls=2)
    ds = ds.unbatch()  # the records' order is kept
    if shuffle:
        ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(2)


def count_labels(sources: Sequence[FeatureSource], vocabulary: Sequence[str], rule: SplitRule) -> np.ndarray:
    """Records per class in the streamed training split (for class weights), in one pass."""
    counts = np.zeros(len(vocabulary), np.int64)
    for _, y in stream_examples(sources, vocabulary, rule, (TRAIN,), 4096):
        counts += np.bincount(y.numpy(), minlength=len(vocabulary))
    return counts
