"""The PCA projection the report plots."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.report.plots import pca_2d


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
