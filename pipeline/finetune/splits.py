"""The rows fine-tuning learns and is scored on: the classes, the train/validation split of the training set (by
the seeded hash of each key relative to its input root, as ``featurebeam train`` splits) and the test rows whose
label the model knows."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.finetune.cache import CachedSet
from pipeline.train.feature_sets import FeatureSetError
from pipeline.train.in_memory import label_index
from pipeline.train.splits import VALIDATION, SplitRule

__all__ = ["Rows", "TrainingData", "choose_classes", "train_and_validation", "known_test_rows"]


@dataclass(frozen=True)
class Rows:
    """Rows ``index`` of a cached set and their class indices ``y``."""

    cached: CachedSet
    index: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class TrainingData:
    """The train and validation rows, and the frozen bottom that turns kept images into the cut's activations."""

    train: Rows
    validation: Rows
    bottom: Callable


def choose_classes(labels: Sequence[str], first_input: str,
                   head_from: tuple[str, Sequence[str]] | None = None) -> list[str]:
    """The sorted labels of the training set; starting from a head (``head_from``: its MODELDIR and classes), that
    head's classes in its order, which must be the same set."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise FeatureSetError(f"{first_input}: fine-tuning needs at least two labels, found {classes}")
    if head_from is None:
        return classes
    model_dir, head_classes = head_from
    if sorted(head_classes) != classes:
        raise ConfigError(f"--head-from {model_dir} classifies {', '.join(head_classes)}; the inputs hold "
                          f"{', '.join(classes)}")
    return list(head_classes)


def train_and_validation(cached: CachedSet, classes: Sequence[str], rule: SplitRule) -> tuple[Rows, Rows]:
    """The training set split by ``rule`` (the hash of each key relative to its input root, as ``featurebeam
    train`` splits); both parts must hold at least one image."""
    y_all = label_index(cached.labels, classes)
    is_val = rule.split_of(cached.keys) == VALIDATION
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise FeatureSetError(f"{len(cached)} labelled images are too few to split into train and validation")
    return Rows(cached, train_idx, y_all[train_idx]), Rows(cached, val_idx, y_all[val_idx])


def known_test_rows(cached: CachedSet, classes: Sequence[str]) -> tuple[Rows, dict]:
    """Rows of a test set whose label the model knows, and what was left out (reported, not scored)."""
    y = label_index(cached.labels, classes)
    unseen = collections.Counter(label for label, i in zip(cached.labels, y, strict=True) if i < 0)
    known = np.flatnonzero(y >= 0)
    return Rows(cached, known, y[known]), {"unseen_labels": dict(sorted(unseen.items()))}
