"""How an activation becomes one vector per record, in the graph: spatial maps and frame sequences by avg/max/none,
token layers over their real tokens only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["POOLINGS", "pooled_dim", "pool", "masked_pool"]

POOLINGS = ("avg", "max", "none")


def pooled_dim(shape: Sequence[int], pooling: str) -> int:
    """Length of the vector that ``pooling`` makes of an activation of ``shape`` (batch dim excluded)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
    if len(shape) == 1:
        return int(shape[0])
    if pooling == "none":
        return int(np.prod(shape))
    return int(shape[-1])


def pool(activation, pooling: str):
    """In-graph: a (batch, ..., channels) activation -> (batch, dim) vector, as ``pooled_dim`` describes: avg and max
    over every axis between the first and the last (the positions of a map, the frames of a sequence)."""
    import tensorflow as tf

    positions = list(range(1, activation.shape.rank - 1))
    if positions and pooling == "avg":
        activation = tf.reduce_mean(activation, axis=positions)
    elif positions and pooling == "max":
        activation = tf.reduce_max(activation, axis=positions)
    return tf.reshape(activation, [tf.shape(activation)[0], -1])


def masked_pool(tokens, mask, pooling: str):
    """In-graph: (n, T, C) token vectors -> (n, C), over the positions where ``mask`` is 1."""
    import tensorflow as tf

    m = tf.cast(mask, tokens.dtype)[:, :, None]
    if pooling == "max":
        return tf.reduce_max(tokens + (m - 1.0) * 1e9, axis=1)
    return tf.reduce_sum(tokens * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1e-9)
