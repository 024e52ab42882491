"""The GPU worker image pins the versions the launcher runs with (Beam, Python, TensorFlow)."""

from __future__ import annotations

import os
import re

from tests.conftest import REPO


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_worker_image_pins_the_launchers_versions():
    dockerfile = open(os.path.join(REPO, "deploy", "Dockerfile")).read()
    pyproject = open(os.path.join(REPO, "pyproject.toml")).read()
    base = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:([\d.]+)$", dockerfile, re.M)
    assert base, "the image must start from the Beam SDK image"
    python, beam = _version(base.group(1)), _version(base.group(2))

    beam_low, beam_high = (_version(v) for v in re.search(r'"apache-beam\[[^\]]*\]>=([\d.]+),<([\d.]+)"',
                                                          pyproject).groups())
    assert beam_low <= beam < beam_high, (beam, beam_low, beam_high)
    import apache_beam

    assert _version(apache_beam.__version__)[:2] == beam[:2]  # the Beam this launcher submits with

    py_low, py_high = (_version(v) for v in re.search(r'requires-python = ">=([\d.]+),<([\d.]+)"',
                                                      pyproject).groups())
    assert py_low <= python < py_high, (python, py_low, py_high)

    cpu = re.search(r'"tensorflow-cpu>=([\d.]+),<([\d.]+)', pyproject).groups()
    gpu = re.search(r'"tensorflow\[and-cuda\]>=([\d.]+),<([\d.]+)"', dockerfile).groups()
    assert gpu == cpu, (gpu, cpu)                                 # the same TensorFlow release, built for CUDA
    weights = open(os.path.join(REPO, "weights-requirements.txt")).read()
    assert "--require-hashes -r weights-requirements.txt" in dockerfile and "--hash=sha256:" in weights
