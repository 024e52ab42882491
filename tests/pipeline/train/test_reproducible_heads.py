"""The same data gives the same head wherever it lives: the split rule, the cross-validated probe, and the
figures a user can reproduce (the split column, scikit-learn's own probe on the same features)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.train.config import TrainConfig
from pipeline.train.feature_sets import load_table, open_feature_sets
from pipeline.train.run import run_training
from pipeline.train.splits import TEST, TRAIN, VALIDATION, SplitRule, split_rule
from tests import object_storage
from tests.featuresets import blobs, write_feature_set

CLASSES = ("ant", "bee", "cat")


def _relative(n: int) -> list[str]:
    return [f"{CLASSES[i % 3]}/img-{i:04d}.png" for i in range(n)]


@pytest.mark.parametrize("roots", [("/data/a", "/elsewhere/copy"), ("/data/a", "gs://bucket/x/y"),
                                   ("/data/a/", "file-less/relative")], ids=["two-folders", "bucket", "slash"])
def test_the_same_relative_names_under_other_roots_split_the_same(roots):
    rel = _relative(500)
    first, second = (SplitRule(0.2, 0, (r.rstrip("/"),)).split_of([f"{r.rstrip('/')}/{k}" for k in rel])
                     for r in roots)
    np.testing.assert_array_equal(first, second)
    assert 70 < (first == VALIDATION).sum() < 130 and set(first) == {TRAIN, VALIDATION}


def test_the_seed_draws_another_split_and_order_does_not_matter():
    keys = [f"/data/a/{k}" for k in _relative(500)]
    rule = SplitRule(0.2, 0, ("/data/a",))
    base = rule.split_of(keys)
    assert (SplitRule(0.2, 1, ("/data/a",)).split_of(keys) != base).sum() > 50
    order = np.random.default_rng(0).permutation(len(keys))
    np.testing.assert_array_equal(rule.split_of([keys[i] for i in order]), base[order])
    np.testing.assert_array_equal(rule.folds([keys[i] for i in order], 5), rule.folds(keys, 5)[order])


def test_the_longest_root_a_key_starts_with_is_the_one_taken_off():
    rule = SplitRule(0.2, 0, ("/data/a/inner", "/data/a"))
    assert list(rule.relative_keys(["/data/a/inner/x.png", "/data/a/y.png", "/data/ab/z.png"])) == \
        ["x.png", "y.png", "/data/ab/z.png"]


def test_the_split_column_decides_when_it_names_validation_records():
    rule = SplitRule(0.2, by_column=True)
    got = rule.split_of(list("abcdefg"), ["val", "Validation", "dev ", "test", "train", None, "holdout"])
    assert got.tolist() == [VALIDATION, VALIDATION, VALIDATION, TEST, TRAIN, TRAIN, TRAIN]
    assert SplitRule(0.2).split_of(["k"], ["test"]).tolist() == [TEST]  # held out under the hash rule too


DIM = 1280  # the serving model joins the head to mobilenet_v2's features.18


@pytest.fixture(scope="module")
def backbone(mobilenet_spec):
    return {"name": "mobilenet_v2", "weights_sha256": mobilenet_spec.weights_sha256}


def _blob_set(folder: str, backbone: dict, n: int = 240, seed: int = 3, order_seed: int | None = None, splits=None,
              root: str | None = None):
    """The same records (relative names, labels, vectors) in ``folder``, read (their keys say) from ``root``
    (default: the folder itself), in the order ``order_seed`` draws."""
    root = root or folder
    _, labels, x = blobs(n, CLASSES, dim=DIM, seed=seed, spread=14.0)
    rel = [f"{label}/img-{i:04d}.png" for i, label in enumerate(labels)]
    order = np.arange(n) if order_seed is None else np.random.default_rng(order_seed).permutation(n)
    sizes = [n // 3, n // 3, n - 2 * (n // 3)]
    write_feature_set(folder, [f"{root.rstrip('/')}/{rel[i]}" for i in order], [labels[i] for i in order], x[order],
                      shard_sizes=sizes, input_root=root, backbone=backbone,
                      splits=None if splits is None else [splits[i] for i in order])
    return rel, labels


def _train(features: str, test: str, output: str, **flags) -> dict:
    return run_training(TrainConfig(features=(features,), output=output, test_features=(test,), **flags),
                        log=lambda m: None)


def _outcome(report: dict) -> dict:
    head = report["heads"]["linear"]
    return {"C": head["hyperparameters"]["C"], "grid": head["hyperparameters"]["cross_validation"]["grid"],
            "split": {k: v for k, v in report["split"].items() if k != "roots"},
            **{f"{name} accuracy": round(m["accuracy"], 4) for name, m in head["splits"].items()},
            **{f"{name} examples": m["examples"] for name, m in head["splits"].items()}}


def test_the_same_images_in_two_folders_and_a_bucket_train_the_same_head(tmp_path, backbone, gcs, worker_env,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    gcs.create_bucket("copies")
    _blob_set(str(tmp_path / "one" / "features"), backbone)
    _blob_set(str(tmp_path / "other place" / "features"), backbone, order_seed=1)
    _blob_set(str(tmp_path / "staged"), backbone, order_seed=2, root="gs://copies/images")  # extracted from a bucket
    object_storage.upload_tree(str(tmp_path / "staged"), "gs://copies/named")
    with open(tmp_path / "staged" / "manifest.json") as f:
        assert json.load(f)["inputs"]["specs"][0]["label_root"] == "gs://copies/images"
    test = str(tmp_path / "test")
    keys, labels, x = blobs(90, CLASSES, dim=DIM, seed=3, spread=14.0)
    write_feature_set(test, keys, labels, x, backbone=backbone)

    runs = [_train(str(tmp_path / "one" / "features"), test, str(tmp_path / "m1")),
            _train(str(tmp_path / "other place" / "features"), test, str(tmp_path / "m2")),
            _train("gs://copies/named", test, "gs://copies/m3")]
    outcomes = [_outcome(r) for r in runs]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert outcomes[0]["validation examples"] > 20 and outcomes[0]["test examples"] == 90
    assert runs[0]["split"]["rule"] == "hash of the key relative to its input root"
    validation = []
    for features in (str(tmp_path / "one" / "features"), "gs://copies/named"):
        sources = open_feature_sets([features])
        table, rule = load_table(sources), split_rule([s.manifest for s in sources], 0.2)
        is_val = rule.split_of(table.keys) == VALIDATION
        validation.append(sorted(rule.relative_keys(table.keys[is_val])))
    assert validation[0] == validation[1] and len(validation[0]) == outcomes[0]["validation examples"]


def test_another_seed_draws_another_validation_split(tmp_path, backbone):
    _blob_set(str(tmp_path / "features"), backbone)
    test = str(tmp_path / "test")
    keys, labels, x = blobs(30, CLASSES, dim=DIM, seed=3, spread=14.0)
    write_feature_set(test, keys, labels, x, backbone=backbone)
    reports = {s: _train(str(tmp_path / "features"), test, str(tmp_path / f"m{s}"), seed=s) for s in (0, 7)}
    assert [reports[s]["split"]["seed"] for s in (0, 7)] == [0, 7]
    sources = open_feature_sets([str(tmp_path / "features")])
    table = load_table(sources)
    masks = {s: split_rule([x.manifest for x in sources], 0.2, s).split_of(table.keys) == VALIDATION for s in (0, 7)}
    assert (masks[0] != masks[7]).sum() > 40
    for s in (0, 7):
        assert reports[s]["heads"]["linear"]["splits"]["validation"]["examples"] == masks[s].sum()


@pytest.mark.parametrize("memory_limit_mb", [2048, 0], ids=["in-memory", "streamed"])
def test_a_split_column_trains_with_exactly_those_validation_records(tmp_path, backbone, memory_limit_mb):
    n = 240
    splits = ["val" if i % 6 == 0 else "test" if i % 6 == 1 else "train" for i in range(n)]
    _blob_set(str(tmp_path / "features"), backbone, n=n, splits=splits, order_seed=4)
    test = str(tmp_path / "test")
    keys, labels, x = blobs(30, CLASSES, dim=DIM, seed=3, spread=14.0)
    write_feature_set(test, keys, labels, x, backbone=backbone)
    report = _train(str(tmp_path / "features"), test, str(tmp_path / "m"), memory_limit_mb=memory_limit_mb)
    assert report["split"]["rule"] == "the feature set's split column"
    head = report["heads"]["linear"]["splits"]
    assert head["validation"]["examples"] == splits.count("val") == 40
    assert head["split test"]["examples"] == splits.count("test") == 40
    if memory_limit_mb:
        assert head["train"]["examples"] == splits.count("train")
    sources = open_feature_sets([str(tmp_path / "features")])
    table = load_table(sources)
    part = split_rule([s.manifest for s in sources], 0.2).split_of(table.keys, table.splits)
    index = [int(k.rsplit("-", 1)[1][:4]) for k in table.keys]  # img-NNNN.png: the record's number
    assert [VALIDATION if splits[i] == "val" else TEST if splits[i] == "test" else TRAIN for i in index] == \
        part.tolist()


def _sklearn_probe_accuracy(x, y, x_test, y_test, seed: int = 0) -> float:
    """scikit-learn's StandardScaler and LogisticRegression with C chosen by a stratified 5-fold sweep (the same
    parametric search over C), refitted on every training record: the reference a user would compute."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from pipeline.train.heads import parametric_search

    folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y))

    def fit(c, rows):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x[rows], y[rows])

    def mean_accuracy(log_c):
        return float(np.mean([fit(10.0 ** log_c, fitted).score(x[held], y[held]) for fitted, held in folds]))

    with threadpool_limits(1, user_api="blas"):
        best, _ = parametric_search(mean_accuracy)
        return fit(10.0 ** best, np.arange(len(y))).score(x_test, y_test)


