"""``featurebeam report OUTDIR [--model MODELDIR]``: one self-contained HTML page about a feature set.

It holds the manifest, the label distribution, a 2-D PCA projection of the features coloured by label, the
failure reasons, and, with a model directory, the heads' metrics and confusion matrix. The records are read
once, streamed: labels and records are counted, and the projection is of a seeded uniform sample of at most
``sample_size`` records (reservoir sampling), so memory does not grow with the set. Plots are PNGs
embedded as data URIs, so the file opens anywhere, offline. A small script marks the page ready once every
plot has decoded, and records script errors, so a headless browser can check it.
"""

from __future__ import annotations

import base64
import collections
import html
import io

import numpy as np

from pipeline.folders import read_model_file
from pipeline.train.feature_sets import FeatureSetError, FeatureSource, _shard_records, open_feature_sets
from transforms import schema

__all__ = ["build_report", "pca_2d", "read_metrics", "stream_summary", "Reservoir", "SAMPLE_SIZE"]

SAMPLE_SIZE = 5000


class Reservoir:
    """A uniform sample of at most ``size`` rows of a stream of unknown length (Algorithm R), seeded."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self.x = np.empty((size, dim), np.float32)
        self.labels = np.empty(size, dtype=object)
        self.seen = 0

    def offer(self, row: np.ndarray, label) -> None:
        size = len(self.x)
        slot = self.seen if self.seen < size else int(self._rng.integers(0, self.seen + 1))
        self.seen += 1
        if slot < size:
            self.x[slot], self.labels[slot] = row, label

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, labels) of the sample, in slot order."""
        n = min(self.seen, len(self.x))
        return self.x[:n], self.labels[:n]


def _records(source: FeatureSource):
    """(label, vector) of each record's chosen output, shard after shard, one at a time; each vector's dim is
    checked against the manifest, and a damaged shard is named."""
    for path in source.shards:
        try:
            for record in _shard_records(path, source.output):
                vector = record.vectors[source.output.name]
                if len(vector) != source.output.dim:
                    raise FeatureSetError(f"{path}: record {record.key!r} has {len(vector)} values for output "
                                          f"{source.output.name!r}, but the manifest says {source.output.dim}")
                yield record.label, vector
        except FeatureSetError:
            raise
        except Exception as e:
            raise FeatureSetError(f"{path}: cannot read feature records ({type(e).__name__}: {e})") from None


def stream_summary(source: FeatureSource, sample_size: int = SAMPLE_SIZE, seed: int = 0):
    """One pass: (records per label, records, a sample's (x, labels)); the count is checked against the manifest."""
    from apache_beam.io.filesystems import FileSystems

    labels = collections.Counter()
    reservoir = Reservoir(sample_size, source.output.dim, seed)
    for label, vector in _records(source):
        labels[label] += 1
        reservoir.offer(vector, label)
    expected = source.manifest.counts.get("embedded")
    if expected is not None and reservoir.seen != expected:
        raise FeatureSetError(f"{FileSystems.join(source.root, schema.MANIFEST_NAME)}: manifest counts {expected} "
                              f"embedded records, the shards hold {reservoir.seen}")
    return labels, reservoir.seen, reservoir.sample()


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components; returns (points, explained variance ratio)."""
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    variance = s ** 2
    return centred @ vt[:2].T, variance[:2] / max(variance.sum(), 1e-12)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(x: np.ndarray, sample_labels: np.ndarray, labels_count):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    fig, ax = plt.subplots(figsize=(6, 3))
    names = [str(k) if k is not None else "(none)" for k, _ in labels_count]
    ax.bar(range(len(names)), [n for _, n in labels_count])
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 10 else 0)
    ax.set_ylabel("records")
    fig.tight_layout()
    plots["labels"] = _png(fig)
    plt.close(fig)

    points, ratio = pca_2d(x.astype(np.float64))
    fig, ax = plt.subplots(figsize=(6, 5))
    labels = np.array([str(v) if v is not None else "(none)" for v in sample_labels])
    for i, name in enumerate(sorted(set(labels))):
        mask = labels == name
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, label=name, color=plt.cm.tab20(i % 20))
    ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
    if len(set(labels)) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    plots["projection"] = _png(fig)
    plt.close(fig)
    return plots


def _table(rows) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def read_metrics(model_dir: str) -> dict:
    """MODELDIR/metrics.json, local or on gs:// or s3://."""
    return read_model_file(model_dir, "metrics.json", FeatureSetError)


