"""``featurebeam report OUTDIR [--model MODELDIR]``: one self-contained HTML page about a feature set.

What it shows, and what each part is drawn from:

1. the manifest, the label distribution (table and bar chart);
2. per class, a strip of sample inputs (thumbnails; the first line for text sets);
3. a 2-D PCA projection of the features coloured by label;
4. nearest neighbours: for a few sampled records, the most similar records by cosine (``neighbours.py``);
5. failures: counts by reason (manifest) and the first dead letters (``errors/``) with key, reason and, for
   images, a thumbnail where one can be made;
6. with a model directory: each head's metrics, its confusion matrix as a heat map (counts and row-normalised),
   the best head's per-class recall, the records it gets wrong grouped by true -> predicted class (from the
   capped list ``featurebeam train`` records in metrics.json), and the layer sweep when there is one.

The records are read once, streamed: labels and records are counted, and the projection and neighbours are of a
seeded uniform sample of at most ``sample_size`` records (reservoir sampling), the class strips of a bounded
sample per class, so memory does not grow with the set. At most ``max_thumbnails`` thumbnails are embedded
(small JPEGs, ``thumbnails.py``), read through the same filesystems as extract; the page says so. Plots and
thumbnails are data URIs, so the file opens anywhere, offline. A small script marks the page ready once every
image has decoded, and records script errors, so a headless browser can check it.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import json
from dataclasses import dataclass, field

import numpy as np

from pipeline.folders import UNCOMPRESSED, read_model_file
from pipeline.report.neighbours import NEAR_DUPLICATE, cosine_neighbours, pick_queries
from pipeline.report.thumbnails import THUMBNAIL_PIXELS, Preview, image_previews, text_previews
from pipeline.train.feature_sets import FeatureSetError, FeatureSource, open_feature_sets
from transforms.schema.layout import MANIFEST_NAME
from transforms.schema.manifest import read_shard

__all__ = ["build_report", "pca_2d", "read_metrics", "scan_feature_set", "read_dead_letters", "confusion_heatmap",
           "allocate_thumbnails", "class_strip_shape", "Reservoir", "ClassSample", "Scan", "SAMPLE_SIZE",
           "MAX_THUMBNAILS"]

SAMPLE_SIZE = 5000
MAX_THUMBNAILS = 300      # thumbnails embedded in one page, all sections together
PER_CLASS = 8             # sample inputs shown per class
NEIGHBOUR_QUERIES = 6     # sampled records whose neighbours are shown
NEIGHBOURS = 5            # neighbours shown per query
MAX_DEAD_LETTERS = 20     # failed inputs listed
HEATMAP_CLASSES = 50      # above this many classes no heat map is drawn (per-class recall still is)


class Reservoir:
    """A uniform sample of at most ``size`` rows of a stream of unknown length (Algorithm R), seeded; each row
    keeps its label and key."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self.x = np.empty((size, dim), np.float32)
        self.labels = np.empty(size, dtype=object)
        self.keys = np.empty(size, dtype=object)
        self.seen = 0

    def offer(self, row: np.ndarray, label, key: str | None = None) -> None:
        size = len(self.x)
        slot = self.seen if self.seen < size else int(self._rng.integers(0, self.seen + 1))
        self.seen += 1
        if slot < size:
            self.x[slot], self.labels[slot], self.keys[slot] = row, label, key

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, labels, keys) of the sample, in slot order."""
        n = min(self.seen, len(self.x))
        return self.x[:n], self.labels[:n], self.keys[:n]


class ClassSample:
    """Per label, a uniform sample of at most ``size`` keys (Algorithm R per label), seeded: memory is labels x
    ``size`` keys, whatever the number of records."""

    def __init__(self, size: int, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self._size = size
        self._seen: collections.Counter = collections.Counter()
        self.keys: dict = {}

    def offer(self, label, key: str) -> None:
        seen = self._seen[label]
        self._seen[label] += 1
        kept = self.keys.setdefault(label, [])
        if seen < self._size:
            kept.append(key)
        else:
            slot = int(self._rng.integers(0, seen + 1))
            if slot < self._size:
                kept[slot] = key


@dataclass
class Scan:
    """What one pass over a feature set keeps: counts, a sample of records and a sample of keys per class."""

    labels: collections.Counter
    records: int
    x: np.ndarray
    sample_labels: np.ndarray
    sample_keys: np.ndarray
    class_keys: dict = field(default_factory=dict)


def _records(source: FeatureSource):
    """(key, label, vector) of each record's chosen output, shard after shard, one at a time; each vector's dim
    is checked against the manifest, and a damaged shard is named."""
    for path in source.shards:
        try:
            for record in read_shard(path, [source.output]):
                vector = record.vectors[source.output.name]
                if len(vector) != source.output.dim:
                    raise FeatureSetError(f"{path}: record {record.key!r} has {len(vector)} values for output "
                                          f"{source.output.name!r}, but the manifest says {source.output.dim}")
                yield record.key, record.label, vector
        except FeatureSetError:
            raise
        except Exception as e:
            raise FeatureSetError(f"{path}: cannot read feature records ({type(e).__name__}: {e})") from None


def scan_feature_set(source: FeatureSource, sample_size: int = SAMPLE_SIZE, seed: int = 0,
                     per_class: int = PER_CLASS) -> Scan:
    """One pass: records per label, records, a sample of ``sample_size`` records and of ``per_class`` keys per
    label; the count is checked against the manifest."""
    from apache_beam.io.filesystems import FileSystems

    labels = collections.Counter()
    reservoir = Reservoir(sample_size, source.output.dim, seed)
    classes = ClassSample(per_class, seed + 1)
    for key, label, vector in _records(source):
        labels[label] += 1
        reservoir.offer(vector, label, key)
        classes.offer(label, key)
    expected = source.manifest.counts.get("embedded")
    if expected is not None and reservoir.seen != expected:
        raise FeatureSetError(f"{FileSystems.join(source.root, MANIFEST_NAME)}: manifest counts {expected} "
                              f"embedded records, the shards hold {reservoir.seen}")
    x, sample_labels, sample_keys = reservoir.sample()
    return Scan(labels, reservoir.seen, x, sample_labels, sample_keys, classes.keys)


def read_dead_letters(source: FeatureSource, limit: int = MAX_DEAD_LETTERS) -> list[dict]:
    """The first ``limit`` dead letters of the set's error files (key, stage, error_type, message), streamed:
    reading stops there. A file that cannot be read gives one entry that says so."""
    from apache_beam.io.filesystems import FileSystems

    letters: list[dict] = []
    for name in source.manifest.error_files:
        if len(letters) >= limit:
            break
        path = FileSystems.join(source.root, name)
        try:
            with FileSystems.open(path, compression_type=UNCOMPRESSED) as f:
                for line in f:
                    if len(letters) >= limit:
                        break
                    if line.strip():
                        letters.append(json.loads(line))
        except Exception as e:
            letters.append({"key": path, "stage": "report", "error_type": type(e).__name__,
                            "message": f"this error file cannot be read: {e}"})
    return letters


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


def allocate_thumbnails(cap: int, wanted: dict[str, int]) -> dict[str, int]:
    """Share ``cap`` thumbnails between sections asking for ``wanted[name]`` each, in the dict's order (first
    asked, first served)."""
    granted, left = {}, cap
    for name, n in wanted.items():
        granted[name] = max(0, min(n, left))
        left -= granted[name]
    return granted


def class_strip_shape(sizes: list[int], granted: int, most: int = PER_CLASS) -> tuple[int, int]:
    """(records per class, classes shown) for class strips of classes holding ``sizes`` sampled keys each, within
    ``granted`` thumbnails: as many per class as fit (at most ``most``), and when not even one of each fits, one of
    each of the first ``granted`` classes."""
    fits = [p for p in range(1, most + 1) if sum(min(p, n) for n in sizes) <= granted]
    if fits:
        return fits[-1], len(sizes)
    return 1, max(0, min(len(sizes), granted))


# Plots ------------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return _png_uri(buf.getvalue())


def _bar_plot(names: list[str], values: list[float], ylabel: str, ylim: tuple | None = None) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.25 * len(names))), 3))
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 10 else 0,
                  fontsize=7 if len(names) > 30 else None)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    fig.tight_layout()
    uri = _png(fig)
    plt.close(fig)
    return uri


def _projection_plot(x: np.ndarray, sample_labels: np.ndarray) -> str:
    plt = _pyplot()
    points, ratio = pca_2d(x)  # float32 like the features: a float64 copy of the sample would double its memory
    fig, ax = plt.subplots(figsize=(6, 5))
    labels = np.array([_name(v) for v in sample_labels])
    for i, name in enumerate(sorted(set(labels))):
        mask = labels == name
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, label=name, color=plt.cm.tab20(i % 20))
    ax.set_xlabel(f"PC 1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({ratio[1]:.0%} of variance)")
    if len(set(labels)) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best")
    fig.tight_layout()
    uri = _png(fig)
    plt.close(fig)
    return uri


def _plot_img(uri: str, element_id: str, alt: str) -> str:
    return f'<img class="plot" id="{element_id}" alt="{html.escape(alt)}" src="{uri}">'


# HTML pieces --------------------------------------------------------------------------------------------------------


def _name(label) -> str:
    return str(label) if label is not None else "(none)"


def _table(rows) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _tile(preview: Preview, caption: str, attrs: dict[str, str] | None = None) -> str:
    """One record: its thumbnail, its text's first line, or the reason there is neither; then a caption."""
    data = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in (attrs or {}).items())
    key = html.escape(preview.key)
    if preview.src:
        body = f'<img class="thumb" alt="{key}" src="{preview.src}">'
    elif preview.text is not None:
        body = f'<blockquote class="line">{html.escape(preview.text)}</blockquote>'
    else:
        body = f'<div class="none">no thumbnail</div><small class="reason">{html.escape(preview.reason or "")}</small>'
    return (f'<figure class="tile" data-key="{key}"{data} title="{key}">{body}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _basename(key: str) -> str:
    return key.rstrip("/").rsplit("/", 1)[-1]


def confusion_heatmap(matrix, classes, normalise: bool = False) -> str:
    """A confusion matrix as an HTML table whose cells are shaded by value: counts (shade relative to the largest
    cell), or each row divided by its total (the share of a true class predicted as each class)."""
    m = np.asarray(matrix, np.float64)
    totals = m.sum(axis=1, keepdims=True)
    shown = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0) if normalise else m
    top = shown.max() if shown.size and shown.max() > 0 else 1.0
    header = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = []
    for name, values, counts in zip(classes, shown, m, strict=True):
        cells = []
        for value, count in zip(values, counts, strict=True):
            shade = value / top
            colour = "#fff" if shade > 0.55 else "#000"
            text = f"{value:.0%}" if normalise else f"{int(count)}"
            cells.append(f'<td style="background:rgba(8,81,156,{shade:.3f});color:{colour}">{text}</td>')
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    kind = "row-normalised" if normalise else "counts"
    return (f'<table class="heatmap" data-kind="{kind}"><tr><th>true \\ predicted</th>{header}</tr>'
            f"{''.join(rows)}</table>")


