"""KerasHub presets as backbones (``--backbone hub:PRESET``), against KerasHub itself.

The presets are tiny and randomly initialised, made with KerasHub's own ``save_to_preset`` (no download is
possible offline): what is compared is everything featurebeam adds around them, the preprocessing that the
preset's image converter defines, the layers, the staging. The reference is always KerasHub's own code: its image
converter (geometry, scale, offset) and its model called on the same files.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from pipeline.cli import main
from tests.hub_presets import IMAGE_PRESETS, SIZE, keras_hub, pixels_of
from transforms.decode.images import decode_image
from transforms.schema.example import read_records
from transforms.schema.manifest import read_manifest, shard_paths

IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]


def _keras_hub_vectors(directory: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """KerasHub's own preprocessing and model on one image: the vectors a preset's layers should hold."""
    converter = keras_hub.layers.ImageConverter.from_preset(directory)
    backbone = keras_hub.models.Backbone.from_preset(directory)
    images = converter(pixels[None])
    if isinstance(backbone, keras_hub.models.CLIPBackbone):
        sequence = backbone.vision_encoder({"images": images})
        vectors = {"image_embedding": backbone.get_vision_embeddings(images),
                   "pooled": backbone.vision_pooler(sequence), "patch_tokens": np.mean(sequence[:, 1:], axis=1)}
    else:
        sequence = backbone({"images": images}) if isinstance(backbone.input, dict) else backbone(images)
        first_patch = 1 + getattr(backbone, "num_register_tokens", 0)
        vectors = {"cls_token": sequence[:, 0], "patch_tokens": np.mean(sequence[:, first_patch:], axis=1)}
    return {name: np.asarray(v)[0] for name, v in vectors.items()}


@pytest.mark.parametrize("name", IMAGE_PRESETS)
def test_the_geometry_is_the_preset_converters_own_rounded_to_uint8(name, presets, pictures):
    """Every picture, square or not, larger or smaller: decoded by featurebeam, it equals KerasHub's converter's
    resize (Keras' ``Resizing``, crop to the aspect ratio) rounded to uint8, and the in-graph arithmetic equals
    the converter's scale and offset."""
    import tensorflow as tf

    from pipeline.backbones.registry import resolve_backbone

    spec = resolve_backbone(f"hub:{presets[name]}")
    converter = keras_hub.layers.ImageConverter.from_preset(presets[name])
    for path in sorted(pictures.iterdir()):
        ours = decode_image(path.read_bytes(), spec.preprocessing)
        theirs = np.asarray(converter.resizing(pixels_of(path)[None]))[0]
        np.testing.assert_array_equal(ours, np.clip(np.floor(theirs + 0.5), 0, 255).astype(np.uint8),
                                      err_msg=path.name)
        normalised = spec.preprocessing.normalize(tf.constant(ours[None])).numpy()
        np.testing.assert_allclose(normalised, np.asarray(converter(ours[None].astype(np.float32))), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE_PRESETS)
def test_features_through_the_pipeline_equal_keras_hubs_model_on_its_own_preprocessing(name, presets, pictures,
                                                                                        tmp_path):
    from pipeline.backbones.registry import resolve_backbone

    spec = resolve_backbone(f"hub:{presets[name]}")
    layers = [layer for layer in spec.layer_shapes if not layer.startswith("block_")]
    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(pictures), "--output", out, "--backbone", f"hub:{presets[name]}",
                 *[arg for layer in layers for arg in ("--layer", layer)], *IN_PROCESS]) == 0
    manifest = read_manifest(out)
    assert manifest.counts["embedded"] == len(os.listdir(pictures)) and manifest.backbone["options"]["kind"] == "hub"
    assert manifest.backbone["preprocessing"]["fit"].startswith("centre crop to a square")
    records = [r for p in shard_paths(out, manifest) for r in read_records(p, manifest.outputs)]
    exact = [r for r in records if r.key.endswith(".png")]
    assert len(exact) == 4
    for record in exact:  # the same pixels in: the same vectors out
        expected = _keras_hub_vectors(presets[name], pixels_of(record.key))
        for layer in layers:
            scale = max(1.0, float(np.abs(expected[layer]).max()))
            np.testing.assert_allclose(record.vectors[layer], expected[layer], atol=1e-4 * scale, rtol=0,
                                       err_msg=f"{record.key} {layer}")


def test_layers_are_the_towers_outputs_with_the_projected_or_class_embedding_by_default(presets, capsys):
    from pipeline.backbones.registry import resolve_backbone

    clip = resolve_backbone(f"hub:{presets['clip']}")
    assert clip.default_layer == "image_embedding" and clip.modality == "image"
    assert clip.layer_shapes == {"image_embedding": (12,), "pooled": (16,), "patch_tokens": (16, 16),
                                 "block_1": (17, 16), "block_2": (17, 16)}
    dinov2 = resolve_backbone(f"hub:{presets['dinov2']}")
    assert dinov2.default_layer == "cls_token" and dinov2.layer_shapes["patch_tokens"] == (16, 16)  # registers out
    assert {"block_1", "block_2"} <= set(dinov2.layer_shapes)
    assert main(["layers", "--backbone", f"hub:{presets['clip']}"]) == 0
    listing = capsys.readouterr().out
    assert "default --layer image_embedding" in listing and "block_2" in listing


