"""Audio in ``featurebeam predict``: recordings classified the way extraction embeds them, a window at a time.

1. ``EmbedRecordings`` (as in extraction): each recording decoded in windows of 3-s patches, each window through the
   serving model's ``patch_vectors`` endpoint (``PatchVectors``: batches weighed by their patches), each recording's
   vector the mean of its patches';
2. the recordings' vectors through its ``classify_vectors`` endpoint (``VectorClassifier``), batched.

So a long recording never goes through the model whole, and the head sees the very vector ``train`` trained on.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from pipeline.tools.serving_handler import ServingModelHandler
from transforms.decode.audio import DEFAULT_MAX_AUDIO_SECONDS, AudioPreprocessing
from transforms.embed.model_inputs import ModelInputs, patch_count
from transforms.embed.recordings import EmbedRecordings
from transforms.schema.elements import FAILED

__all__ = ["PatchVectors", "VectorClassifier", "ClassifyRecordings"]


class PatchVectors(ServingModelHandler):
    """Windows of patches -> ``{"vectors": the sum of the window's patch vectors}`` by ``patch_vectors``."""

    def __init__(self, saved_model_path: str, prep: AudioPreprocessing, batch_size: int = 32):
        # Batches of a fixed number of patches: a window never holds more (``ClassifyRecordings``).
        super().__init__(saved_model_path, batch_size, min_batch_size=batch_size, element_size_fn=patch_count)
        self._inputs = ModelInputs("audio", patch=(prep.patch_hop, prep.patch_samples))

    def run_inference(self, batch, model, inference_args=None):
        (patches,) = self._inputs.collate(batch)
        vectors = {"vectors": model.patch_vectors(patches)["vectors"].numpy()}
        return [PredictionResult(None, sums, self._path) for sums in self._inputs.per_element(vectors, batch)]

    def get_num_bytes(self, batch) -> int:
        return sum(window.samples.nbytes for window in batch)


class VectorClassifier(ServingModelHandler):
    """Recordings' vectors -> ``{"label", "probabilities"}`` by ``classify_vectors``."""

    def run_inference(self, batch, model, inference_args=None):
        out = model.classify_vectors(np.stack([v["vectors"] for v in batch]))
        return self.predictions(out, len(batch))

    def get_num_bytes(self, batch) -> int:
        return sum(v["vectors"].nbytes for v in batch)


class ClassifyRecordings(beam.PTransform):
    """Records -> ``{"classified": ((key, label, split, version, source), PredictionResult), "failed": Failure}``."""

    def __init__(self, serving_path: str, prep: AudioPreprocessing, batch_size: int,
                 max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS):
        super().__init__()
        self._embed = EmbedRecordings(KeyedModelHandler(PatchVectors(serving_path, prep, batch_size)), prep,
                                      max_seconds, batch_size)
        self._classify = KeyedModelHandler(VectorClassifier(serving_path, batch_size))

    def expand(self, records):
        embedded = records | "Embed recordings" >> self._embed
        classified = embedded["embedded"] | "Classify recordings" >> RunInference(self._classify)
        return {"classified": classified, FAILED: embedded[FAILED]}