# Sections -----------------------------------------------------------------------------------------------------------


def _manifest_section(output: str, manifest) -> list[str]:
    return [f"<h1>Feature set {html.escape(output)}</h1>", "<h2>Manifest</h2>",
            _table([("created", manifest.created), ("backbone", manifest.backbone.get("name")),
                    ("weights sha256", manifest.backbone.get("weights_sha256")),
                    *[(f"output {o.name}", f"{o.dim} x {o.dtype}, layer {o.layer}, pooling {o.pooling}, "
                                          f"Example key {o.example_key}") for o in manifest.outputs],
                    *[(k, v) for k, v in manifest.counts.items()],
                    ("shards", ", ".join(f"{len(files)} {name}" for name, files in (
                        ("TFRecord", manifest.shards), ("Parquet", manifest.parquet_shards)) if files) or 0)])]


def _labels_section(labels_count) -> list[str]:
    parts = ["<h2>Labels</h2>", _table([(k if k is not None else "(no label)", n) for k, n in labels_count])]
    if labels_count:
        parts.append(_plot_img(_bar_plot([_name(k) for k, _ in labels_count], [n for _, n in labels_count],
                                         "records"), "labels-plot", "label distribution"))
    return parts


def _class_strips(class_keys: dict, per_class: int, classes: int, previews: dict) -> list[str]:
    parts = ['<section id="classes"><h2>Samples per class</h2>',
             f"<p>A uniform sample of up to {per_class} records of each class"
             + (f" (the first {classes} classes, by name, within the thumbnail cap)" if classes < len(class_keys)
                else "") + ".</p>"]
    for label in sorted(class_keys, key=_name)[:classes]:
        tiles = "".join(_tile(previews[k], _basename(k)) for k in class_keys[label][:per_class])
        parts.append(f'<div class="class" data-label="{html.escape(_name(label))}">'
                     f"<h3>{html.escape(_name(label))}</h3><div class='strip'>{tiles}</div></div>")
    return parts + ["</section>"]


