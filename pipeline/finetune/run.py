"""``featurebeam finetune``: from a linear probe on frozen features to a fine-tuned top of the backbone.

1. check everything that needs no training (``check_finetune``): inputs, MODELDIR, backbone, ``--head-from``;
2. split the backbone before its top K blocks (``pipeline.finetune.model``); read the labelled images with
   extract's readers and decoder and run the frozen bottom once per image (``pipeline.finetune.cache``);
3. split train/validation by the hash of each key, as ``featurebeam train`` does (``validation_mask``);
4. fit the linear probe on the frozen top's pooled features (C swept on validation, fitted on the train split:
   the images fine-tuning trains on), or take the head of ``--head-from``;
5. fine-tune the top K blocks (Adam at ``--learning-rate``, one warm-up epoch then cosine decay) and the head
   (``--head-lr-factor`` times it) from the probe, BatchNorm in inference mode, the probe's own L2 on the head's
   weights and ``--dropout`` on the pooled features; keep the epoch of lowest validation log-loss (epoch 0 is
   the probe itself, so the result is never worse than it on validation);
6. write MODELDIR: ``metrics.json`` (probe and fine-tuned per split), ``model.json``, ``learning_curve.png``,
   ``heads/{linear_probe,finetuned}/`` (head.keras, confusion matrices), ``finetuned/top.keras`` (the
   fine-tuned blocks) and ``serving/`` (raw image bytes -> probabilities through the fine-tuned backbone),
   which ``featurebeam predict`` uses.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.finetune.cache import CachedSet, bottom_function, build_cache
from pipeline.finetune.labelled_images import ReadCounts, read_images
from pipeline.finetune.model import backbone_blocks, finetuned_backbone, split_backbone
from pipeline.finetune.options import FinetuneConfig
from pipeline.finetune.training import Networks, fine_tune, fit_probe, map_rows
from pipeline.folders import absolute
from pipeline.train import evaluation
from pipeline.train.config import METRICS, MODEL_SPEC
from pipeline.train.feature_sets import FeatureSetError, validation_mask
from pipeline.train.run import label_index
from transforms.schema.fields import OutputSpec

__all__ = ["Checked", "check_finetune", "run_finetune", "finetune_into", "format_finetune", "PROBE", "FINETUNED",
           "TOP_FILE"]

PROBE, FINETUNED = "linear_probe", "finetuned"
TOP_FILE = os.path.join("finetuned", "top.keras")


@dataclass(frozen=True)
class Checked:
    """What fine-tuning reads, checked before MODELDIR is touched."""

    specs: tuple
    test_specs: tuple
    backbone: object
    output: OutputSpec
    unfreeze: int
    head_from: object          # a Keras head, or None
    head_classes: tuple        # its classes, or ()
    start: float


def _check_model_dir(output: str, overwrite: bool) -> None:
    from apache_beam.io.filesystems import FileSystems

    from pipeline.folders import is_empty_dir
    from transforms.worker.storage import bucket_exists, bucket_of

    if bucket_exists(output, FileSystems._pipeline_options) is False:
        scheme, bucket = bucket_of(output)
        raise ConfigError(f"output {output}: bucket {scheme}://{bucket} does not exist")
    if not overwrite and not is_empty_dir(output):
        raise ConfigError(f"output {output} is not empty; pass --overwrite to replace it")


def _load_head_from(model_dir: str, backbone):
    """The head of a ``featurebeam train`` MODELDIR, checked to sit on this very backbone and output."""
    import keras

    from pipeline.folders import local_copy, read_model_file

    spec = read_model_file(model_dir, MODEL_SPEC, ConfigError)
    if spec.get("finetune"):
        raise ConfigError(f"--head-from {model_dir}: its head sits on a fine-tuned backbone; give the MODELDIR of "
                          "featurebeam train (a head on the frozen backbone)")
    sha = spec.get("backbone", {}).get("weights_sha256")
    if sha != backbone.weights_sha256:
        raise ConfigError(f"--head-from {model_dir}: trained on backbone {spec.get('backbone', {}).get('name')} "
                          f"with other weights than {backbone.name} (sha256 differs); pass its --backbone")
    theirs = OutputSpec.from_json(spec["output"])  # fine-tuning trains below the layer the head reads
    with local_copy(model_dir) as folder:
        path = os.path.join(folder, "heads", spec["head"], "head.keras")
        if not os.path.isfile(path):
            raise ConfigError(f"--head-from {model_dir}: heads/{spec['head']}/head.keras is missing")
        head = keras.saving.load_model(path, safe_mode=True)
    return head, tuple(spec["classes"]), theirs


def check_finetune(config: FinetuneConfig) -> Checked:
    """Every check that needs no training: flags, inputs, MODELDIR, the backbone and ``--head-from``."""
    from pipeline.backbones.registry import resolve_backbone
    from pipeline.inputs import resolve_input
    from transforms.embed.pooling import pooled_dim

    config.validate()
    start = time.monotonic()
    specs = tuple(resolve_input(i, config.input_format) for i in config.inputs)
    test_specs = tuple(resolve_input(i, config.input_format) for i in config.test_inputs)
    _check_model_dir(config.output, config.overwrite)
    backbone = resolve_backbone(config.backbone, config.weights, config.preprocessing,
                                fold_batchnorm=config.fold_batchnorm)
    if backbone.modality != "image":
        raise ConfigError(f"backbone {backbone.name} is a {backbone.modality} backbone; finetune trains image "
                          "backbones")
    layer = backbone.default_layer
    output = OutputSpec(layer, layer, "avg", pooled_dim(backbone.layer_shapes[layer], "avg"))
    head, head_classes = None, ()
    if config.head_from:
        head, head_classes, theirs = _load_head_from(absolute(config.head_from), backbone)
        output = theirs
        if output.layer not in backbone.layer_shapes:
            raise ConfigError(f"--head-from {config.head_from}: its layer {output.layer} is not in {backbone.name}")
    unfreeze = config.unfreeze_for(backbone.name)
    blocks = backbone_blocks(backbone, output.layer)
    if unfreeze >= len(blocks):
        raise ConfigError(f"--unfreeze {unfreeze}: {backbone.name} has {len(blocks)} blocks up to {output.layer} "
                          f"(featurebeam layers lists them); at most {len(blocks) - 1} can be unfrozen")
    return Checked(specs, test_specs, backbone, output, unfreeze, head, head_classes, start)


def run_finetune(config: FinetuneConfig, log=print) -> dict:
    """Check, fine-tune, evaluate and export; returns the metrics dict also written to metrics.json."""
    from pipeline.folders import model_dir_for_writing

    checked = check_finetune(config)
    with model_dir_for_writing(config.output, config.overwrite) as folder:
        return finetune_into(config, checked, folder, log)


# --- the pieces of the flow (training itself: pipeline.finetune.training) ---------------------------------------

def _labelled_split(cached: CachedSet, classes) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows of a test set whose label the model knows, their class indices, and what was left out."""
    y = label_index(cached.labels, classes)
    unseen = collections.Counter(label for label, i in zip(cached.labels, y, strict=True) if i < 0)
    known = np.flatnonzero(y >= 0)
    return known, y[known], {"unseen_labels": dict(sorted(unseen.items()))}


