"""The streamed train path holds nothing per record: it reads each split once, in batches, and scores it by
adding up confusion matrices, with the same split, the same counts and the same metrics as in memory."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.train import evaluation, heads, in_memory, run
from pipeline.train.config import TrainConfig
from pipeline.train.feature_sets import load_table, open_feature_sets, stream_examples
from pipeline.train.splits import TRAIN, VALIDATION, SplitRule
from tests.featuresets import blobs, write_blobs, write_feature_set

QUIET = {"log": lambda message: None}
CLASSES = ["ant", "bee", "cow", "doe"]


def _predictions(n: int, n_classes: int, seed: int, never_predicted: int | None = None, absent: int | None = None):
    """(true class indices, probabilities): noisy predictions, optionally without one class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    if absent is not None:
        y[y == absent] = (absent + 1) % n_classes
    probabilities = rng.random((n, n_classes)) + 2.0 * np.eye(n_classes)[y] * (rng.random(n) < 0.6)[:, None]
    if never_predicted is not None:
        probabilities[:, never_predicted] = -1.0
    return y, probabilities


CASES = {
    "every class": {},
    "a class never predicted": {"never_predicted": 2},
    "a class with no records": {"absent": 1},
    "one class neither true nor predicted": {"absent": 3, "never_predicted": 3},
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_metrics_from_the_confusion_matrix_equal_scikit_learns(case):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y, probabilities = _predictions(500, len(CLASSES), seed=4, **case)
    predicted = probabilities.argmax(axis=1)
    labels = np.arange(len(CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
    expected = {
        "examples": 500,
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(CLASSES, precision, recall, f1, support, strict=True)},
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
    }
    assert evaluation.split_metrics(y, probabilities, CLASSES) == expected  # exactly, not approximately


class OnePass:
    """Batches that can be read once and have no length: what a streamed split offers."""

    def __init__(self, batches):
        self._batches, self._read = batches, False

    def __iter__(self):
        assert not self._read, "the split was read twice"
        self._read = True
        return iter(self._batches)


def test_a_split_scored_batch_by_batch_in_one_pass_equals_the_split_scored_whole():
    y, probabilities = _predictions(1000, len(CLASSES), seed=9)
    x = np.arange(len(y))  # the "features" are row numbers; the model looks their predictions up
    batches = OnePass([(x[i:i + 96], y[i:i + 96]) for i in range(0, len(y), 96)])
    matrix = evaluation.confusion_of_batches(batches, lambda rows: probabilities[rows], len(CLASSES))
    assert evaluation.confusion_metrics(matrix, CLASSES) == evaluation.split_metrics(y, probabilities, CLASSES)
    assert evaluation.confusion_metrics(np.zeros((4, 4), np.int64), CLASSES) == {"examples": 0}


def test_balanced_weights_from_streamed_counts_equal_those_from_the_labels():
    y = np.array([0] * 70 + [1] * 25 + [3] * 5)
    counts = np.bincount(y, minlength=4)
    np.testing.assert_array_equal(heads.balanced_weights(counts), heads.class_weights(y, 4))
    assert heads.balanced_weights(counts)[2] == 0.0


def test_write_blobs_writes_the_records_blobs_describes(tmp_path):
    keys, labels, x = blobs(250, CLASSES, dim=12, seed=6, spread=0.8)
    write_feature_set(str(tmp_path / "whole"), keys, labels, x, shard_sizes=[100, 0, 150])
    write_blobs(str(tmp_path / "chunked"), 250, CLASSES, dim=12, seed=6, spread=0.8, shard_sizes=[100, 0, 150],
                chunk=64)
    whole, chunked = (load_table(open_feature_sets([str(tmp_path / name)])) for name in ("whole", "chunked"))
    assert list(chunked.keys) == list(whole.keys) == keys and list(chunked.labels) == labels
    np.testing.assert_array_equal(chunked.x, whole.x)


def test_streamed_splits_hold_the_records_the_key_hash_puts_there(tmp_path):
    keys, labels, x = blobs(700, CLASSES, dim=8, seed=2)
    labels[10] = labels[11] = None      # unlabelled: left out
    labels[12] = "elk"                  # not in the vocabulary: left out
    write_feature_set(str(tmp_path), keys, labels, x, shard_sizes=[300, 0, 400])
    sources = open_feature_sets([str(tmp_path)])
    table = load_table(sources)
    y = in_memory.label_index(table.labels, CLASSES)
    rule = SplitRule(0.25)
    is_val = rule.split_of(table.keys) == VALIDATION
    for part, rows in ((TRAIN, ~is_val & (y >= 0)), (VALIDATION, is_val & (y >= 0))):
        batches = list(stream_examples(sources, CLASSES, rule, (part,), batch_size=64))
        assert all(len(b[1]) == 64 for b in batches[:-1])
        got_x, got_y = (np.concatenate([b[i].numpy() for b in batches]) for i in (0, 1))
        order, expected = np.argsort(got_x[:, 0]), np.argsort(table.x[rows][:, 0])  # shards are interleaved
        np.testing.assert_array_equal(got_x[order], table.x[rows][expected])
        np.testing.assert_array_equal(got_y[order], y[rows][expected])


@pytest.mark.slow
def test_streamed_training_reads_no_table_and_scores_as_the_head_does_in_memory(tmp_path, monkeypatch,
                                                                                mobilenet_spec):
    import keras

    backbone = {"name": "mobilenet_v2", "weights_sha256": mobilenet_spec.weights_sha256}
    keys, labels, x = blobs(500, CLASSES, seed=8, spread=18.0)
    write_feature_set(str(tmp_path / "train"), keys, labels, x, shard_sizes=[200, 300], backbone=backbone)
    t_keys, t_labels, t_x = blobs(120, CLASSES, seed=8, spread=18.0)
    t_keys = [k.replace("/8/", "/test/") for k in t_keys]
    t_labels = [label if i % 6 else "elk" for i, label in enumerate(t_labels)]
    write_feature_set(str(tmp_path / "test"), t_keys, t_labels, t_x, backbone=backbone)

    def refuse(*args, **kwargs):
        raise AssertionError("the streamed path loaded every record or every key")

    with monkeypatch.context() as patched:
        for module in ("pipeline.train.in_memory", "pipeline.train.feature_sets"):
            patched.setattr(f"{module}.load_table", refuse)
        patched.setattr("pipeline.train.splits.SplitRule.split_of", refuse)
        config = TrainConfig(features=(str(tmp_path / "train"),), test_features=(str(tmp_path / "test"),),
                             output=str(tmp_path / "m"), memory_limit_mb=0, class_weights=True)
        report = run.run_training(config, **QUIET)
    assert report["mode"] == "streamed"

    head = keras.saving.load_model(str(tmp_path / "m" / "heads" / "linear" / "head.keras"), safe_mode=True)
    table = load_table(open_feature_sets([str(tmp_path / "train")]))
    is_val = SplitRule(0.2).split_of(table.keys) == VALIDATION
    val_y = in_memory.label_index(table.labels[is_val], report["classes"])
    expected = evaluation.split_metrics(val_y, np.asarray(head(table.x[is_val], training=False)), report["classes"])
    splits = report["heads"]["linear"]["splits"]
    assert splits["validation"] == expected
    assert 0.0 < expected["accuracy"] < 1.0  # a matrix with errors in it: equal cell by cell

    test, _ = in_memory.test_split(load_table(open_feature_sets([str(tmp_path / "test")])), report["classes"])
    streamed_test = {k: v for k, v in splits["test"].items() if k != "unseen_labels"}
    assert streamed_test == evaluation.split_metrics(test.y, np.asarray(head(test.x, training=False)),
                                                     report["classes"])
    assert streamed_test["examples"] == 100 and list(splits["test"]["unseen_labels"]) == ["elk"]
