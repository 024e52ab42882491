"""featurebeam report: a self-contained page, checked in a real headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.report.page import pca_2d
from tests.featuresets import blobs, write_feature_set

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0"]
PROJECTION = np.random.default_rng(0).normal(0, 1, (64, 1280)).astype(np.float32) / 8


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed; make test installs Debian's chromium package")
        pytest.skip("Chromium is not installed (Debian package chromium)")
    return path


def _load(html_path, tmp_path) -> tuple[str, list[str], str]:
    """Load the page in headless Chromium; return the <body ...> tag of the DOM after its scripts ran, the
    page's console messages, and the whole DOM."""
    out = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          f"file://{html_path}"], capture_output=True, text=True, timeout=120)
    start = out.stdout.find("<body")
    assert start >= 0, out.stderr[-2000:]
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    return out.stdout[start:out.stdout.find(">", start) + 1], console, out.stdout


def _screenshot(html_path, tmp_path, width=1200, height=2400) -> np.ndarray:
    """The page as headless Chromium paints it, as an RGB array."""
    shot = tmp_path / "shot.png"
    out = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'shot-profile'}",
                          f"--window-size={width},{height}", "--hide-scrollbars", f"--screenshot={shot}",
                          f"file://{html_path}"], capture_output=True, text=True, timeout=120)
    assert shot.exists(), out.stderr[-2000:]
    return np.asarray(Image.open(shot).convert("RGB"))


def section(page: str, element_id: str) -> str:
    """The text of ``<section id=element_id>...</section>`` (sections do not nest)."""
    start = page.index(f'<section id="{element_id}"')
    return page[start:page.index("</section>", start)]


def tile_keys(text: str) -> list[str]:
    return [html.unescape(k) for k in re.findall(r'<figure class="tile" data-key="([^"]*)"', text)]


def thumbnails(text: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r'<img class="thumb" alt="[^"]*" src="data:image/jpeg;base64,([^"]+)"', text)]


def test_pca_finds_the_direction_of_largest_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (500, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    points, ratio = pca_2d(x)
    assert points.shape == (500, 2)
    assert ratio[0] > 0.85 and ratio[1] > 0.05
    assert abs(np.corrcoef(points[:, 0], x[:, 0])[0, 1]) > 0.99


@pytest.mark.parametrize("shape", [(300, 20), (20, 300)], ids=["more-rows", "more-columns"])
def test_pca_equals_the_svd_projection(shape):
    x = np.random.default_rng(1).normal(0, 1, shape) * np.linspace(5, 1, shape[1])
    points, ratio = pca_2d(x)
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(points), np.abs(centred @ vt[:2].T), rtol=1e-6, atol=1e-8)  # up to sign
    np.testing.assert_allclose(ratio, s[:2] ** 2 / np.sum(s ** 2), rtol=1e-8)


