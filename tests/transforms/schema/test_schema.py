"""The output schema: one record format for writer, both readers and the manifest."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.schema.example import decode_example, encode_example
from transforms.schema.fields import LABEL, OutputSpec
from transforms.schema.manifest import Manifest

OUTPUTS = (OutputSpec("features.18", "features.18", "avg", 4), OutputSpec("classifier", "classifier", "none", 2))
VECTORS = {"features.18": np.array([0.5, -1.0, 2.25, 3.0], np.float32), "classifier": np.array([1.0, -2.0])}


def test_example_round_trip_keeps_key_label_and_every_output():
    record = decode_example(encode_example("gs://b/x.jpg", "cat", VECTORS, OUTPUTS), OUTPUTS)
    assert (record.key, record.label) == ("gs://b/x.jpg", "cat")
    for name, vector in VECTORS.items():
        np.testing.assert_array_equal(record.vectors[name], vector.astype(np.float32))


def test_label_is_absent_when_unknown():
    from tensorflow.core.example import example_pb2

    data = encode_example("k", None, VECTORS, OUTPUTS)
    assert LABEL not in example_pb2.Example.FromString(data).features.feature
    assert decode_example(data, OUTPUTS).label is None


def test_wrong_dim_is_refused():
    with pytest.raises(ValueError, match="has 3 values, expected 4"):
        encode_example("k", None, {**VECTORS, "features.18": np.zeros(3)}, OUTPUTS)


def test_manifest_json_round_trip():
    manifest = Manifest(
        backbone={"name": "mobilenet_v2", "weights_sha256": "ab" * 32}, outputs=OUTPUTS, labels=("a", "b"),
        counts={"inputs": 3, "embedded": 2, "failed": 1}, shards=("features/part-00000-of-00001.tfrecord",),
        inputs={"specs": [{"kind": "directory", "uri": "/data"}]}, failures_by_reason={"decode: X": 1},
        created="2026-01-01T00:00:00+00:00")
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.outputs[0].example_key == "feature/features.18"


def test_manifest_of_another_format_version_is_refused():
    text = Manifest({}, (), (), {}, (), {}, created="x").to_json()
    text = text.replace('"format_version": 1', '"format_version": 99')
    with pytest.raises(ValueError, match="unsupported feature set format version 99"):
        Manifest.from_json(text)
