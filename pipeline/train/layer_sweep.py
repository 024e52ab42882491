"""``featurebeam train --sweep-layers``: which extracted layer transfers best, by a linear probe on each
(the same train/validation split for all), then the requested heads trained on the winner."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from pipeline.folders import model_dir_for_writing
from pipeline.train import evaluation, heads
from pipeline.train.config import METRICS, TrainConfig
from pipeline.train.feature_sets import FeatureSetError, load_table, open_feature_sets
from pipeline.train.in_memory import label_index, test_split
from pipeline.train.run import check_training, train_into
from pipeline.train.splits import TRAIN, VALIDATION, split_rule

__all__ = ["sweep_layers", "run_layer_sweep", "LAYER_SWEEP"]

LAYER_SWEEP = "layer_sweep.json"


def sweep_layers(config: TrainConfig, log=print) -> dict:
    """A linear probe per extracted output (layer), on the same train/validation split: which transfers best.

    Every output of the first feature set is tried; the features must fit in memory."""
    first = open_feature_sets(config.features[:1])[0]
    names = [o.name for o in first.manifest.outputs]
    n_records = sum(int(s.manifest.counts.get("embedded", 0)) for s in open_feature_sets(config.features))
    largest = max(o.dim for o in first.manifest.outputs)
    if n_records * largest * 4 > config.memory_limit_mb * 2 ** 20:
        raise FeatureSetError(f"--sweep-layers loads each layer's features into memory: {n_records} records x "
                              f"{largest} floats is over --memory-limit-mb {config.memory_limit_mb}")
    results = {}
    for name in names:
        sources = open_feature_sets(config.features, name)
        table = load_table(sources)
        labelled = np.array([label is not None for label in table.labels], bool)
        table = table if labelled.all() else table.take(labelled)
        classes = sorted(set(table.labels))
        if len(classes) < 2:
            raise FeatureSetError(f"{config.features[0]}: training needs at least two labels, found {classes}")
        y = label_index(table.labels, classes)
        part = split_rule([s.manifest for s in sources], config.validation_fraction, config.seed).split_of(
            table.keys, table.splits)
        is_train, is_val = part == TRAIN, part == VALIDATION
        log(f"featurebeam train: probing layer {name} ({sources[0].output.dim} floats, {int(is_train.sum())} train, "
            f"{int(is_val.sum())} validation records)")
        sweep = heads.sweep_linear(table.x[is_train], y[is_train], table.x[is_val], y[is_val], len(classes),
                                   standardize=config.standardize)
        best_key = round(float(np.log10(sweep.best_c)), 6)
        entry = {"dim": sources[0].output.dim, "layer": sources[0].output.layer, "C": sweep.best_c,
                 "validation_accuracy": float(sweep.scores[best_key])}
        if config.test_features:
            test, _ = test_split(load_table(open_feature_sets(config.test_features, name)), classes)
            if len(test.y):
                probabilities = sweep.fits[best_key].predict_proba(test.x)
                entry["test_accuracy"] = float(np.mean(np.argmax(probabilities, axis=1) == test.y))
        results[name] = entry
    best = max(names, key=lambda n: (results[n]["validation_accuracy"], -names.index(n)))
    return {"layers": results, "order": names, "best_layer": best,
            "criterion": "validation accuracy of a linear probe (L2 logistic regression, C swept"
                         f"{', standardised features' if config.standardize else ''})"}


def run_layer_sweep(config: TrainConfig, log=print) -> dict:
    """``train --sweep-layers``: probe every layer, then train the requested heads on the best one."""
    config.validate()  # a MODELDIR that cannot be written is said before the probes, not after
    sweep = sweep_layers(config, log)
    log(f"featurebeam train: layer {sweep['best_layer']} transfers best; training on it")
    best = dataclasses.replace(config, output_name=sweep["best_layer"])
    checked = check_training(best)
    with model_dir_for_writing(config.output, config.overwrite) as folder:
        report = train_into(best, checked, folder, log)
        report["layer_sweep"] = sweep
        _write_sweep(folder, sweep, report)
    return report


def _write_sweep(folder: str, sweep: dict, report: dict) -> None:
    """layer_sweep.json, the plot of accuracy by layer, and metrics.json again with the sweep in it."""
    with open(os.path.join(folder, LAYER_SWEEP), "w") as f:
        json.dump(sweep, f, indent=2)
    with open(os.path.join(folder, METRICS), "w") as f:
        json.dump(report, f, indent=2)
    series = {"validation": [sweep["layers"][n]["validation_accuracy"] for n in sweep["order"]]}
    if any("test_accuracy" in sweep["layers"][n] for n in sweep["order"]):
        series["test"] = [sweep["layers"][n].get("test_accuracy") for n in sweep["order"]]
    evaluation.plot_by_layer(sweep["order"], series, "linear probe accuracy by layer",
                             os.path.join(folder, "layer_sweep.png"))
