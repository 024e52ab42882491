"""The frozen bottom's outputs, computed once per image: the only part of the backbone that never changes.

Images are decoded and run through the bottom in batches; each batch's activations are appended to a raw
float32 file, so memory stays one batch whatever the set's size. Once written, the cache is read back into
memory when it is at most ``memory_mb``, else memory-mapped (``numpy.memmap``, rows read as batches need them).
With augmentation the decoded uint8 images are kept the same way instead, since the bottom must then run on
each epoch's flipped and cropped copies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["CachedSet", "build_cache", "bottom_function"]


@dataclass
class CachedSet:
    """Keys, labels and, per row, the bottom's activation (``x``) or the decoded image (``images``)."""

    keys: np.ndarray              # (n,) object
    labels: np.ndarray            # (n,) object
    x: np.ndarray | None          # (n, *cut_shape) float32, in memory or a memmap
    images: np.ndarray | None     # (n, crop, crop, 3) uint8, when kept for augmentation
    seconds: float
    on_disk: bool

    def __len__(self) -> int:
        return len(self.keys)


def bottom_function(split):
    """One compiled call, uint8 images -> the cut's activation (fixed signature: no retracing per batch size)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, split.crop, split.crop, 3], tf.uint8)], autograph=False)
    def run(images):
        return split.bottom(split.normalize(images), training=False)

    return run


def _batches(items: Iterable, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _read_back(path: str, dtype, shape: tuple, n: int, memory_mb: int) -> tuple[np.ndarray, bool]:
    if n == 0:
        return np.zeros((0, *shape), dtype), False
    if n * int(np.prod(shape)) * np.dtype(dtype).itemsize <= memory_mb * 2 ** 20:
        data = np.fromfile(path, dtype=dtype).reshape(n, *shape)
        os.remove(path)
        return data, False
    return np.memmap(path, dtype=dtype, mode="r", shape=(n, *shape)), True


def build_cache(images: Iterable[tuple[str, str | None, np.ndarray]], bottom: Callable, cut_shape: tuple,
                folder: str, name: str, batch_size: int = 32, memory_mb: int = 1024, keep_images: bool = False,
                crop: int = 224) -> CachedSet:
    """Run ``bottom`` once per image (or keep the images, ``keep_images``); see the module docstring."""
    start = time.monotonic()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.{'uint8' if keep_images else 'float32'}")
    keys, labels = [], []
    with open(path, "wb") as f:
        for batch in _batches(images, batch_size):
            stacked = np.stack([image for _, _, image in batch])
            rows = stacked if keep_images else np.asarray(bottom(stacked), np.float32)
            f.write(np.ascontiguousarray(rows).tobytes())
            keys += [k for k, _, _ in batch]
            labels += [label for _, label, _ in batch]
    if keep_images:
        data, on_disk = _read_back(path, np.uint8, (crop, crop, 3), len(keys), memory_mb)
        x, kept = None, data
    else:
        data, on_disk = _read_back(path, np.float32, tuple(cut_shape), len(keys), memory_mb)
        x, kept = data, None
    return CachedSet(np.array(keys, dtype=object), np.array(labels, dtype=object), x, kept,
                     time.monotonic() - start, on_disk)
