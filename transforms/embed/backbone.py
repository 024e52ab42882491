"""``BackboneHandler``: a Beam ``ModelHandler`` that runs a frozen backbone on batches of decoded records.

Use it through ``RunInference`` (keyed, with failures kept apart:
``KeyedModelHandler(RetryOneByOne(BackboneHandler(...)))``). ``load_model()`` runs once per worker process
(``RunInference`` shares the loaded model across the process's threads), builds the backbone from its spec
and compiles one ``tf.function`` with a fixed input signature, so Beam's varying batch sizes never retrace.
What the backbone takes (uint8 images, or token ids and a mask) is a ``ModelInputs`` (``model_inputs.py``):
its signature, its collation and its pooling; normalisation and pooling happen inside the graph. How it runs
(outputs, batch size, threads, model copies, precision) is one ``EmbedSettings`` (``settings.py``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.embed.model_inputs import ModelInputs, inputs_for, patch_count
from transforms.embed.precision import load_in_precision
from transforms.embed.protocol import Backbone
from transforms.embed.settings import EmbedSettings
from transforms.schema.elements import METRICS_NAMESPACE
from transforms.worker.cpu import use_onednn
from transforms.worker.lean_import import import_tensorflow
from transforms.worker.process import ready_process

__all__ = ["BackboneHandler", "LoadedBackbone", "configure_tensorflow_threads", "use_gpu_memory_growth"]

_LOG = logging.getLogger(__name__)


def configure_tensorflow_threads(threads: int | None) -> None:
    """Size TensorFlow's thread pools; a no-op once the TF runtime has started in this process."""
    import tensorflow as tf

    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:
        _LOG.warning("TensorFlow already initialised in this process; keeping its thread pools as they are")


@dataclass
class LoadedBackbone:
    """The per-process model: a compiled function from a uint8 batch to ``{output name: (n, dim)}``.

    One batch runs at a time: a call already uses every core TensorFlow was given, so a second concurrent
    call (Beam runs several bundles per process) would only double the activations in memory. The other
    threads decode meanwhile."""

    fn: Any
    lock: Any = field(default_factory=threading.Lock)

    def embed(self, args: tuple) -> dict[str, np.ndarray]:
        """The collated arguments (uint8 images; or token ids and mask) -> {output name: (n, dim) float32}.
        (A named method, so that the call also works through Beam's cross-process model proxy.)"""
        with self.lock:
            return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in self.fn(*args).items()}

    def __call__(self, *args) -> dict[str, np.ndarray]:
        """``model(images)`` or ``model(ids, mask)``: ``embed`` with the compiled function's arguments."""
        return self.embed(args)


def use_gpu_memory_growth() -> int:
    """Let TensorFlow grow GPU memory as needed instead of taking it all (several models may share a GPU);
    returns the number of GPUs visible. A no-op once the TF runtime has started."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    return len(gpus)


class BackboneHandler(ModelHandler[np.ndarray, PredictionResult, LoadedBackbone]):
    """Runs ``spec.load(layers)`` once per worker process and embeds batches of decoded records.

    Args:
      spec: the ``Backbone`` (``transforms.embed.protocol``): "image" backbones take uint8 NHWC of
        ``preprocessing.crop``; "text" ones token ids and a mask.
      settings: the ``EmbedSettings``: which outputs, the batch size ``RunInference`` batches to
        (``ExtractFeatures`` batches texts by length itself, and turns ``RunInference``'s off), TensorFlow's
        threads, model copies per machine, and the forward pass's precision (Keras' mixed policy: weights kept in
        float32, each layer computing in the narrower type, activations back in float32 before pooling; a text
        backbone's bfloat16 is its dense layers only: ``transforms.embed.precision``).
      inputs: what the backbone takes (default: by the spec's modality).
    """

    def __init__(self, spec: Backbone, settings: EmbedSettings, inputs: ModelInputs | None = None):
        # Fixed-size batches: the compiled call is fastest at its batch size, and a batch job gains nothing from
        # Beam's adaptive (latency-driven) batch sizes; only a bundle's last batch is smaller.
        # Audio windows hold different numbers of patches: a batch is counted in patches.
        self._inputs = inputs or inputs_for(spec)
        weighed = {"element_size_fn": patch_count} if self._inputs.kind == "audio" else {}
        super().__init__(min_batch_size=settings.batch_size, max_batch_size=settings.batch_size, **weighed)
        self._spec = spec
        self._settings = settings

    def load_model(self) -> LoadedBackbone:
        use_onednn(self._settings.onednn)  # read by TensorFlow when this process first imports it
        ready_process()
        tf = import_tensorflow()
        configure_tensorflow_threads(self._settings.threads)
        gpus = use_gpu_memory_growth()
        outputs = self._settings.outputs
        model = load_in_precision(self._spec, sorted({o.layer for o in outputs}), self._settings.precision)
        inputs = self._inputs

        @tf.function(input_signature=inputs.signature(self._spec), autograph=False)
        def embed(*args):
            activations = inputs.forward(model, args)
            return {out.name: inputs.vector(tf.cast(activations[out.layer], tf.float32), out.pooling, args)
                    for out in outputs}

        embed.get_concrete_function()  # trace once, here, not in the first batch
        _LOG.info("loaded backbone %s in process %d (%d GPUs visible)", self.model_id, os.getpid(), gpus)
        return LoadedBackbone(embed)

    def run_inference(self, batch: Sequence[np.ndarray], model: LoadedBackbone,
                      inference_args: dict | None = None) -> Iterable[PredictionResult]:
        """Vectors for each record of the batch (the record itself is not carried on: only its vectors are
        needed)."""
        vectors = model.embed(self._inputs.collate(batch))
        return [PredictionResult(None, element, self.model_id) for element in self._inputs.per_element(vectors, batch)]

    def share_model_across_processes(self) -> bool:
        return self._settings.model_copies > 0

    def model_copies(self) -> int:
        return max(1, self._settings.model_copies)

    @property
    def model_id(self) -> str:
        return self._spec.name

    def get_num_bytes(self, batch: Sequence) -> int:
        return sum(getattr(x, "samples", x).nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
