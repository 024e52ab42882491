"""The embedded MobileNetV2 reproduces torchvision's own outputs (reference outputs in tests/data, see REFERENCE.md)."""

from __future__ import annotations

import numpy as np
import pytest

from transforms.decode.images import decode_image


@pytest.fixture(scope="module", params=[True, False], ids=["grouped", "pad-then-depthwise"])
def core(mobilenet_spec, request):
    """The port without the uint8 front end: normalised float input, as the reference was fed; its strided
    depthwise convolutions in either form (``padded_depthwise``)."""
    from pipeline.backbones.ports.mobilenet_v2 import build_mobilenet_v2
    from pipeline.backbones.ports.torch_weights import read_legacy_state_dict

    weights = read_legacy_state_dict(mobilenet_spec.weights_path)
    return build_mobilenet_v2(weights, outputs=("features.18", "classifier"), grouped=request.param)


def _top5(logits):
    return np.argsort(-logits, axis=1)[:, :5]


def test_logits_and_pooled_features_match_torchvision(core, reference):
    out = core(reference["inputs_nhwc"], training=False)
    logits = out["classifier"].numpy()
    features = out["features.18"].numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(logits, reference["mobilenet_v2_logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(features, reference["mobilenet_v2_features"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(_top5(logits), _top5(reference["mobilenet_v2_logits"]))
    names = reference["imagenet_class_names"][_top5(logits)[0]].tolist()
    assert names == ["palace", "monastery", "stupa", "bell cote", "boathouse"]


def test_batchnorm_exists_only_folded(core):
    kinds = {type(layer).__name__ for layer in core.layers}
    assert "BatchNormalization" not in kinds
    assert {"Conv2D", "DepthwiseConv2D", "PaddedDepthwiseConv2D", "ReLU", "Add"} <= kinds
    assert not core.trainable_weights


def test_raw_photos_through_project_decoding_match_the_reference(mobilenet, mobilenet_spec, sample_photos,
                                                                   reference):
    images = np.stack([decode_image(data, mobilenet_spec.preprocessing) for data in sample_photos.values()])
    assert images.dtype == np.uint8 and images.shape == (2, 224, 224, 3)
    out = mobilenet(images)
    ref = reference["mobilenet_v2_features"]
    cosine = np.sum(out["features.18"] * ref, axis=1) / (
        np.linalg.norm(out["features.18"], axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_array_equal(_top5(out["classifier"]), _top5(reference["mobilenet_v2_logits"]))


def test_decoded_pixels_equal_torchvision_eval_transform(mobilenet_spec, sample_photos, reference):
    prep = mobilenet_spec.preprocessing
    for i, data in enumerate(sample_photos.values()):
        x = (decode_image(data, prep) * prep.scale - np.array(prep.mean)) / np.array(prep.std)
        np.testing.assert_allclose(x, reference["inputs_nhwc"][i], atol=1e-5, rtol=0)


def test_compiled_function_never_retraces_across_batch_sizes(mobilenet, mobilenet_spec, sample_photos):
    image = decode_image(sample_photos["china.jpg"], mobilenet_spec.preprocessing)
    single = mobilenet(image[None])["features.18"][0]
    for n in (3, 1, 5):
        batch = mobilenet(np.stack([image] * n))["features.18"]
        np.testing.assert_allclose(batch, np.tile(single, (n, 1)), atol=1e-5)
    assert mobilenet.fn.experimental_get_tracing_count() == 1


def test_weights_are_checked_against_the_launch_hash(mobilenet_spec):
    import dataclasses

    tampered = dataclasses.replace(mobilenet_spec, weights_sha256="0" * 64)
    with pytest.raises(RuntimeError, match="changed since launch"):
        tampered.load(["features.18"])
