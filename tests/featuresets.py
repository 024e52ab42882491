"""Writing small feature sets directly, in the exact format ``featurebeam extract`` writes."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from transforms.read.input_specs import InputSpec
from transforms.schema.example import encode_example
from transforms.schema.fields import OutputSpec
from transforms.schema.layout import FEATURES_DIR
from transforms.schema.manifest import Manifest, write_manifest


def write_feature_set(root: str, keys: Sequence[str], labels: Sequence[str | None], x: np.ndarray,
                      shard_sizes: Sequence[int] | None = None, backbone: dict | None = None,
                      output: OutputSpec | None = None, dim_override: dict | None = None,
                      splits: Sequence[str | None] | None = None, input_root: str | None = None) -> Manifest:
    """Shards of ``shard_sizes`` records each (zeros allowed: empty shards) and a manifest describing them.

    ``dim_override`` maps a record index to a vector to write instead (e.g. of a wrong length); ``splits``: each
    record's split; ``input_root``: the folder the manifest says the records were read from.
    """
    output = output or _default_output(x.shape[1])
    shard_sizes = list(shard_sizes or [len(keys)])
    assert sum(shard_sizes) == len(keys)
    splits = list(splits) if splits is not None else [None] * len(keys)
    records = ((keys[i], labels[i], (dim_override or {}).get(i, x[i]), splits[i]) for i in range(len(keys)))
    present = {label for label in labels if label is not None}
    inputs = {"specs": [InputSpec.directory(input_root).to_json()]} if input_root else {"specs": []}
    split_names = tuple(sorted({s for s in splits if s is not None}))
    return _write(root, records, shard_sizes, present, backbone, output, inputs, split_names)


def blobs(n: int, classes: Sequence[str], dim: int = 1280, seed: int = 0, spread: float = 0.6):
    """Well-separated Gaussian blobs: (keys, labels, x)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(classes), dim)).astype(np.float32)
    y = rng.integers(0, len(classes), n)
    x = centres[y] + rng.normal(0, spread, (n, dim)).astype(np.float32)
    return _blob_keys(seed, range(n)), [classes[k] for k in y], x.astype(np.float32)


def write_blobs(root: str, n: int, classes: Sequence[str], dim: int = 1280, seed: int = 0, spread: float = 0.6,
                shard_sizes: Sequence[int] | None = None, backbone: dict | None = None,
                chunk: int = 10_000) -> Manifest:
    """``write_feature_set(root, *blobs(...))`` without holding the features: the same records, drawn
    ``chunk`` at a time (only the class of each record, 8 bytes, is drawn up front)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(classes), dim)).astype(np.float32)
    y = rng.integers(0, len(classes), n)

    def records():
        for start in range(0, n, chunk):
            rows = y[start:start + chunk]
            x = centres[rows] + rng.normal(0, spread, (len(rows), dim)).astype(np.float32)
            keys = _blob_keys(seed, range(start, start + len(rows)))
            yield from zip(keys, (classes[k] for k in rows), x, [None] * len(rows), strict=True)

    shard_sizes = list(shard_sizes or [n])
    assert sum(shard_sizes) == n
    present = {classes[k] for k in np.unique(y)}
    return _write(root, records(), shard_sizes, present, backbone, _default_output(dim))


def _blob_keys(seed: int, indices: Iterable[int]) -> list[str]:
    return [f"mem://blobs/{seed}/{i:06d}.jpg" for i in indices]


def _default_output(dim: int) -> OutputSpec:
    return OutputSpec("features.18", "features.18", "avg", dim)


def _write(root: str, records: Iterable, shard_sizes: list[int], labels: set, backbone: dict | None,
           output: OutputSpec, inputs: dict | None = None, splits: tuple[str, ...] = ()) -> Manifest:
    """(key, label, vector, split) records into shards of ``shard_sizes``, then the manifest."""
    import tensorflow as tf

    os.makedirs(os.path.join(root, FEATURES_DIR), exist_ok=True)
    records = iter(records)
    shards = []
    for s, size in enumerate(shard_sizes):
        rel = f"{FEATURES_DIR}/part-{s:05d}-of-{len(shard_sizes):05d}.tfrecord"
        with tf.io.TFRecordWriter(os.path.join(root, rel)) as writer:
            for _ in range(size):
                key, label, vector, split = next(records)
                padded = OutputSpec(output.name, output.layer, output.pooling, len(vector))
                writer.write(encode_example(key, label, {output.name: vector}, [padded], split))
        shards.append(rel)
    n = sum(shard_sizes)
    manifest = Manifest(
        backbone=backbone or {"name": "mobilenet_v2", "weights_sha256": "unknown"},
        outputs=(output,), labels=tuple(sorted(labels)),
        counts={"inputs": n, "embedded": n, "failed": 0}, shards=tuple(shards),
        inputs=inputs or {"specs": []}, created="2026-01-01T00:00:00+00:00", splits=splits)
    write_manifest(root, manifest)
    return manifest
