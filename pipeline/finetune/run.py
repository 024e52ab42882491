"""``featurebeam finetune``: from a linear probe on frozen features to a fine-tuned top of the backbone.

1. check everything that needs no training (``pipeline.finetune.check``): inputs, MODELDIR, backbone,
   ``--head-from``;
2. split the backbone before its top K blocks (``pipeline.finetune.model``); read the labelled images with
   extract's readers and decoder and run the frozen bottom once per image (``pipeline.finetune.cache``);
3. split train/validation by the hash of each key, as ``featurebeam train`` does (``pipeline.finetune.splits``);
4. fit the linear probe on the frozen top's pooled features (C swept on validation, fitted on the train split:
   the images fine-tuning trains on), or take the head of ``--head-from``;
5. fine-tune the top K blocks (Adam at ``--learning-rate``, one warm-up epoch then cosine decay) and the head
   (``--head-lr-factor`` times it) from the probe, BatchNorm in inference mode, the probe's own L2 on the head's
   weights and ``--dropout`` on the pooled features; keep the epoch of lowest validation log-loss (epoch 0 is
   the probe itself, so the result is never worse than it on validation) (``pipeline.finetune.training``);
6. write MODELDIR (``pipeline.finetune.modeldir``, the JSON contents ``pipeline.finetune.report``):
   ``metrics.json`` (probe and fine-tuned per split), ``model.json``, ``learning_curve.png``,
   ``heads/{linear_probe,finetuned}/`` (head.keras, confusion matrices), ``finetuned/top.keras`` (the
   fine-tuned blocks) and ``serving/`` (raw image bytes -> probabilities through the fine-tuned backbone),
   which ``featurebeam predict`` uses.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.finetune.cache import CachedSet, bottom_function, build_cache
from pipeline.finetune.check import Checked, check_finetune
from pipeline.finetune.labelled_images import ReadCounts, read_images
from pipeline.finetune.model import SplitBackbone, split_backbone
from pipeline.finetune.modeldir import write_json, write_models, write_serving
from pipeline.finetune.options import FinetuneConfig
from pipeline.finetune.report import (
    FINETUNED,
    PROBE,
    SERVING,
    TOP_FILE,
    Outcome,
    build_report,
    format_finetune,
    model_spec,
)
from pipeline.finetune.splits import Rows, TrainingData, choose_classes, known_test_rows, train_and_validation
from pipeline.finetune.training import Networks, Probe, fine_tune, fit_probe, map_rows
from pipeline.train import evaluation
from pipeline.train.splits import SplitRule, input_roots
from transforms.decode.images import ImagePreprocessing
from transforms.read.input_specs import InputSpec

__all__ = ["Checked", "check_finetune", "run_finetune", "finetune_into", "format_finetune", "PROBE", "FINETUNED",
           "TOP_FILE"]

EVAL_BATCH = 256  # rows per compiled call when evaluating: memory only, the results do not depend on it


def run_finetune(config: FinetuneConfig, log=print) -> dict:
    """Check, fine-tune, evaluate and export; returns the metrics dict also written to metrics.json."""
    from pipeline.folders import model_dir_for_writing

    checked = check_finetune(config)
    with model_dir_for_writing(config.output, config.overwrite) as folder:
        return finetune_into(config, checked, folder, log)


def finetune_into(config: FinetuneConfig, checked: Checked, folder: str, log=print) -> dict:
    """Fine-tune and evaluate into a local folder (steps 2-6 of the module docstring); returns the metrics."""
    split = split_backbone(checked.backbone, checked.output.layer, checked.unfreeze)
    log(f"featurebeam finetune: {checked.backbone.name} cut after {split.cut}; unfreezing "
        f"{', '.join(split.unfrozen)}")
    outcome = _train(config, checked, split, log)
    report = build_report(config, checked, outcome)
    write_models(folder, report, outcome)
    write_serving(folder, checked, outcome)
    report.update(serving=SERVING, seconds=round(time.monotonic() - checked.start, 2))
    write_json(folder, model_spec(checked, outcome), report)
    return report


def _train(config: FinetuneConfig, checked: Checked, split: SplitBackbone, log) -> Outcome:
    """Steps 2-5: the inputs through the frozen bottom, the probe, the fine-tuning, and both heads scored."""
    bottom = bottom_function(split)
    with tempfile.TemporaryDirectory(prefix="featurebeam-finetune-", dir=config.cache_dir) as cache_dir:
        cache = _Caching(config, split, checked.backbone.preprocessing, bottom, cache_dir, log)
        train_set = cache(checked.specs, "train")
        head_from = (config.head_from, checked.head_classes) if checked.head_from is not None else None
        classes = choose_classes(train_set.labels, config.inputs[0], head_from)
        rule = SplitRule(config.validation_fraction, config.seed, input_roots(checked.specs))
        data = TrainingData(*train_and_validation(train_set, classes, rule), bottom)
        test_set = cache(checked.test_specs, "test") if checked.test_specs else None
        probe = _start_head(config, checked, split, data, len(classes), log)
        scored = {"train": (data.train, {}), "validation": (data.validation, {})}
        if test_set is not None:
            scored["test"] = known_test_rows(test_set, classes)
        probe_splits = _scores(Networks(split, checked.output, probe.head), scored, classes, bottom)
        head = _copy_of(probe.head)
        log(f"featurebeam finetune: fine-tuning {len(split.unfrozen)} blocks ({split.top_weight_count:,} weights) "
            "and the head")
        nets = Networks(split, checked.output, head)
        history = fine_tune(config, nets, data, probe.l2, log)
        finetuned_splits = _scores(nets, scored, classes, bottom)
    return Outcome(split, classes, cache.reading, probe, probe_splits, head, history, finetuned_splits)


@dataclass
class _Caching:
    """Reads one input set and runs the frozen bottom once per image into ``folder`` (or keeps the images, to
    augment them each epoch); ``reading`` collects what reading and caching each set found."""

    config: FinetuneConfig
    split: SplitBackbone
    preprocessing: ImagePreprocessing
    bottom: Callable
    folder: str
    log: Callable
    reading: dict = field(default_factory=dict)

    def __call__(self, specs: Sequence[InputSpec], name: str) -> CachedSet:
        config, counts = self.config, ReadCounts()
        images = read_images(specs, config.fields, self.preprocessing, config.max_image_pixels, counts)
        cached = build_cache(images, self.bottom, self.split.cut_shape, self.folder, name, config.batch_size,
                             config.cache_memory_mb, config.augment != "none", self.split.crop)
        self.reading[name] = {**counts.to_json(), "cache_seconds": round(cached.seconds, 2),
                              "cache_on_disk": cached.on_disk}
        self.log(f"featurebeam finetune: {name}: {len(cached)} images through the frozen bottom in "
                 f"{cached.seconds:.1f} s ({counts.to_json()['failed']} failed, {counts.unlabelled} unlabelled)")
        return cached


def _start_head(config: FinetuneConfig, checked: Checked, split: SplitBackbone, data: TrainingData, n_classes: int,
                log) -> Probe:
    """The linear probe, fitted on the frozen top's pooled features (computed before any weight moves), or the
    head of ``--head-from``."""
    start = time.monotonic()
    frozen = Networks(split, checked.output, None)
    train, val = data.train, data.validation
    f_train = map_rows(train.cached, train.index, frozen.features, data.bottom, EVAL_BATCH)
    f_val = map_rows(val.cached, val.index, frozen.features, data.bottom, EVAL_BATCH)
    if checked.head_from is not None:
        return Probe(checked.head_from, {"from": config.head_from}, 0.0, time.monotonic() - start)
    log(f"featurebeam finetune: fitting the linear probe on {len(train.index)} images ({len(val.index)} for "
        f"validation, {n_classes} classes)")
    head, hyper = fit_probe(f_train, train.y, f_val, val.y, n_classes)
    l2 = 0.5 / (hyper["C"] * len(train.index))  # the probe's own objective, per example
    return Probe(head, hyper, l2, time.monotonic() - start)


def _scores(nets: Networks, scored: dict[str, tuple[Rows, dict]], classes: Sequence[str], bottom) -> dict:
    """Metrics of ``nets`` per split, with what each split reports besides (a test set's unseen labels)."""
    result = {}
    for name, (rows, extras) in scored.items():
        p = map_rows(rows.cached, rows.index, nets.probabilities, bottom, EVAL_BATCH)
        result[name] = {**evaluation.split_metrics(rows.y, p, classes), **extras}
    return result


def _copy_of(head):
    """A copy of ``head`` with its weights: fine-tuning trains the copy, the probe stays as it was fitted."""
    import keras

    copy = keras.models.clone_model(head)
    copy.set_weights(head.get_weights())
    return copy
