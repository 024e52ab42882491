"""What a rerun over the same inputs reproduces: keys, labels, splits, failures and counts exactly; each vector within
float32 round-off of the batch it met (``tests/vectors.py``: ``BATCH_ROUND_OFF`` of its largest element), on any
CPU, whatever else shared its batch."""

from __future__ import annotations

import numpy as np
import pytest

from tests.packing import read_feature_set, write_manifest
from tests.vectors import BATCH_ROUND_OFF, assert_same_vector, batch_difference
from transforms.decode.images import decode_image


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_a_photo_gets_its_vector_within_round_off_whatever_batch_it_meets(name, sample_photos):
    from pipeline.backbones.registry import resolve_backbone
    from transforms.embed.backbone import BackboneHandler
    from transforms.embed.settings import EmbedSettings
    from transforms.schema.fields import OutputSpec

    spec = resolve_backbone(name)
    output = OutputSpec(spec.default_layer, spec.default_layer, "avg", 1280)
    model = BackboneHandler(spec, EmbedSettings((output,), batch_size=16)).load_model()
    china, flower = (decode_image(sample_photos[f], spec.preprocessing) for f in ("china.jpg", "flower.jpg"))
    noise = list(np.random.default_rng(0).integers(0, 256, (15, *china.shape), dtype=np.uint8))

    def vector_of_china(batch):
        return model(np.stack(batch))[output.name][next(i for i, x in enumerate(batch) if x is china)]

    alone = vector_of_china([china])
    batches = {"first of 8": [china, *noise[:7]], "last of 4": [*noise[:3], china], "last of 16": [*noise, china],
               "beside the other photo": [flower, china], "sixth of 10": [*noise[:5], china, *noise[5:9]]}
    for what, batch in batches.items():
        assert_same_vector(vector_of_china(batch), alone, f"{name}, china.jpg {what}")
    # the bound is far below what tells two inputs apart
    assert batch_difference(vector_of_china([flower, china]), vector_of_china([china, flower])) < BATCH_ROUND_OFF
    assert batch_difference(model(flower[None])[output.name][0], alone) > 1000 * BATCH_ROUND_OFF


@pytest.mark.slow
def test_a_rerun_in_other_batches_gives_the_same_keys_labels_splits_and_counts(tmp_path, image_folder):
    """The image folder through a manifest with a split column, twice, in batches of 1 and of 3 (every image meets
    other neighbours): everything but the vectors equal exactly, the vectors within the bound."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.extract.job import run_extraction
    from pipeline.extract.launch import configure
    from pipeline.train.splits import SplitRule

    manifest_path = tmp_path / "photos.csv"
    write_manifest(image_folder, str(manifest_path), lambda rel: str(image_folder / rel),
                   split_of=lambda rel: "validation" if "gray" in rel or "small" in rel else "train")
    runs = {}
    for batch_size in (1, 3):
        out = str(tmp_path / f"batch-{batch_size}")
        options = PipelineOptions(["--runner=FnApiRunner", "--input", str(manifest_path), "--allow-outside-paths",
                                   "--output", out, "--batch-size", str(batch_size), "--records-per-shard", "4"])
        run_extraction(configure(options), options)
        runs[batch_size] = read_feature_set(out)

    (one, records_one), (three, records_three) = runs[1], runs[3]
    assert one.counts == three.counts == {"inputs": 10, "embedded": 8, "failed": 2, "duplicates": 0}
    assert one.labels == three.labels == ("china", "flower")
    assert one.failures_by_reason == three.failures_by_reason and sum(one.failures_by_reason.values()) == 2
    by_key = {r.key: r for r in records_three}
    keys = sorted(r.key for r in records_one)
    assert keys == sorted(by_key) and len(keys) == 8
    for r in records_one:
        assert (r.label, r.split) == (by_key[r.key].label, by_key[r.key].split), r.key
        assert_same_vector(r.vectors["features.18"], by_key[r.key].vectors["features.18"], r.key)
    assert sorted(r.split for r in records_one) == ["train"] * 6 + ["validation"] * 2
    rule = SplitRule(0.2, 0, (str(image_folder),))
    np.testing.assert_array_equal(rule.split_of(keys), rule.split_of(sorted(by_key)))


def test_the_bound_is_relative_to_the_vectors_largest_element():
    v = np.array([3.0, -1.0, 0.0])
    assert batch_difference(v + 3e-6, v) == pytest.approx(1e-6)
    assert_same_vector(v + 3e-6, v)
    with pytest.raises(AssertionError, match="v: differs by 1.00e-05 of its largest element"):
        assert_same_vector(v + 3e-5, v, "v")
    assert batch_difference(np.zeros(3), np.zeros(3)) == 0.0


def test_the_stand_in_backbones_vectors_are_exact_in_any_batch():
    """The stand-in backbone of the pipeline tests (``tests/fakes.py``: an image's 32x32 mean colour) sums integers
    below 2**24 and divides by a power of two: exact in float32 whatever the batch, which is why the pipeline tests
    may compare its vectors bitwise across runs (a real backbone's only within ``BATCH_ROUND_OFF``)."""
    import tensorflow as tf

    from transforms.embed.pooling import pool

    images = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3)).astype(np.float32)
    exact = images.astype(np.float64).mean(axis=(1, 2)).astype(np.float32)
    np.testing.assert_array_equal(pool(tf.constant(images), "avg").numpy(), exact)
    np.testing.assert_array_equal(pool(tf.constant(images[::-1]), "avg").numpy(), exact[::-1])
    np.testing.assert_array_equal(pool(tf.constant(images[3:4]), "avg").numpy(), exact[3:4])
