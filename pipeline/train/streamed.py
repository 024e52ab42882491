"""Training on feature sets too large for memory: the records streamed through ``tf.data`` for every pass,
nothing per record held (classes from the manifests, class counts and confusion matrices added up batch by
batch). The split is the same ``SplitRule`` as in memory; the linear head's C is chosen on the validation
split (a k-fold sweep would read the set k times per C), then refitted on train + validation.
"""

from __future__ import annotations

from pipeline.train import evaluation, heads
from pipeline.train.config import TrainConfig
from pipeline.train.feature_sets import FeatureSetError, count_labels, stream_examples
from pipeline.train.in_memory import SPLIT_TEST
from pipeline.train.splits import TEST, TEST_NAMES, TRAIN, VALIDATION, SplitRule

__all__ = ["train_streamed"]

BATCH = 512


def _metrics(ds, model, classes) -> dict:
    """Metrics of a streamed split: one pass, only the confusion matrix kept."""
    matrix = evaluation.confusion_of_batches(ds, lambda x: model(x, training=False), len(classes))
    return evaluation.confusion_metrics(matrix, classes)


def _fit(name: str, config: TrainConfig, data: dict, dim: int, n_classes: int, n_train: int, cw):
    """(keras head, hyper-parameters, curves) of one head on the streamed splits."""
    if name == "linear":
        model, scores, best_c = heads.fit_linear_streaming(
            data["train"], data["validation"], dim, n_classes, n_train, refit_ds=data["both"], class_weight=cw,
            seed=config.seed, normalizer_data=data["train"].map(lambda x, y: x) if config.standardize else None)
        hyper = {"solver": "Adam minibatches (streamed)", "C": best_c, "l2": 1.0 / best_c,
                 "features": "standardised by the training split (a Normalization layer)" if config.standardize
                 else "raw",
                 "selection": "the validation split (streamed)",
                 "sweep": {f"{c:.6g}": s for c, s in sorted(scores.items())}, "refit": "train + validation",
                 "class_weights": "balanced" if cw else None}
        return model, hyper, {"validation accuracy": (sorted(scores), [scores[c] for c in sorted(scores)])}
    model, history, epochs, best_epoch = heads.fit_mlp(
        data["train"], data["validation"], dim, n_classes, hidden=config.hidden, dropout=config.dropout,
        max_epochs=config.max_epochs, class_weight=cw, seed=config.seed,
        normalizer_data=data["train"].map(lambda x, y: x))
    hyper = {"hidden": config.hidden, "dropout": config.dropout, "epochs_run": epochs,
             "best_epoch": best_epoch, "class_weights": "balanced" if cw else None}
    return model, hyper, {k: (list(range(1, epochs + 1)), v) for k, v in history.items() if "loss" in k}


def train_streamed(config: TrainConfig, rule: SplitRule, sources, test_sources, report: dict, write_head,
                   log, fixed=None) -> list[str]:
    classes = sorted({label for s in sources for label in s.manifest.labels})
    if len(classes) < 2:
        raise FeatureSetError(f"{config.features[0]}: training needs at least two labels, found {classes}")
    dim, n_records = sources[0].output.dim, sum(int(s.manifest.counts.get("embedded", 0)) for s in sources)
    cw = None
    if config.class_weights:
        cw = {i: float(w) for i, w in enumerate(heads.balanced_weights(count_labels(sources, classes, rule)))}
    data = {"train": stream_examples(sources, classes, rule, (TRAIN,), BATCH, shuffle=True, seed=config.seed),
            "validation": stream_examples(sources, classes, rule, (VALIDATION,), BATCH),
            "both": stream_examples(sources, classes, rule, (TRAIN, VALIDATION), BATCH, shuffle=True,
                                    seed=config.seed)}
    held_out = {}
    if test_sources:
        held_out["test"] = stream_examples(test_sources, classes, None, (TRAIN, VALIDATION, TEST), BATCH)
    if {str(n).strip().lower() for s in sources for n in s.manifest.splits} & set(TEST_NAMES):
        held_out[SPLIT_TEST] = stream_examples(sources, classes, rule, (TEST,), BATCH)
    n_train = int(n_records * (1 - rule.fraction))
    fixed = fixed or {}
    for name in (*config.heads, *fixed):
        log(f"featurebeam train: {'making' if name in fixed else 'fitting'} the {name} head on streamed features "
            f"({n_records} records)")
        if name in fixed:  # made, not fitted (a zero-shot head): scored alike
            model, hyper, curves = *fixed[name](classes), {}
        else:
            model, hyper, curves = _fit(name, config, data, dim, len(classes), n_train, cw)
        splits = {"validation": _metrics(data["validation"], model, classes)}
        for split_name, ds in held_out.items():
            splits[split_name] = _metrics(ds, model, classes)
        if test_sources:
            # Streaming skips test records whose label is unknown; the manifests name those labels.
            unseen = sorted({label for t in test_sources for label in t.manifest.labels} - set(classes))
            splits["test"]["unseen_labels"] = {label: "not counted when streamed" for label in unseen}
        report["heads"][name] = {"hyperparameters": hyper, "splits": splits}
        write_head(name, model, report["heads"][name], curves, classes)
    return classes
