"""Text inputs for a text backbone: tokenising records on the workers.

``TokenizeFn`` turns a text ``Record`` into its token ids with the backbone's own ``tokenizer.json`` (read once
per worker from the staged asset, hash-checked). Batches of ids are padded and embedded by ``BackboneHandler``
with ``TOKEN_IDS`` inputs (``transforms/embed/inputs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.process import ready_process
from transforms.records import FAILED, METRICS_NAMESPACE, Failure, Record

__all__ = ["TextPreprocessing", "TokenizeFn"]


@dataclass(frozen=True)
class TextPreprocessing:
    """A text backbone's input side: its tokenizer (an asset of the spec) and the longest sequence kept."""

    max_length: int = 256

    def describe(self) -> dict:
        return {"tokenizer": "the backbone's tokenizer.json (tokenizers)", "max_length": self.max_length,
                "truncation": "longer texts are cut, as the original model does"}


class TokenizeFn(beam.DoFn):
    """Record with a ``str`` payload -> ((key, label, split), int32 token ids); anything else fails."""

    def __init__(self, spec):
        self._spec = spec
        self._tokenized = Metrics.counter(METRICS_NAMESPACE, "records_tokenized")

    def setup(self):
        from tokenizers import Tokenizer

        ready_process()
        self._tokenizer = Tokenizer.from_str(self._spec.read_asset("tokenizer").decode("utf-8"))
        self._tokenizer.enable_truncation(self._spec.preprocessing.max_length)
        self._tokenizer.no_padding()

    def process(self, record: Record):
        if not isinstance(record.payload, str) or not record.payload.strip():
            kind = "empty text" if isinstance(record.payload, str) else "not text (a binary payload)"
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record.key, record.origin, "tokenize", "NotText",
                                                           f"{kind}; backbone {self._spec.name} embeds text"))
            return
        ids = np.asarray(self._tokenizer.encode(record.payload).ids, dtype=np.int32)
        self._tokenized.inc()
        yield (record.key, record.label, record.split), ids
