"""``featurebeam train``: classifier heads on extracted features, their metrics, and the serving model.

1. open the feature sets (manifests checked, same backbone and output in each);
2. read the features: into memory when they fit (tfrecord-lite), else streamed through tf.data, holding
   nothing per record (classes from the manifests, class counts and confusion matrices added up batch by
   batch), so its memory does not grow with the set;
3. split train/validation by the ``SplitRule`` (``splits.py``): the set's split column where it names
   validation records, else a seeded hash of each key relative to its input root, so the same data anywhere
   splits the same;
4. fit each requested head (``in_memory.py``, ``streamed.py``; the linear probe's C by cross-validation,
   ``probe.py``), evaluate it on train, validation and the test sets (in memory, the wrong validation and test
   records too, a capped list: ``evaluation.misclassified``); a zero-shot head (``zero_shot.py``) is made,
   not fitted, and scored beside them, or alone for a set without labels;
5. write MODELDIR: ``metrics.json``, ``model.json``, ``heads/<name>/head.keras`` and plots, and
   ``serving/``, the SavedModel of frozen backbone + preprocessing + the best head by validation accuracy.
   A gs:// or s3:// MODELDIR is written locally first and copied there at the end
   (``pipeline.folders.model_dir_for_writing``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from dataclasses import dataclass

from pipeline.train import evaluation
from pipeline.train.config import METRICS, MODEL_SPEC, TrainConfig
from pipeline.train.feature_sets import FeatureSetError, open_feature_sets
from pipeline.train.in_memory import train_in_memory
from pipeline.train.splits import split_rule
from pipeline.train.streamed import train_streamed
from pipeline.train.zero_shot import ZERO_SHOT, check_zero_shot, make_zero_shot

__all__ = ["run_training", "check_training", "train_into", "library_versions"]

def _head_writer(root: str):
    """Writes a head's model and plots into ``root/heads/<name>/`` as each is fitted."""

    def write(name: str, model, metrics: dict, curves: dict, classes) -> None:
        folder = os.path.join(root, "heads", name)
        os.makedirs(folder, exist_ok=True)
        model.save(os.path.join(folder, "head.keras"))
        for split in ("validation", "test"):
            if metrics["splits"].get(split, {}).get("examples"):
                evaluation.plot_confusion_matrix(metrics["splits"][split]["confusion_matrix"], classes,
                                                 f"{name} head, {split}",
                                                 os.path.join(folder, f"confusion_{split}.png"))
        if name == "linear":
            title = ("linear probe: cross-validated sweep" if "cross-validated accuracy" in curves
                     else "linear probe: validation sweep")
            evaluation.plot_curves(curves, "C (inverse L2 strength)", "accuracy", title,
                                   os.path.join(folder, "learning_curve.png"), log_x=True)
        elif curves:
            evaluation.plot_curves({k: v for k, v in curves.items() if "loss" in k}, "epoch", "cross-entropy",
                                   "mlp head: learning curves", os.path.join(folder, "learning_curve.png"))

    return write


def library_versions() -> dict:
    """The versions a head's numbers depend on, for metrics.json."""
    from importlib import metadata

    versions = {}
    for name in ("numpy", "scipy", "tensorflow-cpu", "tensorflow", "keras", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


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
    if config.zero_shot:
        labels = sorted({label for s in sources for label in s.manifest.labels})
        check_zero_shot(sources[0].manifest.backbone, output, config.zero_shot, config.templates, labels)
    # The serving model needs the very weights the features came from: check before any training.
    backbone = resolve_described(sources[0].manifest.backbone)
    if backbone.weights_sha256 != sources[0].manifest.backbone.get("weights_sha256"):
        raise FeatureSetError(f"{sources[0].root}: the installed {backbone.name} weights differ from those the "
                              "features were extracted with (sha256 mismatch); cannot build a serving model")
    return Checked(sources, test_sources, backbone, start)


def train_into(config: TrainConfig, checked: Checked, folder: str, log=print) -> dict:
    """Train and evaluate the heads and export the serving model into a local folder; returns the metrics."""
    import keras

    from pipeline.serving.model import export_serving_model, unservable

    sources, test_sources, backbone = checked.sources, checked.test_sources, checked.backbone
    output = sources[0].output
    n_records = sum(int(s.manifest.counts.get("embedded", 0)) for s in sources)
    in_memory = n_records * output.dim * 4 <= config.memory_limit_mb * 2 ** 20
    rule = split_rule([s.manifest for s in sources], config.validation_fraction, config.seed)
    report = {"features": list(config.features), "test_features": list(config.test_features),
              "output": output.to_json(), "backbone": sources[0].manifest.backbone,
              "validation_fraction": config.validation_fraction, "seed": config.seed, "split": rule.describe(),
              "mode": "in memory" if in_memory else "streamed", "versions": library_versions(), "heads": {}}

    train = train_in_memory if in_memory else train_streamed
    fixed = {ZERO_SHOT: functools.partial(make_zero_shot, backbone, config.templates)} if config.zero_shot else {}
    if fixed and not any(s.manifest.labels for s in sources):  # nothing to fit or to score: the zero-shot head alone
        log(f"featurebeam train: no labels; the zero-shot head of {len(config.zero_shot)} classes alone")
        classes = list(config.zero_shot)
        model, hyper = fixed[ZERO_SHOT](classes)
        report["heads"][ZERO_SHOT] = {"hyperparameters": hyper, "splits": {}}
        _head_writer(folder)(ZERO_SHOT, model, report["heads"][ZERO_SHOT], {}, classes)
    else:
        classes = train(config, rule, sources, test_sources, report, _head_writer(folder), log, fixed)
    best = max(report["heads"], key=lambda n: report["heads"][n]["splits"].get("validation", {}).get("accuracy", 0.0))
    report.update(classes=classes, best_head=best, seconds=round(time.monotonic() - checked.start, 2))

    serving, reason = "serving", unservable(backbone)
    if reason:  # the heads stand; predict needs features then, not raw inputs
        log(f"featurebeam train: no serving model: {reason}")
        serving = None
    else:
        head = keras.saving.load_model(os.path.join(folder, "heads", best, "head.keras"), safe_mode=True)
        export_serving_model(os.path.join(folder, "serving"), backbone, output, head, classes)
    report["serving"] = serving
    model_spec = {"backbone": backbone.describe(), "preprocessing": dataclasses.asdict(backbone.preprocessing),
                  "output": output.to_json(), "classes": classes, "head": best, "serving": serving}
    with open(os.path.join(folder, MODEL_SPEC), "w") as f:
        json.dump(model_spec, f, indent=2)
    with open(os.path.join(folder, METRICS), "w") as f:
        json.dump(report, f, indent=2)
    return report
