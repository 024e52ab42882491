"""The page's sections about a trained model: heat maps, per-class recall, the misclassified records and the layer
sweep."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

from pipeline.cli import main
from tests.pipeline.report.pages import load_in_chromium, screenshot, section, tile_keys


def wrong_test_keys(root) -> set[str]:
    """The test records the trained head gets wrong, found again from head.keras and the test features."""
    import keras

    from pipeline.train.feature_sets import load_table, open_feature_sets

    metrics = json.loads((root / "model" / "metrics.json").read_text())
    table = load_table(open_feature_sets([str(root / "features-test")]))
    head = keras.saving.load_model(str(root / "model" / "heads" / "linear" / "head.keras"), safe_mode=True)
    predicted = np.asarray(head.predict(table.x, verbose=0)).argmax(axis=1)
    truth = np.array([metrics["classes"].index(label) for label in table.labels])
    return set(table.keys[predicted != truth])


@pytest.mark.slow
def test_the_misclassified_section_shows_exactly_the_records_the_metrics_count_wrong(digits, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", str(digits / "features-test"), "--model", str(digits / "model"), "--html", str(page)]) == 0
    _, console, dom = load_in_chromium(page, tmp_path)
    assert console == []
    metrics = json.loads((digits / "model" / "metrics.json").read_text())
    test = metrics["heads"]["linear"]["splits"]["test"]
    matrix = np.array(test["confusion_matrix"])
    count = int(matrix.sum() - np.trace(matrix))
    assert 0 < count <= 100 and test["misclassified"]["count"] == count

    wrong = section(dom, "misclassified")
    shown = tile_keys(wrong)
    assert len(shown) == len(set(shown)) == count
    assert set(shown) == wrong_test_keys(digits)  # the head, applied again, gets exactly these wrong
    assert f"{count} of {test['examples']} records are misclassified" in wrong
    for true, predicted, group in re.findall(r'<div class="group" data-true="(\d)" data-predicted="(\d)">(.*?)</div>'
                                             r"</div>", wrong):
        assert true != predicted
        keys = tile_keys(group)
        assert keys and all(f"/test/{true}/" in k for k in keys)  # grouped by true -> predicted
        assert int(matrix[int(true), int(predicted)]) == len(keys)
        assert f"{true} \u2192 {predicted} ({len(keys)})" in group

    pixels = screenshot(page, tmp_path, height=8000)
    assert pixels.shape == (8000, 1200, 3)
    painted = np.flatnonzero((pixels < 200).any(axis=(1, 2)))
    assert painted.max() > 4000  # the page is painted far below the fold: the sections below the plots


@pytest.mark.slow
def test_heat_maps_recall_and_the_layer_sweep(digits, tmp_path):
    from pipeline.report.page import build_report
    from pipeline.train import evaluation

    model = tmp_path / "model"
    shutil.copytree(digits / "model", model)
    metrics = json.loads((model / "metrics.json").read_text())
    sweep = {"order": ["features.14", "features.18"], "best_layer": "features.18", "criterion": "validation",
             "layers": {"features.14": {"dim": 160, "validation_accuracy": 0.81, "test_accuracy": 0.8},
                        "features.18": {"dim": 1280, "validation_accuracy": 0.9, "test_accuracy": 0.88}}}
    (model / "layer_sweep.json").write_text(json.dumps(sweep))
    evaluation.plot_by_layer(sweep["order"], {"validation": [0.81, 0.9]}, "by layer", str(model / "layer_sweep.png"))
    text = build_report(str(digits / "features-test"), str(model))

    test = metrics["heads"]["linear"]["splits"]["test"]
    counts, normalised = re.findall(r'<table class="heatmap" data-kind="[^"]+">(.*?)</table>', text)
    cells = [[int(v) for v in re.findall(r">(\d+)</td>", row)] for row in counts.split("</tr>")[1:-1]]
    assert cells == test["confusion_matrix"]
    shares = [re.findall(r">(\d+%)</td>", row) for row in normalised.split("</tr>")[1:-1]]
    for row, share in zip(test["confusion_matrix"], shares, strict=True):
        assert share == [f"{v / sum(row):.0%}" for v in row]
    assert 'id="recall-plot"' in text and "Per-class recall (test)" in text
    layer = section(text, "layer-sweep")
    assert "<tr class=best><th>features.18</th><td>1280</td><td>0.9000</td><td>0.8800</td></tr>" in layer
    assert base64.b64encode((model / "layer_sweep.png").read_bytes()).decode() in layer


def test_training_records_a_capped_list_of_the_most_confident_mistakes():
    from pipeline.train.evaluation import misclassified

    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    wrong = misclassified(["a", "b", "c", "d", "e"], np.array([0, 0, 1, 1, 0]), probabilities, ["cat", "dog"], cap=2)
    assert wrong == {"count": 3, "cap": 2, "records": [
        {"key": "b", "true": "cat", "predicted": "dog", "probability": 0.8},
        {"key": "c", "true": "dog", "predicted": "cat", "probability": 0.6}]}
    assert misclassified([], np.zeros(0), np.zeros((0, 2)), ["cat", "dog"]) == {"count": 0, "cap": 100, "records": []}