def _projection_section(scan: Scan, output_name: str) -> list[str]:
    n_points = len(scan.x) if len(scan.x) >= 2 else 0
    parts = [f"<h2>Features: PCA of a sample of {n_points} of {scan.records} records (output {output_name})</h2>"
             if 0 < n_points < scan.records else
             f"<h2>Features: PCA projection ({n_points} records, output {output_name})</h2>"]
    if n_points:
        parts.append(_plot_img(_projection_plot(scan.x, scan.sample_labels), "projection-plot", "PCA projection"))
    return parts


def _neighbours_section(scan: Scan, queries: np.ndarray, found: np.ndarray, similarity: np.ndarray,
                        previews: dict) -> list[str]:
    searched = (f"a sample of {len(scan.x)} of {scan.records} records" if len(scan.x) < scan.records
                else f"all {scan.records} records")
    parts = ['<section id="neighbours"><h2>Nearest neighbours</h2>',
             f"<p>For {len(queries)} sampled records, the {found.shape[1] if found.ndim == 2 else 0} most similar "
             f"records by cosine similarity of their features, searched among {searched}. Neighbours of another "
             f"label are marked; a similarity of {NEAR_DUPLICATE} or more marks a likely near-duplicate.</p>"]
    for q, row, sims in zip(queries, found, similarity, strict=True):
        query_key, query_label = scan.sample_keys[q], scan.sample_labels[q]
        tiles = [_tile(previews[query_key], f"query: {_name(query_label)}", {"role": "query"})]
        for j, s in zip(row, sims, strict=True):
            key, label = scan.sample_keys[j], scan.sample_labels[j]
            marks = (" near-duplicate" if s >= NEAR_DUPLICATE else "") + (" other label" if label != query_label
                                                                            else "")
            tiles.append(_tile(previews[key], f"{_name(label)} cos {s:.3f}{marks}", {"role": "neighbour"}))
        parts.append(f'<div class="strip neighbours" data-query="{html.escape(str(query_key))}">{"".join(tiles)}'
                     "</div>")
    return parts + ["</section>"]


