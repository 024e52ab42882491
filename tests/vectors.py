"""How close a record's vector must be to itself computed again: the product's reproducibility bound.

The same input through the same backbone can meet the network in another batch (other records beside it, another
position, another batch size): the kernels then sum in another order and the vector moves by float32 round-off.
featurebeam promises that and no more: every element within ``BATCH_ROUND_OFF`` times the vector's largest element
(measured: at most 4.6e-7 of it for the embedded image backbones). Keys, labels, splits and counts of a rerun are
exact; only vectors have this bound. A test never asserts bitwise equality of vectors computed in two batches.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BATCH_ROUND_OFF", "assert_same_vector", "batch_difference"]

BATCH_ROUND_OFF = 2e-6


def batch_difference(got, expected) -> float:
    """The largest element-wise difference, relative to the expected vector's largest element."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = max(np.abs(expected).max(initial=0.0), np.finfo(np.float32).tiny)
    return float(np.abs(got - expected).max(initial=0.0) / scale)


def assert_same_vector(got, expected, what: str = "") -> None:
    difference = batch_difference(got, expected)
    assert difference <= BATCH_ROUND_OFF, f"{what}: differs by {difference:.2e} of its largest element"
