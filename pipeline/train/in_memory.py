"""Training on a feature table held in memory: the rows ordered by their relative keys (so the same data in
any order or place trains the same heads), split by the ``SplitRule``, each head fitted and scored.

The linear head's C is chosen by k-fold cross-validation on the training records (``probe.cross_validate_c``;
on the validation split alone above ``probe.CV_MAX_RECORDS`` training records, where one split scores C with
little noise and k folds would cost k times the fits); it is then fitted on the training records (its
validation scores) and refitted on train + validation at that C, the head exported. Every one of those fits
standardises the features it is given (unless ``--no-standardize``), as a scikit-learn pipeline of
``StandardScaler`` and ``LogisticRegression`` would in each fold. The MLP stops early on the validation loss.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.train import evaluation, heads, probe
from pipeline.train.config import TrainConfig
from pipeline.train.feature_sets import FeatureSetError, FeatureTable, load_table
from pipeline.train.splits import TEST, TRAIN, VALIDATION, SplitRule

__all__ = ["STANDARDIZED", "Split", "label_index", "test_split", "train_in_memory", "predict", "scored"]

SPLIT_TEST = "split test"  # the training set's own records whose split column says test
STANDARDIZED = "standardised by each fit's own records (mean, deviation), folded into the weights"


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    keys: np.ndarray | None = None  # the records' keys: their folds, and where the wrong ones are recorded


def label_index(labels: np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(vocabulary)}
    return np.array([lookup.get(label, -1) for label in labels], dtype=np.int64)


def test_split(table: FeatureTable, vocabulary: Sequence[str]) -> tuple[Split, dict]:
    """Test rows with a known label; labels the heads never saw are counted and reported, not scored."""
    y = label_index(table.labels, vocabulary)
    unseen = collections.Counter(label for label, i in zip(table.labels, y, strict=True)
                                 if i < 0 and label is not None)
    unlabelled = int(sum(label is None for label in table.labels))
    known = y >= 0
    extra = {"unseen_labels": dict(sorted(unseen.items())), "unlabelled": unlabelled}
    return Split(table.x[known], y[known], table.keys[known]), extra


def predict(model, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.asarray(model.predict(x, batch_size=1024, verbose=0))


def scored(split: Split, probabilities: np.ndarray, classes) -> dict:
    """A held-out split's metrics with its misclassified records (a capped list: ``evaluation.misclassified``)."""
    metrics = evaluation.split_metrics(split.y, probabilities, classes)
    if metrics["examples"]:
        metrics["misclassified"] = evaluation.misclassified(split.keys, split.y, probabilities, classes)
    return metrics


def fit_linear(config: TrainConfig, rule: SplitRule, train: Split, val: Split, both: Split, n_classes: int):
    """(keras head, hyper-parameters, curves, validation probabilities of the fit on the training records)."""
    weights = heads.class_weights(train.y, n_classes) if config.class_weights else None
    sw = None if weights is None else weights[train.y]
    if len(train.y) <= probe.CV_MAX_RECORDS:
        try:
            cv = probe.cross_validate_c(train.x, train.y, n_classes, rule.folds(train.keys, probe.FOLDS), sw,
                                        standardize=config.standardize)
        except ValueError as e:
            raise FeatureSetError(str(e)) from None
        best_c, chosen = cv.best_c, {"cross_validation": cv.describe()}
        cs = sorted(cv.grid)
        curves = {"cross-validated accuracy": ([10.0 ** k for k in cs], [cv.mean(k) for k in cs])}
        fit = heads.fit_logistic(train.x, train.y, n_classes, best_c, sw, standardize=config.standardize)
    else:  # a large set: one validation split already scores C with little noise, at a fifth of the fits
        sweep = heads.sweep_linear(train.x, train.y, val.x, val.y, n_classes, sample_weight=sw,
                                   standardize=config.standardize)
        best_c, cs = sweep.best_c, sorted(sweep.scores)
        chosen = {"selection": f"the validation split (over {probe.CV_MAX_RECORDS} training records)",
                  "sweep": {f"{10.0 ** k:.6g}": sweep.scores[k] for k in cs}}
        curves = {"validation accuracy": ([10.0 ** k for k in cs], [sweep.scores[k] for k in cs])}
        fit = sweep.fits[round(float(np.log10(best_c)), 6)]
    w_both = None if weights is None else heads.class_weights(both.y, n_classes)[both.y]
    refit = heads.fit_logistic(both.x, both.y, n_classes, best_c, w_both, init=fit, standardize=config.standardize)
    hyper = {"solver": "L-BFGS (full batch)", "C": best_c, "l2": 1.0 / best_c, **chosen,
             "features": STANDARDIZED if config.standardize else "raw",
             "refit": "train + validation", "iterations": refit.iterations,
             "class_weights": "balanced" if weights is not None else None}
    return heads.linear_head(refit.weights, refit.bias), hyper, curves, fit.predict_proba(val.x)


