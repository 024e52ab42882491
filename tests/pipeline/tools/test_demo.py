"""The demo's data: scikit-learn's digits as PNG files in class folders, pixels intact."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from pipeline.tools.demo import write_digits


def test_digits_are_written_as_labelled_pngs(tmp_path):
    from sklearn.datasets import load_digits

    assert write_digits(str(tmp_path / "held-out"), lambda i: i % 5 == 0) == 360
    assert write_digits(str(tmp_path)) == 1797
    assert sorted(os.listdir(tmp_path)) == [str(d) for d in range(10)] + ["held-out"]
    assert sum(len(os.listdir(tmp_path / str(d))) for d in range(10)) == 1797
    digits = load_digits()
    first = np.asarray(Image.open(tmp_path / str(digits.target[0]) / "digit-0000.png"))
    np.testing.assert_array_equal(first, np.clip(digits.images[0] * 255.0 / 16.0, 0, 255).astype(np.uint8))
