"""Every input format gives the same features and labels as the folder of images it was packed from."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.extract.config import ExtractConfig
from pipeline.extract.job import run_extraction
from pipeline.inputs import resolve_input
from tests import packing
from tests.fakes import MEAN_COLOUR, MeanColourBackbone
from transforms.embed.settings import EmbedSettings
from transforms.read.tables import InputFields
from transforms.schema.example import read_records
from transforms.schema.manifest import shard_paths

GOOD = 8  # images in the image_folder fixture; it also holds an empty .jpg and a .txt


@pytest.fixture(scope="module")
def packed(tmp_path_factory, image_folder):
    root = tmp_path_factory.mktemp("packed")
    return packing.pack_layout(image_folder, root, str(root))


def check_same_as_folder(manifest, records, keys) -> None:
    """The assertions every run over ``packing.pack_layout``'s four inputs must pass."""
    assert len({r.key for r in records}) == len(records) == 4 * GOOD
    by_format = packing.records_by_format(records, keys)
    folder = by_format.pop("files")
    assert len(folder) == GOOD
    for fmt, got in by_format.items():
        assert sorted(got) == sorted(folder), fmt
        for rel, record in got.items():
            assert record.label == folder[rel].label, (fmt, rel)
            for name, vector in folder[rel].vectors.items():
                np.testing.assert_allclose(record.vectors[name], vector, atol=2e-5, err_msg=f"{fmt} {rel}")
    assert {rel: r.split for rel, r in by_format["manifest"].items()} == {rel: packing.split_of(rel) for rel in folder}
    assert manifest.splits == ("test", "train")
    assert manifest.labels == ("china", "flower")
    # the two non-images of each copy are recorded failures, nothing else is
    assert manifest.counts == {"inputs": 4 * (GOOD + 2), "embedded": 4 * GOOD, "failed": 8, "duplicates": 0}
    assert manifest.failures_by_reason == {"decode: ImageDecodeError": 7, "read: NotAnImage": 1}
    assert manifest.failure_examples["read: NotAnImage"].endswith(".tar#flower/notes.txt")
    assert [s["format"] for s in manifest.inputs["specs"]] == ["files", "manifest", "tar", "tfrecord"]


def test_each_format_gives_the_folders_features_and_labels(tmp_path, packed, worker_env):
    inputs, keys = packed
    specs = tuple(resolve_input(inputs[k]) for k in ("files", "manifest", "tar", "tfrecord"))
    config = ExtractConfig(inputs=specs, output=str(tmp_path / "out"),
                           backbone=MeanColourBackbone(str(tmp_path / "l")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=3, threads=1), records_per_shard=1000,
                           overwrite=False, chunk_bytes=100_000)  # several chunks per shard
    manifest = run_extraction(config, PipelineOptions(["--runner=FnApiRunner"]))

    records = [r for p in shard_paths(config.output, manifest) for r in read_records(p, manifest.outputs)]
    check_same_as_folder(manifest, records, keys)
    errors = [json.loads(line) for f in manifest.error_files for line in open(os.path.join(config.output, f))]
    (tar_notes,) = [e for e in errors if e["error_type"] == "NotAnImage"]
    assert "'flower/notes' has no image member (members: flower/notes.txt" in tar_notes["message"]


def test_jsonl_manifest_and_bad_rows(tmp_path, image_folder, worker_env):
    index = tmp_path / "index.jsonl"
    packing.write_manifest(image_folder, str(index), lambda rel: str(image_folder / rel), fmt="jsonl", uri_field="uri")
    lines = index.read_text().splitlines()
    lines += ['{"uri": "missing/nowhere.jpg", "label": "ghost"}', "{not json", '{"label": "no-uri"}']
    index.write_text("\n".join(lines) + "\n")
    config = ExtractConfig(inputs=(resolve_input(str(index)),), output=str(tmp_path / "out"),
                           backbone=MeanColourBackbone(str(tmp_path / "l")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=1000,
                           overwrite=False,
                           fields=InputFields(allow_outside_paths=True))  # the rows name the image folder's files
    manifest = run_extraction(config, PipelineOptions(["--runner=FnApiRunner"]))

    assert manifest.counts == {"inputs": GOOD + 5, "embedded": GOOD, "failed": 5, "duplicates": 0}
    assert manifest.failures_by_reason == {"decode: ImageDecodeError": 2, "read: FileNotFoundError": 1,
                                           "read: RowError": 1, "read: MissingField": 1}
    errors = {e["error_type"]: e for f in manifest.error_files
              for e in map(json.loads, open(os.path.join(config.output, f)))}
    assert errors["FileNotFoundError"]["key"] == str(tmp_path / "missing/nowhere.jpg")
    assert errors["FileNotFoundError"]["message"].startswith("file does not exist")
    assert errors["RowError"]["key"] == f"{index}#{len(lines) - 2}"
    assert "not valid JSON" in errors["RowError"]["message"]
    assert "has no file URI" in errors["MissingField"]["message"]


def test_tfrecord_feature_names_are_configurable_and_missing_images_recorded(tmp_path, image_folder, worker_env):
    photo = (image_folder / "china/original.jpg").read_bytes()
    path = tmp_path / "custom.tfrecord"
    with open(path, "wb") as f:
        f.write(packing.tfrecord_frame(packing.image_example(photo, 7, "jpeg", "class")))
        f.write(packing.tfrecord_frame(packing.image_example(None, 3, "jpeg", "class")))
    config = ExtractConfig(inputs=(resolve_input(str(path)),), output=str(tmp_path / "out"),
                           backbone=MeanColourBackbone(str(tmp_path / "l")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=1000,
                           overwrite=False, fields=InputFields(image_feature="jpeg", label_feature="class"))
    manifest = run_extraction(config, PipelineOptions(["--runner=FnApiRunner"]))

    assert manifest.counts == {"inputs": 2, "embedded": 1, "failed": 1, "duplicates": 0}
    assert manifest.labels == ("7",)
    (error,) = [json.loads(line) for f in manifest.error_files for line in open(os.path.join(config.output, f))]
    assert error["key"] == f"{path}#1"
    assert error["message"].startswith("record has no bytes feature 'jpeg' (features: class)")
