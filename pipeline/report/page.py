"""``featurebeam report OUTDIR [--model MODELDIR]``: one self-contained HTML page about a feature set.

What it shows (1-5: ``feature_set_sections.py``; 6: ``model_sections.py``), and what each part is drawn from:

1. the manifest, the label distribution (table and bar chart);
2. per class, a strip of sample inputs (thumbnails; the first line for text sets; for audio sets the log-mel
   spectrogram of each recording's first seconds, and a player for the first ``max_players`` of them);
3. a 2-D PCA projection of the features coloured by label;
4. nearest neighbours: for a few sampled records, the most similar records by cosine (``neighbours.py``);
5. failures: counts by reason (manifest) and the first dead letters (``errors/``) with key, reason and, for
   images and audio, a thumbnail (spectrogram) where one can be made;
6. with a model directory: each head's metrics, its confusion matrix as a heat map (counts and row-normalised),
   the best head's per-class recall, the records it gets wrong grouped by true -> predicted class (from the
   capped list ``featurebeam train`` records in metrics.json), and the layer sweep when there is one.

The records are read once, streamed (``scan.py``): labels and records are counted, and the projection and
neighbours are of a seeded uniform sample of at most ``sample_size`` records (reservoir sampling), the class strips
of a bounded sample per class, so memory does not grow with the set. At most ``max_thumbnails`` thumbnails are
embedded (small JPEGs, ``thumbnails.py``; spectrograms, ``audio_previews.py``), read through the same filesystems
as extract; the page says so. Plots (``plots.py``) and thumbnails are data URIs, so the file opens anywhere,
offline. A small script marks the page ready once every image has decoded, and records script errors (and, on an
audio page, whether every player's WAV loaded), so a headless browser can check it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from pipeline.report.audio_previews import MAX_PLAYERS, audio_previews, round_robin
from pipeline.report.feature_set_sections import (
    audio_note,
    class_strips,
    failures_section,
    labels_section,
    manifest_section,
    neighbours_section,
    projection_section,
)
from pipeline.report.markup import label_name
from pipeline.report.model_sections import model_sections, scored_split
from pipeline.report.neighbours import cosine_neighbours, pick_queries
from pipeline.report.scan import (
    PER_CLASS,
    SAMPLE_SIZE,
    Scan,
    read_dead_letters,
    read_layer_sweep,
    read_layer_sweep_png,
    read_metrics,
    scan_feature_set,
)
from pipeline.report.spectrograms import audio_preprocessing
from pipeline.report.thumbnails import THUMBNAIL_PIXELS, Preview, image_previews, text_previews
from pipeline.train.feature_sets import open_feature_sets
from transforms.read.tables import DEFAULT_MAX_INPUT_BYTES

__all__ = ["build_report", "allocate_thumbnails", "class_strip_shape", "MAX_THUMBNAILS"]

MAX_THUMBNAILS = 300      # thumbnails embedded in one page, all sections together
NEIGHBOUR_QUERIES = 6     # sampled records whose neighbours are shown
NEIGHBOURS = 5            # neighbours shown per query


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


@dataclass
class _ShownRecords:
    """Which records each section shows within the thumbnail cap: thumbnails granted per section, the neighbour
    queries (rows of the sample) with the rows found for each and their similarity, and the class strips' shape."""

    granted: dict[str, int]
    queries: np.ndarray
    found: np.ndarray
    similarity: np.ndarray
    per_class: int
    classes: int


