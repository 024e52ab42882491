"""The page's sections about the feature set itself: manifest, labels, samples per class (for audio, with a note on
the spectrograms and players), PCA projection, nearest neighbours and failures. Each returns its HTML as a list of
strings, drawn from the scan and the previews given.
"""

from __future__ import annotations

import html

import numpy as np

from pipeline.report.markup import key_basename, label_name, plot_img, table, tile
from pipeline.report.neighbours import NEAR_DUPLICATE
from pipeline.report.plots import bar_plot, projection_plot
from pipeline.report.scan import Scan
from pipeline.report.spectrograms import FRAMES_PER_PIXEL, PREVIEW_SECONDS, audio_preprocessing
from pipeline.report.thumbnails import Preview
from transforms.decode.audio import AudioPreprocessing

__all__ = ["manifest_section", "labels_section", "class_strips", "audio_note", "projection_section",
           "neighbours_section", "failures_section"]


def _audio_rows(backbone: dict) -> list[tuple[str, str]]:
    """An audio backbone's modality and the input it was fed, for the manifest's table (none for other ones)."""
    if backbone.get("modality") != "audio":
        return []
    prep = audio_preprocessing(backbone.get("preprocessing"))
    return [("modality", "audio"),
            ("audio input", f"mono, {prep.sample_rate} Hz, log-mel of {prep.n_mels} bands ({prep.fmin:g}-"
                            f"{prep.fmax:g} Hz, n_fft {prep.n_fft}, hop {prep.hop}), patches of {prep.patch_frames} "
                            f"frames ({prep.patch_seconds:.2f} s)")]


def manifest_section(output: str, manifest) -> list[str]:
    """The set's path and its manifest: backbone (for audio its modality and input), outputs, counts and shards."""
    return [f"<h1>Feature set {html.escape(output)}</h1>", "<h2>Manifest</h2>",
            table([("created", manifest.created), ("backbone", manifest.backbone.get("name")),
                   *_audio_rows(manifest.backbone),
                   ("weights sha256", manifest.backbone.get("weights_sha256")),
                   *[(f"output {o.name}", f"{o.dim} x {o.dtype}, layer {o.layer}, pooling {o.pooling}, "
                                         f"Example key {o.example_key}") for o in manifest.outputs],
                   *[(k, v) for k, v in manifest.counts.items()],
                   ("shards", ", ".join(f"{len(files)} {name}" for name, files in (
                       ("TFRecord", manifest.shards), ("Parquet", manifest.parquet_shards)) if files) or 0)])]


def labels_section(labels_count: list[tuple]) -> list[str]:
    """The records per label, as a table and a bar chart; ``labels_count`` is (label, records) in page order."""
    parts = ["<h2>Labels</h2>", table([(k if k is not None else "(no label)", n) for k, n in labels_count])]
    if labels_count:
        parts.append(plot_img(bar_plot([label_name(k) for k, _ in labels_count], [n for _, n in labels_count],
                                       "records"), "labels-plot", "label distribution"))
    return parts


def class_strips(class_keys: dict, per_class: int, classes: int, previews: dict[str, Preview]) -> list[str]:
    """Up to ``per_class`` sampled records of each of the first ``classes`` classes, by name."""
    parts = ['<section id="classes"><h2>Samples per class</h2>',
             f"<p>A uniform sample of up to {per_class} records of each class"
             + (f" (the first {classes} classes, by name, within the thumbnail cap)" if classes < len(class_keys)
                else "") + ".</p>"]
    for label in sorted(class_keys, key=label_name)[:classes]:
        tiles = "".join(tile(previews[k], key_basename(k), player=True) for k in class_keys[label][:per_class])
        parts.append(f'<div class="class" data-label="{html.escape(label_name(label))}">'
                     f"<h3>{html.escape(label_name(label))}</h3><div class='strip'>{tiles}</div></div>")
    return parts + ["</section>"]


def audio_note(prep: AudioPreprocessing, players: int, max_players: int) -> str:
    """What an audio set's spectrograms show, and which recordings have a player."""
    seconds, hop_ms = f"{PREVIEW_SECONDS:g} s", f"{prep.hop / prep.sample_rate * 1000:g} ms"
    return (f'<p id="audio-note">Recordings are shown as the log-mel spectrogram of at most their first {seconds} '
            f"as the model hears them (mono, {prep.sample_rate} Hz, {prep.n_mels} mel bands from {prep.fmin:g} Hz "
            f"at the bottom to {prep.fmax:g} Hz, {FRAMES_PER_PIXEL} frames of {hop_ms} per pixel column; whole "
            f"{prep.patch_seconds:.2f}-s patches: a shorter recording is repeated to one patch, a last partial patch "
            "left out), brightness from silence to the record's loudest band. "
            f"{players} recordings of the samples per class have a player with the same first {seconds} "
            f"(16-bit WAV, {prep.sample_rate} Hz), at most {max_players}, to keep the page small.</p>")


