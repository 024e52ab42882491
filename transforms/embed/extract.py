"""``ExtractFeatures``: decoded records through the frozen backbone, batched, with failures kept apart."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from transforms.decode.images import DecodeImageFn
from transforms.decode.tokenize import TokenizeFn
from transforms.embed.backbone import BackboneHandler
from transforms.embed.model_inputs import inputs_for
from transforms.embed.protocol import Backbone
from transforms.embed.record_meta import with_version_and_source
from transforms.embed.recordings import EmbedRecordings
from transforms.embed.retry import EmbeddingFailure, RetryOneByOne
from transforms.embed.settings import EmbedSettings
from transforms.embed.text_batches import BatchByLengthFn
from transforms.schema.elements import FAILED, Failure, Record
from transforms.worker.process import WorkerDoFn

__all__ = ["ExtractFeatures"]


class ExtractFeatures(beam.PTransform):
    """Records -> ``{"embedded": ((key, label, split, version, source), {output: vector}), "failed": Failure}``,
    where ``version`` is the record's source version (``transforms/read/versions.py``) and ``source`` the file it was
    read from, which its commit records.

    1. decode each image to the backbone's fixed uint8 input, tokenise each text for a text backbone, or decode
       each recording to windows of 3-s patches of samples for an audio backbone (bad inputs go to ``failed``);
    2. texts only: batch them by length (``BatchByLengthFn``), so that each batch pads to one of a few bucket
       lengths; images and audio windows are batched by ``RunInference`` itself, in arrival order (windows
       weighed by their patches);
    3. embed batches with ``RunInference`` over ``BackboneHandler`` (model loaded once per worker process, or
       ``settings.model_copies`` copies per machine shared by its processes); a failed batch is retried one by one
       (``RetryOneByOne``), and an input the backbone fails on alone goes to ``failed`` too;
    4. audio only: each recording's windows pooled into its mean over patches (``EmbedRecordings``).
    """

    def __init__(self, backbone: Backbone, settings: EmbedSettings):
        super().__init__()
        self._backbone = backbone
        self._settings = settings
        self._handler = KeyedModelHandler(RetryOneByOne(BackboneHandler(backbone, settings)))

    def expand(self, records):
        if self._backbone.modality == "audio":
            return self._recordings(records)
        text = self._backbone.modality == "text"
        batches, undecodable = self._text_batches(records) if text else self._images(records)
        # Texts come batched already; images are batched by RunInference.
        handler = self._handler.with_no_batching() if text else self._handler
        embedded = (
            batches
            | "Embed with backbone" >> RunInference(handler)
            | "Keep vectors" >> beam.ParDo(_KeepVectorsFn()).with_outputs(FAILED, main="embedded")
        )
        failed = (undecodable, embedded[FAILED]) | "Decode or embed failures" >> beam.Flatten()
        return {"embedded": embedded.embedded, FAILED: failed}

    def _recordings(self, records):
        return records | "Embed recordings" >> EmbedRecordings(self._handler, self._backbone.preprocessing,
                                                                self._settings.max_audio_seconds,
                                                                self._settings.batch_size)

    def _images(self, records):
        """(decoded images, failures)."""
        prep, max_pixels = self._backbone.preprocessing, self._settings.max_pixels
        fn = _DecodeKeepingSourceFn(prep, max_pixels)
        decoded = records | "Decode images" >> beam.ParDo(fn).with_outputs(FAILED, main="images")
        return decoded.images, decoded[FAILED]

    def _text_batches(self, records):
        """(batches of tokenised texts of similar length, failures)."""
        fn = _TokenizeKeepingSourceFn(self._backbone)
        tokenized = records | "Tokenize texts" >> beam.ParDo(fn).with_outputs(FAILED, main="texts")
        by_length = BatchByLengthFn(inputs_for(self._backbone).lengths, self._settings.batch_size)
        batches = tokenized.texts | "Batch texts by length" >> beam.ParDo(by_length)
        return batches, tokenized[FAILED]


class _DecodeKeepingSourceFn(DecodeImageFn):
    """``DecodeImageFn`` with ``(key, label, split, version, source)`` meta."""

    def process(self, record: Record):
        return with_version_and_source(super().process(record), record)


class _TokenizeKeepingSourceFn(TokenizeFn):
    """``TokenizeFn`` with ``(key, label, split, version, source)`` meta."""

    def process(self, record: Record):
        return with_version_and_source(super().process(record), record)


class _KeepVectorsFn(WorkerDoFn):
    """((key, label, split, version, source), PredictionResult) -> ((key, label, split, version, source), vectors),
    or a ``Failure`` for an input the backbone failed on."""

    def process(self, element):
        (key, label, split, version, source), result = element
        if isinstance(result.inference, EmbeddingFailure):
            yield beam.pvalue.TaggedOutput(FAILED, Failure(key, source, "embed", result.inference.error_type,
                                                           result.inference.message, version))
        else:
            yield (key, label, split, version, source), result.inference
