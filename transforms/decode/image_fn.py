"""``DecodeImageFn``: Record -> ((key, label, split), uint8 image) for the backbone, or a Failure with the reason."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.decode.images import DEFAULT_MAX_PIXELS, ImagePreprocessing, decode_image
from transforms.records import FAILED, METRICS_NAMESPACE, Failure, Record

__all__ = ["DecodeImageFn"]


class DecodeImageFn(beam.DoFn):
    """Decodes, resizes and crops each image to the backbone's fixed input; bad images go to ``failed``."""

    def __init__(self, preprocessing: ImagePreprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
        self._prep = preprocessing
        self._max_pixels = max_pixels
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "records_decoded")

    def process(self, record: Record):
        try:
            image = decode_image(record.payload, self._prep, self._max_pixels)
        except Exception as e:  # a bad file is this record's failure, never the job's
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(record.key, record.origin, "decode", e))
            return
        self._decoded.inc()
        yield (record.key, record.label, record.split), image