def _failures_section(manifest, letters: list[dict], with_thumbnails: int, previews: dict) -> list[str]:
    parts = ['<section id="failures"><h2>Failures</h2>']
    if not manifest.failures_by_reason and not letters:
        return parts + ["<p>None: every input was embedded.</p></section>"]
    parts.append(_table([(reason, f"{n} (e.g. {manifest.failure_examples.get(reason, '')})")
                         for reason, n in manifest.failures_by_reason.items()]))
    if letters:
        failed = manifest.counts.get("failed", len(letters))
        parts.append(f"<p>The first {len(letters)} of {failed} failed inputs (from the dead letters in errors/)"
                     + (f", with a thumbnail where one can be made for the first {with_thumbnails}" if with_thumbnails
                        else "") + ".</p>")
        rows = []
        for i, letter in enumerate(letters):
            key = str(letter.get("key", ""))
            reason = f"{letter.get('stage', '?')}: {letter.get('error_type', '?')}"
            cell = _tile(previews[key], _basename(key)) if i < with_thumbnails and key in previews else ""
            rows.append(f'<tr class="failure" data-key="{html.escape(key)}"><td>{cell}</td>'
                        f"<td>{html.escape(key)}</td><td>{html.escape(reason)}</td>"
                        f"<td>{html.escape(str(letter.get('message', '')))}</td></tr>")
        parts.append("<table class='failures'><tr><th></th><th>key</th><th>reason</th><th>message</th></tr>"
                     + "".join(rows) + "</table>")
    return parts + ["</section>"]


