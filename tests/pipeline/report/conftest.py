"""The sets the report's tests build pages of: the digits demo with a trained head, and a small set of blobs."""

from __future__ import annotations

import pytest

from tests.featuresets import blobs, write_feature_set


@pytest.fixture(scope="package")
def digits(tmp_path_factory, digits_features):
    """The digits demo set (train and held-out test PNGs in class folders, their real MobileNetV2 feature sets)
    and a linear head trained on it, laid out as ``digits/``, ``features-train``, ``features-test``, ``model``."""
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training

    root = tmp_path_factory.mktemp("digits")
    for name, target in (("digits", "images"), ("features-train", "train"), ("features-test", "test")):
        (root / name).symlink_to(digits_features / target, target_is_directory=True)
    run_training(TrainConfig(features=(str(root / "features-train"),), test_features=(str(root / "features-test"),),
                             output=str(root / "model"), heads=("linear",)), log=lambda message: None)
    return root


@pytest.fixture
def small_set(tmp_path):
    keys, labels, x = blobs(300, ["cat", "dog", "fox"], dim=8, seed=5)
    labels[7] = None
    write_feature_set(str(tmp_path / "fs"), keys, labels, x, shard_sizes=[100, 120, 80])
    return str(tmp_path / "fs"), labels, x, keys
