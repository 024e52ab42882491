"""The report's figures, drawn with matplotlib (Agg) and returned as PNG data URIs, so the page needs no other file:
bar charts, the 2-D PCA projection of the features, the layer sweep drawn again from its table.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

__all__ = ["pca_2d", "png_uri", "bar_plot", "projection_plot", "layer_sweep_plot"]


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components; returns (points, explained variance ratio).

    Only the top two eigenpairs of the smaller of the covariance (dim x dim) and Gram (rows x rows) matrices are
    computed: a full SVD of a 5,000 x 1,280 sample costs many times the time and memory."""
    import scipy.linalg

    centred = x - x.mean(axis=0, dtype=np.float64).astype(x.dtype)
    n, dim = centred.shape
    k = min(2, n, dim)
    gram = n < dim
    square = centred @ centred.T if gram else centred.T @ centred
    values, vectors = scipy.linalg.eigh(square, subset_by_index=[len(square) - k, len(square) - 1])
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    points = vectors * np.sqrt(values) if gram else centred @ vectors
    points = np.pad(points, ((0, 0), (0, 2 - k)))
    return points, np.pad(values, (0, 2 - k)) / max(float(np.trace(square)), 1e-12)  # trace: the total variance


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_uri(data: bytes) -> str:
    """PNG bytes as a data URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure_uri(plt, fig) -> str:
    """The figure as a 90-dpi PNG data URI; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return png_uri(buf.getvalue())


def bar_plot(names: list[str], values: list[float], ylabel: str, ylim: tuple | None = None) -> str:
    """One bar per name, names on the x axis (turned upright when there are many)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.25 * len(names))), 3))
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 10 else 0,
                  fontsize=7 if len(names) > 30 else None)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    fig.tight_layout()
    return _figure_uri(plt, fig)


def projection_plot(x: np.ndarray, label_names: Sequence[str]) -> str:
    """The rows of ``x`` on their first two principal components, one colour per label name (a legend up to 20)."""
    plt = _pyplot()
    points, ratio = pca_2d(x)  # float32 like the features: a float64 copy of the sample would double its memory
    fig, ax = plt.subplots(figsize=(6, 5))
    labels = np.array(list(label_names))
    for i, name in enumerate(sorted(set(labels))):
        mask = labels == name
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, label=name, color=plt.cm.tab20(i % 20))
    ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
    if len(set(labels)) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    return _figure_uri(plt, fig)


def layer_sweep_plot(sweep: dict) -> str:
    """A layer sweep's accuracy by layer, drawn from its table as ``featurebeam train`` draws layer_sweep.png."""
    from pipeline.train import evaluation

    order, layers = sweep["order"], sweep["layers"]
    series = {"validation": [layers[n]["validation_accuracy"] for n in order]}
    if any("test_accuracy" in layers[n] for n in order):
        series["test"] = [layers[n].get("test_accuracy") for n in order]
    buf = io.BytesIO()
    evaluation.plot_by_layer(order, series, "linear probe accuracy by layer", buf)
    return png_uri(buf.getvalue())
