"""Length-aware batches of token ids, so that a text backbone pads little and meets a few shapes only.

Texts arrive in any order and their lengths vary widely (a few tokens to the backbone's 256); a batch is
padded to its longest, so batching in arrival order pads nearly every batch to the maximum. Here each text
waits in the queue of its length bucket (``inputs.length_buckets``: 16, 20, 24, 28, 32, 40, ... 224, 256), one
set of queues per Beam window:

1. a queue that reaches ``batch_size`` goes out at once, as one batch, padded later to its bucket;
2. at most ``max_held`` texts wait at any time (by default ``batch_size`` per bucket, a bound that one window
   never reaches): past it, the fullest queue goes out early, so memory stays flat whatever the number of
   records or windows;
3. at the end of a bundle every queue goes out, each as one batch (at most one per bucket and window).

Which batch a text lands in changes no vector (the mask keeps padding out); only the work done changes.
``LengthBatcher`` is the rule, without Beam; ``BatchByLengthFn`` is the DoFn over it. (Beam's own
``BatchElements`` buckets by length only on its stateful path, with keyed state and timers, and
``SortAndBatchElements`` holds a whole bundle in memory.)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from transforms.embed.model_inputs import bucket_length
from transforms.worker.process import WorkerDoFn

__all__ = ["LengthBatcher", "batch_by_length", "BatchByLengthFn"]


class LengthBatcher:
    """Items grouped into batches of similar length, per group (a Beam window), at most ``max_held`` held.

    ``add`` and ``drain`` return ``(group, batch)`` pairs, each batch a list of items from one group and one
    length bucket, at most ``batch_size`` long."""

    def __init__(self, buckets: Sequence[int], batch_size: int, max_held: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.buckets = tuple(buckets)
        self.batch_size = batch_size
        self.max_held = batch_size * max(1, len(self.buckets)) if max_held is None else max_held
        if self.max_held < 1:
            raise ValueError(f"max_held must be at least 1, got {self.max_held}")
        self._queues: dict[tuple[Hashable, int], list] = {}
        self._held = 0

    @property
    def held(self) -> int:
        """How many items wait in the queues now."""
        return self._held

    def add(self, item, length: int, group: Hashable = None) -> list[tuple[Hashable, list]]:
        """Queue ``item`` (``length`` tokens); the batches that are ready because of it."""
        key = (group, bucket_length(length, self.buckets))
        queue = self._queues.setdefault(key, [])
        queue.append(item)
        self._held += 1
        if len(queue) >= self.batch_size:
            return [self._pop(key)]
        if self._held > self.max_held:
            return [self._pop(max(self._queues, key=lambda k: len(self._queues[k])))]
        return []

    def drain(self) -> list[tuple[Hashable, list]]:
        """Every queue as one batch (shortest bucket first), leaving none held."""
        return [self._pop(key) for key in sorted(self._queues, key=lambda k: k[1])]

    def _pop(self, key: tuple[Hashable, int]) -> tuple[Hashable, list]:
        batch = self._queues.pop(key)
        self._held -= len(batch)
        return key[0], batch


def batch_by_length(items: Iterable, length, buckets: Sequence[int], batch_size: int,
                    max_held: int | None = None) -> Iterator[list]:
    """The batches ``LengthBatcher`` makes of ``items`` in one go (``length(item)``: its number of tokens)."""
    batcher = LengthBatcher(buckets, batch_size, max_held)
    for item in items:
        for _, batch in batcher.add(item, length(item)):
            yield batch
    for _, batch in batcher.drain():
        yield batch


class BatchByLengthFn(WorkerDoFn):
    """``(meta, token ids)`` -> lists of them of similar length, as ``LengthBatcher`` groups them; each list is
    emitted in its window, at the window's end (as ``beam.BatchElements`` does), and none outlives its bundle."""

    def __init__(self, buckets: Sequence[int], batch_size: int, max_held: int | None = None):
        self._buckets = tuple(buckets)
        self._batch_size = batch_size
        self._max_held = max_held

    def start_bundle(self):
        self._batcher = LengthBatcher(self._buckets, self._batch_size, self._max_held)

    def process(self, element, window=beam.DoFn.WindowParam):
        _, ids = element
        yield from _in_windows(self._batcher.add(element, len(ids), window))

    def finish_bundle(self):
        yield from _in_windows(self._batcher.drain())


def _in_windows(batches: list[tuple[Hashable, list]]) -> Iterator[WindowedValue]:
    for window, batch in batches:
        yield WindowedValue(batch, window.max_timestamp(), (window,))
