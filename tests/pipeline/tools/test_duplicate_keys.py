"""Repeated keys found by fingerprint in bucket files: the same answer as a dict of every key, in bounded memory."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.tools.duplicate_keys import DuplicateKeys, bucket_bits, fingerprint


def places(n_keys: int, n_records: int, seed: int) -> list[tuple[str, int, int]]:
    """(key, shard, record) in reading order, keys drawn with repeats from ``n_keys`` names, 3 shards."""
    rng = np.random.default_rng(seed)
    names = rng.integers(0, n_keys, n_records)
    per_shard = -(-n_records // 3)
    return [(f"gs://photos/{k:05d}.jpg", i // per_shard, i % per_shard + 1) for i, k in enumerate(names)]


def with_a_dict(rows, limit):
    """What holding every key in one dict says: (total, the first ``limit`` repeats)."""
    first, found = {}, []
    for key, shard, record in rows:
        if key in first:
            found.append((shard, record, first[key], fingerprint(key)))
        else:
            first[key] = shard
    return len(found), found[:limit]


@pytest.mark.parametrize("expected", [600, 0], ids=["count-known", "count-unknown-buckets-split"])
@pytest.mark.parametrize("seed", [1, 2])
def test_repeats_equal_a_dict_of_every_key(expected, seed, tmp_path):
    rows = places(400, 600, seed)
    with DuplicateKeys(expected, bucket_rows=16, buffer_rows=50, directory=str(tmp_path)) as keys:
        for row in rows:
            keys.add(*row)
        assert keys.buckets == (64 if expected else 1)
        total, repeats = keys.repeats(limit=25)
    assert (total, [(r.shard, r.record, r.first_shard, r.fingerprint) for r in repeats]) == with_a_dict(rows, 25)
    assert total > 100 and os.listdir(tmp_path) == []  # the bucket files are gone


def test_no_repeats_and_no_keys():
    with DuplicateKeys(10) as keys:
        assert keys.repeats(limit=5) == (0, [])
    with DuplicateKeys(10) as keys:
        for i in range(10):
            keys.add(f"k{i}", 0, i + 1)
        assert keys.repeats(limit=5) == (0, [])


def test_one_key_repeated_more_often_than_a_bucket_holds(tmp_path):
    with DuplicateKeys(0, bucket_rows=4, directory=str(tmp_path)) as keys:
        for i in range(30):
            keys.add("same", i // 10, i % 10 + 1)
        total, repeats = keys.repeats(limit=3)
    assert total == 29 and [(r.shard, r.record, r.first_shard) for r in repeats] == [(0, 2, 0), (0, 3, 0), (0, 4, 0)]


@pytest.mark.parametrize("expected, bits", [(0, 0), (1_000_000, 0), (1_000_001, 1), (10**9, 10), (10**13, 16)])
def test_buckets_hold_about_a_million_fingerprints(expected, bits):
    assert bucket_bits(expected) == bits
