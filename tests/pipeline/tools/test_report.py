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