def _write_outputs(folder: str, report: dict, history: dict, classes, probe_head, head, split) -> None:
    for name, model in ((PROBE, probe_head), (FINETUNED, head)):
        sub = os.path.join(folder, "heads", name)
        os.makedirs(sub, exist_ok=True)
        model.save(os.path.join(sub, "head.keras"))
        for split_name in ("validation", "test"):
            m = report["heads"][name]["splits"].get(split_name, {})
            if m.get("examples"):
                evaluation.plot_confusion_matrix(m["confusion_matrix"], classes, f"{name}, {split_name}",
                                                 os.path.join(sub, f"confusion_{split_name}.png"))
    os.makedirs(os.path.join(folder, "finetuned"), exist_ok=True)
    split.top.save(os.path.join(folder, TOP_FILE))
    epochs = history["epoch"]
    curves = {"validation accuracy": (epochs, history["val_accuracy"]),
              "train accuracy": (epochs[1:], history["accuracy"][1:])}
    evaluation.plot_curves(curves, "epoch (0: the linear probe)", "accuracy", "fine-tuning: learning curves",
                           os.path.join(folder, "learning_curve.png"))
    evaluation.plot_curves({"validation loss": (epochs, history["val_loss"]),
                            "train loss": (epochs[1:], history["loss"][1:])}, "epoch (0: the linear probe)",
                           "cross-entropy", "fine-tuning: loss", os.path.join(folder, "loss_curve.png"))