def fit_mlp(config: TrainConfig, train: Split, val: Split, n_classes: int):
    """(keras head, hyper-parameters, curves, validation probabilities)."""
    weights = heads.class_weights(train.y, n_classes) if config.class_weights else None
    cw = None if weights is None else {i: float(w) for i, w in enumerate(weights)}
    model, history, epochs, best_epoch = heads.fit_mlp(
        (train.x, train.y), (val.x, val.y), train.x.shape[1], n_classes, hidden=config.hidden,
        dropout=config.dropout, max_epochs=config.max_epochs, class_weight=cw, seed=config.seed)
    hyper = {"hidden": config.hidden, "dropout": config.dropout, "optimizer": "Adam(1e-3)", "batch_size": 256,
             "epochs_run": epochs, "best_epoch": best_epoch, "early_stopping": "validation loss, patience 8",
             "class_weights": "balanced" if cw else None}
    epochs_axis = list(range(1, epochs + 1))
    curves = {k: (epochs_axis, v) for k, v in history.items() if k in ("loss", "val_loss", "accuracy", "val_accuracy")}
    return model, hyper, curves, predict(model, val.x)


def _labelled_in_key_order(sources, rule: SplitRule, first: str) -> tuple[FeatureTable, list[str], int]:
    """The labelled rows, ordered by relative key; their classes; how many unlabelled rows were left out."""
    table = load_table(sources)
    labelled = np.array([label is not None for label in table.labels], bool)
    classes = sorted(set(table.labels[labelled]))
    if len(classes) < 2:
        raise FeatureSetError(f"{first}: training needs at least two labels, found {classes}")
    table = table.take(labelled)
    order = np.argsort(rule.relative_keys(table.keys).astype(str), kind="stable")
    return table.take(order), classes, int((~labelled).sum())


def train_in_memory(config: TrainConfig, rule: SplitRule, sources, test_sources, report: dict, write_head,
                    log, fixed=None) -> list[str]:
    """Fit ``config.heads`` (and make the ``fixed`` ones: ``{name: classes -> (model, hyper-parameters)}``) on the
    labelled records, score each on every split, write each; returns the classes."""
    fixed = fixed or {}
    table, classes, unlabelled = _labelled_in_key_order(sources, rule, config.features[0])
    y, part = label_index(table.labels, classes), rule.split_of(table.keys, table.splits)

    def split(mask):
        return Split(table.x[mask], y[mask], table.keys[mask])

    train, val, both = split(part == TRAIN), split(part == VALIDATION), split(part != TEST)
    if len(train.y) == 0 or len(val.y) == 0:
        raise FeatureSetError(f"{len(table)} labelled records are too few to split into train and validation")
    report["unlabelled_skipped"] = unlabelled
    tests = {"test": test_split(load_table(test_sources), classes)} if test_sources else {}
    if (part == TEST).any():
        tests[SPLIT_TEST] = (split(part == TEST), {})

    def fit(name):
        if name in fixed:  # made, not fitted (a zero-shot head): scored alike
            model, hyper = fixed[name](classes)
            return model, hyper, {}, predict(model, val.x)
        if name == "linear":
            return fit_linear(config, rule, train, val, both, len(classes))
        return fit_mlp(config, train, val, len(classes))

    for name in (*config.heads, *fixed):
        log(f"featurebeam train: {'making' if name in fixed else 'fitting'} the {name} head on {len(train.y)} "
            f"records ({len(val.y)} for validation, {len(classes)} classes)")
        model, hyper, curves, val_probabilities = fit(name)
        splits = {"train": evaluation.split_metrics(train.y, predict(model, train.x), classes),
                  "validation": scored(val, val_probabilities, classes)}
        for split_name, (held, extra) in tests.items():
            splits[split_name] = {**scored(held, predict(model, held.x), classes), **extra}
        report["heads"][name] = {"hyperparameters": hyper, "splits": splits}
        write_head(name, model, report["heads"][name], curves, classes)
    return classes
