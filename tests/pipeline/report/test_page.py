"""featurebeam report: the whole page, checked in a real headless Chromium, within its thumbnail cap and flat
memory."""

from __future__ import annotations

import base64
import collections
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.report.page import allocate_thumbnails, build_report, class_strip_shape
from tests.featuresets import write_feature_set
from tests.pipeline.report.pages import load_in_chromium, section, thumbnails, tile_keys


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
    body, console, dom = load_in_chromium(page, tmp_path)
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
def test_the_browser_check_sees_a_broken_plot_and_a_script_error(digits, tmp_path):
    text = build_report(str(digits / "features-test"))
    broken = text.replace('id="projection-plot" alt="PCA projection" src="data:image/png;base64,',
                          'id="projection-plot" alt="PCA projection" src="data:image/png;base64,AAAA')
    broken = broken.replace("</body>", "<script>notDefinedAnywhere();</script></body>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    body, console, _ = load_in_chromium(page, tmp_path)
    assert 'data-ready="broken"' in body and 'data-errors="1"' in body, body
    assert any("Uncaught ReferenceError: notDefinedAnywhere" in line for line in console), console

    thumb = text.index('<img class="thumb" alt="')
    src = text.index('src="data:image/jpeg;base64,', thumb) + len('src="data:image/jpeg;base64,')
    page.write_text(text[:src] + "AAAA" + text[src:])  # one broken thumbnail is a broken page too
    body, _, _ = load_in_chromium(page, tmp_path)
    assert 'data-ready="broken"' in body and 'data-errors="0"' in body, body


def test_thumbnails_are_shared_out_first_asked_first_served():
    assert allocate_thumbnails(100, {"a": 30, "b": 50, "c": 40}) == {"a": 30, "b": 50, "c": 20}
    assert allocate_thumbnails(10, {"a": 30, "b": 5}) == {"a": 10, "b": 0}


@pytest.mark.parametrize("sizes, granted, shape", [
    pytest.param([8, 8, 8, 1], 25, (8, 4), id="all-fit"),
    pytest.param([8, 8, 8, 1], 20, (6, 4), id="fewer-per-class"),
    pytest.param([8] * 1000, 300, (1, 300), id="not-one-of-each"),
    pytest.param([], 300, (8, 0), id="no-classes"),
])
def test_class_strips_fit_the_thumbnails_granted(sizes, granted, shape):
    assert class_strip_shape(sizes, granted) == shape


def test_the_report_projects_a_bounded_sample_and_says_so(small_set):
    root, labels, _, _ = small_set
    counts = collections.Counter(labels)
    text = build_report(root, sample_size=40)
    assert "Features: PCA of a sample of 40 of 300 records (output features.18)" in text
    table = dict(re.findall(r"<tr><th>(cat|dog|fox|\(no label\))</th><td>(\d+)</td></tr>", text))
    assert table == {"cat": str(counts["cat"]), "dog": str(counts["dog"]),
                     "fox": str(counts["fox"]), "(no label)": "1"}
    assert 'id="projection-plot"' in text
    assert "searched among a sample of 40 of 300 records" in text


def test_keys_that_name_no_readable_image_get_a_reason_instead(small_set):
    text = build_report(small_set[0], sample_size=40)  # blob keys (mem://...) name no file
    assert '<img class="thumb"' not in text and "This page embeds 0 thumbnails" in text
    assert text.count('<div class="none">no thumbnail</div>') == len(tile_keys(text)) == 25 + 36
    assert len(re.findall(r'<small class="reason">cannot be read \(', text)) == 25 + 36


def test_a_set_smaller_than_the_sample_is_projected_whole(small_set):
    text = build_report(small_set[0])
    assert "Features: PCA projection (300 records, output features.18)" in text and "a sample of" not in text


def test_failures_list_their_dead_letters_with_a_thumbnail_where_one_can_be_made(small_set, tmp_path):
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


PROJECTION = np.random.default_rng(0).normal(0, 1, (64, 1280)).astype(np.float32) / 8


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


@pytest.mark.slow
def test_thumbnails_are_read_from_gcs(digits, tmp_path, gcs, monkeypatch):
    """A feature set on gs:// whose keys name images on gs://: the thumbnails are those images, read from there."""
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
