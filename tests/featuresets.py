"""Writing small feature sets directly, in the exact format ``featurebeam extract`` writes."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from transforms import schema


def write_feature_set(root: str, keys: Sequence[str], labels: Sequence[str | None], x: np.ndarray,
                      shard_sizes: Sequence[int] | None = None, backbone: dict | None = None,
                      output: schema.OutputSpec | None = None, dim_override: dict | None = None) -> schema.Manifest:
    """Shards of ``shard_sizes`` records each (zeros allowed: empty shards) and a manifest describing them.

    ``dim_override`` maps a record index to a vector to write instead (e.g. of a wrong length).
    """
    import tensorflow as tf

    output = output or schema.OutputSpec("features.18", "features.18", "avg", x.shape[1])
    shard_sizes = list(shard_sizes or [len(keys)])
    assert sum(shard_sizes) == len(keys)
    os.makedirs(os.path.join(root, schema.FEATURES_DIR), exist_ok=True)
    shards, i = [], 0
    for s, size in enumerate(shard_sizes):
        rel = f"{schema.FEATURES_DIR}/part-{s:05d}-of-{len(shard_sizes):05d}.tfrecord"
        with tf.io.TFRecordWriter(os.path.join(root, rel)) as writer:
            for _ in range(size):
                vector = (dim_override or {}).get(i, x[i])
                padded = schema.OutputSpec(output.name, output.layer, output.pooling, len(vector))
                writer.write(schema.encode_example(keys[i], labels[i], {output.name: vector}, [padded]))
                i += 1
        shards.append(rel)
    manifest = schema.Manifest(
        backbone=backbone or {"name": "mobilenet_v2", "weights_sha256": "unknown"},
        outputs=(output,), labels=tuple(sorted({label for label in labels if label is not None})),
        counts={"inputs": len(keys), "embedded": len(keys), "failed": 0}, shards=tuple(shards),
        inputs={"specs": []}, created="2026-01-01T00:00:00+00:00")
    schema.write_manifest(root, manifest)
    return manifest


def blobs(n: int, classes: Sequence[str], dim: int = 1280, seed: int = 0, spread: float = 0.6):
    """Well-separated Gaussian blobs: (keys, labels, x)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(classes), dim)).astype(np.float32)
    y = rng.integers(0, len(classes), n)
    x = centres[y] + rng.normal(0, spread, (n, dim)).astype(np.float32)
    keys = [f"mem://blobs/{seed}/{i:06d}.jpg" for i in range(n)]
    return keys, [classes[k] for k in y], x.astype(np.float32)
