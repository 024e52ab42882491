"""What a backbone takes, as the one ``BackboneHandler`` needs to know it: the compiled function's input
signature, how a batch of decoded records becomes its arguments (collation), and how each layer becomes a
vector.

- ``IMAGES``: uint8 (n, crop, crop, 3), stacked; spatial layers pooled by ``--pooling``.
- ``TOKEN_IDS``: int32 (ids, mask), each batch padded on the right to its longest sequence (the signature has
  no fixed length); token layers pooled over the real tokens only. A text backbone's own inputs
  (``inputs_for``) pad further, to the next of a fixed set of bucket lengths (``length_buckets``: 16, 20, 24,
  28, 32, 40, ... up to the longest sequence the backbone keeps), so that its compiled function meets a few
  shapes only, whatever the texts. Padding leaves every vector as it is (to float rounding): the mask keeps
  padded positions out of attention and pooling.
- ``AUDIO``: float32 (patches, patch_samples): each element of a batch is an ``AudioWindow`` of one or more 3-s
  patches of one recording, and a batch holds its windows' patches end to end (``RunInference`` weighs a window
  by its patches, ``patch_count``). Each patch becomes one vector (a frame-sequence layer pooled over its frames
  by ``--pooling``); each window's result is the **sum** of its patches' vectors, which ``ExtractFeatures`` turns
  into the recording's mean over all its patches, however many windows it took.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from transforms.embed.pooling import masked_pool, pool

__all__ = ["ModelInputs", "IMAGES", "TOKEN_IDS", "inputs_for", "pad_tokens", "length_buckets", "bucket_length",
           "patch_count"]


def length_buckets(max_length: int, shortest: int = 16, per_doubling: int = 4) -> tuple[int, ...]:
    """The lengths token batches are padded to: from ``shortest`` up, ``per_doubling`` even steps from each power
    of two to the next, then ``max_length`` itself (256: 16, 20, 24, 28, 32, 40, 48, ..., 192, 224, 256). Past
    ``shortest`` tokens, less than 1 / ``per_doubling`` of a padded sequence is padding; four steps cost 5%
    more work than no padding at all on texts of mixed length, powers of two alone (16, 32, ... 256) 28%."""
    buckets, power = [], shortest
    while power < max_length:
        buckets += [power + i * power // per_doubling for i in range(per_doubling)]
        power *= 2
    return (*sorted({b for b in buckets if b < max_length}), max_length)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``length`` tokens; ``length`` itself past the last bucket (or none)."""
    return next((b for b in buckets if b >= length), length)


def pad_tokens(sequences: Sequence[np.ndarray], buckets: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), both (n, T) int32, padded with 0 on the right to T: the longest sequence, or with
    ``buckets`` the smallest bucket that holds it (``bucket_length``)."""
    longest = bucket_length(max(len(s) for s in sequences), buckets)
    ids = np.zeros((len(sequences), longest), np.int32)
    mask = np.zeros((len(sequences), longest), np.int32)
    for i, s in enumerate(sequences):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


@dataclass(frozen=True)
class ModelInputs:
    """One kind of backbone input; see the module docstring for the three there are. ``lengths``: token inputs
    only, the bucket lengths a batch is padded to (empty: to its longest sequence). ``patch``: audio only, (samples
    between patch starts, samples in a patch)."""

    kind: str
    lengths: tuple[int, ...] = ()
    patch: tuple[int, int] = (0, 0)

    def signature(self, spec) -> list:
        import tensorflow as tf

        if self.kind == "images":
            size = spec.preprocessing.crop
            return [tf.TensorSpec([None, size, size, 3], tf.uint8)]
        if self.kind == "audio":
            return [tf.TensorSpec([None, self.patch[1]], tf.float32)]
        return [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)]

    def collate(self, batch: Sequence) -> tuple[np.ndarray, ...]:
        if self.kind == "images":
            return (np.stack(batch),)
        if self.kind == "audio":
            hop, size = self.patch
            return (np.stack([w.samples[i * hop: i * hop + size] for w in batch for i in range(w.n_patches)]),)
        return pad_tokens(batch, self.lengths)

    def forward(self, model, args: tuple):
        """In-graph: the backbone's ``{layer: activation}`` for the collated arguments."""
        return model(list(args) if self.kind == "token_ids" else args[0], training=False)

    def vector(self, activation, pooling: str, args: tuple):
        """In-graph: one (n, dim) vector per record (per patch, for audio) of a layer's activation."""
        if self.kind == "token_ids":
            return masked_pool(activation, args[1], pooling) if activation.shape.rank == 3 else activation
        return pool(activation, pooling)

    def per_element(self, vectors: dict[str, np.ndarray], batch: Sequence) -> list[dict[str, np.ndarray]]:
        """The collated batch's ``{output: (n, dim)}`` -> one ``{output: vector}`` per element of ``batch``: its row,
        or for audio the sum of its window's patch rows."""
        if self.kind != "audio":
            return [{name: v[i] for name, v in vectors.items()} for i in range(len(batch))]
        starts = np.cumsum([0] + [w.n_patches for w in batch[:-1]])
        sums = {name: np.add.reduceat(v, starts, axis=0) for name, v in vectors.items()}
        return [{name: s[i] for name, s in sums.items()} for i in range(len(batch))]


IMAGES = ModelInputs("images")
TOKEN_IDS = ModelInputs("token_ids")


def patch_count(element) -> int:
    """How many patches a (keyed) ``AudioWindow`` holds: its weight in a batch."""
    return getattr(element, "n_patches", None) or element[1].n_patches


def inputs_for(spec) -> ModelInputs:
    """A ``Backbone``'s inputs by its modality: ``image``; ``text``, token ids padded to the buckets of the spec's
    ``preprocessing.max_length``; ``audio``, patches of the spec's ``preprocessing``."""
    if spec.modality == "text":
        return ModelInputs(TOKEN_IDS.kind, length_buckets(spec.preprocessing.max_length))
    if spec.modality == "audio":
        return ModelInputs("audio", patch=(spec.preprocessing.patch_hop, spec.preprocessing.patch_samples))
    return IMAGES