def _scored_split(head: dict) -> str:
    """The split a head's errors are shown for: test when it was scored, else validation."""
    return "test" if head["splits"].get("test", {}).get("examples") else "validation"


def _head_section(name: str, head: dict, classes: list[str]) -> list[str]:
    rows = [(split, f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {m['examples']} examples")
            for split, m in head["splits"].items() if m.get("examples")]
    parts = [f"<h3>{html.escape(name)}</h3>", _table(rows)]
    split = _scored_split(head)
    matrix = head["splits"].get(split, {}).get("confusion_matrix")
    if matrix is None:
        return parts
    parts.append(f"<p>Confusion matrix ({split}; rows true, columns predicted)</p>")
    if len(classes) > HEATMAP_CLASSES:
        return parts + [f"<p>{len(classes)} classes: too many for a heat map (more than {HEATMAP_CLASSES}); see "
                        "per-class recall.</p>"]
    return parts + [f'<div class="heatmaps" data-head="{html.escape(name)}">'
                    f"{confusion_heatmap(matrix, classes)}{confusion_heatmap(matrix, classes, normalise=True)}</div>"]


def _recall_plot(head: dict, classes: list[str]) -> list[str]:
    split = _scored_split(head)
    per_class = head["splits"].get(split, {}).get("per_class")
    if not per_class:
        return []
    recall = [per_class[c]["recall"] for c in classes if c in per_class]
    return [f"<h3>Per-class recall ({split})</h3>",
            _plot_img(_bar_plot([c for c in classes if c in per_class], recall, "recall", (0, 1.02)),
                      "recall-plot", "per-class recall")]


def _misclassified_section(head_name: str, head: dict, shown: int, previews: dict) -> list[str]:
    split = _scored_split(head)
    metrics = head["splits"].get(split, {})
    wrong = metrics.get("misclassified")
    examples = metrics.get("examples", 0)
    parts = [f'<section id="misclassified" data-split="{split}" data-head="{html.escape(head_name)}">'
             f"<h2>Misclassified ({head_name} head, {split})</h2>"]
    if wrong is None:
        return parts + ["<p>Not recorded in this model directory: streamed training and older models keep only "
                        "the confusion matrix (retrain in memory to record the wrong records).</p></section>"]
    records = wrong["records"][:shown]
    parts.append(f"<p>{wrong['count']} of {examples} records are misclassified"
                 + (f"; showing the {len(records)} the head was most sure of"
                    if len(records) < wrong["count"] else "") + ", grouped by true \u2192 predicted class, with "
                 "the head's probability of its prediction.</p>")
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r["true"], r["predicted"]), []).append(r)
    for (true, predicted), members in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        tiles = "".join(_tile(previews[r["key"]], f"p {r['probability']:.2f} {_basename(r['key'])}",
                              {"true": r["true"], "predicted": r["predicted"]}) for r in members)
        parts.append(f'<div class="group" data-true="{html.escape(true)}" data-predicted="{html.escape(predicted)}">'
                     f"<h3>{html.escape(true)} \u2192 {html.escape(predicted)} ({len(members)})</h3>"
                     f"<div class='strip'>{tiles}</div></div>")
    return parts + ["</section>"]


