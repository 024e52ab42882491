"""Metrics and plots of a trained head: what metrics.json and the PNGs in MODELDIR hold.

Every metric comes from a confusion matrix, so a streamed split is scored by adding up its batches' matrices
(``confusion_of_batches``) and gives the same numbers as the split held in memory (``split_metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

__all__ = ["confusion_matrix", "confusion_of_batches", "confusion_metrics", "split_metrics", "misclassified",
           "plot_confusion_matrix", "plot_curves", "MISCLASSIFIED_CAP"]

MISCLASSIFIED_CAP = 100  # wrong records kept per split in metrics.json, the most confident first


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows the true class, columns the predicted one."""
    cells = np.asarray(y_true, np.int64) * n_classes + np.asarray(y_pred, np.int64)
    return np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def confusion_of_batches(batches: Iterable, predict: Callable, n_classes: int) -> np.ndarray:
    """The confusion matrix of a split given as (x, y) batches, read once; nothing per record is kept."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    for x, y in batches:
        predicted = np.asarray(predict(x)).argmax(axis=1)
        matrix += confusion_matrix(np.asarray(y), predicted, n_classes)
    return matrix


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    numerator, denominator = numerator.astype(np.float64), denominator.astype(np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def confusion_metrics(matrix: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the matrix itself, all from the counts:
    the same numbers scikit-learn gives on the records (``zero_division=0``)."""
    matrix = np.asarray(matrix, np.int64)
    n = int(matrix.sum())
    if n == 0:
        return {"examples": 0}
    tp, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision, recall, f1 = _ratio(tp, predicted), _ratio(tp, support), _ratio(2 * tp, support + predicted)
    return {
        "examples": n,
        "accuracy": float(np.trace(matrix) / n),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
    }


def split_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """``confusion_metrics`` of one split held in memory (true class indices, predicted probabilities)."""
    if len(y_true) == 0:
        return {"examples": 0}
    return confusion_metrics(confusion_matrix(y_true, probabilities.argmax(axis=1), len(classes)), classes)


def misclassified(keys: Sequence[str], y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str],
                  cap: int = MISCLASSIFIED_CAP) -> dict:
    """The records of a split the head gets wrong: how many, and at most ``cap`` of them (key, true and predicted
    class, the predicted class's probability), the most confident mistakes first, ties by key."""
    y_true = np.asarray(y_true, np.int64)
    predicted = probabilities.argmax(axis=1) if len(y_true) else np.zeros(0, np.int64)
    wrong = np.flatnonzero(predicted != y_true)
    confidence = probabilities[wrong, predicted[wrong]] if len(wrong) else np.zeros(0)
    order = sorted(range(len(wrong)), key=lambda i: (-float(confidence[i]), str(keys[wrong[i]])))[:cap]
    records = [{"key": str(keys[wrong[i]]), "true": classes[int(y_true[wrong[i]])],
                "predicted": classes[int(predicted[wrong[i]])], "probability": round(float(confidence[i]), 6)}
               for i in order]
    return {"count": int(len(wrong)), "cap": cap, "records": records}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: str) -> None:
    plt = _pyplot()
    m = np.asarray(matrix)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 8 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 30:
        threshold = m.max() / 2 if m.size else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, title: str,
                path: str, log_x: bool = False) -> None:
    """One line per named curve (x values, y values)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, label=name)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _save_line_plot(plt, fig, ax, title, path)


def plot_by_layer(layers: Sequence[str], series: dict[str, Sequence[float | None]], title: str, path: str) -> None:
    """Accuracy by layer, layers in network order on the x axis, one line per split."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(layers) + 2), 3.6))
    positions = list(range(len(layers)))
    for name, values in series.items():
        points = [(x, v) for x, v in zip(positions, values, strict=True) if v is not None]
        if points:
            ax.plot([x for x, _ in points], [v for _, v in points], marker="o", label=name)
    ax.set_xticks(positions)
    ax.set_xticklabels(layers, rotation=45, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.02)
    _save_line_plot(plt, fig, ax, title, path)


def _save_line_plot(plt, fig, ax, title: str, path: str) -> None:
    """The finish every line plot shares: title, light grid, legend, a 100-dpi PNG."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
