"""BatchNorm folded into the convolution before it, for keras: backbones and model files.

Folded and unfolded models must agree within 1e-4 (relative to the layer's largest activation) at every
candidate layer, on real keras.applications architectures and on a small model holding each case that must
stay unfolded. Weights are random; every BatchNorm gets random gamma, beta and moving statistics first (a
fresh one is the identity, which would hide a wrong fold).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

TOLERANCE = 1e-4


def _randomise_batchnorm(model, seed: int) -> None:
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomise_batchnorm(layer, seed + 1)
        elif isinstance(layer, keras.layers.BatchNormalization):
            c = int(layer.moving_mean.shape[0])
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            if layer.center:
                layer.beta.assign(rng.normal(0.0, 0.2, c))
            layer.moving_mean.assign(rng.normal(0.0, 0.2, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))


def _assert_close(got: dict, expected: dict, layers) -> None:
    for layer in layers:
        ref, out = np.asarray(expected[layer]), np.asarray(got[layer])
        assert out.shape == ref.shape, layer
        scale = float(np.abs(ref).max())
        assert scale > 1e-3, layer  # a layer of zeros would compare nothing
        np.testing.assert_allclose(out, ref, rtol=TOLERANCE, atol=TOLERANCE * scale, err_msg=layer)


def _inner(loaded):
    import keras

    (inner,) = [layer for layer in loaded.layers if isinstance(layer, keras.Model)]
    return inner


def _layers_of(model) -> dict:
    import keras

    found = {}
    for layer in model.layers:
        found[layer.name] = type(layer).__name__
        if isinstance(layer, keras.Model):
            found.update(_layers_of(layer))
    return found


def test_resnet50_folds_every_pair_and_keeps_each_candidate_layer_to_1e4():
    import keras

    from pipeline.backbones.user_models import keras_models as km
    from pipeline.backbones.user_models.fold_batchnorm import fold_batchnorm, foldable_pairs

    keras.utils.set_random_seed(4)
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    _randomise_batchnorm(model, 4)
    candidates = km.candidate_layers(model)
    core = keras.Model(model.inputs, {name: model.get_layer(name).output for name in candidates})
    folded = fold_batchnorm(core)

    assert len(foldable_pairs(core)) == 53  # every convolution of ResNet50 is followed by its BatchNorm
    assert not [layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(folded.layers) == len(core.layers) - 53
    assert {name: tuple(folded.get_layer(name).output.shape) for name in candidates} == \
        {name: tuple(model.get_layer(name).output.shape) for name in candidates}
    images = np.random.default_rng(4).normal(0.0, 1.0, (2, 64, 64, 3)).astype(np.float32)
    _assert_close(folded(images, training=False), core(images, training=False), candidates)


def test_a_keras_application_backbone_is_folded_by_default_and_equals_it_unfolded(tmp_path):
    import keras

    from pipeline.backbones.registry import resolve_backbone
    from pipeline.backbones.user_models.keras_applications import build_application

    keras.utils.set_random_seed(5)
    model = build_application("MobileNetV2", include_top=False, weights=None)
    _randomise_batchnorm(model, 5)
    path = str(tmp_path / "MobileNetV2.weights.h5")
    model.save_weights(path)

    folded_spec = resolve_backbone("keras:MobileNetV2", weights=path)
    plain_spec = resolve_backbone("keras:MobileNetV2", weights=path, fold_batchnorm=False)
    assert folded_spec.options["fold_batchnorm"] is True and plain_spec.options["fold_batchnorm"] is False
    assert folded_spec.describe()["batchnorm"].startswith("folded") and \
        plain_spec.describe()["batchnorm"] == "inference mode (moving statistics)"
    assert folded_spec.candidates == plain_spec.candidates
    assert list(folded_spec.layer_shapes.values()) == list(plain_spec.layer_shapes.values())

    # Conv1's own (pre-BatchNorm) output is asked for: that pair stays; bn_Conv1 with it, so unfolded too
    layers = [*folded_spec.candidates, "Conv1", "bn_Conv1", "expanded_conv_depthwise_BN"]
    folded, plain = folded_spec.load(layers), plain_spec.load(layers)
    kinds = _layers_of(_inner(folded))
    assert kinds["Conv1"] == "Conv2D" and kinds["bn_Conv1"] == "BatchNormalization"
    assert kinds["expanded_conv_depthwise_BN"] == "DepthwiseConv2D"  # folded, under the BatchNorm's name
    assert sum(kind == "BatchNormalization" for kind in kinds.values()) == 1  # only bn_Conv1 is left
    assert "BatchNormalization" in _layers_of(_inner(plain)).values()

    crop = folded_spec.preprocessing.crop
    images = np.random.default_rng(5).integers(0, 256, (2, crop, crop, 3), dtype=np.uint8)
    _assert_close(folded(images), plain(images), layers)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A .keras file with each case: a conv without bias, a depthwise conv, a separable conv, a BatchNorm after
    no conv, a conv whose output feeds another layer too, a conv with an activation, a BatchNorm without gamma
    and beta, and a nested functional block."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(6)
    block_in = keras.Input((13, 13, 24))
    block = keras.Model(block_in, L.BatchNormalization(name="inner_bn")(L.Conv2D(8, 1, name="inner_conv")(block_in)),
                        name="block")
    inputs = keras.Input((32, 32, 3))
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv_nobias")(inputs)
    x = L.BatchNormalization(name="bn_nobias")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.BatchNormalization(name="bn_dw")(L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x))
    x = L.ReLU(name="relu_dw")(x)
    x = L.BatchNormalization(name="bn_alone")(x)                     # after a ReLU: nothing to fold into
    shared = L.Conv2D(16, 1, name="conv_shared")(x)
    x = L.Add(name="add")([L.BatchNormalization(name="bn_shared")(shared), shared])  # conv output used twice
    x = L.BatchNormalization(name="bn_sep")(L.SeparableConv2D(16, 3, padding="same", name="sep")(x))
    x = L.BatchNormalization(name="bn_after_relu")(L.Conv2D(16, 3, strides=2, activation="relu", name="conv_relu")(x))
    x = L.BatchNormalization(center=False, scale=False, name="bn_last")(L.Conv2D(24, 3, name="conv_last")(x))
    x = L.ReLU(name="relu_out")(block(x))  # a nested model is no layer to extract (its .output is its own)
    model = keras.Model(inputs, L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="pool")(x)))
    _randomise_batchnorm(model, 6)
    path = str(tmp_path_factory.mktemp("model") / "cases.keras")
    model.save(path)
    return path


def test_a_model_file_folds_only_what_nothing_else_needs_and_keeps_every_layer_to_1e4(model_file):
    from pipeline.backbones.registry import resolve_backbone
    from pipeline.backbones.user_models import keras_models as km
    from pipeline.backbones.user_models.fold_batchnorm import foldable_pairs

    folded_spec = resolve_backbone(model_file)
    plain_spec = resolve_backbone(model_file, fold_batchnorm=False)
    assert "bn_sep" in folded_spec.candidates  # a candidate layer that is a BatchNorm folded away
    original = km.load_model_file(model_file)
    assert [(p.conv.name, p.bn.name) for p in foldable_pairs(original)] == [
        ("conv_nobias", "bn_nobias"), ("dw", "bn_dw"), ("sep", "bn_sep"), ("conv_last", "bn_last")]

    layers = list(folded_spec.candidates)
    folded, plain = folded_spec.load(layers), plain_spec.load(layers)
    kinds = _layers_of(_inner(folded))
    assert {name for name, kind in kinds.items() if kind == "BatchNormalization"} == \
        {"bn_alone", "bn_shared", "bn_after_relu"}
    assert (kinds["bn_nobias"], kinds["bn_dw"], kinds["bn_sep"], kinds["bn_last"], kinds["inner_bn"]) == \
        ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2D", "Conv2D")
    assert not {"conv_nobias", "dw", "sep", "conv_last", "inner_conv"} & set(kinds)
    assert {"conv_shared", "conv_relu"} <= set(kinds)
    images = np.random.default_rng(6).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _assert_close(folded(images), plain(images), layers)

    # every layer of the table, one at a time: a requested convolution keeps its own output (its pair stays)
    every = [layer.name for layer in original.layers
             if layer.name in folded_spec.layer_shapes and type(layer).__name__ not in ("InputLayer", "Functional")]
    expected = plain_spec.load(every)(images)
    for name in ("conv_nobias", "bn_nobias", "dw", "bn_dw", "bn_alone", "conv_last", "bn_last", "relu_out"):
        _assert_close(folded_spec.load([name])(images), expected, [name])
    assert _layers_of(_inner(folded_spec.load(["conv_last"])))["conv_last"] == "Conv2D"


def test_no_fold_batchnorm_reaches_the_spec_is_recorded_and_does_not_block_resume(model_file, tmp_path,
                                                                                   sample_photos, capsys):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.cli import main
    from pipeline.extract.launch import configure, prepare_output
    from pipeline.extract.settings import check_resumable

    (tmp_path / "a.jpg").write_bytes(sample_photos["china.jpg"])
    flags = ["--input", str(tmp_path / "a.jpg"), "--output", str(tmp_path / "out"), "--backbone", model_file,
             "--runner=FnApiRunner"]
    folded = configure(PipelineOptions(flags))
    plain = configure(PipelineOptions([*flags, "--no-fold-batchnorm"]))
    assert folded.backbone.options["fold_batchnorm"] is True and plain.backbone.options["fold_batchnorm"] is False
    prepare_output(plain)
    recorded = json.loads((tmp_path / "out" / "run.json").read_text())
    assert recorded["fold_batchnorm"] is False
    check_resumable(configure(PipelineOptions([*flags, "--resume"])))  # folded now: outputs agree to 1e-4

    capsys.readouterr()
    assert main(["extract", "--input", str(tmp_path / "a.jpg"), "--output", str(tmp_path / "o2"),
                 "--no-fold-batchnorm", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "featurebeam extract: error: backbone mobilenet_v2 is built with BatchNorm folded (it has no BatchNorm "
        "layer to keep); --no-fold-batchnorm is for keras: backbones and .keras/.h5 model files")


@pytest.mark.slow
def test_bench_passes_the_fold_setting_to_the_limit_and_to_extract(model_file, capsys):
    from pipeline.cli import main

    assert main(["bench", "--backbone", model_file, "--no-fold-batchnorm", "--count", "5", "--batch-size", "2",
                 "--limit-seconds", "0.3", "--json", "--runner=FnApiRunner"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fold_batchnorm"] is False and "--no-fold-batchnorm" in result["extract_flags"]
    assert "--runner=FnApiRunner" in result["extract_flags"]  # Beam's flags reach the extract runs
    assert result["images"] == 5 and result["limit_images_per_s"] > 0