def _read_bytes(path: str) -> bytes | None:
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type=UNCOMPRESSED) as f:
        return f.read()


def _sweep_row(name: str, layer: dict, best: bool) -> str:
    test = f"{layer['test_accuracy']:.4f}" if "test_accuracy" in layer else ""
    return (f"<tr{' class=best' if best else ''}><th>{html.escape(name)}</th><td>{layer['dim']}</td>"
            f"<td>{layer['validation_accuracy']:.4f}</td><td>{test}</td></tr>")


def _layer_sweep_section(model_dir: str, sweep: dict) -> list[str]:
    """The sweep's table and its plot (MODELDIR/layer_sweep.png, or drawn again from the table)."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.train import evaluation

    order, layers = sweep["order"], sweep["layers"]
    png = _read_bytes(FileSystems.join(model_dir, "layer_sweep.png"))
    if png is None:
        series = {"validation": [layers[n]["validation_accuracy"] for n in order]}
        if any("test_accuracy" in layers[n] for n in order):
            series["test"] = [layers[n].get("test_accuracy") for n in order]
        buf = io.BytesIO()
        evaluation.plot_by_layer(order, series, "linear probe accuracy by layer", buf)
        png = buf.getvalue()
    return ['<section id="layer-sweep"><h2>Layer sweep</h2>',
            f"<p>Best layer: {html.escape(sweep['best_layer'])} ({html.escape(sweep.get('criterion', ''))}).</p>",
            "<table><tr><th>layer</th><th>dim</th><th>validation</th><th>test</th></tr>"
            + "".join(_sweep_row(n, layers[n], n == sweep["best_layer"]) for n in order) + "</table>",
            _plot_img(_png_uri(png), "layer-sweep-plot", "accuracy by layer"), "</section>"]


def read_metrics(model_dir: str) -> dict:
    """MODELDIR/metrics.json, local or on gs:// or s3://."""
    return read_model_file(model_dir, "metrics.json", FeatureSetError)


def _layer_sweep(model_dir: str, metrics: dict) -> dict | None:
    """The layer sweep of a ``--sweep-layers`` model directory (in metrics.json, or layer_sweep.json), or None."""
    from apache_beam.io.filesystems import FileSystems

    if metrics.get("layer_sweep"):
        return metrics["layer_sweep"]
    data = _read_bytes(FileSystems.join(model_dir, "layer_sweep.json"))
    return json.loads(data.decode("utf-8")) if data else None


SCRIPT = """
window.__errors = [];
window.addEventListener('error', e => { window.__errors.push(String(e.message)); });
window.addEventListener('load', () => {
  const images = Array.from(document.querySelectorAll('img'));
  const plots = images.filter(img => img.classList.contains('plot'));
  const ok = plots.length > 0 && images.every(img => img.complete && img.naturalWidth > 0);
  document.body.dataset.plots = String(plots.length);
  document.body.dataset.thumbnails = String(images.length - plots.length);
  document.body.dataset.ready = ok ? 'ok' : 'broken';
  document.body.dataset.errors = String(window.__errors.length);
});"""

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
         "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}img.plot{max-width:100%}"
         ".strip{display:flex;flex-wrap:wrap;gap:6px;margin:.3em 0 .8em}"
         f"figure.tile{{margin:0;width:{THUMBNAIL_PIXELS + 32}px;font-size:10px;overflow:hidden}}"
         f"img.thumb{{width:{THUMBNAIL_PIXELS}px;height:{THUMBNAIL_PIXELS}px;object-fit:contain;"
         "image-rendering:pixelated;background:#eee;display:block}"
         f"figure.tile .none{{width:{THUMBNAIL_PIXELS}px;height:{THUMBNAIL_PIXELS}px;background:#f3f3f3;"
         "color:#888;display:flex;align-items:center;text-align:center}"
         "figcaption,small.reason{display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}"
         "blockquote.line{margin:0;height:64px;overflow:hidden;background:#f7f7f7;font-size:10px}"
         ".heatmaps{display:flex;flex-wrap:wrap;gap:1em}table.heatmap td{text-align:right;font-size:11px}"
         "tr.best th{font-weight:bold;color:#08519c}h3{margin:.6em 0 .2em;font-size:1em}")


