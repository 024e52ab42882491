"""Parquet shards beside TFRecord ones (--format), float16 storage (--feature-dtype): what readers get, and
that resume, damage and duplicates behave as for TFRecord shards."""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.extract.config import ExtractConfig, parse_formats
from pipeline.extract.job import run_extraction
from pipeline.tools.inspect import inspect_feature_set
from tests.commit_tools import commit_keys, read_committed, recommit_with, resolve_in
from tests.fakes import MEAN_COLOUR, MeanColourBackbone
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import InputSpec
from transforms.schema.example import iter_serialized
from transforms.schema.layout import FEATURES_DIR, MANIFEST_NAME, RETIRED_DIR
from transforms.schema.manifest import read_manifest, read_shard, shard_paths
from transforms.write import commit_checks

IN_PROCESS = ["--runner=FnApiRunner"]
BOTH = ("tfrecord", "parquet")


def _config(tmp_path, root, name="out", **changes):
    config = ExtractConfig(inputs=(InputSpec.directory(str(root)),), output=str(tmp_path / name),
                           backbone=MeanColourBackbone(str(tmp_path / "loads.log")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=4,
                           overwrite=False, formats=BOTH)
    return dataclasses.replace(config, **changes)


def _by_format(output):
    """Every record of each format's shards: format -> {key: (label, split, vector)}; and the manifest."""
    manifest = read_manifest(output)
    found = {}
    for fmt in manifest.formats:
        records = [r for p in shard_paths(output, manifest, fmt) for r in read_shard(p, manifest.outputs)]
        assert len(records) == len({r.key for r in records}), fmt
        found[fmt] = {r.key: (r.label, r.split, r.vectors["pixels"]) for r in records}
    return manifest, found


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key, (label, split, vector) in a.items():
        assert (label, split) == b[key][:2], key
        assert vector.dtype == b[key][2].dtype == np.float32
        assert vector.tobytes() == b[key][2].tobytes(), key  # bitwise


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory, labelled_colours):
    tmp = tmp_path_factory.mktemp("parquet")
    config = _config(tmp, labelled_colours)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    return config.output


def test_parquet_shards_hold_the_tfrecord_records_for_duckdb_pandas_and_polars(both_formats, labelled_colours):
    import duckdb
    import pandas as pd
    import polars as pl

    manifest, found = _by_format(both_formats)
    assert manifest.formats == BOTH and len(manifest.parquet_shards) == len(manifest.shards) >= 8
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(both_formats, "features", "*.parquet"))) == \
        sorted(os.path.basename(p) for p in manifest.parquet_shards)
    tfrecord = found["tfrecord"]
    assert len(tfrecord) == 36 and tfrecord[str(labelled_colours / "red" / "00.png")][:2] == ("red", None)
    _assert_same(found["parquet"], tfrecord)

    files = os.path.join(both_formats, "features", "*.parquet")
    rows = duckdb.sql(f"SELECT key, label, split, pixels FROM read_parquet('{files}')").fetchall()
    via_duckdb = {k: (lab, s, np.asarray(v, np.float32)) for k, lab, s, v in rows}
    frame = pd.concat([pd.read_parquet(p, engine="pyarrow") for p in sorted(glob.glob(files))])
    via_pandas = {r.key: (r.label, r.split, np.asarray(r.pixels, np.float32)) for r in frame.itertuples()}
    table = pl.read_parquet(files)
    assert table.schema["pixels"] == pl.Array(pl.Float32, 3) and table.schema["key"] == pl.String
    via_polars = {k: (lab, s, np.asarray(v, np.float32))
                  for k, lab, s, v in zip(*(table[c].to_list() for c in ("key", "label", "split", "pixels")),
                                          strict=True)}
    for via in (via_duckdb, via_pandas, via_polars):
        _assert_same(via, tfrecord)
    assert sorted({label for label, _, _ in via_duckdb.values()}) == list(manifest.labels) == ["blue", "green", "red"]
    assert all(split is None for _, split, _ in via_polars.values())  # null when the input has none