def test_a_staged_preset_is_one_hashed_artifact_that_workers_check(presets, tmp_path):
    """The preset directory packs to the same tar (and hash) every time; a worker builds from the staged copy
    alone, and refuses one whose bytes changed."""
    import dataclasses

    from pipeline.backbones.registry import resolve_backbone
    from pipeline.backbones.staging import stage_backbone

    origin = str(tmp_path / "vit")
    shutil.copytree(presets["vit"], origin)
    spec = resolve_backbone(f"hub:{origin}")
    assert resolve_backbone(f"hub:{origin}").weights_sha256 == spec.weights_sha256
    staged = stage_backbone(spec, str(tmp_path / "staging"))
    shutil.rmtree(origin)  # from here on, only the staged copy exists
    images = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    vectors = np.asarray(staged.load(["cls_token"])(images)["cls_token"])
    assert vectors.shape == (2, 16) and np.isfinite(vectors).all()
    with pytest.raises(RuntimeError, match="changed since launch"):
        dataclasses.replace(staged, weights_sha256="0" * 64).load(["cls_token"])


def test_a_preset_name_is_downloaded_by_keras_hub_at_launch_and_packed_from_its_cache(presets, tmp_path,
                                                                                     monkeypatch):
    """``hub:clip_vit_base_patch32`` goes through KerasHub's own preset loading (its Kaggle handle), with a local
    directory standing in for Kaggle: the launcher resolves it once to the files KerasHub fetched, and two
    launches give the same hash."""
    from keras_hub.src.utils import preset_utils

    from pipeline.backbones.registry import resolve_backbone

    cache = tmp_path / "kaggle-cache"
    fetched = []

    class StandInKaggle:
        @staticmethod
        def model_download(handle, path):
            source = os.path.join(presets["clip"], path)
            if not os.path.isfile(source):
                raise ValueError(f"'{path}' is not present in the model files")
            fetched.append((handle, path))
            target = cache / handle / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
            return str(target)

    monkeypatch.setattr(preset_utils, "kagglehub", StandInKaggle)
    spec = resolve_backbone("hub:clip_vit_base_patch32")
    assert fetched and all(handle.startswith("keras/clip/keras/clip_vit_base_patch32") for handle, _ in fetched)
    assert {path for _, path in fetched} >= {"config.json", "model.weights.h5", "image_converter.json"}
    assert spec.name == "hub:clip_vit_base_patch32" and spec.layer_shapes["image_embedding"] == (12,)
    assert spec.weights_sha256 == resolve_backbone("hub:clip_vit_base_patch32").weights_sha256
    handle = "kaggle://keras/clip/keras/clip_vit_base_patch32/2"  # the handle itself: KerasHub's to fetch too
    assert resolve_backbone(f"hub:{handle}").weights_sha256 == spec.weights_sha256


@pytest.mark.parametrize("handle, message", [
    ("{bert}", "is a BertBackbone; featurebeam embeds images with CLIPBackbone, DINOV2Backbone, ViTBackbone"),
    ("{no_converter}", "has no image_converter.json: its preprocessing is unknown"),
    ("{missing}/nothing-here", "does not exist"),
    ("{empty}", "is not a KerasHub preset directory (it has no config.json)"),
    ("clip_vit_base_patch1024", "no KerasHub preset is named 'clip_vit_base_patch1024'"),
])
def test_what_featurebeam_cannot_embed_is_one_line_at_launch(handle, message, presets, tmp_path, capsys):
    import keras

    folders = {name: str(tmp_path / name) for name in ("bert", "no_converter", "empty", "missing")}
    keras.utils.set_random_seed(0)
    keras_hub.models.BertBackbone(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
                                  intermediate_dim=16, max_sequence_length=8).save_to_preset(folders["bert"])
    shutil.copytree(presets["vit"], folders["no_converter"], ignore=shutil.ignore_patterns("image_converter.json"))
    os.makedirs(folders["empty"])
    backbone = "hub:" + handle.format(**folders)
    capsys.readouterr()
    assert main(["extract", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--backbone", backbone,
                 *IN_PROCESS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("featurebeam extract: error:")


@pytest.mark.slow
def test_a_head_trained_on_preset_features_serves_raw_images_as_backbone_then_head(presets, labelled, tmp_path):
    """extract -> train -> the serving model: on the PNGs' bytes it gives what the preset's model (on
    featurebeam's decoding) and the trained head give computed apart; its geometry is TensorFlow's own resize in
    both places (here bilinear, antialiased, down from 96x72 crops of two photos)."""
    import keras
    import tensorflow as tf

    from pipeline.backbones.registry import resolve_backbone
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training

    features, model_dir = str(tmp_path / "features"), str(tmp_path / "model")
    backbone = f"hub:{presets['dinov2']}"
    assert main(["extract", "--input", str(labelled), "--output", features, "--backbone", backbone,
                 *IN_PROCESS]) == 0
    report = run_training(TrainConfig(features=(features,), output=model_dir, heads=("linear",)), log=lambda m: None)
    head = keras.saving.load_model(os.path.join(model_dir, "heads", report["best_head"], "head.keras"),
                                   safe_mode=True)
    serving = tf.saved_model.load(os.path.join(model_dir, "serving"))

    spec = resolve_backbone(backbone)
    raw = [p.read_bytes() for p in sorted(labelled.rglob("*.png"))[::4]]
    images = np.stack([decode_image(data, spec.preprocessing) for data in raw])
    apart = head(spec.load(["cls_token"])(images)["cls_token"]).numpy()
    served = serving.signatures["serving_default"](image_bytes=tf.constant(raw))
    np.testing.assert_allclose(served["probabilities"].numpy(), apart, atol=1e-5)
    assert [b.decode() for b in served["label"].numpy()] == [report["classes"][i] for i in apart.argmax(1)]


def test_finetune_refuses_a_preset_in_one_line(presets, pictures, tmp_path, capsys):
    assert main(["finetune", "--input", str(pictures), "--output", str(tmp_path / "m"), "--backbone",
                 f"hub:{presets['vit']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a KerasHub transformer; finetune cuts convolutional backbones" in err
    assert not (tmp_path / "m").exists()
