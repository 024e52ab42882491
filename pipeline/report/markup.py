"""The HTML pieces the report's sections share: tables, a record's tile, a plot's image and the confusion heat map.
Sections are built from these, so a tile or a table reads the same wherever it appears.
"""

from __future__ import annotations

import html

import numpy as np

from pipeline.report.thumbnails import Preview

__all__ = ["label_name", "key_basename", "table", "tile", "plot_img", "confusion_heatmap"]


def label_name(label) -> str:
    """A label as the page shows it; a record without one is ``(none)``."""
    return str(label) if label is not None else "(none)"


def key_basename(key: str) -> str:
    """The last part of a record's key, a short caption."""
    return key.rstrip("/").rsplit("/", 1)[-1]


def table(rows) -> str:
    """A two-column table of (name, value) rows."""
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def tile(preview: Preview, caption: str, attrs: dict[str, str] | None = None, player: bool = False) -> str:
    """One record: its thumbnail (or a recording's spectrogram, with its player when ``player`` and the preview
    holds one), its text's first line, or the reason there is none; then a caption."""
    data = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in (attrs or {}).items())
    key = html.escape(preview.key)
    if preview.src:
        body = f'<img class="{preview.kind}" alt="{key}" src="{preview.src}">'
        if player and preview.audio:
            body += f'<audio class="player" controls preload="metadata" src="{preview.audio}"></audio>'
    elif preview.text is not None:
        body = f'<blockquote class="line">{html.escape(preview.text)}</blockquote>'
    else:
        missing = "no spectrogram" if preview.kind == "spectrogram" else "no thumbnail"
        body = f'<div class="none">{missing}</div><small class="reason">{html.escape(preview.reason or "")}</small>'
    return (f'<figure class="tile" data-key="{key}"{data} title="{key}">{body}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def plot_img(uri: str, element_id: str, alt: str) -> str:
    """A plot's image; the class ``plot`` is what the page's script counts as a plot."""
    return f'<img class="plot" id="{element_id}" alt="{html.escape(alt)}" src="{uri}">'


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
