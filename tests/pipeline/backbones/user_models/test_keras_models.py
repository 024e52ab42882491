"""Backbones users bring: keras.applications by name with a weights file, and Keras model files.

Each family's preprocessing must equal its own ``preprocess_input``, and features through the pipeline must
equal the Keras model's own output at the chosen layer. Weights are random (``weights=None``), saved to a file,
as no ImageNet download is possible offline; what is compared is the plumbing, which is all that can differ.
"""

from __future__ import annotations

import importlib
import os
import shutil

import numpy as np
import pytest

from pipeline.cli import main
from transforms.decode.images import decode_image
from transforms.schema.example import read_records
from transforms.schema.manifest import read_manifest, shard_paths

IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]
FAMILIES = [("MobileNetV2", "block_13_expand_relu"), ("ResNet50", "conv4_block2_out"), ("DenseNet121", "pool3_relu")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, image_folder):
    folder = tmp_path_factory.mktemp("photos")
    for rel in ("china/original.jpg", "flower/original.jpg", "china/portrait.jpg"):
        shutil.copy(image_folder / rel, folder / rel.replace("/", "-"))
    return folder


def _weights(tmp_path, class_name):
    import keras

    from pipeline.backbones.user_models.keras_applications import build_application

    keras.utils.set_random_seed(1)
    model = build_application(class_name, include_top=False, weights=None)
    path = str(tmp_path / f"{class_name}.weights.h5")
    model.save_weights(path)
    return model, path


@pytest.mark.parametrize("class_name", [f for f, _ in FAMILIES])
def test_preprocessing_equals_the_familys_preprocess_input(class_name, tmp_path, sample_photos):
    import tensorflow as tf

    from pipeline.backbones.registry import resolve_backbone
    from pipeline.backbones.user_models.keras_applications import family_of

    _, path = _weights(tmp_path, class_name)
    spec = resolve_backbone(f"keras:{class_name}", weights=path)
    images = np.stack([decode_image(data, spec.preprocessing) for data in sample_photos.values()])
    preprocess_input = importlib.import_module(f"keras.applications.{family_of(class_name)[0]}").preprocess_input
    expected = preprocess_input(images.astype(np.float32))
    np.testing.assert_allclose(spec.preprocessing.normalize(tf.constant(images)).numpy(), expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("class_name, layer", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_features_through_the_pipeline_equal_the_keras_model_at_that_layer(class_name, layer, tmp_path, photos):
    import keras

    from pipeline.backbones.user_models.keras_applications import family_of

    model, path = _weights(tmp_path, class_name)
    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(photos), "--output", out, "--backbone", f"keras:{class_name}",
                 "--weights", path, "--layer", layer, "--batch-size", "2", *IN_PROCESS]) == 0

    manifest = read_manifest(out)
    assert manifest.backbone["name"] == f"keras:{class_name}" and manifest.backbone["options"]["include_top"] is False
    records = {os.path.basename(r.key): r for p in shard_paths(out, manifest)
               for r in read_records(p, manifest.outputs)}
    preprocess_input = importlib.import_module(f"keras.applications.{family_of(class_name)[0]}").preprocess_input
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    from pipeline.backbones.registry import resolve_backbone

    spec = resolve_backbone(f"keras:{class_name}", weights=path)
    for name, record in sorted(records.items()):
        image = decode_image((photos / name).read_bytes(), spec.preprocessing).astype(np.float32)
        expected = np.asarray(probe(preprocess_input(image[None]), training=False)).mean(axis=(1, 2))[0]
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(record.vectors[layer], expected, atol=1e-4 * scale, rtol=1e-4, err_msg=name)


