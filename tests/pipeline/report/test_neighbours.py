"""Nearest neighbours by cosine similarity within a sample."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.report.neighbours import cosine_neighbours, pick_queries


def test_cosine_neighbours_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (200, 16)).astype(np.float32) * rng.uniform(0.1, 10, (200, 1)).astype(np.float32)
    x[50] = x[7] * 3.0  # the same direction: a near-duplicate, whatever its length
    queries = np.array([7, 0, 199])
    found, sims = cosine_neighbours(x, queries, 4)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for q, row, s in zip(queries, found, sims, strict=True):
        all_sims = unit @ unit[q]
        all_sims[q] = -np.inf
        expected = np.argsort(-all_sims, kind="stable")[:4]
        np.testing.assert_array_equal(row, expected)
        np.testing.assert_allclose(s, all_sims[expected], rtol=1e-5)
        assert q not in row
    assert found[0, 0] == 50 and sims[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_neighbours_of_tiny_samples_and_zero_vectors():
    x = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.1]], np.float32)
    found, sims = cosine_neighbours(x, np.array([0]), 5)
    assert found.tolist() == [[2, 1]] and sims[0, 1] == 0.0
    assert cosine_neighbours(x[:1], np.array([0]), 5)[0].shape == (1, 0)


def test_queries_are_distinct_seeded_and_bounded():
    assert sorted(pick_queries(5, 10, seed=1)) == [0, 1, 2, 3, 4]
    first = pick_queries(1000, 6, seed=3)
    assert len(set(first)) == 6 and np.array_equal(first, pick_queries(1000, 6, seed=3))
    assert not np.array_equal(first, pick_queries(1000, 6, seed=4))
    assert len(pick_queries(0, 6)) == 0