def build_report(output: str, model_dir: str | None = None, sample_size: int = SAMPLE_SIZE, seed: int = 0) -> str:
    """The report's HTML text; the projection is of at most ``sample_size`` records, drawn with ``seed``."""
    (source,) = open_feature_sets([output])
    manifest = source.manifest
    labels, n_records, (x, sample_labels) = stream_summary(source, sample_size, seed)
    labels_count = sorted(labels.items(), key=lambda kv: str(kv[0]))
    plots = _plots(x, sample_labels, labels_count) if len(x) >= 2 else {}
    n_points = len(x) if plots else 0
    output_name = html.escape(source.output.name)

    parts = [f"<h1>Feature set {html.escape(output)}</h1>",
             "<h2>Manifest</h2>",
             _table([("created", manifest.created), ("backbone", manifest.backbone.get("name")),
                     ("weights sha256", manifest.backbone.get("weights_sha256")),
                     *[(f"output {o.name}", f"{o.dim} x {o.dtype}, layer {o.layer}, pooling {o.pooling}, "
                                           f"Example key {o.example_key}") for o in manifest.outputs],
                     *[(k, v) for k, v in manifest.counts.items()], ("shards", len(manifest.shards))]),
             "<h2>Labels</h2>",
             _table([(k if k is not None else "(no label)", n) for k, n in labels_count])]
    if "labels" in plots:
        parts.append(f'<img class="plot" id="labels-plot" alt="label distribution" src="{plots["labels"]}">')
    parts.append(f"<h2>Features: PCA of a sample of {n_points} of {n_records} records (output {output_name})</h2>"
                 if 0 < n_points < n_records else
                 f"<h2>Features: PCA projection ({n_points} records, output {output_name})</h2>")
    if "projection" in plots:
        parts.append(f'<img class="plot" id="projection-plot" alt="PCA projection" src="{plots["projection"]}">')
    parts.append("<h2>Failures</h2>")
    parts.append(_table([(reason, f"{n} (e.g. {manifest.failure_examples.get(reason, '')})")
                         for reason, n in manifest.failures_by_reason.items()]) if manifest.failures_by_reason
                 else "<p>None: every input was embedded.</p>")
    if model_dir:
        metrics = read_metrics(model_dir)
        parts.append(f"<h2>Model {html.escape(model_dir)} (best head: {html.escape(metrics['best_head'])})</h2>")
        for name, head in metrics["heads"].items():
            rows = [(split, f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {m['examples']} examples")
                    for split, m in head["splits"].items() if m.get("examples")]
            parts.append(f"<h3>{html.escape(name)}</h3>" + _table(rows))
            split = "test" if head["splits"].get("test", {}).get("examples") else "validation"
            matrix = head["splits"][split]["confusion_matrix"]
            header = "".join(f"<th>{html.escape(c)}</th>" for c in metrics["classes"])
            body = "".join(f"<tr><th>{html.escape(c)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                           for c, row in zip(metrics["classes"], matrix, strict=True))
            parts.append(f"<p>Confusion matrix ({split}; rows true, columns predicted)</p>"
                         f'<table class="confusion"><tr><th></th>{header}</tr>{body}</table>')
    script = """
window.__errors = [];
window.addEventListener('error', e => { window.__errors.push(String(e.message)); });
window.addEventListener('load', () => {
  const plots = Array.from(document.querySelectorAll('img.plot'));
  const ok = plots.length > 0 && plots.every(img => img.complete && img.naturalWidth > 0);
  document.body.dataset.plots = String(plots.length);
  document.body.dataset.ready = ok ? 'ok' : 'broken';
  document.body.dataset.errors = String(window.__errors.length);
});"""
    style = ("body{font-family:sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse;margin:.5em 0}"
             "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}img.plot{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>featurebeam report</title>"
            f"<style>{style}</style><script>{script}</script></head><body>{''.join(parts)}</body></html>")