@pytest.mark.slow
def test_model_files_load_in_safe_mode_and_give_the_models_own_output(tmp_path, photos, capsys):
    import keras

    keras.utils.set_random_seed(2)
    inputs = keras.Input((96, 96, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="features")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x)))
    path = str(tmp_path / "mine.keras")
    model.save(path)

    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(photos), "--output", out, "--backbone", path, *IN_PROCESS]) == 0
    manifest = read_manifest(out)
    assert [(o.name, o.dim) for o in manifest.outputs] == [("features", 16)]
    from pipeline.backbones.registry import resolve_backbone

    spec = resolve_backbone(path)
    assert spec.preprocessing.crop == 96 and spec.preprocessing.scale == 1.0  # raw pixels: the model rescales
    probe = keras.Model(model.inputs, model.get_layer("features").output)
    for r in (r for p in shard_paths(out, manifest) for r in read_records(p, manifest.outputs)):
        image = decode_image(open(r.key, "rb").read(), spec.preprocessing).astype(np.float32)
        expected = np.asarray(probe(image[None], training=False)).mean(axis=(1, 2))[0]
        np.testing.assert_allclose(r.vectors["features"], expected, atol=1e-5, rtol=1e-5)

    unsafe_in = keras.Input((32, 32, 3))
    unsafe = keras.Model(unsafe_in, keras.layers.Lambda(lambda t: t * 2.0)(unsafe_in))
    unsafe_path = str(tmp_path / "lambda.keras")
    unsafe.save(unsafe_path)
    capsys.readouterr()
    assert main(["extract", "--input", str(photos), "--output", str(tmp_path / "o2"), "--backbone", unsafe_path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"featurebeam extract: error: cannot load model file {unsafe_path}: ValueError") and \
        "safe_mode" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_workers_load_the_staged_artifact_never_its_origin(tmp_path, photos, monkeypatch):
    """Stage a keras: backbone's weights, delete the original file, and run the job in separate worker
    processes: they can only have read the staged copy (and they check its hash)."""
    import dataclasses

    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.backbones.registry import resolve_backbone
    from pipeline.backbones.staging import stage_backbone
    from pipeline.extract.config import ExtractConfig
    from pipeline.extract.job import run_extraction
    from pipeline.extract.launch import resolve_outputs
    from tests.conftest import REPO
    from transforms.embed.settings import EmbedSettings
    from transforms.read.input_specs import InputSpec

    monkeypatch.setenv("PYTHONPATH", REPO)
    origin = tmp_path / "origin"
    origin.mkdir()
    _, path = _weights(origin, "MobileNetV2")
    spec = resolve_backbone("keras:MobileNetV2", weights=path)
    staged = stage_backbone(spec, str(tmp_path / "staging"))
    assert staged.weights_path.startswith(str(tmp_path / "staging")) and staged.weights_sha256 == spec.weights_sha256
    shutil.rmtree(origin)  # from here on, only the staged copy exists

    outputs = resolve_outputs(staged, ["out_relu"], "avg")
    config = ExtractConfig(inputs=(InputSpec.directory(str(photos)),), output=str(tmp_path / "out"), backbone=staged,
                           embed=EmbedSettings(outputs, batch_size=2, threads=1), records_per_shard=100,
                           overwrite=False)
    manifest = run_extraction(config, PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=2",
                                                       "--direct_running_mode=multi_processing"]))
    assert manifest.counts == {"inputs": 3, "embedded": 3, "failed": 0, "duplicates": 0}

    tampered = dataclasses.replace(staged, weights_sha256="0" * 64)
    with pytest.raises(RuntimeError, match="changed since launch"):
        tampered.load(["out_relu"])


@pytest.mark.slow
def test_a_saved_model_directory_is_one_staged_artifact_with_its_signature_outputs_as_layers(tmp_path, photos):
    import keras

    from pipeline.backbones.registry import resolve_backbone

    keras.utils.set_random_seed(3)
    inputs = keras.Input((64, 64, 3))
    feature_map = keras.layers.Conv2D(6, 3, strides=2, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(feature_map)
    model = keras.Model(inputs, {"map": feature_map, "pooled": pooled})
    folder = str(tmp_path / "exported")
    model.export(folder)

    spec = resolve_backbone(folder, preprocessing="tf")
    assert spec.layer_shapes == {"map": (31, 31, 6), "pooled": (6,)} and spec.default_layer == "map"
    assert spec.weights_path.endswith(".tar") and resolve_backbone(folder, preprocessing="tf").weights_sha256 == \
        spec.weights_sha256  # packed reproducibly: the same directory, the same hash

    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(photos), "--output", out, "--backbone", folder, "--preprocessing", "tf",
                 "--layer", "map", "--layer", "pooled", *IN_PROCESS]) == 0
    manifest = read_manifest(out)
    for r in (r for p in shard_paths(out, manifest) for r in read_records(p, manifest.outputs)):
        image = decode_image(open(r.key, "rb").read(), spec.preprocessing).astype(np.float32) / 127.5 - 1.0
        expected = model(image[None])
        np.testing.assert_allclose(r.vectors["pooled"], np.asarray(expected["pooled"])[0], atol=1e-5)
        np.testing.assert_allclose(r.vectors["map"], np.asarray(expected["map"]).mean(axis=(1, 2))[0], atol=1e-5)


def test_without_weights_and_without_a_download_the_error_says_what_to_pass(monkeypatch):
    from pipeline.backbones.registry import resolve_backbone
    from pipeline.backbones.spec import BackboneUnavailableError
    from pipeline.backbones.user_models import keras_applications

    def offline(class_name, include_top, weights):
        raise OSError("URL fetch failure: no route to host")

    monkeypatch.setattr(keras_applications, "build_application", offline)
    with pytest.raises(BackboneUnavailableError, match=r"cannot download ImageNet weights for "
                                                        r"keras.applications.MobileNetV2 \(OSError\); pass --weights"):
        resolve_backbone("keras:MobileNetV2")
    with pytest.raises(Exception, match="keras.applications has no model 'MobileNetV9'; did you mean MobileNetV2"):
        resolve_backbone("keras:MobileNetV9")
