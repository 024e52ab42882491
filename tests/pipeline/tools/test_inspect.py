"""featurebeam inspect --check: catches what can go wrong in a feature set on disk."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli import main
from tests.featuresets import blobs, write_feature_set


@pytest.fixture
def feature_set(tmp_path):
    keys, labels, x = blobs(30, ["cat", "dog"], dim=8)
    labels[0] = None
    return tmp_path / "fs", keys, labels, x


def _check(root, capsys):
    code = main(["inspect", str(root), "--check"])
    return code, capsys.readouterr().out


def test_an_intact_set_passes_and_is_summarised(feature_set, capsys):
    root, keys, labels, x = feature_set
    write_feature_set(str(root), keys, labels, x, shard_sizes=[10, 0, 20])
    code, out = _check(root, capsys)
    assert code == 0, out
    assert "check passed: 30 records match the manifest" in out
    assert "features/part-00001-of-00003.tfrecord  0" in out
    assert "(no label)  1" in out
    assert f"sample     {keys[0]} label None" in out


def test_a_truncated_shard_is_caught(feature_set, capsys):
    root, keys, labels, x = feature_set
    write_feature_set(str(root), keys, labels, x, shard_sizes=[15, 15])
    shard = root / "features" / "part-00001-of-00002.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-20])
    code, out = _check(root, capsys)
    assert code == 1
    assert "features/part-00001-of-00002.tfrecord: truncated or corrupt after 14 records" in out
    assert "the shards hold 29 records, the manifest counts 30 embedded" in out


def test_a_record_with_a_wrong_dim_is_caught(feature_set, capsys):
    root, keys, labels, x = feature_set
    write_feature_set(str(root), keys, labels, x, dim_override={4: np.ones(5, np.float32)})
    code, out = _check(root, capsys)
    assert code == 1
    assert f"record 5 ({keys[4]}): output 'features.18' has 5 values, the manifest says 8" in out


def test_a_duplicated_key_and_non_finite_values_are_caught(feature_set, capsys):
    root, keys, labels, x = feature_set
    keys[20] = keys[3]
    x[7, 2] = np.nan
    write_feature_set(str(root), keys, labels, x, shard_sizes=[10, 20])
    code, out = _check(root, capsys)
    assert code == 1
    assert f"duplicate key {keys[3]!r} (also in features/part-00000-of-00002.tfrecord)" in out
    assert f"({keys[7]}): output 'features.18' holds NaN or Inf" in out


def test_without_check_problems_do_not_change_the_exit_status(feature_set, capsys):
    root, keys, labels, x = feature_set
    keys[1] = keys[0]
    write_feature_set(str(root), keys, labels, x)
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "check passed" not in out and "check FAILED" not in out


def test_a_directory_without_manifest_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"featurebeam inspect: error: {tmp_path}/manifest.json is missing")


@pytest.mark.parametrize("store", ["gcs", "s3"])
def test_a_set_on_object_storage_is_checked_the_same(feature_set, capsys, request, store):
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from tests import object_storage

    server = request.getfixturevalue(store)
    root, keys, labels, x = feature_set
    write_feature_set(str(root), keys, labels, x, shard_sizes=[10, 20])
    local_code, local_out = _check(root, capsys)
    bucket, flags = f"inspect-{store}", ([] if store == "gcs" else server.beam_flags)
    server.create_bucket(bucket)
    FileSystems.set_options(PipelineOptions(flags))
    remote = f"{'gs' if store == 'gcs' else 's3'}://{bucket}/fs"
    object_storage.upload_tree(str(root), remote)
    code = main(["inspect", remote, "--check", *flags])
    out = capsys.readouterr().out
    assert code == local_code == 0 and out.replace(remote, "ROOT") == local_out.replace(str(root), "ROOT")


def test_a_duplicate_across_shards_is_found_with_buckets_of_four_keys(feature_set, capsys):
    from pipeline.tools.inspect import format_inspection, inspect_feature_set

    root, keys, labels, x = feature_set
    keys[25], keys[12] = keys[2], keys[2]  # shard 0's key again in shards 1 and 2
    write_feature_set(str(root), keys, labels, x, shard_sizes=[10, 10, 10])
    result = inspect_feature_set(str(root), bucket_rows=4)
    assert [p for p in result.problems if "duplicate" in p] == [
        f"features/part-00001-of-00003.tfrecord record 3: duplicate key {keys[2]!r} "
        "(also in features/part-00000-of-00003.tfrecord)",
        f"features/part-00002-of-00003.tfrecord record 6: duplicate key {keys[2]!r} "
        "(also in features/part-00000-of-00003.tfrecord)"]
    assert "check FAILED: 2 problem(s)" in format_inspection(result, check=True)


def test_many_duplicates_are_reported_first_twenty_then_counted(tmp_path):
    from pipeline.tools.inspect import inspect_feature_set

    keys, labels, x = blobs(60, ["cat", "dog"], dim=4)
    keys[30:] = keys[:30]  # shard 1 repeats shard 0, record for record
    write_feature_set(str(tmp_path / "fs"), keys, labels, x, shard_sizes=[30, 30])
    problems = inspect_feature_set(str(tmp_path / "fs"), bucket_rows=8).problems
    assert problems[:20] == [f"features/part-00001-of-00002.tfrecord record {i + 1}: duplicate key {keys[i]!r} "
                             "(also in features/part-00000-of-00002.tfrecord)" for i in range(20)]
    assert problems[20:] == ["... and 10 more of this kind (duplicate)"]