def build_report(output: str, model_dir: str | None = None, sample_size: int = SAMPLE_SIZE, seed: int = 0,
                 max_thumbnails: int = MAX_THUMBNAILS) -> str:
    """The report's HTML text; the projection and neighbours are of at most ``sample_size`` records, drawn with
    ``seed``, and at most ``max_thumbnails`` thumbnails (or text lines) are embedded."""
    (source,) = open_feature_sets([output])
    manifest = source.manifest
    scan = scan_feature_set(source, sample_size, seed)
    labels_count = sorted(scan.labels.items(), key=lambda kv: str(kv[0]))
    metrics = read_metrics(model_dir) if model_dir else None
    best = metrics["heads"][metrics["best_head"]] if metrics else None
    wrong = best["splits"].get(_scored_split(best), {}).get("misclassified") if best else None
    letters = read_dead_letters(source)
    is_text = manifest.backbone.get("modality") == "text"

    granted = allocate_thumbnails(max_thumbnails, {
        "misclassified": len(wrong["records"]) if wrong else 0,
        "neighbours": min(NEIGHBOUR_QUERIES, len(scan.x)) * (min(NEIGHBOURS, len(scan.x) - 1) + 1),
        "failures": 0 if is_text else len(letters),
        "classes": sum(min(PER_CLASS, len(keys)) for keys in scan.class_keys.values())})
    width = min(NEIGHBOURS, max(len(scan.x) - 1, 0))
    queries = pick_queries(len(scan.x), granted["neighbours"] // (width + 1), seed) if width else pick_queries(0, 0)
    found, similarity = cosine_neighbours(scan.x, queries, width)
    per_class, shown_classes = class_strip_shape([len(k) for k in scan.class_keys.values()], granted["classes"])

    keys = [r["key"] for r in (wrong["records"][:granted["misclassified"]] if wrong else [])]
    keys += [str(scan.sample_keys[i]) for i in np.concatenate([queries, found.reshape(-1)])]
    keys += [str(letter.get("key", "")) for letter in letters[:granted["failures"]]]
    keys += [k for label in sorted(scan.class_keys, key=_name)[:shown_classes]
             for k in scan.class_keys[label][:per_class]]
    previews = text_previews(keys, manifest.inputs.get("fields")) if is_text else image_previews(keys)
    embedded = sum(1 for k in keys if previews[k].src or previews[k].text is not None)

    output_name = html.escape(source.output.name)
    kind = "text lines" if is_text else f"thumbnails ({THUMBNAIL_PIXELS}-pixel JPEG)"
    parts = [*_manifest_section(output, manifest),
             f'<p id="thumbnail-cap">This page embeds {embedded} {kind}, at most {max_thumbnails} '
             "(the thumbnail cap), shared by the sections below.</p>",
             *_labels_section(labels_count)]
    if shown_classes:
        parts += _class_strips(scan.class_keys, per_class, shown_classes, previews)
    parts += _projection_section(scan, output_name)
    if len(queries):
        parts += _neighbours_section(scan, queries, found, similarity, previews)
    parts += _failures_section(manifest, letters, granted["failures"], previews)
    if metrics:
        parts.append(f"<h2>Model {html.escape(model_dir)} (best head: {html.escape(metrics['best_head'])})</h2>")
        for name, head in metrics["heads"].items():
            parts += _head_section(name, head, metrics["classes"])
        parts += _recall_plot(best, metrics["classes"])
        parts += _misclassified_section(metrics["best_head"], best, granted["misclassified"], previews)
        sweep = _layer_sweep(model_dir, metrics)
        if sweep:
            parts += _layer_sweep_section(model_dir, sweep)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>featurebeam report</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>")
