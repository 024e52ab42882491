"""``RetryOneByOne``: a ``ModelHandler`` wrapper that keeps one bad input from taking its batch with it.

When the wrapped handler fails on a batch, each element is run alone; an element that fails alone gets an
``EmbeddingFailure`` in place of its inference, which ``ExtractFeatures`` turns into a dead letter. Every
other method is the wrapped handler's (as Beam's own pre/post-processing wrappers do).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.schema.elements import METRICS_NAMESPACE, error_message

__all__ = ["RetryOneByOne", "EmbeddingFailure"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingFailure:
    """What stands in a ``PredictionResult``, in place of vectors, for an input the backbone failed on alone."""

    error_type: str
    message: str

    @classmethod
    def from_exception(cls, error: BaseException) -> EmbeddingFailure:
        return cls(type(error).__name__, error_message(error))


class RetryOneByOne(ModelHandler):
    def __init__(self, handler: ModelHandler):
        self._base = handler
        self._env_vars = getattr(handler, "_env_vars", {})
        self._retried_batches = Metrics.counter(METRICS_NAMESPACE, "batches_retried_one_by_one")

    def run_inference(self, batch: Sequence, model, inference_args: dict | None = None) -> Iterable:
        try:
            return list(self._base.run_inference(batch, model, inference_args))
        except Exception as batch_error:  # one bad input must not take its batch with it
            _LOG.warning("a batch of %d failed (%s: %s); retrying its elements one at a time", len(batch),
                         type(batch_error).__name__, error_message(batch_error))
            self._retried_batches.inc()
            return [self._alone(element, model, inference_args) for element in batch]

    def _alone(self, element, model, inference_args):
        try:
            (result,) = self._base.run_inference([element], model, inference_args)
            return result
        except Exception as e:
            return PredictionResult(None, EmbeddingFailure.from_exception(e), getattr(self._base, "model_id", None))

    def load_model(self):
        return self._base.load_model()

    def get_num_bytes(self, batch: Sequence) -> int:
        return self._base.get_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return self._base.get_metrics_namespace()

    def get_resource_hints(self):
        return self._base.get_resource_hints()

    def batch_elements_kwargs(self):
        return self._base.batch_elements_kwargs()

    def validate_inference_args(self, inference_args: dict | None):
        return self._base.validate_inference_args(inference_args)

    def update_model_path(self, model_path: str | None = None):
        return self._base.update_model_path(model_path=model_path)

    def get_preprocess_fns(self):
        return self._base.get_preprocess_fns()

    def get_postprocess_fns(self):
        return self._base.get_postprocess_fns()

    def should_skip_batching(self) -> bool:
        return self._base.should_skip_batching()

    def share_model_across_processes(self) -> bool:
        return self._base.share_model_across_processes()

    def model_copies(self) -> int:
        return self._base.model_copies()
