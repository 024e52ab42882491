"""What a backbone takes, as the one ``BackboneHandler`` needs to know it: the compiled function's input
signature, how a batch of decoded records becomes its arguments (collation), and how each layer becomes a
vector.

- ``IMAGES``: uint8 (n, crop, crop, 3), stacked; spatial layers pooled by ``--pooling``.
- ``TOKEN_IDS``: int32 (ids, mask), each batch padded on the right to its longest sequence (the signature has
  no fixed length); token layers pooled over the real tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transforms.embed.pooling import masked_pool, pool

__all__ = ["ModelInputs", "IMAGES", "TOKEN_IDS", "inputs_for", "pad_tokens"]


def pad_tokens(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), both (n, longest) int32, padded with 0 on the right."""
    longest = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), longest), np.int32)
    mask = np.zeros((len(sequences), longest), np.int32)
    for i, s in enumerate(sequences):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


@dataclass(frozen=True)
class ModelInputs:
    """One kind of backbone input; see the module docstring for the two there are."""

    kind: str

    def signature(self, spec) -> list:
        import tensorflow as tf

        if self.kind == "images":
            size = spec.preprocessing.crop
            return [tf.TensorSpec([None, size, size, 3], tf.uint8)]
        return [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)]

    def collate(self, batch: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        return (np.stack(batch),) if self.kind == "images" else pad_tokens(batch)

    def forward(self, model, args: tuple):
        """In-graph: the backbone's ``{layer: activation}`` for the collated arguments."""
        return model(args[0] if self.kind == "images" else list(args), training=False)

    def vector(self, activation, pooling: str, args: tuple):
        """In-graph: one (n, dim) vector per record of a layer's activation."""
        if self.kind == "images":
            return pool(activation, pooling)
        return masked_pool(activation, args[1], pooling) if activation.shape.rank == 3 else activation


IMAGES = ModelInputs("images")
TOKEN_IDS = ModelInputs("token_ids")


def inputs_for(spec) -> ModelInputs:
    """A spec's inputs by its modality (``image``, the default, or ``text``)."""
    return TOKEN_IDS if getattr(spec, "modality", "image") == "text" else IMAGES
