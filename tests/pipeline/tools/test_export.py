"""featurebeam export: a feature set as Parquet shards, or as .npy matrices + keys.parquet."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.cli import main
from pipeline.extract.config import ExtractConfig
from pipeline.extract.job import run_extraction
from pipeline.tools.export import ExportConfig, run_export
from pipeline.tools.inspect import inspect_feature_set
from tests.fakes import MEAN_COLOUR, MeanColourBackbone
from tests.featuresets import blobs, write_feature_set
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import InputSpec
from transforms.schema.manifest import read_manifest, read_shard, shard_paths

IN_PROCESS = PipelineOptions(["--runner=FnApiRunner"])


def _rows(root: str):
    """Every record of a set, by key: (label, split, {output: vector bytes}); and the manifest."""
    manifest = read_manifest(root)
    rows = {}
    for path in shard_paths(root, manifest):
        for r in read_shard(path, manifest.outputs):
            assert r.key not in rows
            rows[r.key] = (r.label, r.split, {name: v.tobytes() for name, v in r.vectors.items()})
    return manifest, rows


def _extract(tmp_path, images, output, formats):
    config = ExtractConfig(inputs=(InputSpec.directory(str(images)),), output=output,
                           backbone=MeanColourBackbone(str(tmp_path / "loads.log")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=5,
                           overwrite=False, formats=formats)
    return run_extraction(config, IN_PROCESS)


@pytest.mark.slow
def test_export_of_a_gcs_set_equals_parquet_written_at_extraction(tmp_path, labelled_colours, gcs, worker_env):
    import pyarrow.parquet as pq

    gcs.create_bucket("export-src")
    source = "gs://export-src/set"
    _extract(tmp_path, labelled_colours, source, ("tfrecord",))
    at_extraction = str(tmp_path / "parquet")
    _extract(tmp_path, labelled_colours, at_extraction, ("parquet",))

    exported = "gs://export-src/exported"
    summary = run_export(ExportConfig.create(source, "parquet", exported), IN_PROCESS)
    assert summary["target"] == "parquet" and summary["rows"] == 36

    manifest, rows = _rows(exported)
    reference_manifest, reference = _rows(at_extraction)
    assert rows == reference  # keys, labels, splits, vectors bitwise
    assert manifest.formats == ("parquet",) and manifest.counts == reference_manifest.counts
    assert manifest.labels == reference_manifest.labels and manifest.outputs == reference_manifest.outputs
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(FileSystems.join(exported, manifest.parquet_shards[0])) as f:
        exported_schema = pq.ParquetFile(f).schema_arrow
    local = os.path.join(at_extraction, reference_manifest.parquet_shards[0])
    assert exported_schema == pq.read_schema(local)
    assert manifest.error_files and FileSystems.exists(FileSystems.join(exported, manifest.error_files[0]))
    assert inspect_feature_set(exported).problems == []


def test_npy_matrices_memory_map_in_the_order_of_keys_parquet(tmp_path):
    import pyarrow.parquet as pq

    keys, labels, x = blobs(50, ["a", "b"], dim=16, seed=4)
    labels[3] = None
    source = str(tmp_path / "set")
    write_feature_set(source, keys, labels, x, shard_sizes=[20, 0, 30])
    out = str(tmp_path / "npy")
    summary = run_export(ExportConfig.create(source, "npy", out), IN_PROCESS)
    assert summary["rows"] == 50 and summary["files"] == ["features.18.npy", "keys.parquet"]

    matrix = np.load(os.path.join(out, "features.18.npy"), mmap_mode="r")
    assert isinstance(matrix, np.memmap) and matrix.dtype == np.float32 and matrix.shape == (50, 16)
    table = pq.read_table(os.path.join(out, "keys.parquet"))
    assert table.column_names == ["key", "label", "split"]
    by_key = {k: i for i, k in enumerate(keys)}
    order = [by_key[k] for k in table.column("key").to_pylist()]
    assert sorted(order) == list(range(50))
    assert np.asarray(matrix).tobytes() == x[order].tobytes()
    assert table.column("label").to_pylist() == [labels[i] for i in order]
    described = json.load(open(os.path.join(out, "export.json")))
    assert described["rows"] == 50 and described["outputs"][0]["file"] == "features.18.npy"
    assert sorted(os.listdir(out)) == ["export.json", "features.18.npy", "keys.parquet"]


def test_train_on_an_exported_parquet_set_equals_train_on_its_tfrecord_source(tmp_path, mobilenet_spec):
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training

    keys, labels, x = blobs(240, ["cat", "dog", "fox"], dim=1280, seed=12, spread=2.0)
    source = str(tmp_path / "set")
    write_feature_set(source, keys, labels, x, shard_sizes=[100, 140],
                      backbone={"name": "mobilenet_v2", "weights_sha256": mobilenet_spec.weights_sha256})
    parquet = str(tmp_path / "parquet")
    run_export(ExportConfig.create(source, "parquet", parquet), IN_PROCESS)
    reports = {name: run_training(TrainConfig(features=(root,), output=str(tmp_path / f"model-{name}"),
                                              heads=("linear",)), log=lambda m: None)
               for name, root in (("tfrecord", source), ("parquet", parquet))}
    assert reports["parquet"]["heads"] == reports["tfrecord"]["heads"]
    assert reports["parquet"]["heads"]["linear"]["splits"]["validation"]["accuracy"] > 0.5


def test_float16_export_stores_half_precision_and_reads_back_float32(tmp_path):
    keys, labels, x = blobs(30, ["a", "b"], dim=8, seed=5)
    source = str(tmp_path / "set")
    write_feature_set(source, keys, labels, x, shard_sizes=[30])
    out = str(tmp_path / "half")
    assert run_export(ExportConfig.create(source, "parquet", out, "float16"), IN_PROCESS)["dtype"] == "float16"
    manifest, rows = _rows(out)
    assert [o.dtype for o in manifest.outputs] == ["float16"]
    for i, key in enumerate(keys):
        half = x[i].astype(np.float16).astype(np.float32)
        assert rows[key][2]["features.18"] == half.tobytes()
    assert inspect_feature_set(out).problems == []


@pytest.mark.parametrize("flags, message", [
    (["--to", "npy", "--feature-dtype", "float16"], "--to npy writes float32 matrices"),
    (["--to", "parquet", "--output", "{source}"], "--output must be another directory"),
    (["--to", "parquet", "--output", "{busy}"], "is not empty; pass --overwrite"),
], ids=["npy-float16", "onto-itself", "busy-output"])
def test_export_mistakes_are_one_line(tmp_path, capsys, flags, message):
    keys, labels, x = blobs(4, ["a"], dim=2, seed=6)
    source = str(tmp_path / "set")
    write_feature_set(source, keys, labels, x)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    argv = [f.format(source=source, busy=busy) for f in flags]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "o")]
    assert main(["export", source, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurebeam export: error: ") and message in err, err


def test_export_of_what_is_not_a_feature_set_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--to", "parquet", "--output", str(tmp_path / "o")]) == 2
    assert "manifest.json is missing: not a finished feature set" in capsys.readouterr().err


def test_export_from_the_command_line(tmp_path, capsys):
    keys, labels, x = blobs(12, ["a", "b"], dim=4, seed=7)
    source = str(tmp_path / "set")
    write_feature_set(source, keys, labels, x, shard_sizes=[5, 7])
    out = str(tmp_path / "out")
    assert main(["export", source, "--to", "parquet", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"featurebeam export: 12 records as parquet (float32) in {out}/ in ")
    _, rows = _rows(out)
    assert sorted(rows) == sorted(keys)
    assert dataclasses.asdict(read_manifest(out).outputs[0])["dtype"] == "float32"