def digit_features(images: str, root: str, backbone: dict, key_prefix: str | None = None) -> list[str]:
    """A feature set of the demo's digit PNGs under ``images/<digit>/``, as extract writes it (key = the file's
    path, or ``key_prefix`` + its path under ``images``; label = its folder), with a fixed random projection of the
    pixels plus noise standing in for the backbone's features."""
    keys, labels, rows = [], [], []
    for label in sorted(os.listdir(images)):
        for name in sorted(os.listdir(os.path.join(images, label))):
            path = os.path.join(images, label, name)
            keys.append(f"{key_prefix}{label}/{name}" if key_prefix else path)
            labels.append(label)
            rows.append(np.asarray(Image.open(path), np.float32).reshape(-1) / 255)
    x = np.stack(rows) @ PROJECTION
    x += np.random.default_rng(len(keys)).normal(0, 0.5, x.shape).astype(np.float32)
    write_feature_set(root, keys, labels, x, backbone=backbone)
    return keys


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digits_features):
    """The digits demo set (train and held-out test PNGs in class folders, their real MobileNetV2 feature sets)
    and a linear head trained on it, laid out as ``digits/``, ``features-train``, ``features-test``, ``model``."""
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training

    root = tmp_path_factory.mktemp("digits")
    for name, target in (("digits", "images"), ("features-train", "train"), ("features-test", "test")):
        (root / name).symlink_to(digits_features / target, target_is_directory=True)
    run_training(TrainConfig(features=(str(root / "features-train"),), test_features=(str(root / "features-test"),),
                             output=str(root / "model"), heads=("linear",)), log=lambda message: None)
    return root


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
def test_the_digits_report_renders_in_headless_chromium_with_every_image(digits, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", str(digits / "features-test"), "--model", str(digits / "model"), "--html", str(page)]) == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    assert "Confusion matrix" in text and "best head: linear" in text
    n_thumbs = text.count('<img class="thumb"')
    metrics = json.loads((digits / "model" / "metrics.json").read_text())
    wrong = metrics["heads"]["linear"]["splits"]["test"]["misclassified"]["count"]
    # 10 strips of 8, 6 queries with 5 neighbours each, every misclassified record; no failures here
    assert n_thumbs == len(thumbnails(text)) == 10 * 8 + 6 * (1 + 5) + wrong and wrong > 0
    assert f"This page embeds {n_thumbs} thumbnails (64-pixel JPEG), at most 300 (the thumbnail cap)" in text
    assert "no thumbnail" not in text
    body, console, dom = _load(page, tmp_path)
    assert 'data-ready="ok"' in body and 'data-errors="0"' in body, body
    assert 'data-plots="3"' in body and f'data-thumbnails="{n_thumbs}"' in body, body  # labels, PCA, recall
    assert console == []
    assert len(tile_keys(dom)) == len(tile_keys(text)) == n_thumbs  # the browser kept every tile

    classes = section(dom, "classes")
    for digit in range(10):
        strip = classes[classes.index(f'data-label="{digit}"'):]
        strip = strip[:strip.find("</div></div>")]
        keys = tile_keys(strip)
        assert len(keys) == 8 and all(f"/test/{digit}/digit-" in k for k in keys), keys
    neighbours = section(dom, "neighbours")
    assert neighbours.count('data-role="query"') == 6 and neighbours.count('data-role="neighbour"') == 30
    for image in thumbnails(text):
        assert image.format == "JPEG" and image.size == (8, 8)  # the 8x8 digits, never enlarged


@pytest.mark.slow
def test_the_misclassified_section_shows_exactly_the_records_the_metrics_count_wrong(digits, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", str(digits / "features-test"), "--model", str(digits / "model"), "--html", str(page)]) == 0
    _, console, dom = _load(page, tmp_path)
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

    pixels = _screenshot(page, tmp_path, height=8000)
    assert pixels.shape == (8000, 1200, 3)
    painted = np.flatnonzero((pixels < 200).any(axis=(1, 2)))
    assert painted.max() > 4000  # the page is painted far below the fold: the sections below the plots


@pytest.mark.slow
def test_the_browser_check_sees_a_broken_plot_and_a_script_error(digits, tmp_path):
    from pipeline.report.page import build_report

    text = build_report(str(digits / "features-test"))
    broken = text.replace('id="projection-plot" alt="PCA projection" src="data:image/png;base64,',
                          'id="projection-plot" alt="PCA projection" src="data:image/png;base64,AAAA')
    broken = broken.replace("</body>", "<script>notDefinedAnywhere();</script></body>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    body, console, _ = _load(page, tmp_path)
    assert 'data-ready="broken"' in body and 'data-errors="1"' in body, body
    assert any("Uncaught ReferenceError: notDefinedAnywhere" in line for line in console), console

    thumb = text.index('<img class="thumb" alt="')
    src = text.index('src="data:image/jpeg;base64,', thumb) + len('src="data:image/jpeg;base64,')
    page.write_text(text[:src] + "AAAA" + text[src:])  # one broken thumbnail is a broken page too
    body, _, _ = _load(page, tmp_path)
    assert 'data-ready="broken"' in body and 'data-errors="0"' in body, body


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


def test_the_reservoir_is_a_bounded_uniform_seeded_sample():
    from pipeline.report.page import Reservoir

    def draw(seed, n=50, size=10):
        reservoir = Reservoir(size, 1, seed)
        for i in range(n):
            reservoir.offer(np.array([i], np.float32), f"r{i}", f"k{i}")
        return reservoir.sample()

    x, labels, keys = draw(3)
    assert x.shape == (10, 1) and len(set(labels)) == 10
    assert list(labels) == [f"r{int(v)}" for v in x[:, 0]]  # rows, labels and keys stay paired
    assert list(keys) == [f"k{int(v)}" for v in x[:, 0]]
    np.testing.assert_array_equal(draw(3)[0], x)
    chosen = np.zeros(50)
    for seed in range(2000):
        chosen[draw(seed)[0][:, 0].astype(int)] += 1
    assert np.all(np.abs(chosen / 2000 - 0.2) < 0.06), chosen / 2000  # every record equally likely
    x, labels, _ = draw(0, n=4)
    assert sorted(labels) == ["r0", "r1", "r2", "r3"]  # fewer records than the sample: all of them


def test_the_class_sample_keeps_a_bounded_uniform_sample_of_each_class():
    from pipeline.report.page import ClassSample

    chosen = np.zeros(60)
    for seed in range(1000):
        sample = ClassSample(3, seed)
        for i in range(60):
            sample.offer("even" if i % 2 == 0 else None if i == 59 else "odd", f"{i}")
        assert len(sample.keys["even"]) == 3 and len(sample.keys["odd"]) == 3 and sample.keys[None] == ["59"]
        assert all(int(k) % 2 == 0 for k in sample.keys["even"]) and len(set(sample.keys["odd"])) == 3
        chosen[[int(k) for k in sample.keys["even"]]] += 1
    assert np.all(np.abs(chosen[0:60:2] / 1000 - 0.1) < 0.04), chosen[0:60:2] / 1000


def test_thumbnails_are_shared_out_first_asked_first_served():
    from pipeline.report.page import allocate_thumbnails

    assert allocate_thumbnails(100, {"a": 30, "b": 50, "c": 40}) == {"a": 30, "b": 50, "c": 20}
    assert allocate_thumbnails(10, {"a": 30, "b": 5}) == {"a": 10, "b": 0}


@pytest.mark.parametrize("sizes, granted, shape", [
    pytest.param([8, 8, 8, 1], 25, (8, 4), id="all-fit"),
    pytest.param([8, 8, 8, 1], 20, (6, 4), id="fewer-per-class"),
    pytest.param([8] * 1000, 300, (1, 300), id="not-one-of-each"),
    pytest.param([], 300, (8, 0), id="no-classes"),
])
def test_class_strips_fit_the_thumbnails_granted(sizes, granted, shape):
    from pipeline.report.page import class_strip_shape

    assert class_strip_shape(sizes, granted) == shape


@pytest.fixture
def small_set(tmp_path):
    keys, labels, x = blobs(300, ["cat", "dog", "fox"], dim=8, seed=5)
    labels[7] = None
    write_feature_set(str(tmp_path / "fs"), keys, labels, x, shard_sizes=[100, 120, 80])
    return str(tmp_path / "fs"), labels, x, keys


def test_the_report_projects_a_bounded_sample_and_says_so(small_set):
    import collections

    from pipeline.report.page import build_report, scan_feature_set
    from pipeline.train.feature_sets import open_feature_sets

    root, labels, x, keys = small_set
    scan = scan_feature_set(open_feature_sets([root])[0], sample_size=40, seed=1)
    assert scan.labels == collections.Counter(labels) and scan.records == 300
    assert scan.x.shape == (40, 8) and len(scan.sample_labels) == 40 and len(scan.sample_keys) == 40
    rows = {tuple(r): (key, label) for r, key, label in zip(x, keys, labels, strict=True)}
    assert all(rows[tuple(r)] == (key, label)  # real records, paired with their keys
               for r, key, label in zip(scan.x, scan.sample_keys, scan.sample_labels, strict=True))
    assert {label: len(k) for label, k in scan.class_keys.items()} == {"cat": 8, "dog": 8, "fox": 8, None: 1}
    assert all(labels[keys.index(k)] == label for label, ks in scan.class_keys.items() for k in ks)

    text = build_report(root, sample_size=40)
    assert "Features: PCA of a sample of 40 of 300 records (output features.18)" in text
    table = dict(re.findall(r"<tr><th>(cat|dog|fox|\(no label\))</th><td>(\d+)</td></tr>", text))
    assert table == {"cat": str(scan.labels["cat"]), "dog": str(scan.labels["dog"]),
                     "fox": str(scan.labels["fox"]), "(no label)": "1"}
    assert 'id="projection-plot"' in text
    assert "searched among a sample of 40 of 300 records" in text


def test_keys_that_name_no_readable_image_get_a_reason_instead(small_set):
    from pipeline.report.page import build_report

    text = build_report(small_set[0], sample_size=40)  # blob keys (mem://...) name no file
    assert '<img class="thumb"' not in text and "This page embeds 0 thumbnails" in text
    assert text.count('<div class="none">no thumbnail</div>') == len(tile_keys(text)) == 25 + 36
    assert len(re.findall(r'<small class="reason">cannot be read \(', text)) == 25 + 36


def test_a_set_smaller_than_the_sample_is_projected_whole(small_set):
    from pipeline.report.page import build_report

    text = build_report(small_set[0])
    assert "Features: PCA projection (300 records, output features.18)" in text and "a sample of" not in text


def test_a_shard_with_fewer_records_than_the_manifest_counts_is_refused(small_set):
    from pipeline.report.page import build_report
    from pipeline.train.feature_sets import FeatureSetError

    root = small_set[0]
    manifest = open(f"{root}/manifest.json").read().replace('"embedded": 300', '"embedded": 301')
    open(f"{root}/manifest.json", "w").write(manifest)
    with pytest.raises(FeatureSetError, match="manifest counts 301 embedded records, the shards hold 300"):
        build_report(root)


def test_failures_list_their_dead_letters_with_a_thumbnail_where_one_can_be_made(small_set, tmp_path):
    from pipeline.report.page import build_report
    from tests.conftest import encode
    from transforms.schema.elements import Failure

    root = small_set[0]
    decodable = tmp_path / "later.png"
    decodable.write_bytes(encode(Image.new("RGB", (30, 20), (200, 0, 0)), "PNG"))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    failures = [Failure(str(tmp_path / "bad.jpg"), "x", "decode", "UnidentifiedImageError", "cannot identify"),
                Failure(str(decodable), "x", "embed", "ResourceExhausted", "out of memory")]
    os.makedirs(f"{root}/errors")
    with open(f"{root}/errors/part-0.jsonl", "w") as f:
        f.write("".join(failure.to_json() + "\n" for failure in failures))
    manifest = json.loads(open(f"{root}/manifest.json").read())
    manifest.update(error_files=["errors/part-0.jsonl"], counts={**manifest["counts"], "failed": 2},
                    failures_by_reason={"decode: UnidentifiedImageError": 1, "embed: ResourceExhausted": 1})
    open(f"{root}/manifest.json", "w").write(json.dumps(manifest))
    failed = section(build_report(root), "failures")
    assert "The first 2 of 2 failed inputs" in failed
    rows = re.findall(r'<tr class="failure" data-key="([^"]+)"><td>(.*?)</td><td>[^<]*</td><td>([^<]*)</td>'
                      r"<td>([^<]*)</td></tr>", failed)
    assert [(k, reason, message) for k, _, reason, message in rows] == [
        (str(tmp_path / "bad.jpg"), "decode: UnidentifiedImageError", "cannot identify"),
        (str(decodable), "embed: ResourceExhausted", "out of memory")]
    assert "cannot be decoded as an image" in rows[0][1] and '<img class="thumb"' not in rows[0][1]
    assert [image.size for image in thumbnails(rows[1][1])] == [(30, 20)]


def test_a_text_set_shows_each_records_first_line(tmp_path):
    from pipeline.report.page import build_report
    from transforms.read.tables import text_key

    texts = tmp_path / "texts.jsonl"
    rows = [{"id": f"t{i}", "body": f"{'cat' if i % 2 else 'dog'} story {i}\nsecond line", "label": "x"}
            for i in range(30)]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = [text_key(str(texts), i, f"t{i}") for i in range(30)]
    labels = ["cat" if i % 2 else "dog" for i in range(30)]
    x = np.random.default_rng(0).normal(0, 1, (30, 8)).astype(np.float32)
    write_feature_set(str(tmp_path / "fs"), keys, labels, x, backbone={"name": "minilm", "modality": "text"})
    manifest = json.loads((tmp_path / "fs" / "manifest.json").read_text())
    manifest["inputs"] = {"specs": [], "fields": {"text": "body", "id": "id"}}
    (tmp_path / "fs" / "manifest.json").write_text(json.dumps(manifest))

    text = build_report(str(tmp_path / "fs"))
    assert "This page embeds 52 text lines, at most 300" in text and '<img class="thumb"' not in text
    lines = re.findall(r'<figure class="tile" data-key="[^"]*#id=t(\d+)"[^>]*><blockquote class="line">([^<]*)<',
                       text)
    assert len(lines) == 16 + 36
    assert all(line == f"{'cat' if int(i) % 2 else 'dog'} story {i}" for i, line in lines)


@pytest.mark.slow
def test_thumbnails_are_read_from_gcs(digits, tmp_path, gcs, monkeypatch):
    """A feature set on gs:// whose keys name images on gs://: the thumbnails are those images, read from there."""
    from pipeline.report.page import build_report
    from pipeline.report.thumbnails import jpeg_thumbnail
    from tests import object_storage

    monkeypatch.chdir(tmp_path)  # a gs:// path taken for a local one would show up here as a folder "gs:"
    images = tmp_path / "images"
    for digit in ("3", "8"):
        (images / digit).mkdir(parents=True)
        for name in sorted(os.listdir(digits / "digits" / "test" / digit))[:5]:
            shutil.copy(digits / "digits" / "test" / digit / name, images / digit / name)
    gcs.create_bucket("report")
    object_storage.upload_tree(str(images), "gs://report/images")
    keys = digit_features(str(images), str(tmp_path / "fs"), {"name": "mobilenet_v2"}, "gs://report/images/")
    object_storage.upload_tree(str(tmp_path / "fs"), "gs://report/features")
    shutil.rmtree(images)  # only the copies on gs:// remain

    text = build_report("gs://report/features")
    strips = section(text, "classes")
    assert sorted(tile_keys(strips)) == sorted(keys) and all(k.startswith("gs://report/images/") for k in keys)
    assert "no thumbnail" not in text
    local = {f"gs://report/images/{d}/{n}": jpeg_thumbnail((digits / "digits" / "test" / d / n).read_bytes())
             for d in ("3", "8") for n in os.listdir(digits / "digits" / "test" / d)}
    embedded = re.findall(r'data-key="([^"]+)" title="[^"]*"><img class="thumb" alt="[^"]*" '
                          r'src="data:image/jpeg;base64,([^"]+)"', strips)
    assert len(embedded) == 10
    assert all(base64.b64decode(data) == local[key] for key, data in embedded)
    assert os.listdir(tmp_path) == ["fs"]


def noise_images(folder, n_files: int, links: int) -> list[str]:
    """``links`` image paths (symlinks) onto ``n_files`` 96x96 noise PNGs: the worst case for JPEG size."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n_files):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / f"noise-{i}.png")
    paths = []
    for i in range(links):
        path = folder / f"{i:05d}.png"
        path.symlink_to(folder / f"noise-{i % n_files}.png")
        paths.append(str(path))
    return paths


def test_a_page_for_10000_records_is_under_5_mb_and_built_in_flat_memory(tmp_path):
    import tracemalloc

    from pipeline.report.page import build_report

    paths = noise_images(tmp_path / "images", 40, 10_000)
    classes = [f"class-{c}" for c in range(33)]  # 33 strips of 8 and 6 neighbour rows of 6: the cap exactly
    rng = np.random.default_rng(1)
    for n in (1_000, 10_000):
        labels = [classes[i % len(classes)] for i in range(n)]
        write_feature_set(str(tmp_path / f"fs-{n}"), paths[:n], labels, rng.normal(0, 1, (n, 64)).astype(np.float32),
                          shard_sizes=[n // 2, n - n // 2])
    peaks = {}
    for n in (1_000, 10_000):
        tracemalloc.start()
        text = build_report(str(tmp_path / f"fs-{n}"), sample_size=500)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(text.encode("utf-8")) < 5 * 2 ** 20
        assert text.count('<img class="thumb"') == 300 and "This page embeds 300 thumbnails" in text
        assert {image.size for image in thumbnails(text)} == {(64, 64)}
    assert peaks[10_000] < 1.25 * peaks[1_000] + 2 * 2 ** 20, peaks  # ten times the records, not the memory
