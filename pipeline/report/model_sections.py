"""The page's sections about a trained model, drawn from its metrics.json: each head's metrics and confusion heat
maps, the best head's per-class recall and misclassified records, and the layer sweep when there is one.
"""

from __future__ import annotations

import html

from pipeline.report.markup import confusion_heatmap, key_basename, plot_img, table, tile
from pipeline.report.plots import bar_plot, layer_sweep_plot, png_uri
from pipeline.report.thumbnails import Preview

__all__ = ["model_sections", "scored_split", "HEATMAP_CLASSES"]

HEATMAP_CLASSES = 50      # above this many classes no heat map is drawn (per-class recall still is)


def scored_split(head: dict) -> str:
    """The split a head's errors are shown for: the held-out test set (``--test-features``, or the records whose
    split column says test) when it was scored, else validation."""
    return next((split for split in ("test", "split test") if head["splits"].get(split, {}).get("examples")),
                "validation")


def _head_section(name: str, head: dict, classes: list[str]) -> list[str]:
    """One head's metrics per split, then its confusion matrix as heat maps (counts and row-normalised)."""
    rows = [(split, f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, {m['examples']} examples")
            for split, m in head["splits"].items() if m.get("examples")]
    parts = [f"<h3>{html.escape(name)}</h3>", table(rows)]
    split = scored_split(head)
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
    """The head's recall per class on its scored split, as a bar chart; nothing when it was not recorded."""
    split = scored_split(head)
    per_class = head["splits"].get(split, {}).get("per_class")
    if not per_class:
        return []
    recall = [per_class[c]["recall"] for c in classes if c in per_class]
    return [f"<h3>Per-class recall ({split})</h3>",
            plot_img(bar_plot([c for c in classes if c in per_class], recall, "recall", (0, 1.02)),
                     "recall-plot", "per-class recall")]


def _misclassified_section(head_name: str, head: dict, shown: int, previews: dict[str, Preview]) -> list[str]:
    """The first ``shown`` records of the head's capped list of mistakes, grouped by true -> predicted class."""
    split = scored_split(head)
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
        tiles = "".join(tile(previews[r["key"]], f"p {r['probability']:.2f} {key_basename(r['key'])}",
                             {"true": r["true"], "predicted": r["predicted"]}) for r in members)
        parts.append(f'<div class="group" data-true="{html.escape(true)}" data-predicted="{html.escape(predicted)}">'
                     f"<h3>{html.escape(true)} \u2192 {html.escape(predicted)} ({len(members)})</h3>"
                     f"<div class='strip'>{tiles}</div></div>")
    return parts + ["</section>"]


def _sweep_row(name: str, layer: dict, best: bool) -> str:
    """One layer of the sweep's table; the best layer's row is marked."""
    test = f"{layer['test_accuracy']:.4f}" if "test_accuracy" in layer else ""
    return (f"<tr{' class=best' if best else ''}><th>{html.escape(name)}</th><td>{layer['dim']}</td>"
            f"<td>{layer['validation_accuracy']:.4f}</td><td>{test}</td></tr>")


def _layer_sweep_section(sweep: dict, sweep_png: bytes | None) -> list[str]:
    """The sweep's table and its plot (MODELDIR/layer_sweep.png, or drawn again from the table)."""
    order, layers = sweep["order"], sweep["layers"]
    uri = png_uri(sweep_png) if sweep_png is not None else layer_sweep_plot(sweep)
    return ['<section id="layer-sweep"><h2>Layer sweep</h2>',
            f"<p>Best layer: {html.escape(sweep['best_layer'])} ({html.escape(sweep.get('criterion', ''))}).</p>",
            "<table><tr><th>layer</th><th>dim</th><th>validation</th><th>test</th></tr>"
            + "".join(_sweep_row(n, layers[n], n == sweep["best_layer"]) for n in order) + "</table>",
            plot_img(uri, "layer-sweep-plot", "accuracy by layer"), "</section>"]


def model_sections(model_dir: str, metrics: dict, sweep: dict | None, sweep_png: bytes | None,
                   misclassified_shown: int, previews: dict[str, Preview]) -> list[str]:
    """Every section about the model in ``model_dir``: its heads, then the best head's recall and mistakes (the
    first ``misclassified_shown``), then the layer sweep when there is one."""
    best = metrics["heads"][metrics["best_head"]]
    parts = [f"<h2>Model {html.escape(model_dir)} (best head: {html.escape(metrics['best_head'])})</h2>"]
    for name, head in metrics["heads"].items():
        parts += _head_section(name, head, metrics["classes"])
    parts += _recall_plot(best, metrics["classes"])
    parts += _misclassified_section(metrics["best_head"], best, misclassified_shown, previews)
    if sweep:
        parts += _layer_sweep_section(sweep, sweep_png)
    return parts