@pytest.mark.slow
def test_the_default_probe_matches_scikit_learns_cross_validated_probe_from_three_folders(digits_features, tmp_path):
    """A third of the digits' training features (479) under three other roots: each trains the same head, whose held-out
    accuracy is scikit-learn's own 5-fold-swept probe's within 0.3 point (one digit of the 360)."""
    sources = open_feature_sets([str(digits_features / "train")])
    table, rule = load_table(sources), split_rule([s.manifest for s in sources], 0.2)
    keep = np.argsort(rule.relative_keys(table.keys).astype(str))[::3]  # every third one: all ten classes
    relative = rule.relative_keys(table.keys[keep])
    backbone = dict(sources[0].manifest.backbone)
    outcomes = []
    for i, root in enumerate(["/srv/digits", str(tmp_path / "copy two"), "gs://archive/digits/2026"]):
        order = np.random.default_rng(i).permutation(len(keep))
        write_feature_set(str(tmp_path / f"set{i}"), [f"{root}/{relative[j]}" for j in order],
                          list(table.labels[keep][order]), table.x[keep][order], input_root=root, backbone=backbone)
        report = _train(str(tmp_path / f"set{i}"), str(digits_features / "test"), str(tmp_path / f"m{i}"),
                        heads=("linear",))
        outcomes.append(_outcome(report))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    test = load_table(open_feature_sets([str(digits_features / "test")]))
    classes = sorted(set(table.labels))
    y = np.array([classes.index(label) for label in table.labels[keep]])
    y_test = np.array([classes.index(label) for label in test.labels])
    reference = _sklearn_probe_accuracy(table.x[keep], y, test.x, y_test)
    assert abs(outcomes[0]["test accuracy"] - reference) <= 0.003, (outcomes[0], reference)
