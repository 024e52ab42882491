"""``ClassifierHandler``: a Beam ``ModelHandler`` over a serving SavedModel's ``classify_images`` endpoint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.schema.elements import METRICS_NAMESPACE
from transforms.worker.process import ready_process

__all__ = ["ClassifierHandler"]


class ClassifierHandler(ModelHandler[np.ndarray, PredictionResult, object]):
    """Loads the SavedModel once per worker process; classifies batches of decoded uint8 images.

    Each inference is ``{"label": str, "probabilities": {class name: p}}``.
    """

    def __init__(self, saved_model_path: str, batch_size: int = 32, **batching):
        super().__init__(**{"min_batch_size": 1, "max_batch_size": batch_size, **batching})
        self._path = saved_model_path

    def load_model(self):
        ready_process()  # before TensorFlow is imported: its oneDNN choice
        import tensorflow as tf

        return tf.saved_model.load(self._path)

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[PredictionResult]:
        return self.predictions(model.classify_images(np.stack(batch)), len(batch))

    def predictions(self, out: dict, n: int) -> list[PredictionResult]:
        """A serving endpoint's outputs for ``n`` records -> their ``{"label", "probabilities"}``."""
        probabilities = out["probabilities"].numpy()
        labels = [label.decode("utf-8") for label in out["label"].numpy()]
        names = [name.decode("utf-8") for name in out["class_names"].numpy()[0]] if n else []
        return [PredictionResult(None, {"label": labels[i],
                                        "probabilities": dict(zip(names, probabilities[i].tolist(), strict=True))},
                                 self._path) for i in range(n)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
