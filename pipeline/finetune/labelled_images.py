"""Labelled images for fine-tuning, read outside Beam with the extraction's own readers and decoder.

The reading steps of ``transforms.read.sources.ReadRecords`` are pure generators (``list_source_files`` ->
``expand_source`` -> ``read_unit``); here they run in order in this process, so every input format, label
rule and key is the extraction's. Each record is decoded by ``transforms.decode.images.decode_image``.
What cannot be read or decoded is counted by reason (as extract's dead letters are), not fatal; a key seen
twice is used once.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from transforms.decode.images import ImageDecodeError, ImagePreprocessing, decode_image
from transforms.read.input_specs import InputSpec, list_source_files
from transforms.read.sources import DEFAULT_CHUNK_BYTES, expand_source, read_unit
from transforms.read.tables import InputFields
from transforms.schema.elements import Failure

__all__ = ["ReadCounts", "read_images"]


@dataclass
class ReadCounts:
    """What reading found: images decoded, failures by reason, duplicate keys, records without a label."""

    images: int = 0
    unlabelled: int = 0
    duplicates: int = 0
    failed: collections.Counter = field(default_factory=collections.Counter)
    examples: list = field(default_factory=list)   # a few (key, reason) of the failures

    def fail(self, key: str, reason: str) -> None:
        self.failed[reason] += 1
        if len(self.examples) < 5:
            self.examples.append((key, reason))

    def to_json(self) -> dict:
        return {"images": self.images, "unlabelled_skipped": self.unlabelled, "duplicate_keys": self.duplicates,
                "failed": sum(self.failed.values()), "failed_by_reason": dict(sorted(self.failed.items())),
                "failed_examples": [{"key": k, "reason": r} for k, r in self.examples]}


def read_images(specs: Sequence[InputSpec], fields: InputFields, prep: ImagePreprocessing, max_pixels: int,
                counts: ReadCounts, keep_unlabelled: bool = False) -> Iterator[tuple[str, str | None, np.ndarray]]:
    """(key, label, uint8 (crop, crop, 3) image) of every readable, decodable, labelled record of ``specs``."""
    seen: set[str] = set()
    for spec in specs:
        for source in list_source_files(spec):
            try:
                units = list(expand_source(source, fields, DEFAULT_CHUNK_BYTES))
            except Exception as e:  # a file that cannot be opened or parsed: its failure, not the run's
                counts.fail(source.uri, f"read: {type(e).__name__}")
                continue
            for unit in units:
                try:
                    for item in read_unit(unit, fields):
                        if isinstance(item, Failure):
                            counts.fail(item.key, item.reason)
                            continue
                        if item.key in seen:
                            counts.duplicates += 1
                            continue
                        seen.add(item.key)
                        if item.label is None and not keep_unlabelled:
                            counts.unlabelled += 1
                            continue
                        try:
                            image = decode_image(item.payload, prep, max_pixels)
                        except ImageDecodeError:
                            counts.fail(item.key, "decode: ImageDecodeError")
                            continue
                        counts.images += 1
                        yield item.key, item.label, image
                except Exception as e:  # storage errors while reading a unit
                    counts.fail(getattr(unit, "uri", getattr(unit, "key", "?")), f"read: {type(e).__name__}")
