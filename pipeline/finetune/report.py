"""What a fine-tuning run says of itself: ``metrics.json`` (``build_report``), ``model.json`` (``model_spec``) and
the summary printed at the end (``format_finetune``). Pure: ``pipeline.finetune.modeldir`` writes them."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from pipeline.finetune.check import Checked
from pipeline.finetune.model import SplitBackbone, batchnorm_layers
from pipeline.finetune.options import FinetuneConfig
from pipeline.finetune.training import Probe

__all__ = ["Outcome", "build_report", "model_spec", "format_finetune", "PROBE", "FINETUNED", "TOP_FILE", "SERVING"]

PROBE, FINETUNED = "linear_probe", "finetuned"
TOP_FILE = os.path.join("finetuned", "top.keras")
SERVING = "serving"


@dataclass(frozen=True)
class Outcome:
    """What fine-tuning produced: the trained networks, their history and their metrics per split."""

    split: SplitBackbone
    classes: list
    reading: dict            # per input set: what reading and caching found
    probe: Probe
    probe_splits: dict
    head: object             # the fine-tuned head
    history: dict
    finetuned_splits: dict


def _finetune_section(config: FinetuneConfig, outcome: Outcome) -> dict:
    """The recipe as it ran: the cut, the optimiser and its settings, the epochs and their times."""
    split, history = outcome.split, outcome.history
    n_bn = len(batchnorm_layers(split.top))
    return {
        "cut": split.cut, "unfrozen_blocks": list(split.unfrozen), "cut_shape": list(split.cut_shape),
        "top_weights": split.top_weight_count,
        "batchnorm": (f"{n_bn} BatchNormalization layers in the top: non-trainable, inference mode (moving "
                      "statistics fixed)") if n_bn else "none in the top (folded into the convolutions)",
        "optimizer": "Adam, one epoch of linear warm-up then cosine decay", "learning_rate": config.learning_rate,
        "head_learning_rate": config.learning_rate * config.head_lr_factor, "batch_size": config.batch_size,
        "head_l2": outcome.probe.l2, "dropout": config.dropout, "augment": config.augment,
        "bottom": "run once per image, cached" if config.augment == "none" else "run every epoch on augmented images",
        "early_stopping": (f"kept: the epoch of lowest validation log-loss; stop after {config.patience} epochs "
                           "without a lower one"), "max_epochs": config.epochs,
        "epochs_run": len(history["epoch"]) - 1, "best_epoch": history["best_epoch"],
        "history": {k: v for k, v in history.items() if k != "best_epoch"},
        "seconds": {"probe": round(outcome.probe.seconds, 2), "epochs": history["seconds"][1:],
                    "mean_epoch": round(float(np.mean(history["seconds"][1:])), 3)},
    }


def build_report(config: FinetuneConfig, checked: Checked, outcome: Outcome) -> dict:
    """``metrics.json`` but for ``serving`` and the run's ``seconds``, which come once the serving model is written."""
    finetune = _finetune_section(config, outcome)
    tuned_hyper = {k: finetune[k] for k in ("learning_rate", "head_learning_rate", "dropout", "epochs_run",
                                            "best_epoch", "augment")}
    return {
        "inputs": list(config.inputs), "test_inputs": list(config.test_inputs),
        "backbone": checked.backbone.describe(), "output": checked.output.to_json(),
        "validation_fraction": config.validation_fraction, "split": "hash of key (tf Fingerprint64)",
        "mode": f"fine-tuned top {len(outcome.split.unfrozen)} blocks", "reading": outcome.reading,
        "finetune": finetune, "classes": list(outcome.classes),
        "heads": {PROBE: {"hyperparameters": outcome.probe.hyperparameters, "splits": outcome.probe_splits},
                  FINETUNED: {"hyperparameters": tuned_hyper, "splits": outcome.finetuned_splits}},
        "best_head": FINETUNED,
    }


def model_spec(checked: Checked, outcome: Outcome) -> dict:
    """``model.json``: what ``featurebeam predict`` needs to serve the fine-tuned model."""
    backbone, split = checked.backbone, outcome.split
    return {"backbone": backbone.describe(), "preprocessing": dataclasses.asdict(backbone.preprocessing),
            "output": checked.output.to_json(), "classes": list(outcome.classes), "head": FINETUNED,
            "serving": SERVING,
            "finetune": {"cut": split.cut, "unfrozen_blocks": list(split.unfrozen), "top": TOP_FILE}}


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
