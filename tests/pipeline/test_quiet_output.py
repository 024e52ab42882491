"""No TensorFlow start-up lines in a command's stderr, from the command's process or its local workers, unless
FEATUREBEAM_DEBUG=1; every other line (warnings, errors, progress) still shows."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from tests.conftest import REPO

# What TensorFlow 2.21 writes to fd 2 on import, whatever TF_CPP_MIN_LOG_LEVEL says (recorded from `featurebeam
# demo`; the cpu_feature_guard line shows only below TF_CPP_MIN_LOG_LEVEL=2).
RECORDED = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796141666.884179    1720 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To turn "
    "them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796141792.042310    2904 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
]
START_UP = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard", "port.cc:",
            "rebuild TensorFlow with the appropriate compiler flags")


def _start_up_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if any(mark in line for mark in START_UP)]


def _env(debug: bool, log_level: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEATUREBEAM_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
    return (env | {"PYTHONPATH": REPO} | ({"FEATUREBEAM_DEBUG": "1"} if debug else {})
            | ({"TF_CPP_MIN_LOG_LEVEL": log_level} if log_level is not None else {}))


def _start(args: list[str], debug: bool = False, log_level: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=_env(debug, log_level),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three real commands at once (the machine's cores are few): extract on four tiny PNGs and a broken one with
    its default two local worker processes, and `layers` on a file that is no model (it imports TensorFlow, then
    fails with one line), quiet and with FEATUREBEAM_DEBUG=1. Both `layers` run with TF_CPP_MIN_LOG_LEVEL=0, so
    TensorFlow prints its cpu_feature_guard lines on every CPU (the oneDNN line only on some)."""
    root = tmp_path_factory.mktemp("quiet")
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / "images" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40 + 8 * i, 32), colour).save(root / "images" / label / f"{i}.png")
    (root / "images" / "blue" / "broken.png").write_bytes(b"not a PNG at all")
    (root / "model.keras").write_text("not a model")
    started = {
        "extract": _start(["extract", "--input", str(root / "images"), "--output", str(root / "out"),
                           "--max-failure-fraction", "0"]),
        "layers": _start(["layers", "--backbone", str(root / "model.keras")], log_level="0"),
        "layers_debug": _start(["layers", "--backbone", str(root / "model.keras")], debug=True, log_level="0"),
    }
    done = {}
    for name, run in started.items():
        out, err = run.communicate(timeout=300)
        done[name] = (run.returncode, out, err)
    return done


@pytest.mark.slow
def test_extract_and_its_workers_print_no_start_up_lines_and_the_real_ones(runs):
    rc, out, err = runs["extract"]
    assert rc == 3, err[-3000:]  # one input of five failed, more than --max-failure-fraction 0
    assert _start_up_lines(err) == [], err[-3000:]
    assert "featurebeam: progress  listed" in err
    assert "featurebeam extract: failed: 1 of 5 inputs failed, more than --max-failure-fraction 0" in err
    assert "embedded 4 of 5 inputs (1 failed)" in out


@pytest.mark.slow
def test_a_command_that_imports_tensorflow_itself_prints_only_its_own_line(runs):
    rc, _, err = runs["layers"]
    assert rc == 2
    assert _start_up_lines(err) == [], err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("featurebeam layers: error: cannot load model file "), err


@pytest.mark.slow
def test_featurebeam_debug_shows_the_start_up_lines_again(runs):
    """Which lines TensorFlow prints depends on the CPU (the oneDNN line only where it turns oneDNN on: AVX-512
    VNNI/BF16 or AMX); absl's and the cpu_feature_guard lines come on every CPU at TF_CPP_MIN_LOG_LEVEL=0."""
    rc, _, err = runs["layers_debug"]
    assert rc == 2
    assert "absl::InitializeLog" in err and "cpu_feature_guard" in err, err[-3000:]
    assert "featurebeam layers: error: cannot load model file " in err


def test_only_the_start_up_lines_are_dropped_from_fd_2_and_the_rest_keeps_its_order():
    """C++ and Python writes to fd 2 while filtered (as during TensorFlow's import): the known start-up lines go,
    a C++-style warning, a Python warning and a partial last line stay, in order, and fd 2 is back afterwards."""
    script = textwrap.dedent(f"""
        import os, sys, warnings
        from transforms.worker.quiet import filtered_stderr
        print("before", file=sys.stderr)
        with filtered_stderr():
            for line in {RECORDED!r}:
                os.write(2, (line + "\\n").encode())
            os.write(2, b"W0000 00:00:1796141666.884179    1720 some_op.cc:12] a warning that matters\\n")
            warnings.warn("a Python warning")
            os.write(2, b"no newline")
        print("", file=sys.stderr)
        print("after", file=sys.stderr)
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(False), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        "before", "W0000 00:00:1796141666.884179    1720 some_op.cc:12] a warning that matters",
        "<string>:9: UserWarning: a Python warning", "no newline", "after"], run.stderr
