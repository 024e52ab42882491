"""Nearest neighbours by cosine similarity within a bounded sample of feature vectors.

A quick check that the features mean something (a record's neighbours share its label) and a way to spot
near-duplicates (similarity close to 1). Only the sample is searched, never the whole set: memory is that of
the sample plus one (queries x sample) block of similarities.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pick_queries", "cosine_neighbours", "NEAR_DUPLICATE"]

NEAR_DUPLICATE = 0.995  # a cosine similarity at least this high is flagged as a likely near-duplicate


def pick_queries(n: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct row indices of ``n`` (all of them when fewer), drawn with ``seed``, in drawn order."""
    if n <= 0 or count <= 0:
        return np.zeros(0, np.int64)
    return np.random.default_rng(seed).permutation(n)[:count].astype(np.int64)


def cosine_neighbours(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query row of ``x``, the ``k`` other rows most similar by cosine: (indices, similarities), each
    (queries, k), most similar first, ties by row index. A zero vector is similar to nothing (similarity 0)."""
    queries = np.asarray(queries, np.int64)
    k = max(0, min(k, len(x) - 1))
    if len(queries) == 0 or k == 0:
        return np.zeros((len(queries), k), np.int64), np.zeros((len(queries), k), np.float32)
    norms = np.linalg.norm(x, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    q = x[queries] / safe[queries, None]
    similarities = (x @ q.T).T / safe[None, :]  # (queries, n), no normalised copy of x
    similarities[np.arange(len(queries)), queries] = -np.inf  # a record is not its own neighbour
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarities, order, axis=1).astype(np.float32)
