"""What travels with an input between decoding and its commit: its meta.

A decoder (``transforms/decode``) gives each output the meta ``(key, label, split)``; inside ``ExtractFeatures`` it
is extended with the record's source version, which the commit records (``transforms/read/versions.py``), and its
source file, which an embed failure names.
"""

from __future__ import annotations

import apache_beam as beam

from transforms.schema.elements import Failure, Record

__all__ = ["with_version_and_source"]


def with_version_and_source(outputs, record: Record):
    """A decoding step's outputs, the meta ``(key, label, split)`` of each input extended with the record's
    source version and source file, so its commit records the one and an embed failure can name the other; its
    failures get the record's version."""
    for output in outputs:
        if isinstance(output, beam.pvalue.TaggedOutput):
            value = output.value
            yield (beam.pvalue.TaggedOutput(output.tag, value.with_version(record.version))
                   if isinstance(value, Failure) else output)
        else:
            meta, value = output
            yield (*meta, record.version, record.origin), value
