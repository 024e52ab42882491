"""A feature record as a ``tf.train.Example`` (the TFRecord shards): one float list per output under the Example key
the manifest names for it (``OutputSpec.example_key``); with the output's ``dtype`` float16, one bytes value instead:
its float16 values, little-endian (half the bytes). ``key``, ``label`` and ``split`` are bytes features.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from transforms.schema.fields import KEY, LABEL, SPLIT, FeatureRecord, OutputSpec
from transforms.schema.framing import iter_frames

__all__ = ["encode_example", "decode_example", "tf_feature_description", "tf_vectors", "iter_serialized",
           "read_records"]


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