def _share_thumbnail_cap(scan: Scan, wrong: dict | None, letters: list[dict], is_text: bool, cap: int,
                         seed: int) -> _ShownRecords:
    """Misclassified records first, then neighbours, failures (images only) and class strips, within ``cap``."""
    granted = allocate_thumbnails(cap, {
        "misclassified": len(wrong["records"]) if wrong else 0,
        "neighbours": min(NEIGHBOUR_QUERIES, len(scan.x)) * (min(NEIGHBOURS, len(scan.x) - 1) + 1),
        "failures": 0 if is_text else len(letters),
        "classes": sum(min(PER_CLASS, len(keys)) for keys in scan.class_keys.values())})
    width = min(NEIGHBOURS, max(len(scan.x) - 1, 0))
    queries = pick_queries(len(scan.x), granted["neighbours"] // (width + 1), seed) if width else pick_queries(0, 0)
    found, similarity = cosine_neighbours(scan.x, queries, width)
    per_class, classes = class_strip_shape([len(k) for k in scan.class_keys.values()], granted["classes"])
    return _ShownRecords(granted, queries, found, similarity, per_class, classes)


def _class_strip_keys(scan: Scan, shown: _ShownRecords) -> list[list[str]]:
    """The keys each class strip shows, strip after strip."""
    return [list(scan.class_keys[label][:shown.per_class])
            for label in sorted(scan.class_keys, key=label_name)[:shown.classes]]


def _previews(manifest, keys: list[str], players: list[str]) -> dict[str, Preview]:
    """What each key looks like for the set's modality: a text's first line, a recording's spectrogram (with a
    player for the keys in ``players``), else an image's thumbnail."""
    modality = manifest.backbone.get("modality")
    fields = manifest.inputs.get("fields") or {}
    if modality == "text":
        return text_previews(keys, fields)
    if modality == "audio":
        return audio_previews(keys, audio_preprocessing(manifest.backbone.get("preprocessing")), players,
                              int(fields.get("max_input_bytes") or DEFAULT_MAX_INPUT_BYTES))
    return image_previews(keys)


def _shown_keys(scan: Scan, wrong: dict | None, letters: list[dict], shown: _ShownRecords) -> list[str]:
    """The keys of every record a section shows: the ones that need a preview."""
    keys = [r["key"] for r in (wrong["records"][:shown.granted["misclassified"]] if wrong else [])]
    keys += [str(scan.sample_keys[i]) for i in np.concatenate([shown.queries, shown.found.reshape(-1)])]
    keys += [str(letter.get("key", "")) for letter in letters[:shown.granted["failures"]]]
    keys += [k for strip in _class_strip_keys(scan, shown) for k in strip]
    return keys


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
  const players = Array.from(document.querySelectorAll('audio'));
  if (players.length === 0) return;
  document.body.dataset.players = String(players.length);
  Promise.all(players.map(a => a.error ? false : a.readyState >= 1 ? true : new Promise(done => {
    a.addEventListener('loadedmetadata', () => done(true));
    a.addEventListener('error', () => done(false));
  }))).then(ok => { document.body.dataset.playersReady = ok.every(Boolean) ? 'ok' : 'broken'; });
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
         "tr.best th{font-weight:bold;color:#08519c}h3{margin:.6em 0 .2em;font-size:1em}"
         "figure.tile:has(img.spectrogram){width:auto;max-width:100%}"
         "img.spectrogram{height:96px;display:block;image-rendering:pixelated;background:#000}"
         "audio.player{display:block;width:100%;min-width:180px;height:28px}")


def build_report(output: str, model_dir: str | None = None, sample_size: int = SAMPLE_SIZE, seed: int = 0,
                 max_thumbnails: int = MAX_THUMBNAILS, max_players: int = MAX_PLAYERS) -> str:
    """The report's HTML text; the projection and neighbours are of at most ``sample_size`` records, drawn with
    ``seed``, and at most ``max_thumbnails`` thumbnails (or text lines, or spectrograms) are embedded; for audio,
    at most ``max_players`` recordings of the class strips have a player."""
    (source,) = open_feature_sets([output])
    manifest = source.manifest
    scan = scan_feature_set(source, sample_size, seed)
    metrics = read_metrics(model_dir) if model_dir else None
    best = metrics["heads"][metrics["best_head"]] if metrics else None
    wrong = best["splits"].get(scored_split(best), {}).get("misclassified") if best else None
    letters = read_dead_letters(source)
    modality = manifest.backbone.get("modality")
    is_text = modality == "text"

    shown = _share_thumbnail_cap(scan, wrong, letters, is_text, max_thumbnails, seed)
    keys = _shown_keys(scan, wrong, letters, shown)
    players = round_robin(_class_strip_keys(scan, shown), max_players) if modality == "audio" else []
    previews = _previews(manifest, keys, players)
    embedded = sum(1 for k in keys if previews[k].src or previews[k].text is not None)

    kind = {"text": "text lines", "audio": "spectrograms (log-mel PNG)"}.get(
        modality, f"thumbnails ({THUMBNAIL_PIXELS}-pixel JPEG)")
    parts = [*manifest_section(output, manifest),
             f'<p id="thumbnail-cap">This page embeds {embedded} {kind}, at most {max_thumbnails} '
             "(the thumbnail cap), shared by the sections below.</p>"]
    if modality == "audio":
        parts.append(audio_note(audio_preprocessing(manifest.backbone.get("preprocessing")),
                                sum(1 for k in players if previews[k].audio), max_players))
    parts += labels_section(sorted(scan.labels.items(), key=lambda kv: str(kv[0])))
    if shown.classes:
        parts += class_strips(scan.class_keys, shown.per_class, shown.classes, previews)
    parts += projection_section(scan, html.escape(source.output.name))
    if len(shown.queries):
        parts += neighbours_section(scan, shown.queries, shown.found, shown.similarity, previews)
    parts += failures_section(manifest, letters, shown.granted["failures"], previews)
    if metrics:
        sweep = read_layer_sweep(model_dir, metrics)
        sweep_png = read_layer_sweep_png(model_dir) if sweep else None
        parts += model_sections(model_dir, metrics, sweep, sweep_png, shown.granted["misclassified"], previews)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>featurebeam report</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>")
