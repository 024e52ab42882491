"""Text inputs for a text backbone: tokenising records on the workers.

``TokenizeFn`` turns a text ``Record`` into its token ids with the backbone's own ``tokenizer.json`` (read once
per worker from the staged asset, hash-checked). Batches of ids are padded and embedded by ``BackboneHandler``
with ``TOKEN_IDS`` inputs (``transforms/embed/model_inputs.py``).

A record's text is its ``str`` payload (a table row, a line), or its bytes as UTF-8 (a loose file, a leading
byte-order mark dropped). A text with no token of its own (empty, whitespace, zero-width characters) is embedded
as the tokenizer has it (``[CLS] [SEP]``, as sentence-transformers does) and counted (the ``empty_texts``
metric); only what is not text fails: bytes that are not UTF-8, a payload that is neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.schema.elements import FAILED, METRICS_NAMESPACE, Failure, Record
from transforms.worker.process import WorkerDoFn

__all__ = ["TextPreprocessing", "TokenizeFn", "text_of"]


@dataclass(frozen=True)
class TextPreprocessing:
    """A text backbone's input side: its tokenizer (an asset of the spec) and the longest sequence kept."""

    max_length: int = 256

    def describe(self) -> dict:
        return {"tokenizer": "the backbone's tokenizer.json (tokenizers)", "max_length": self.max_length,
                "truncation": "longer texts are cut, as the original model does"}


def text_of(payload) -> str:
    """A record's payload as text: a ``str`` as it is, bytes decoded as UTF-8 (``ValueError`` saying where they
    are not); anything else is a ``TypeError``."""
    if isinstance(payload, str):
        return payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            return bytes(payload).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 text: byte {e.start} (0x{bytes(payload)[e.start]:02x}) cannot be decoded; "
                             "save the file as UTF-8") from None
    raise TypeError(f"not text: a {type(payload).__name__} payload")


class TokenizeFn(WorkerDoFn):
    """Record with a text payload (``text_of``) -> ((key, label, split), int32 token ids); anything else fails."""

    def __init__(self, spec):
        self._spec = spec
        self._tokenized = Metrics.counter(METRICS_NAMESPACE, "records_tokenized")
        self._empty = Metrics.counter(METRICS_NAMESPACE, "empty_texts")

    def setup(self):
        from tokenizers import Tokenizer

        super().setup()
        self._tokenizer = Tokenizer.from_str(self._spec.read_asset("tokenizer").decode("utf-8"))
        self._tokenizer.enable_truncation(self._spec.preprocessing.max_length)
        self._tokenizer.no_padding()

    def process(self, record: Record):
        try:
            text = text_of(record.payload)
        except (TypeError, ValueError) as e:
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record.key, record.origin, "tokenize", "NotText",
                                                           f"{e}; backbone {self._spec.name} embeds text"))
            return
        encoding = self._tokenizer.encode(text)
        self._tokenized.inc()
        if all(encoding.special_tokens_mask):  # no token of its own: "", whitespace, zero-width characters
            self._empty.inc()
        ids = np.asarray(encoding.ids, dtype=np.int32)
        yield (record.key, record.label, record.split), ids