def test_commits_name_both_files_and_inspect_checks_that_they_agree(both_formats):
    features = [c for c in commit_checks.read_commits(both_formats) if c.kind == "features"]
    for c in features:
        assert c.path.endswith(".tfrecord") and [f.path for f in c.also] == [c.path[:-len(".tfrecord")] + ".parquet"]
        assert commit_checks.verify_commit(both_formats, c) is None
    result = inspect_feature_set(both_formats)
    assert result.problems == [] and result.records == 36


def test_inspect_finds_a_parquet_shard_that_disagrees_with_its_tfrecord_twin(both_formats, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = str(tmp_path / "copy")
    shutil.copytree(both_formats, copy)
    manifest = read_manifest(copy)
    path = os.path.join(copy, manifest.parquet_shards[0])
    table = pq.read_table(path)
    keys = table.column("key").to_pylist()
    pq.write_table(table.set_column(0, "key", pa.array(keys[::-1], pa.string())), path)  # rows swapped
    problems = inspect_feature_set(copy).problems
    assert problems and all("differs from" in p for p in problems)
    assert f"{manifest.parquet_shards[0]} record 1 ({keys[-1]}) differs from {manifest.shards[0]} record 1 " \
           f"({keys[0]})" in problems


def test_resume_redoes_a_damaged_parquet_shard_and_a_lost_commit(tmp_path, labelled_colours, worker_env):
    config = _config(tmp_path, labelled_colours)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    _, before = _by_format(config.output)
    features = [c for c in commit_checks.read_commits(config.output) if c.kind == "features"]
    damaged, lost = features[0], features[1]
    parquet = os.path.join(config.output, damaged.also[0].path)
    data = bytearray(open(parquet, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    open(parquet, "wb").write(bytes(data))
    os.remove(os.path.join(config.output, lost.marker))  # a crash before this commit was recorded
    os.remove(os.path.join(config.output, MANIFEST_NAME))

    manifest = run_extraction(dataclasses.replace(config, resume=True), PipelineOptions(IN_PROCESS))
    _, after = _by_format(config.output)
    assert manifest.counts == {"inputs": 37, "embedded": 36, "failed": 1, "duplicates": 0}
    assert manifest.retired_commits == 1 and manifest.redone_records == damaged.records
    assert manifest.resumed_records == 37 - damaged.records - lost.records
    _assert_same(after["parquet"], before["tfrecord"])
    _assert_same(after["tfrecord"], before["tfrecord"])
    on_disk = sorted(os.listdir(os.path.join(config.output, FEATURES_DIR)))
    assert on_disk == sorted(os.path.basename(s) for s in (*manifest.shards, *manifest.parquet_shards))
    retired = os.listdir(os.path.join(config.output, RETIRED_DIR))
    assert retired == [f"{damaged.id}.json"]
    assert inspect_feature_set(config.output).problems == []


def test_a_retried_bundles_copy_is_dropped_from_both_formats(tmp_path, labelled_colours, worker_env):
    config = _config(tmp_path, labelled_colours)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    first, second = [c for c in commit_checks.read_commits(config.output) if c.kind == "features"][:2]

    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def join(mine, theirs):  # Parquet files are joined as tables, the others as bytes
        data = [read_committed(config.output, rel) for rel in (mine, theirs)]
        if not mine.endswith(".parquet"):
            return b"".join(data)
        out = io.BytesIO()
        pq.write_table(pa.concat_tables([pq.read_table(io.BytesIO(d)) for d in data]), out)
        return out.getvalue()

    # the second commit also holds the first one's records, in both files (a retried bundle's output)
    recommit_with(config.output, second, first, join)

    assert resolve_in(config.output) == (1, first.records, min(commit_keys(config.output, first)))
    rewritten = next(c for c in commit_checks.read_commits(config.output) if c.id == second.id)
    assert commit_checks.verify_commit(config.output, rewritten) is None and rewritten.records == second.records
    kept = commit_keys(config.output, rewritten)
    for f in rewritten.files:
        assert [r.key for r in read_shard(os.path.join(config.output, f.path), (MEAN_COLOUR,))] == kept


def test_float16_vectors_are_half_the_bytes_and_read_back_as_float32(tmp_path, labelled_colours, both_formats,
                                                                     worker_env):
    half = dataclasses.replace(MEAN_COLOUR, dtype="float16")
    config = _config(tmp_path, labelled_colours, "half")
    config = dataclasses.replace(config, embed=dataclasses.replace(config.embed, outputs=(half,)))
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))
    assert [o.dtype for o in manifest.outputs] == ["float16"]
    _, found = _by_format(config.output)
    _, full = _by_format(both_formats)
    for fmt in BOTH:
        assert sorted(found[fmt]) == sorted(full[fmt])
        for key, (_, _, vector) in found[fmt].items():
            assert vector.dtype == np.float32
            np.testing.assert_array_equal(vector, full[fmt][key][2].astype(np.float16).astype(np.float32))
    _assert_same(found["parquet"], found["tfrecord"])
    assert inspect_feature_set(config.output).problems == []

    import pyarrow.parquet as pq

    path = os.path.join(config.output, manifest.parquet_shards[0])
    assert str(pq.read_schema(path).field("pixels").type) == "fixed_size_list<element: halffloat>[3]"
    # the vectors' own bytes: float16 in each format holds half as many as float32
    assert _vector_bytes(config.output, manifest) * 2 == _vector_bytes(both_formats, read_manifest(both_formats))


def _vector_bytes(output, manifest):
    from tensorflow.core.example import example_pb2

    total = 0
    for path in shard_paths(output, manifest, "tfrecord"):
        for raw in iter_serialized(path):
            feature = example_pb2.Example.FromString(raw).features.feature[MEAN_COLOUR.example_key]
            total += len(feature.bytes_list.value[0]) if feature.bytes_list.value else 4 * len(feature.float_list.value)
    return total


@pytest.mark.parametrize("text, expected", [
    ("tfrecord", ("tfrecord",)), ("parquet", ("parquet",)), ("parquet,tfrecord", BOTH), (" TFRecord , parquet", BOTH),
], ids=["tfrecord", "parquet", "both-any-order", "spaces-and-case"])
def test_format_flag(text, expected):
    assert parse_formats(text) == expected


@pytest.mark.parametrize("text", ["csv", "", "parquet,parquet"], ids=["unknown", "empty", "twice"])
def test_a_bad_format_flag_is_refused(text):
    with pytest.raises(ConfigError, match="--format"):
        parse_formats(text)


def test_a_bad_format_is_one_line_at_launch(tmp_path, labelled_colours, capsys):
    assert main(["extract", "--input", str(labelled_colours), "--output", str(tmp_path / "o"), "--format", "csv"]) == 2
    assert capsys.readouterr().err.strip() == (
        "featurebeam extract: error: --format 'csv': choose tfrecord, parquet or tfrecord,parquet")


def test_train_reads_a_parquet_only_set_as_it_reads_the_tfrecord_one(tmp_path, labelled_colours, both_formats,
                                                                      worker_env):
    from pipeline.train.feature_sets import load_table, open_feature_sets, stream_examples
    from pipeline.train.splits import TRAIN, VALIDATION, SplitRule

    config = _config(tmp_path, labelled_colours, "parquet-only", formats=("parquet",))
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))
    assert manifest.formats == ("parquet",) and manifest.shards == ()
    tables, streamed = {}, {}
    for name, root in (("parquet", config.output), ("tfrecord", both_formats)):
        sources = open_feature_sets([root])
        table = load_table(sources)
        order = np.argsort(table.keys)
        tables[name] = (table.keys[order].tolist(), table.labels[order].tolist(), table.x[order])
        rule = SplitRule(0.3)
        batches = [(x.numpy(), y.numpy()) for part in (TRAIN, VALIDATION)
                   for x, y in stream_examples(sources, ["blue", "green", "red"], rule, (part,), 8)]
        x = np.concatenate([b[0] for b in batches])
        streamed[name] = sorted(zip(map(bytes, x), np.concatenate([b[1] for b in batches]).tolist(), strict=True))
    assert tables["parquet"][:2] == tables["tfrecord"][:2] and len(tables["parquet"][0]) == 36
    assert tables["parquet"][2].tobytes() == tables["tfrecord"][2].tobytes()
    assert streamed["parquet"] == streamed["tfrecord"] and len(streamed["parquet"]) == 36
