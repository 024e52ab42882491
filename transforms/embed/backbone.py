"""``BackboneHandler``: a Beam ``ModelHandler`` that runs a frozen backbone on batches of decoded records.

Use it through ``RunInference`` (keyed, with failures kept apart:
``KeyedModelHandler(RetryOneByOne(BackboneHandler(...)))``). ``load_model()`` runs once per worker process
(``RunInference`` shares the loaded model across the process's threads), builds the backbone from its spec
and compiles one ``tf.function`` with a fixed input signature, so Beam's varying batch sizes never retrace.
What the backbone takes (uint8 images, or token ids and a mask) is a ``ModelInputs`` (``model_inputs.py``):
its signature, its collation and its pooling; normalisation and pooling happen inside the graph.
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

from transforms.embed.model_inputs import ModelInputs, inputs_for
from transforms.schema.elements import METRICS_NAMESPACE
from transforms.schema.fields import OutputSpec
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


PRECISION_POLICIES = {"float32": None, "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def load_in_precision(spec, layers, precision: str = "float32"):
    """``spec.load(layers)`` with its layers built to compute in ``precision`` (Keras' mixed policy), the
    process's global policy put back afterwards. Two ends stay in float32, both cheap: the input's
    normalisation and the first layer with weights (the stem convolution, on 3 channels): rounding the
    normalised pixels to bfloat16 costs more accuracy than all later layers together (EfficientNet-Lite0's
    features: cosine 0.9987 to float32 with it, 0.9995 without); and the extracted layers themselves, so the
    stored vectors carry no rounding of their own. A text backbone takes bfloat16 only, and only in its dense
    layers (``_dense_layers_in``): cosine to float32 0.99995 or more for minilm_l6's sentence vectors."""
    policy = PRECISION_POLICIES[precision]
    if policy is None:
        return spec.load(layers)
    if getattr(spec, "modality", "image") == "text":
        if precision != "bfloat16":
            raise ValueError(f"a text backbone runs in float32 or bfloat16, not {precision}")
        return _dense_layers_in(spec.load(layers), policy)
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = spec.load(layers)
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in _layers_up_to_the_first_weights(model) + _named_layers(model, set(layers)):
        layer.dtype_policy = "float32"
    return model


def _dense_layers_in(model, policy: str):
    """``model``, built in float32, with only its ``Dense`` layers computing in ``policy``'s narrower type.

    (Building a text model under a mixed policy would put its attention softmax and every other step in the
    narrower type too.) The dense layers hold nearly all of a transformer's arithmetic, which bfloat16 matrix
    units do several times faster; LayerNorm, softmax and the residual sums stay float32. An activation stays
    in its dense layer where oneDNN fuses it into the matrix product (2-D inputs: the activation is applied to
    the float32 sums); on higher-rank inputs it would run as separate bfloat16 ops, slower than in float32 on
    a CPU and less exact, so there it is moved back to float32."""
    import keras

    for layer in _all_layers(model):
        if not isinstance(layer, keras.layers.Dense):
            continue
        layer.dtype_policy = policy
        if layer.activation not in (None, keras.activations.linear) and len(layer.input.shape) > 2:
            layer.activation = _in_float32(layer.activation)
    return model


def _in_float32(activation):
    import keras

    return lambda x: activation(keras.ops.cast(x, "float32"))


def _all_layers(model) -> list:
    """The model's layers in order, nested models walked into."""
    return [inner for layer in model.layers
            for inner in (_all_layers(layer) if hasattr(layer, "layers") else [layer])]


def _named_layers(model, names: set) -> list:
    """The model's layers (nested models walked into) with one of ``names``."""
    return [layer for layer in _all_layers(model) if layer.name in names]


def _layers_up_to_the_first_weights(model) -> list:
    """The model's layers in order (nested models walked into) up to and including the first with weights."""
    layers = _all_layers(model)
    first = next((i for i, layer in enumerate(layers) if layer.weights), len(layers) - 1)
    return layers[:first + 1]


class BackboneHandler(ModelHandler[np.ndarray, PredictionResult, LoadedBackbone]):
    """Runs ``spec.load(layers)`` once per worker process and embeds batches of decoded records.

    Args:
      spec: a backbone spec with ``load(layers)`` returning a Keras model to ``{layer: activation}``, and a
        ``modality`` ("image": uint8 NHWC of ``preprocessing.crop``; "text": token ids and mask).
      outputs: which layers to extract and how to pool each.
      batch_size: the most records in a batch handed to the compiled function, the size ``RunInference``
        batches to (``ExtractFeatures`` batches texts by length itself, and turns ``RunInference``'s off).
      threads: TensorFlow intra-op threads for this worker process (None: TensorFlow's default).
      model_copies: 0 (the default): each worker process loads its own model. N >= 1: N copies per machine,
        shared by all of a worker's SDK processes through Beam's cross-process model sharing (GPU workers:
        one copy on the GPU instead of one per process).
      precision: "float32"; "float16" or "bfloat16": the forward pass in that type (Keras' mixed policy: weights
        kept in float32, each layer computing in the narrower type), activations back in float32 before
        pooling, vectors float32. A text backbone: "float32" or "bfloat16", the latter for its dense layers
        only (``load_in_precision``).
      inputs: what the backbone takes (default: by the spec's modality).
    """

    def __init__(self, spec, outputs: Sequence[OutputSpec], batch_size: int = 32, threads: int | None = None,
                 model_copies: int = 0, precision: str = "float32", inputs: ModelInputs | None = None):
        # Fixed-size batches: the compiled call is fastest at its batch size, and a batch job gains nothing from
        # Beam's adaptive (latency-driven) batch sizes; only a bundle's last batch is smaller.
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._spec = spec
        self._outputs = tuple(outputs)
        self._threads = threads
        self._copies = model_copies
        self._precision = precision
        self._inputs = inputs or inputs_for(spec)

    def load_model(self) -> LoadedBackbone:
        import tensorflow as tf

        ready_process()
        configure_tensorflow_threads(self._threads)
        gpus = use_gpu_memory_growth()
        model = load_in_precision(self._spec, sorted({o.layer for o in self._outputs}), self._precision)
        inputs, outputs = self._inputs, self._outputs

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
        return [PredictionResult(None, {name: v[i] for name, v in vectors.items()}, self.model_id)
                for i in range(len(batch))]

    def share_model_across_processes(self) -> bool:
        return self._copies > 0

    def model_copies(self) -> int:
        return max(1, self._copies)

    @property
    def model_id(self) -> str:
        return getattr(self._spec, "name", "backbone")

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(x.nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
