"""``featurebeam train``: classifier heads on extracted features, their metrics, and the serving model.

1. open the feature sets (manifests checked, same backbone and output in each);
2. read the features: into memory when they fit (tfrecord-lite), else streamed through tf.data, holding
   nothing per record (classes from the manifests, class counts and confusion matrices added up batch by
   batch), so its memory does not grow with the set;
3. split train/validation by a hash of each record's key (stable across reruns and resumed extractions);
4. fit each requested head (``pipeline.train.heads``), evaluate it on train, validation and the test sets
   (in memory, the wrong validation and test records too, a capped list: ``evaluation.misclassified``);
5. write MODELDIR: ``metrics.json``, ``model.json``, ``heads/<name>/head.keras`` and plots, and
   ``serving/``, the SavedModel of frozen backbone + preprocessing + the best head by validation accuracy.
   A gs:// or s3:// MODELDIR is written locally first and copied there at the end
   (``pipeline.folders.model_dir_for_writing``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.train import evaluation, heads
from pipeline.train.config import METRICS, MODEL_SPEC, TrainConfig
from pipeline.train.feature_sets import (
    FeatureSetError,
    FeatureTable,
    count_labels,
    load_table,
    open_feature_sets,
    stream_examples,
    validation_mask,
)

__all__ = ["run_training", "check_training", "train_into", "label_index", "test_split"]

@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    keys: np.ndarray | None = None  # the records' keys, where the wrong ones are recorded


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


def _predict(model, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return np.asarray(model.predict(x, batch_size=1024, verbose=0))


def _fit_in_memory(name: str, config: TrainConfig, train: Split, val: Split, both: Split, n_classes: int):
    """Returns (keras head, hyper-parameters, curves, validation probabilities before any refit).

    ``both`` is train + validation (the whole labelled table, not a copy), for the linear head's refit."""
    weights = heads.class_weights(train.y, n_classes) if config.class_weights else None
    if name == "linear":
        sweep = heads.sweep_linear(train.x, train.y, val.x, val.y, n_classes,
                                   sample_weight=None if weights is None else weights[train.y])
        best_key = round(float(np.log10(sweep.best_c)), 6)
        val_probabilities = sweep.fits[best_key].predict_proba(val.x)
        w_both = None if weights is None else heads.class_weights(both.y, n_classes)[both.y]
        fit = heads.fit_logistic(both.x, both.y, n_classes, sweep.best_c, w_both, init=sweep.fits[best_key])
        cs = sorted(sweep.scores)
        hyper = {"solver": "L-BFGS (full batch)", "C": sweep.best_c, "l2": 1.0 / sweep.best_c,
                 "sweep": {f"{10.0 ** k:.6g}": sweep.scores[k] for k in cs},
                 "refit": "train + validation", "iterations": fit.iterations,
                 "class_weights": "balanced" if weights is not None else None}
        curves = {"validation accuracy": ([10.0 ** k for k in cs], [sweep.scores[k] for k in cs])}
        return heads.linear_head(fit.weights, fit.bias), hyper, curves, val_probabilities
    cw = None if weights is None else {i: float(w) for i, w in enumerate(weights)}
    model, history, epochs, best_epoch = heads.fit_mlp(
        (train.x, train.y), (val.x, val.y), train.x.shape[1], n_classes, hidden=config.hidden,
        dropout=config.dropout, max_epochs=config.max_epochs, class_weight=cw, seed=config.seed)
    hyper = {"hidden": config.hidden, "dropout": config.dropout, "optimizer": "Adam(1e-3)", "batch_size": 256,
             "epochs_run": epochs, "best_epoch": best_epoch, "early_stopping": "validation loss, patience 8",
             "class_weights": "balanced" if cw else None}
    epochs_axis = list(range(1, epochs + 1))
    curves = {k: (epochs_axis, v) for k, v in history.items() if k in ("loss", "val_loss", "accuracy", "val_accuracy")}
    return model, hyper, curves, _predict(model, val.x)


def _scored(split: Split, probabilities: np.ndarray, classes) -> dict:
    """A held-out split's metrics with its misclassified records (a capped list: ``evaluation.misclassified``)."""
    metrics = evaluation.split_metrics(split.y, probabilities, classes)
    if metrics["examples"]:
        metrics["misclassified"] = evaluation.misclassified(split.keys, split.y, probabilities, classes)
    return metrics


def _streamed_metrics(ds, model, classes) -> dict:
    """Metrics of a streamed split: one pass, only the confusion matrix kept."""
    matrix = evaluation.confusion_of_batches(ds, lambda x: model(x, training=False), len(classes))
    return evaluation.confusion_metrics(matrix, classes)


