"""Writing a fine-tuned MODELDIR into a local folder: ``heads/{linear_probe,finetuned}/`` (head.keras, confusion
matrices), ``finetuned/top.keras``, the learning and loss curves, ``serving/`` and the two JSON files. The names
and the JSON contents are ``pipeline.finetune.report``'s."""

from __future__ import annotations

import json
import os

from pipeline.finetune.check import Checked
from pipeline.finetune.model import finetuned_backbone
from pipeline.finetune.report import FINETUNED, PROBE, SERVING, TOP_FILE, Outcome
from pipeline.train import evaluation
from pipeline.train.config import METRICS, MODEL_SPEC

__all__ = ["write_models", "write_serving", "write_json"]


def write_models(folder: str, report: dict, outcome: Outcome) -> None:
    """Both heads with their confusion matrices, the fine-tuned top and the curves of its training."""
    for name, model in ((PROBE, outcome.probe.head), (FINETUNED, outcome.head)):
        sub = os.path.join(folder, "heads", name)
        os.makedirs(sub, exist_ok=True)
        model.save(os.path.join(sub, "head.keras"))
        for split_name in ("validation", "test"):
            m = report["heads"][name]["splits"].get(split_name, {})
            if m.get("examples"):
                evaluation.plot_confusion_matrix(m["confusion_matrix"], outcome.classes, f"{name}, {split_name}",
                                                 os.path.join(sub, f"confusion_{split_name}.png"))
    os.makedirs(os.path.join(folder, "finetuned"), exist_ok=True)
    outcome.split.top.save(os.path.join(folder, TOP_FILE))
    _plot_history(folder, outcome.history)


def _plot_history(folder: str, history: dict) -> None:
    epochs = history["epoch"]
    curves = {"validation accuracy": (epochs, history["val_accuracy"]),
              "train accuracy": (epochs[1:], history["accuracy"][1:])}
    evaluation.plot_curves(curves, "epoch (0: the linear probe)", "accuracy", "fine-tuning: learning curves",
                           os.path.join(folder, "learning_curve.png"))
    evaluation.plot_curves({"validation loss": (epochs, history["val_loss"]),
                            "train loss": (epochs[1:], history["loss"][1:])}, "epoch (0: the linear probe)",
                           "cross-entropy", "fine-tuning: loss", os.path.join(folder, "loss_curve.png"))


def write_serving(folder: str, checked: Checked, outcome: Outcome) -> None:
    """``serving/``: raw image bytes -> probabilities through the fine-tuned backbone and head."""
    from pipeline.serving.model import export_serving_model

    export_serving_model(os.path.join(folder, SERVING), checked.backbone, checked.output, outcome.head,
                         outcome.classes, backbone=finetuned_backbone(outcome.split))


def write_json(folder: str, model_spec: dict, report: dict) -> None:
    """``model.json`` and ``metrics.json``."""
    with open(os.path.join(folder, MODEL_SPEC), "w") as f:
        json.dump(model_spec, f, indent=2)
    with open(os.path.join(folder, METRICS), "w") as f:
        json.dump(report, f, indent=2)
