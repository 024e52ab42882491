"""Text inputs for a text backbone: tokenising records on the workers, and the encoder's ``ModelHandler``.

``TokenizeFn`` turns a text ``Record`` into its token ids with the backbone's own ``tokenizer.json`` (read once
per worker from the staged asset, hash-checked). ``TextEncoderHandler`` pads each batch to its longest
sequence, runs the encoder through one ``tf.function`` whose (ids, mask) signature has no fixed length, and
pools token layers over the real tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.inference import BackboneHandler, LoadedBackbone, configure_tensorflow_threads, use_gpu_memory_growth
from transforms.records import FAILED, METRICS_NAMESPACE, Failure, Record

__all__ = ["TextPreprocessing", "TokenizeFn", "TextEncoderHandler", "masked_pool", "pad_tokens"]


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

        self._tokenizer = Tokenizer.from_str(self._spec.read_asset("tokenizer").decode("utf-8"))
        self._tokenizer.enable_truncation(self._spec.preprocessing.max_length)
        self._tokenizer.no_padding()

    def process(self, record: Record):
        if not isinstance(record.payload, str) or not record.payload.strip():
            kind = "empty text" if isinstance(record.payload, str) else "not text (a binary payload)"
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record.key, record.key, "tokenize", "NotText",
                                                           f"{kind}; backbone {self._spec.name} embeds text"))
            return
        ids = np.asarray(self._tokenizer.encode(record.payload).ids, dtype=np.int32)
        self._tokenized.inc()
        yield (record.key, record.label, record.split), ids


def masked_pool(tokens, mask, pooling: str):
    """In-graph: (n, T, C) token vectors -> (n, C), over the positions where ``mask`` is 1."""
    import tensorflow as tf

    m = tf.cast(mask, tokens.dtype)[:, :, None]
    if pooling == "max":
        return tf.reduce_max(tokens + (m - 1.0) * 1e9, axis=1)
    return tf.reduce_sum(tokens * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1e-9)


def pad_tokens(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), both (n, longest) int32, padded with 0 on the right."""
    longest = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), longest), np.int32)
    mask = np.zeros((len(sequences), longest), np.int32)
    for i, s in enumerate(sequences):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    return ids, mask


class TextEncoderHandler(BackboneHandler):
    """``BackboneHandler`` for token-id sequences: the same batching, one-by-one retries and metrics."""

    def load_model(self) -> LoadedBackbone:
        import tensorflow as tf

        configure_tensorflow_threads(self._threads)
        use_gpu_memory_growth()
        model = self._spec.load(sorted({o.layer for o in self._outputs}))
        outputs = self._outputs

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)],
                     autograph=False)
        def embed(ids, mask):
            activations = model([ids, mask], training=False)
            result = {}
            for out in outputs:
                x = activations[out.layer]
                result[out.name] = masked_pool(x, mask, out.pooling) if x.shape.rank == 3 else x
            return result

        embed.get_concrete_function()  # trace once, here
        return LoadedBackbone(embed, 0)

    def model_inputs(self, batch: Sequence[np.ndarray]):
        return pad_tokens(batch)