def _write_head_outputs(root: str, name: str, model, metrics: dict, curves: dict, classes) -> None:
    folder = os.path.join(root, "heads", name)
    os.makedirs(folder, exist_ok=True)
    model.save(os.path.join(folder, "head.keras"))
    for split in ("validation", "test"):
        if metrics["splits"].get(split, {}).get("examples"):
            evaluation.plot_confusion_matrix(metrics["splits"][split]["confusion_matrix"], classes,
                                             f"{name} head, {split}", os.path.join(folder, f"confusion_{split}.png"))
    if name == "linear":
        evaluation.plot_curves(curves, "C (inverse L2 strength)", "accuracy", "linear probe: validation sweep",
                               os.path.join(folder, "learning_curve.png"), log_x=True)
    elif curves:
        evaluation.plot_curves({k: v for k, v in curves.items() if "loss" in k}, "epoch", "cross-entropy",
                               "mlp head: learning curves", os.path.join(folder, "learning_curve.png"))


def _train_in_memory(config: TrainConfig, sources, test_sources, report: dict, folder: str, log) -> list[str]:
    table = load_table(sources)
    labelled = np.array([label is not None for label in table.labels], bool)
    classes = sorted(set(table.labels[labelled]))
    if len(classes) < 2:
        raise FeatureSetError(f"{config.features[0]}: training needs at least two labels, found {classes}")
    if not labelled.all():
        table = table.take(labelled)
    y = label_index(table.labels, classes)
    is_val = validation_mask(table.keys, config.validation_fraction)
    train, val = Split(table.x[~is_val], y[~is_val]), Split(table.x[is_val], y[is_val], table.keys[is_val])
    if len(train.y) == 0 or len(val.y) == 0:
        raise FeatureSetError(f"{len(table)} labelled records are too few to split into train and validation")
    report["unlabelled_skipped"] = int((~labelled).sum())
    tests = {"test": test_split(load_table(test_sources), classes)} if test_sources else {}
    for name in config.heads:
        log(f"featurebeam train: fitting the {name} head on {len(train.y)} records "
            f"({len(val.y)} for validation, {len(classes)} classes)")
        model, hyper, curves, val_probabilities = _fit_in_memory(name, config, train, val, Split(table.x, y),
                                                                 len(classes))
        splits = {"train": evaluation.split_metrics(train.y, _predict(model, train.x), classes),
                  "validation": _scored(val, val_probabilities, classes)}
        for split_name, (split, extra) in tests.items():
            splits[split_name] = {**_scored(split, _predict(model, split.x), classes), **extra}
        report["heads"][name] = {"hyperparameters": hyper, "splits": splits}
        _write_head_outputs(folder, name, model, report["heads"][name], curves, classes)
    return classes


def _train_streamed(config: TrainConfig, sources, test_sources, report: dict, folder: str, log) -> list[str]:
    classes = sorted({label for s in sources for label in s.manifest.labels})
    if len(classes) < 2:
        raise FeatureSetError(f"{config.features[0]}: training needs at least two labels, found {classes}")
    dim, n_records = sources[0].output.dim, sum(int(s.manifest.counts.get("embedded", 0)) for s in sources)
    frac, batch = config.validation_fraction, 512
    cw = None
    if config.class_weights:
        weights = heads.balanced_weights(count_labels(sources, classes, frac))
        cw = {i: float(w) for i, w in enumerate(weights)}
    train_ds = stream_examples(sources, classes, frac, "train", batch, shuffle=True, seed=config.seed)
    val_ds = stream_examples(sources, classes, frac, "validation", batch)
    both_ds = stream_examples(sources, classes, 0.0, "train", batch, shuffle=True, seed=config.seed)
    test_ds = stream_examples(test_sources, classes, 0.0, "train", batch) if test_sources else None
    for name in config.heads:
        log(f"featurebeam train: fitting the {name} head on streamed features ({n_records} records)")
        if name == "linear":
            model, scores, best_c = heads.fit_linear_streaming(
                train_ds, val_ds, dim, len(classes), int(n_records * (1 - frac)), refit_ds=both_ds,
                class_weight=cw, seed=config.seed)
            hyper = {"solver": "Adam minibatches (streamed)", "C": best_c, "l2": 1.0 / best_c,
                     "sweep": {f"{c:.6g}": s for c, s in sorted(scores.items())}, "refit": "train + validation",
                     "class_weights": "balanced" if cw else None}
            curves = {"validation accuracy": (sorted(scores), [scores[c] for c in sorted(scores)])}
        else:
            model, history, epochs, best_epoch = heads.fit_mlp(
                train_ds, val_ds, dim, len(classes), hidden=config.hidden, dropout=config.dropout,
                max_epochs=config.max_epochs, class_weight=cw, seed=config.seed,
                normalizer_data=train_ds.map(lambda x, y: x))
            hyper = {"hidden": config.hidden, "dropout": config.dropout, "epochs_run": epochs,
                     "best_epoch": best_epoch, "class_weights": "balanced" if cw else None}
            curves = {k: (list(range(1, epochs + 1)), v) for k, v in history.items() if "loss" in k}
        splits = {"validation": _streamed_metrics(val_ds, model, classes)}
        if test_ds is not None:
            # Streaming skips test records whose label is unknown; the manifests name those labels.
            unseen = sorted({label for t in test_sources for label in t.manifest.labels} - set(classes))
            splits["test"] = {**_streamed_metrics(test_ds, model, classes),
                              "unseen_labels": {label: "not counted when streamed" for label in unseen}}
        report["heads"][name] = {"hyperparameters": hyper, "splits": splits}
        _write_head_outputs(folder, name, model, report["heads"][name], curves, classes)
    return classes