def finetune_into(config: FinetuneConfig, checked: Checked, folder: str, log=print) -> dict:
    """Fine-tune and evaluate into a local folder (steps 2-6 of the module docstring); returns the metrics."""
    import keras

    from pipeline.serving.model import export_serving_model

    backbone, output = checked.backbone, checked.output
    split = split_backbone(backbone, output.layer, checked.unfreeze)
    log(f"featurebeam finetune: {backbone.name} cut after {split.cut}; unfreezing {', '.join(split.unfrozen)}")
    bottom = bottom_function(split)
    keep_images = config.augment != "none"
    reading = {}
    with tempfile.TemporaryDirectory(prefix="featurebeam-finetune-", dir=config.cache_dir) as cache_dir:
        def cache(specs, name):
            counts = ReadCounts()
            images = read_images(specs, config.fields, backbone.preprocessing, config.max_image_pixels, counts)
            cached = build_cache(images, bottom, split.cut_shape, cache_dir, name, config.batch_size,
                                 config.cache_memory_mb, keep_images, split.crop)
            reading[name] = {**counts.to_json(), "cache_seconds": round(cached.seconds, 2),
                             "cache_on_disk": cached.on_disk}
            log(f"featurebeam finetune: {name}: {len(cached)} images through the frozen bottom in "
                f"{cached.seconds:.1f} s ({counts.to_json()['failed']} failed, {counts.unlabelled} unlabelled)")
            return cached

        train_set = cache(checked.specs, "train")
        classes = sorted(set(train_set.labels))
        if len(classes) < 2:
            raise FeatureSetError(f"{config.inputs[0]}: fine-tuning needs at least two labels, found {classes}")
        if checked.head_from is not None:
            if sorted(checked.head_classes) != classes:
                raise ConfigError(f"--head-from {config.head_from} classifies {', '.join(checked.head_classes)}; the "
                                  f"inputs hold {', '.join(classes)}")
            classes = list(checked.head_classes)
        y_all = label_index(train_set.labels, classes)
        is_val = validation_mask(train_set.keys, config.validation_fraction)
        train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise FeatureSetError(f"{len(train_set)} labelled images are too few to split into train and validation")
        y_train, y_val = y_all[train_idx], y_all[val_idx]
        test_set = cache(checked.test_specs, "test") if checked.test_specs else None

        # The probe, on the frozen top's pooled features (computed before any weight moves).
        start = time.monotonic()
        frozen = Networks(split, output, None)
        f_train = map_rows(train_set, train_idx, frozen.features, bottom, 256)
        f_val = map_rows(train_set, val_idx, frozen.features, bottom, 256)
        if checked.head_from is None:
            log(f"featurebeam finetune: fitting the linear probe on {len(train_idx)} images ({len(val_idx)} for "
                f"validation, {len(classes)} classes)")
            probe_head, probe_hyper = fit_probe(f_train, y_train, f_val, y_val, len(classes))
            head_l2 = 0.5 / (probe_hyper["C"] * len(train_idx))  # the probe's own objective, per example
        else:
            probe_head, probe_hyper, head_l2 = checked.head_from, {"from": config.head_from}, 0.0
        probe_seconds = time.monotonic() - start
        splits_of = {"train": (train_set, train_idx, y_train), "validation": (train_set, val_idx, y_val)}
        extras = {}
        if test_set is not None:
            known, y_test, extras["test"] = _labelled_split(test_set, classes)
            splits_of["test"] = (test_set, known, y_test)

        def metrics_of(nets) -> dict:
            result = {}
            for name, (cached, index, y) in splits_of.items():
                p = map_rows(cached, index, nets.probabilities, bottom, 256)
                result[name] = {**evaluation.split_metrics(y, p, classes), **extras.get(name, {})}
            return result

        probe_splits = metrics_of(Networks(split, output, probe_head))

        # Fine-tuning: a copy of the probe head, and the top, trained together.
        head = keras.models.clone_model(probe_head)
        head.set_weights(probe_head.get_weights())
        log(f"featurebeam finetune: fine-tuning {len(split.unfrozen)} blocks "
            f"({sum(int(np.prod(w.shape)) for w in split.top.trainable_weights):,} weights) and the head")
        history = fine_tune(config, split, output, head, train_set, train_idx, y_train, val_idx, y_val, head_l2,
                            bottom, log)
        finetuned_splits = metrics_of(Networks(split, output, head))

    from pipeline.finetune.model import batchnorm_layers

    n_bn = len(batchnorm_layers(split.top))
    finetune = {
        "cut": split.cut, "unfrozen_blocks": list(split.unfrozen), "cut_shape": list(split.cut_shape),
        "top_weights": int(sum(int(np.prod(w.shape)) for w in split.top.trainable_weights)),
        "batchnorm": (f"{n_bn} BatchNormalization layers in the top: non-trainable, inference mode (moving "
                      "statistics fixed)") if n_bn else "none in the top (folded into the convolutions)",
        "optimizer": "Adam, one epoch of linear warm-up then cosine decay", "learning_rate": config.learning_rate,
        "head_learning_rate": config.learning_rate * config.head_lr_factor, "batch_size": config.batch_size,
        "head_l2": head_l2, "dropout": config.dropout, "augment": config.augment,
        "bottom": "run once per image, cached" if not keep_images else "run every epoch on augmented images",
        "early_stopping": (f"kept: the epoch of lowest validation log-loss; stop after {config.patience} epochs "
                           "without a lower one"), "max_epochs": config.epochs,
        "epochs_run": len(history["epoch"]) - 1, "best_epoch": history["best_epoch"],
        "history": {k: v for k, v in history.items() if k != "best_epoch"},
        "seconds": {"probe": round(probe_seconds, 2), "epochs": history["seconds"][1:],
                    "mean_epoch": round(float(np.mean(history["seconds"][1:])), 3)},
    }
    report = {
        "inputs": list(config.inputs), "test_inputs": list(config.test_inputs), "backbone": backbone.describe(),
        "output": output.to_json(), "validation_fraction": config.validation_fraction,
        "split": "hash of key (tf Fingerprint64)", "mode": f"fine-tuned top {len(split.unfrozen)} blocks",
        "reading": reading, "finetune": finetune, "classes": list(classes),
        "heads": {PROBE: {"hyperparameters": probe_hyper, "splits": probe_splits},
                  FINETUNED: {"hyperparameters": {k: finetune[k] for k in ("learning_rate", "head_learning_rate",
                                                                            "dropout", "epochs_run", "best_epoch",
                                                                            "augment")},
                              "splits": finetuned_splits}},
        "best_head": FINETUNED,
    }
    _write_outputs(folder, report, history, classes, probe_head, head, split)
    export_serving_model(os.path.join(folder, "serving"), backbone, output, head, classes,
                         backbone=finetuned_backbone(split))
    report.update(serving="serving", seconds=round(time.monotonic() - checked.start, 2))
    model_spec = {"backbone": backbone.describe(), "preprocessing": dataclasses.asdict(backbone.preprocessing),
                  "output": output.to_json(), "classes": list(classes), "head": FINETUNED, "serving": "serving",
                  "finetune": {"cut": split.cut, "unfrozen_blocks": list(split.unfrozen), "top": TOP_FILE}}
    with open(os.path.join(folder, MODEL_SPEC), "w") as f:
        json.dump(model_spec, f, indent=2)
    with open(os.path.join(folder, METRICS), "w") as f:
        json.dump(report, f, indent=2)
    return report


