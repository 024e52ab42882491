"""Remote workers load the exact weights hashed at launch, from the staging location."""

from __future__ import annotations

import os

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.backbones.staging import stage_backbone
from pipeline.errors import ConfigError
from pipeline.extract.launch import configure


def test_staged_weights_sit_in_a_folder_named_by_hash_and_are_copied_once(mobilenet_spec, tmp_path):
    staged = stage_backbone(mobilenet_spec, str(tmp_path))
    assert staged.weights_path.startswith(str(tmp_path / "featurebeam-weights" / mobilenet_spec.weights_sha256[:16]))
    assert staged.weights_sha256 == mobilenet_spec.weights_sha256
    assert staged.describe() == mobilenet_spec.describe()  # the manifest names the same file as a local run's
    with open(staged.weights_path, "rb") as a, open(mobilenet_spec.weights_path, "rb") as b:
        assert a.read() == b.read()
    mtime = os.path.getmtime(staged.weights_path)
    assert stage_backbone(mobilenet_spec, str(tmp_path)).weights_path == staged.weights_path
    assert os.path.getmtime(staged.weights_path) == mtime


def test_a_remote_runner_gets_staged_weights_or_a_clear_error(tmp_path, sample_photos):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(sample_photos["china.jpg"])
    args = ["--input", str(images), "--output", str(tmp_path / "out"), "--runner", "DataflowRunner"]
    with pytest.raises(ConfigError, match="needs --temp_location"):
        configure(PipelineOptions(args))
    config = configure(PipelineOptions([*args, "--temp_location", str(tmp_path / "tmp")]))
    assert config.backbone.weights_path.startswith(str(tmp_path / "tmp" / "featurebeam-weights"))
    assert config.embed.threads is None  # remote workers keep TensorFlow's own thread sizing
