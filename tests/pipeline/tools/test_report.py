"""featurebeam report: a self-contained page, checked in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.tools.report import pca_2d
from tests.featuresets import blobs, write_feature_set

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0"]


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed; make test installs Debian's chromium package")
        pytest.skip("Chromium is not installed (Debian package chromium)")
    return path


def _load(html_path, tmp_path) -> tuple[str, list[str]]:
    """Load the page in headless Chromium; return the <body ...> tag of the DOM after its scripts ran, and
    the page's console messages."""
    out = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          f"file://{html_path}"], capture_output=True, text=True, timeout=120)
    start = out.stdout.find("<body")
    assert start >= 0, out.stderr[-2000:]
    console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
    return out.stdout[start:out.stdout.find(">", start) + 1], console


def test_pca_finds_the_direction_of_largest_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (500, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    points, ratio = pca_2d(x)
    assert points.shape == (500, 2)
    assert ratio[0] > 0.85 and ratio[1] > 0.05
    assert abs(np.corrcoef(points[:, 0], x[:, 0])[0, 1]) > 0.99


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory, mobilenet_spec):
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training

    root = tmp_path_factory.mktemp("report")
    keys, labels, x = blobs(200, ["cat", "dog", "fox"], dim=1280, seed=11)
    write_feature_set(str(root / "features"), keys, labels, x, shard_sizes=[100, 100],
                      backbone={"name": "mobilenet_v2", "weights_sha256": mobilenet_spec.weights_sha256})
    run_training(TrainConfig(features=(str(root / "features"),), output=str(root / "model")),
                 log=lambda message: None)
    return root


@pytest.mark.slow
def test_report_renders_in_headless_chromium_with_its_projection(report_inputs, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main(["report", str(report_inputs / "features"), "--model", str(report_inputs / "model"),
                 "--html", str(page)]) == 0
    text = page.read_text()
    assert 'id="projection-plot"' in text and "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    assert "Confusion matrix" in text and "best head: linear" in text
    body, console = _load(page, tmp_path)
    assert 'data-ready="ok"' in body and 'data-errors="0"' in body and 'data-plots="2"' in body, body
    assert console == []


@pytest.mark.slow
def test_the_browser_check_sees_a_broken_plot_and_a_script_error(report_inputs, tmp_path):
    from pipeline.tools.report import build_report

    text = build_report(str(report_inputs / "features"))
    broken = text.replace('id="projection-plot" alt="PCA projection" src="data:image/png;base64,',
                          'id="projection-plot" alt="PCA projection" src="data:image/png;base64,AAAA')
    broken = broken.replace("</body>", "<script>notDefinedAnywhere();</script></body>")
    page = tmp_path / "broken.html"
    page.write_text(broken)
    body, console = _load(page, tmp_path)
    assert 'data-ready="broken"' in body and 'data-errors="1"' in body, body
    assert any("Uncaught ReferenceError: notDefinedAnywhere" in line for line in console), console


def test_the_reservoir_is_a_bounded_uniform_seeded_sample():
    from pipeline.tools.report import Reservoir

    def draw(seed, n=50, size=10):
        reservoir = Reservoir(size, 1, seed)
        for i in range(n):
            reservoir.offer(np.array([i], np.float32), f"r{i}")
        return reservoir.sample()

    x, labels = draw(3)
    assert x.shape == (10, 1) and len(set(labels)) == 10
    assert list(labels) == [f"r{int(v)}" for v in x[:, 0]]  # rows and labels stay paired
    np.testing.assert_array_equal(draw(3)[0], x)
    chosen = np.zeros(50)
    for seed in range(2000):
        chosen[draw(seed)[0][:, 0].astype(int)] += 1
    assert np.all(np.abs(chosen / 2000 - 0.2) < 0.06), chosen / 2000  # every record equally likely
    x, labels = draw(0, n=4)
    assert sorted(labels) == ["r0", "r1", "r2", "r3"]  # fewer records than the sample: all of them


@pytest.fixture
def small_set(tmp_path):
    keys, labels, x = blobs(300, ["cat", "dog", "fox"], dim=8, seed=5)
    labels[7] = None
    write_feature_set(str(tmp_path / "fs"), keys, labels, x, shard_sizes=[100, 120, 80])
    return str(tmp_path / "fs"), labels, x


def test_the_report_projects_a_bounded_sample_and_says_so(small_set):
    import collections
    import re

    from pipeline.tools.report import build_report, stream_summary
    from pipeline.train.feature_sets import open_feature_sets

    root, labels, x = small_set
    counts, n, (sample, sample_labels) = stream_summary(open_feature_sets([root])[0], sample_size=40, seed=1)
    assert counts == collections.Counter(labels) and n == 300
    assert sample.shape == (40, 8) and len(sample_labels) == 40
    rows = {tuple(r): label for r, label in zip(x, labels, strict=True)}
    assert all(rows[tuple(r)] == label for r, label in zip(sample, sample_labels, strict=True))  # real records

    text = build_report(root, sample_size=40)
    assert "Features: PCA of a sample of 40 of 300 records (output features.18)" in text
    table = dict(re.findall(r"<tr><th>(cat|dog|fox|\(no label\))</th><td>(\d+)</td></tr>", text))
    assert table == {"cat": str(counts["cat"]), "dog": str(counts["dog"]), "fox": str(counts["fox"]),
                     "(no label)": "1"}
    assert 'id="projection-plot"' in text


def test_a_set_smaller_than_the_sample_is_projected_whole(small_set):
    from pipeline.tools.report import build_report

    text = build_report(small_set[0])
    assert "Features: PCA projection (300 records, output features.18)" in text and "a sample of" not in text


def test_a_shard_with_fewer_records_than_the_manifest_counts_is_refused(small_set):
    from pipeline.tools.report import build_report
    from pipeline.train.feature_sets import FeatureSetError

    root = small_set[0]
    manifest = open(f"{root}/manifest.json").read().replace('"embedded": 300', '"embedded": 301')
    open(f"{root}/manifest.json", "w").write(manifest)
    with pytest.raises(FeatureSetError, match="manifest counts 301 embedded records, the shards hold 300"):
        build_report(root)
