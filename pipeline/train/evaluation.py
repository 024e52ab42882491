"""Metrics and plots of a trained head: what metrics.json and the PNGs in MODELDIR hold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["split_metrics", "plot_confusion_matrix", "plot_curves"]


def split_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix of one split."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = np.arange(len(classes))
    n = int(len(y_true))
    if n == 0:
        return {"examples": 0}
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "examples": n,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


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
