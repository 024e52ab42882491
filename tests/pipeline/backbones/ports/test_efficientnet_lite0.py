"""The embedded EfficientNet-Lite0 reproduces the original port's outputs (reference outputs in tests/data, see
REFERENCE.md), from its own inputs and from raw photos through the project's decoding and the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.decode.images import decode_image


@pytest.fixture(scope="module")
def spec():
    from pipeline.backbones.registry import resolve_backbone

    return resolve_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def core(spec):
    from pipeline.backbones.ports.efficientnet_lite0 import build_efficientnet_lite0
    from pipeline.backbones.ports.torch_weights import read_legacy_state_dict

    return build_efficientnet_lite0(read_legacy_state_dict(spec.weights_path), outputs=("head", "classifier"))


@pytest.fixture(scope="module")
def lite0(spec):
    from transforms.embed.backbone import BackboneHandler
    from transforms.embed.settings import EmbedSettings
    from transforms.schema.fields import OutputSpec

    outputs = (OutputSpec("head", "head", "avg", 1280), OutputSpec("classifier", "classifier", "none", 1000))
    return BackboneHandler(spec, EmbedSettings(outputs, batch_size=4)).load_model()


def _top5(logits):
    return np.argsort(-logits, axis=1)[:, :5]


def test_logits_and_pooled_features_match_the_original(core, reference):
    out = core(reference["efficientnet_lite0_inputs_nhwc"], training=False)
    logits, features = out["classifier"].numpy(), out["head"].numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(logits, reference["efficientnet_lite0_logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(features, reference["efficientnet_lite0_features"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(_top5(logits), _top5(reference["efficientnet_lite0_logits"]))
    assert reference["imagenet_class_names"][_top5(logits)[0]].tolist()[:2] == ["palace", "bell cote"]
    assert {type(layer).__name__ for layer in core.layers}.isdisjoint({"BatchNormalization"})


def test_preprocessing_is_pixel_minus_127_over_128(spec, sample_photos, reference):
    prep = spec.preprocessing
    for i, data in enumerate(sample_photos.values()):
        x = (decode_image(data, prep) * prep.scale - np.array(prep.mean)) / np.array(prep.std)
        np.testing.assert_allclose(x, reference["efficientnet_lite0_inputs_nhwc"][i], atol=1e-5, rtol=0)


def test_raw_photos_through_the_worker_model_match_the_original(lite0, spec, sample_photos, reference):
    images = np.stack([decode_image(data, spec.preprocessing) for data in sample_photos.values()])
    out = lite0(images)
    np.testing.assert_allclose(out["head"], reference["efficientnet_lite0_features"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["classifier"], reference["efficientnet_lite0_logits"], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_raw_photos_through_the_pipeline_match_the_original(tmp_path, sample_photos, reference):
    from pipeline.cli import main
    from transforms.schema.example import read_records
    from transforms.schema.manifest import read_manifest, shard_paths

    for name, data in sample_photos.items():
        (tmp_path / name).write_bytes(data)
    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(tmp_path / "*.jpg"), "--output", out, "--backbone", "efficientnet_lite0",
                 "--layer", "head", "--layer", "classifier", "--quiet"]) == 0
    manifest = read_manifest(out)
    records = {r.key.rsplit("/", 1)[1]: r for p in shard_paths(out, manifest)
               for r in read_records(p, manifest.outputs)}
    for i, name in enumerate(sample_photos):
        np.testing.assert_allclose(records[name].vectors["head"], reference["efficientnet_lite0_features"][i],
                                   atol=1e-4, rtol=0)
        np.testing.assert_allclose(records[name].vectors["classifier"], reference["efficientnet_lite0_logits"][i],
                                   atol=1e-4, rtol=0)
    assert manifest.backbone["name"] == "efficientnet_lite0"
