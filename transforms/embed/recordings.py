"""Recordings embedded in windows of patches, pooled back into one vector per recording.

A recording is decoded in windows of whole 3-s patches (``transforms.decode.audio``), so an hour-long file is never
held whole; each window is embedded as one element, whose result is the sum of its patches' vectors
(``ModelInputs.per_element``). Here the windows become the recording's mean over all its patches:

- a recording that fits in one window (nearly all of them) is divided by its patch count at once, in place;
- a longer one's windows are grouped by key (a shuffle Beam spreads over the workers: one recording's windows are
  a few vectors each) and summed, and the recording is kept only when its windows are all there: patches
  ``0 .. last`` with no gap. A recording whose decoding failed part-way has no last window: its failure was
  recorded by the decoder, and its windows are dropped. A window the backbone failed on fails its recording,
  once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference

from transforms.decode.audio import DEFAULT_PATCHES_PER_WINDOW, AudioPreprocessing, DecodeAudioFn
from transforms.embed.record_meta import with_version_and_source
from transforms.embed.retry import EmbeddingFailure
from transforms.schema.elements import FAILED, Failure, Record
from transforms.worker.process import WorkerDoFn

__all__ = ["WindowPosition", "pool_windows", "PoolRecordings", "EmbedRecordings", "DecodeWindowsFn"]


class WindowPosition(NamedTuple):
    """Where a window lies in its recording: its first patch, how many patches, and whether it is the last."""

    first_patch: int
    n_patches: int
    last: bool

    @property
    def whole(self) -> bool:
        """The window is the whole recording."""
        return self.first_patch == 0 and self.last


def pool_windows(windows: Iterable[tuple[WindowPosition, dict | EmbeddingFailure]]):
    """One recording's windows -> its mean vectors, an ``EmbeddingFailure`` (one of its windows failed), or None
    (incomplete: a window is missing, so decoding stopped part-way and was recorded as a failure)."""
    windows = sorted(windows, key=lambda w: w[0].first_patch)
    expected, sums, failure = 0, None, None
    for position, result in windows:
        if position.first_patch != expected:
            return None
        expected += position.n_patches
        if isinstance(result, EmbeddingFailure):
            failure = failure or result
        elif failure is None:
            sums = dict(result) if sums is None else {name: sums[name] + v for name, v in result.items()}
    if not windows or not windows[-1][0].last:
        return None
    if failure is not None:
        return failure
    return {name: (v / expected).astype(np.float32) for name, v in sums.items()}


class _SplitWindowsFn(WorkerDoFn):
    """((key, label, split, version, source, WindowPosition), PredictionResult) -> a whole recording's vectors (its
    sum over patches / their count) or its ``Failure``; a window of a longer recording goes on, keyed by the
    recording, to the "parts" output."""

    def process(self, element):
        (key, label, split, version, source, position), result = element
        inference = result.inference
        if not position.whole:
            yield beam.pvalue.TaggedOutput("parts", (key, (label, split, version, source, position, inference)))
        elif isinstance(inference, EmbeddingFailure):
            yield beam.pvalue.TaggedOutput(FAILED, Failure(key, source, "embed", inference.error_type,
                                                           inference.message, version))
        else:
            yield (key, label, split, version, source), {name: (v / position.n_patches).astype(np.float32)
                                                for name, v in inference.items()}


class _PoolPartsFn(WorkerDoFn):
    """(key, [(label, split, version, source, WindowPosition, sum or failure), ...]) -> the recording's mean
    vectors, its ``Failure``, or nothing (decoding stopped part-way; the decoder recorded why)."""

    def process(self, element):
        key, parts = element
        parts = list(parts)
        label, split, version, source = parts[0][:4]
        pooled = pool_windows((position, result) for *_, position, result in parts)
        if isinstance(pooled, EmbeddingFailure):
            yield beam.pvalue.TaggedOutput(FAILED, Failure(key, source, "embed", pooled.error_type, pooled.message,
                                                           version))
        elif pooled is not None:
            yield (key, label, split, version, source), pooled


class PoolRecordings(beam.PTransform):
    """Embedded windows -> ``{"embedded": ((key, label, split, version, source), {output: mean vector}), "failed":
    Failure}``."""

    def expand(self, windows):
        split = windows | "Whole recordings" >> beam.ParDo(_SplitWindowsFn()).with_outputs(
            FAILED, "parts", main="embedded")
        pooled = (
            split.parts
            | "Windows by recording" >> beam.GroupByKey()
            | "Mean over windows" >> beam.ParDo(_PoolPartsFn()).with_outputs(FAILED, main="embedded")
        )
        return {
            "embedded": (split.embedded, pooled.embedded) | "Every recording" >> beam.Flatten(),
            FAILED: (split[FAILED], pooled[FAILED]) | "Recording failures" >> beam.Flatten(),
        }


class DecodeWindowsFn(DecodeAudioFn):
    """``DecodeAudioFn`` with ``(key, label, split, version, source, WindowPosition)`` meta."""

    def process(self, record: Record):
        for output in with_version_and_source(super().process(record), record):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield output
            else:
                meta, window = output
                yield (*meta, WindowPosition(window.first_patch, window.n_patches, window.last)), window


class EmbedRecordings(beam.PTransform):
    """Records -> ``{"embedded": ((key, label, split, version, source), {output: mean vector}), "failed": Failure}``:
    each recording decoded in windows (``DecodeWindowsFn``), each window embedded by ``handler`` (a keyed
    ``ModelHandler`` whose inference for a window is ``{output: sum over its patches}``, batching ``batch_patches``
    patches at a time), the windows pooled (``PoolRecordings``). A window holds at most ``batch_patches`` patches,
    so that each fits a batch."""

    def __init__(self, handler, prep: AudioPreprocessing, max_seconds: float, batch_patches: int):
        super().__init__()
        self._handler = handler
        self._decode = DecodeWindowsFn(prep, max_seconds, min(DEFAULT_PATCHES_PER_WINDOW, batch_patches))

    def expand(self, records):
        decoded = records | "Decode audio" >> beam.ParDo(self._decode).with_outputs(FAILED, main="windows")
        pooled = (
            decoded.windows
            | "Embed windows" >> RunInference(self._handler)
            | "Mean over patches" >> PoolRecordings()
        )
        failed = (decoded[FAILED], pooled[FAILED]) | "Decode or embed failures" >> beam.Flatten()
        return {"embedded": pooled["embedded"], FAILED: failed}
