"""``BackboneHandler``: a Beam ``ModelHandler`` that runs a frozen backbone on uint8 image batches.

Use it through ``RunInference`` (keyed: ``KeyedModelHandler(BackboneHandler(...))``). ``load_model()`` runs
once per worker process (``RunInference`` shares the loaded model across the process's threads), builds
the backbone from its spec and compiles one ``tf.function`` with a fixed input signature, so Beam's varying
batch sizes never retrace. Normalisation happens inside that graph; pooling too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.records import METRICS_NAMESPACE, error_message
from transforms.schema import OutputSpec

__all__ = ["BackboneHandler", "LoadedBackbone", "EmbeddingFailure", "pooled_dim", "pool",
           "configure_tensorflow_threads", "POOLINGS"]

_LOG = logging.getLogger(__name__)
POOLINGS = ("avg", "max", "none")


def pooled_dim(shape: Sequence[int], pooling: str) -> int:
    """Length of the vector that ``pooling`` makes of an activation of ``shape`` (batch dim excluded)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
    if len(shape) == 1:
        return int(shape[0])
    if pooling == "none":
        return int(np.prod(shape))
    return int(shape[-1])


def pool(activation, pooling: str):
    """In-graph: a (batch, ...) activation -> (batch, dim) vector, as ``pooled_dim`` describes."""
    import tensorflow as tf

    if activation.shape.rank == 4 and pooling == "avg":
        activation = tf.reduce_mean(activation, axis=[1, 2])
    elif activation.shape.rank == 4 and pooling == "max":
        activation = tf.reduce_max(activation, axis=[1, 2])
    return tf.reshape(activation, [tf.shape(activation)[0], -1])


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


@dataclass(frozen=True)
class EmbeddingFailure:
    """What ``run_inference`` returns, in place of vectors, for an image the backbone failed on."""

    error_type: str
    message: str

    @classmethod
    def from_exception(cls, error: BaseException) -> EmbeddingFailure:
        return cls(type(error).__name__, error_message(error))


@dataclass
class LoadedBackbone:
    """The per-process model: a compiled function from a uint8 batch to ``{output name: (n, dim)}``.

    One batch runs at a time: a call already uses every core TensorFlow was given, so a second concurrent
    call (Beam runs several bundles per process) would only double the activations in memory. The other
    threads decode meanwhile."""

    fn: Any
    image_size: int
    lock: Any = field(default_factory=threading.Lock)

    def embed(self, images) -> dict[str, np.ndarray]:
        """uint8 (n, size, size, 3) (or a tuple of inputs, e.g. token ids and mask) -> {output name: (n, dim)
        float32}. (A named method, so that the call also
        works through Beam's cross-process model proxy.)"""
        with self.lock:
            outputs = self.fn(*images) if isinstance(images, tuple) else self.fn(images)
            return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in outputs.items()}

    __call__ = embed


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
    """Runs ``spec.load(layers)`` once per worker process and embeds batches of (H, W, 3) uint8 images.

    Args:
      spec: a backbone spec with ``load(layers)`` returning a Keras model from uint8 NHWC images to
        ``{layer: activation}``, and ``preprocessing.crop`` (the square input size).
      outputs: which layers to extract and how to pool each.
      batch_size: upper bound of a batch handed to the compiled function.
      threads: TensorFlow intra-op threads for this worker process (None: TensorFlow's default).
      model_copies: 0 (the default): each worker process loads its own model. N >= 1: N copies per machine,
        shared by all of a worker's SDK processes through Beam's cross-process model sharing (GPU workers:
        one copy on the GPU instead of one per process).
      mixed_precision: compute in float16 where the accelerator gains from it (vectors still float32).
    """

    def __init__(self, spec, outputs: Sequence[OutputSpec], batch_size: int = 32, threads: int | None = None,
                 model_copies: int = 0, mixed_precision: bool = False):
        # Fixed-size batches: the compiled call is fastest at its batch size, and a batch job gains nothing from
        # Beam's adaptive (latency-driven) batch sizes; only a bundle's last batch is smaller.
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._spec = spec
        self._outputs = tuple(outputs)
        self._batch_size = batch_size
        self._threads = threads
        self._copies = model_copies
        self._mixed_precision = mixed_precision
        self._retried_batches = Metrics.counter(METRICS_NAMESPACE, "batches_retried_one_by_one")

    def load_model(self) -> LoadedBackbone:
        import tensorflow as tf

        configure_tensorflow_threads(self._threads)
        gpus = use_gpu_memory_growth()
        if self._mixed_precision:
            import keras

            keras.mixed_precision.set_global_policy("mixed_float16")
        layers = sorted({o.layer for o in self._outputs})
        model = self._spec.load(layers)
        size = self._spec.preprocessing.crop
        outputs = self._outputs

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], autograph=False)
        def embed(images):
            activations = model(images, training=False)
            return {out.name: tf.cast(pool(activations[out.layer], out.pooling), tf.float32) for out in outputs}

        embed.get_concrete_function()  # trace once, here, not in the first batch
        _LOG.info("loaded backbone %s in process %d (%d GPUs visible)", getattr(self._spec, "name", "?"),
                  os.getpid(), gpus)
        return LoadedBackbone(embed, size)

    def run_inference(self, batch: Sequence[np.ndarray], model: LoadedBackbone,
                      inference_args: dict | None = None) -> Iterable[PredictionResult]:
        """Vectors for each image of the batch; if the batch fails, each image is retried alone, and an
        image that fails alone gets an ``EmbeddingFailure`` instead, so its neighbours are not lost."""
        try:
            vectors = model.embed(self.model_inputs(batch))
            per_image = [{name: v[i] for name, v in vectors.items()} for i in range(len(batch))]
        except Exception as batch_error:  # one bad input must not take its batch with it
            _LOG.warning("a batch of %d failed (%s: %s); retrying its images one at a time", len(batch),
                         type(batch_error).__name__, error_message(batch_error))
            self._retried_batches.inc()
            per_image = [self._embed_alone(model, image) for image in batch]
        for result in per_image:  # the image itself is not carried on: only its vectors are needed
            yield PredictionResult(None, result, self.model_id)

    def _embed_alone(self, model: LoadedBackbone, image: np.ndarray):
        try:
            return {name: v[0] for name, v in model.embed(self.model_inputs([image])).items()}
        except Exception as e:
            return EmbeddingFailure.from_exception(e)

    def model_inputs(self, batch: Sequence[np.ndarray]):
        """What the compiled function takes for a batch of decoded inputs."""
        return np.stack(batch)

    def share_model_across_processes(self) -> bool:
        return self._copies > 0

    def model_copies(self) -> int:
        return max(1, self._copies)

    @property
    def model_id(self) -> str:
        return getattr(self._spec, "name", "backbone")

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