@dataclass(frozen=True)
class Checked:
    """What training reads, checked before MODELDIR is touched."""

    sources: list
    test_sources: list
    backbone: object
    start: float


def run_training(config: TrainConfig, log=print) -> dict:
    """Train, evaluate and export; returns the metrics dict that is also written to metrics.json."""
    from pipeline.folders import model_dir_for_writing

    checked = check_training(config)
    with model_dir_for_writing(config.output, config.overwrite) as folder:
        return train_into(config, checked, folder, log)


def check_training(config: TrainConfig) -> Checked:
    """Every check that needs no training: flags, MODELDIR, the feature sets and the backbone's weights."""
    from pipeline.backbones.registry import resolve_described

    config.validate()
    start = time.monotonic()
    sources = open_feature_sets(config.features, config.output_name)
    output = sources[0].output
    test_sources = open_feature_sets(config.test_features, output.name) if config.test_features else []
    for t in test_sources:
        if t.manifest.backbone.get("weights_sha256") != sources[0].manifest.backbone.get("weights_sha256") \
                or t.output != output:
            raise FeatureSetError(f"{t.root}: test features come from another backbone or output than "
                                  f"{sources[0].root}")
    # The serving model needs the very weights the features came from: check before any training.
    backbone = resolve_described(sources[0].manifest.backbone)
    if backbone.weights_sha256 != sources[0].manifest.backbone.get("weights_sha256"):
        raise FeatureSetError(f"{sources[0].root}: the installed {backbone.name} weights differ from those the "
                              "features were extracted with (sha256 mismatch); cannot build a serving model")
    return Checked(sources, test_sources, backbone, start)


def train_into(config: TrainConfig, checked: Checked, folder: str, log=print) -> dict:
    """Train and evaluate the heads and export the serving model into a local folder; returns the metrics."""
    import keras

    from pipeline.serving.model import export_serving_model

    sources, test_sources, backbone = checked.sources, checked.test_sources, checked.backbone
    output = sources[0].output
    n_records = sum(int(s.manifest.counts.get("embedded", 0)) for s in sources)
    in_memory = n_records * output.dim * 4 <= config.memory_limit_mb * 2 ** 20
    report = {"features": list(config.features), "test_features": list(config.test_features),
              "output": output.to_json(), "backbone": sources[0].manifest.backbone,
              "validation_fraction": config.validation_fraction, "split": "hash of key (tf Fingerprint64)",
              "mode": "in memory" if in_memory else "streamed", "heads": {}}

    train = _train_in_memory if in_memory else _train_streamed
    classes = train(config, sources, test_sources, report, folder, log)
    best = max(report["heads"], key=lambda n: report["heads"][n]["splits"]["validation"].get("accuracy", 0.0))
    report.update(classes=classes, best_head=best, seconds=round(time.monotonic() - checked.start, 2))

    head = keras.saving.load_model(os.path.join(folder, "heads", best, "head.keras"), safe_mode=True)
    export_serving_model(os.path.join(folder, "serving"), backbone, output, head, classes)
    serving = "serving"
    report["serving"] = serving
    model_spec = {"backbone": backbone.describe(), "preprocessing": dataclasses.asdict(backbone.preprocessing),
                  "output": output.to_json(), "classes": classes, "head": best, "serving": serving}
    with open(os.path.join(folder, MODEL_SPEC), "w") as f:
        json.dump(model_spec, f, indent=2)
    with open(os.path.join(folder, METRICS), "w") as f:
        json.dump(report, f, indent=2)
    return report