def projection_section(scan: Scan, output_name: str) -> list[str]:
    """The PCA projection of the sampled records; ``output_name`` is already escaped."""
    n_points = len(scan.x) if len(scan.x) >= 2 else 0
    parts = [f"<h2>Features: PCA of a sample of {n_points} of {scan.records} records (output {output_name})</h2>"
             if 0 < n_points < scan.records else
             f"<h2>Features: PCA projection ({n_points} records, output {output_name})</h2>"]
    if n_points:
        names = [label_name(v) for v in scan.sample_labels]
        parts.append(plot_img(projection_plot(scan.x, names), "projection-plot", "PCA projection"))
    return parts


def _neighbour_strip(scan: Scan, query: int, neighbours: np.ndarray, similarities: np.ndarray,
                     previews: dict[str, Preview]) -> str:
    """One sampled record, then its neighbours with their similarity, marked when of another label or nearly the
    same record."""
    query_key, query_label = scan.sample_keys[query], scan.sample_labels[query]
    tiles = [tile(previews[query_key], f"query: {label_name(query_label)}", {"role": "query"})]
    for j, s in zip(neighbours, similarities, strict=True):
        key, label = scan.sample_keys[j], scan.sample_labels[j]
        marks = (" near-duplicate" if s >= NEAR_DUPLICATE else "") + (" other label" if label != query_label
                                                                        else "")
        tiles.append(tile(previews[key], f"{label_name(label)} cos {s:.3f}{marks}", {"role": "neighbour"}))
    return f'<div class="strip neighbours" data-query="{html.escape(str(query_key))}">{"".join(tiles)}</div>'


def neighbours_section(scan: Scan, queries: np.ndarray, found: np.ndarray, similarity: np.ndarray,
                       previews: dict[str, Preview]) -> list[str]:
    """For each query (a row of the sample), the rows ``found`` most similar, with their ``similarity``."""
    searched = (f"a sample of {len(scan.x)} of {scan.records} records" if len(scan.x) < scan.records
                else f"all {scan.records} records")
    parts = ['<section id="neighbours"><h2>Nearest neighbours</h2>',
             f"<p>For {len(queries)} sampled records, the {found.shape[1] if found.ndim == 2 else 0} most similar "
             f"records by cosine similarity of their features, searched among {searched}. Neighbours of another "
             f"label are marked; a similarity of {NEAR_DUPLICATE} or more marks a likely near-duplicate.</p>"]
    for q, row, sims in zip(queries, found, similarity, strict=True):
        parts.append(_neighbour_strip(scan, q, row, sims, previews))
    return parts + ["</section>"]


def _dead_letter_row(letter: dict, thumbnail: bool, previews: dict[str, Preview]) -> str:
    """One failed input: its tile (when ``thumbnail`` and there is a preview), key, reason and message."""
    key = str(letter.get("key", ""))
    reason = f"{letter.get('stage', '?')}: {letter.get('error_type', '?')}"
    cell = tile(previews[key], key_basename(key)) if thumbnail and key in previews else ""
    return (f'<tr class="failure" data-key="{html.escape(key)}"><td>{cell}</td>'
            f"<td>{html.escape(key)}</td><td>{html.escape(reason)}</td>"
            f"<td>{html.escape(str(letter.get('message', '')))}</td></tr>")


def failures_section(manifest, letters: list[dict], with_thumbnails: int, previews: dict[str, Preview]) -> list[str]:
    """Failure counts by reason (manifest), then the first dead letters, the first ``with_thumbnails`` with a tile."""
    parts = ['<section id="failures"><h2>Failures</h2>']
    if not manifest.failures_by_reason and not letters:
        return parts + ["<p>None: every input was embedded.</p></section>"]
    parts.append(table([(reason, f"{n} (e.g. {manifest.failure_examples.get(reason, '')})")
                        for reason, n in manifest.failures_by_reason.items()]))
    if letters:
        failed = manifest.counts.get("failed", len(letters))
        parts.append(f"<p>The first {len(letters)} of {failed} failed inputs (from the dead letters in errors/)"
                     + (f", with a thumbnail where one can be made for the first {with_thumbnails}" if with_thumbnails
                        else "") + ".</p>")
        rows = [_dead_letter_row(letter, i < with_thumbnails, previews) for i, letter in enumerate(letters)]
        parts.append("<table class='failures'><tr><th></th><th>key</th><th>reason</th><th>message</th></tr>"
                     + "".join(rows) + "</table>")
    return parts + ["</section>"]
