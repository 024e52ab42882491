"""featurebeam finetune without training: its config refuses what cannot run, the backbone splits into a bottom
and a top that compute the backbone exactly, and the bottom's cache reads back what was written."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.errors import ConfigError, UsageError
from pipeline.finetune.options import FinetuneConfig

GOOD = FinetuneConfig(inputs=("/data/train",), output="/models/ft")

BAD = {
    "no-input": (dict(inputs=()), "--input is required"),
    "unfreeze-0": (dict(unfreeze=0), "--unfreeze must be at least 1"),
    "epochs-0": (dict(epochs=0), "--epochs must be at least 1"),
    "learning-rate": (dict(learning_rate=2.0), "--learning-rate must be between 0 and 1"),
    "validation-fraction": (dict(validation_fraction=1.0), "--validation-fraction must be between 0 and 1"),
    "batch-size": (dict(batch_size=0), "--batch-size must be at least 1"),
    "dropout": (dict(dropout=1.0), "--dropout must be at least 0 and below 1"),
    "augment": (dict(augment="rotate"), "--augment 'rotate'"),
    "text-input": (dict(input_format="text"), "fine-tuning reads images"),
    "remote-cache": (dict(cache_dir="gs://b/cache"), "must be a local folder"),
}


@pytest.mark.parametrize("change, message", BAD.values(), ids=BAD.keys())
def test_a_bad_config_is_one_clear_error_before_anything_is_read(change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        dataclasses.replace(GOOD, **change).validate()


def test_a_good_config_validates_and_picks_the_default_blocks_per_backbone():
    assert GOOD.validate() is GOOD
    assert GOOD.unfreeze_for("mobilenet_v2") == 3
    assert GOOD.unfreeze_for("keras:ResNet50") == 2
    assert dataclasses.replace(GOOD, unfreeze=5).unfreeze_for("mobilenet_v2") == 5


def test_the_commands_defaults_are_the_configs():
    from pipeline.finetune.command import config_from_args, finetune_parser

    args = finetune_parser().parse_args(["--input", "/data/train", "--output", "/models/ft"])
    assert config_from_args(args) == GOOD  # the recipe's defaults live in one place: options
    args = finetune_parser().parse_args(["--input", "/data/train", "--output", "/models/ft", "--dropout", "0"])
    assert config_from_args(args).dropout == 0.0


def test_the_command_says_what_is_wrong_in_one_line(tmp_path):
    from pipeline.finetune.command import cmd_finetune

    with pytest.raises(UsageError, match="--output"):
        cmd_finetune(["--input", str(tmp_path)])
    with pytest.raises(ConfigError, match="does not exist"):
        cmd_finetune(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "model")])
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "x.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="--unfreeze 19: mobilenet_v2 has 19 blocks"):
        cmd_finetune(["--input", str(tmp_path / "images"), "--output", str(tmp_path / "model"), "--unfreeze", "19"])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not empty; pass --overwrite"):
        cmd_finetune(["--input", str(tmp_path / "images"), "--output", str(tmp_path / "model")])


def test_mobilenet_splits_at_a_block_into_a_bottom_and_top_that_compute_the_backbone(mobilenet_spec, sample_photos):
    from pipeline.finetune.model import backbone_blocks, finetuned_backbone, split_backbone
    from transforms.decode.images import decode_image

    blocks = backbone_blocks(mobilenet_spec, "features.18")
    assert blocks == [f"features.{i}" for i in range(19)]
    split = split_backbone(mobilenet_spec, "features.18", 3)
    assert (split.cut, split.unfrozen, split.cut_shape) == ("features.15", ("features.16", "features.17",
                                                                           "features.18"), (7, 7, 160))
    assert len(split.top.trainable_weights) == 14 and not split.bottom.trainable_weights  # 7 convs: kernel, bias
    images = np.stack([decode_image(b, mobilenet_spec.preprocessing) for b in sample_photos.values()])
    whole = mobilenet_spec.load(["features.18"])(images)["features.18"].numpy()
    parts = split.top(split.bottom(split.normalize(images))).numpy()
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    np.testing.assert_allclose(finetuned_backbone(split)(images)["features.18"].numpy(), whole, atol=1e-5)


def test_a_top_reaching_down_to_a_strided_depthwise_convolution_gets_its_gradient(mobilenet_spec):
    """MobileNetV2's strided depthwise convolutions run as grouped convolutions, which CPU TensorFlow cannot
    differentiate by itself (``padded_depthwise``): a top of five blocks trains features.14's too."""
    import tensorflow as tf

    from pipeline.finetune.model import split_backbone

    split = split_backbone(mobilenet_spec, "features.18", 5)
    layer = split.top.get_layer("features.14.depthwise")
    assert type(layer).__name__ == "PaddedDepthwiseConv2D" and layer.trainable
    x = tf.random.stateless_uniform((2, *split.cut_shape), seed=(1, 2))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(split.top(x, training=False) ** 2)
    gradient = np.asarray(tape.gradient(loss, layer.kernel))
    assert np.isfinite(gradient).all() and np.abs(gradient).max() > 0


def test_the_cache_on_disk_reads_back_what_the_bottom_gave(tmp_path):
    from pipeline.finetune.cache import build_cache

    rng = np.random.default_rng(0)
    images = [(f"k{i}", f"l{i % 3}", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for i in range(37)]

    def bottom(x):  # a stand-in for the frozen bottom: any deterministic function of the batch
        return x.astype(np.float32).reshape(len(x), 4, 4, 12) / 7.0

    expected = bottom(np.stack([im for _, _, im in images]))
    in_memory = build_cache(iter(images), bottom, (4, 4, 12), str(tmp_path / "a"), "train", batch_size=5)
    on_disk = build_cache(iter(images), bottom, (4, 4, 12), str(tmp_path / "b"), "train", batch_size=5, memory_mb=0)
    assert not in_memory.on_disk and on_disk.on_disk and isinstance(on_disk.x, np.memmap)
    for cached in (in_memory, on_disk):
        assert list(cached.keys) == [k for k, _, _ in images] and list(cached.labels) == [lab for _, lab, _ in images]
        np.testing.assert_array_equal(np.asarray(cached.x), expected)
    kept = build_cache(iter(images), bottom, (4, 4, 12), str(tmp_path / "c"), "train", batch_size=5, keep_images=True,
                       crop=8)
    assert kept.x is None
    np.testing.assert_array_equal(kept.images, np.stack([im for _, _, im in images]))
