"""The rows fine-tuning learns and is scored on: classes from the labels (or a ``--head-from`` head, in its order),
test rows with a label the model never saw reported, not scored."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.finetune.cache import CachedSet
from pipeline.finetune.splits import choose_classes, known_test_rows
from pipeline.train.feature_sets import FeatureSetError


def _cached(labels) -> CachedSet:
    n = len(labels)
    return CachedSet(np.array([f"k{i}" for i in range(n)], dtype=object), np.array(labels, dtype=object),
                     np.arange(n, dtype=np.float32).reshape(n, 1), None, 0.0, False)


def test_the_classes_are_the_sorted_labels_or_the_heads_own_order():
    assert choose_classes(["b", "a", "b", "c"], "/data/train") == ["a", "b", "c"]
    assert choose_classes(["b", "a", "c"], "/data/train", ("/models/probe", ("c", "a", "b"))) == ["c", "a", "b"]


CLASS_ERRORS = {
    "one-label": (["a", "a"], None, FeatureSetError, "/data/train: fine-tuning needs at least two labels"),
    "head-classifies-others": (["a", "b"], ("/models/probe", ("a", "z")), ConfigError,
                               "--head-from /models/probe classifies a, z; the inputs hold a, b"),
}


@pytest.mark.parametrize("labels, head_from, error, message", CLASS_ERRORS.values(), ids=CLASS_ERRORS.keys())
def test_classes_that_cannot_be_trained_are_one_clear_error(labels, head_from, error, message):
    with pytest.raises(error, match=message):
        choose_classes(labels, "/data/train", head_from)


def test_test_rows_keep_known_labels_and_count_the_unseen():
    rows, extras = known_test_rows(_cached(["b", "x", "a", "x", "y", "b"]), ["a", "b"])
    assert rows.index.tolist() == [0, 2, 5]
    assert rows.y.tolist() == [1, 0, 1]
    assert extras == {"unseen_labels": {"x": 2, "y": 1}}