def format_finetune(report: dict, output: str) -> str:
    """Probe vs fine-tuned accuracy per split, and where the model went."""
    ft = report["finetune"]
    lines = [f"featurebeam: fine-tuned {', '.join(ft['unfrozen_blocks'])} of {report['backbone']['name']} on "
             f"{len(report['classes'])} classes in {report['seconds']:.1f} s (best epoch {ft['best_epoch']} of "
             f"{ft['epochs_run']}, {ft['seconds']['mean_epoch']:.1f} s per epoch)"]
    for name, head in report["heads"].items():
        parts = [f"{split} {m['accuracy']:.4f} ({m['examples']})" for split, m in head["splits"].items()
                 if m.get("examples")]
        lines.append(f"  {name:12s} accuracy: " + ", ".join(parts))
    unseen = report["heads"][FINETUNED]["splits"].get("test", {}).get("unseen_labels")
    if unseen:
        lines.append("  test labels never seen in training (not scored): "
                     + ", ".join(f"{k} x {v}" for k, v in unseen.items()))
    failed = sum(r["failed"] for r in report["reading"].values())
    if failed:
        lines.append(f"  {failed} inputs could not be read or decoded (reasons in metrics.json, 'reading')")
    lines.append(f"  serving model {output}/serving (fine-tuned backbone); metrics {output}/metrics.json")
    return "\n".join(lines)
