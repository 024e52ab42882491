"""The report's one pass over a feature set: bounded, seeded samples, and counts checked against the manifest."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from pipeline.report.scan import ClassSample, Reservoir, scan_feature_set


def test_the_reservoir_is_a_bounded_uniform_seeded_sample():
    def draw(seed, n=50, size=10):
        reservoir = Reservoir(size, 1, seed)
        for i in range(n):
            reservoir.offer(np.array([i], np.float32), f"r{i}", f"k{i}")
        return reservoir.sample()

    x, labels, keys = draw(3)
    assert x.shape == (10, 1) and len(set(labels)) == 10
    assert list(labels) == [f"r{int(v)}" for v in x[:, 0]]  # rows, labels and keys stay paired
    assert list(keys) == [f"k{int(v)}" for v in x[:, 0]]
    np.testing.assert_array_equal(draw(3)[0], x)
    chosen = np.zeros(50)
    for seed in range(2000):
        chosen[draw(seed)[0][:, 0].astype(int)] += 1
    assert np.all(np.abs(chosen / 2000 - 0.2) < 0.06), chosen / 2000  # every record equally likely
    x, labels, _ = draw(0, n=4)
    assert sorted(labels) == ["r0", "r1", "r2", "r3"]  # fewer records than the sample: all of them


def test_the_class_sample_keeps_a_bounded_uniform_sample_of_each_class():
    chosen = np.zeros(60)
    for seed in range(1000):
        sample = ClassSample(3, seed)
        for i in range(60):
            sample.offer("even" if i % 2 == 0 else None if i == 59 else "odd", f"{i}")
        assert len(sample.keys["even"]) == 3 and len(sample.keys["odd"]) == 3 and sample.keys[None] == ["59"]
        assert all(int(k) % 2 == 0 for k in sample.keys["even"]) and len(set(sample.keys["odd"])) == 3
        chosen[[int(k) for k in sample.keys["even"]]] += 1
    assert np.all(np.abs(chosen[0:60:2] / 1000 - 0.1) < 0.04), chosen[0:60:2] / 1000


def test_the_scan_counts_every_record_and_keeps_a_bounded_sample(small_set):
    from pipeline.train.feature_sets import open_feature_sets

    root, labels, x, keys = small_set
    scan = scan_feature_set(open_feature_sets([root])[0], sample_size=40, seed=1)
    assert scan.labels == collections.Counter(labels) and scan.records == 300
    assert scan.x.shape == (40, 8) and len(scan.sample_labels) == 40 and len(scan.sample_keys) == 40
    rows = {tuple(r): (key, label) for r, key, label in zip(x, keys, labels, strict=True)}
    assert all(rows[tuple(r)] == (key, label)  # real records, paired with their keys
               for r, key, label in zip(scan.x, scan.sample_keys, scan.sample_labels, strict=True))
    assert {label: len(k) for label, k in scan.class_keys.items()} == {"cat": 8, "dog": 8, "fox": 8, None: 1}
    assert all(labels[keys.index(k)] == label for label, ks in scan.class_keys.items() for k in ks)


def test_a_shard_with_fewer_records_than_the_manifest_counts_is_refused(small_set):
    from pipeline.report.page import build_report
    from pipeline.train.feature_sets import FeatureSetError

    root = small_set[0]
    manifest = open(f"{root}/manifest.json").read().replace('"embedded": 300', '"embedded": 301')
    open(f"{root}/manifest.json", "w").write(manifest)
    with pytest.raises(FeatureSetError, match="manifest counts 301 embedded records, the shards hold 300"):
        build_report(root)
