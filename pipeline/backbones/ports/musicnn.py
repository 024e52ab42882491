"""musicnn (Pons & Serra, 2019): the music auto-tagging CNNs trained on the Million Song Dataset (``musicnn_msd``) and
MagnaTagATune (``musicnn_mtt``), rebuilt as Keras functional models from the author's TensorFlow 1 checkpoints.

The structure is the package's ``models.py`` (``build_musicnn`` with 64 mid-end filters and 200 back-end units):

- front end on the log-mel patch (187 frames x 96 bands, ``audio_input.log_mel``), after a BatchNorm of the whole
  input: two timbral convolutions (7x38 and 7x67 on the time-padded input, 204 filters each) and three temporal
  ones (128x1, 64x1, 32x1, "same", 51 filters each), every one ReLU then BatchNorm then a max over frequency;
- mid end: three 7-wide convolutions (64 filters) over the 561 front-end channels, ReLU then BatchNorm, the second
  and third with residual sums;
- back end: the max and the mean over time of the 753 front- and mid-end channels, flattened **interleaved**
  (max_0, mean_0, max_1, ...: the 1506-wide ``pool``), BatchNorm, a 200-unit ReLU layer, BatchNorm
  (``penultimate``), 50 logits; ``taggram`` is their sigmoid.

BatchNorm (eps 1e-3) runs in inference form only: each one is its moving statistics folded into one per-channel
scale and shift, so no layer can run in training mode. (It follows a ReLU here, so unlike the image ports it cannot
be folded into the convolution before it.) The author's extractor reuses the first patch's ``cnn1``-``cnn3`` for
every later patch; this port computes each patch's own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.backbones.audio_input import with_sample_input
from pipeline.backbones.ports.packaged import packaged_weights
from pipeline.backbones.spec import BackboneSpec, UnknownBackboneError, sha256_of
from transforms.decode.audio import AudioPreprocessing

__all__ = ["resolve", "build", "build_musicnn", "musicnn_network", "read_checkpoint", "LAYER_SHAPES", "MODELS",
           "BN_EPS"]

BN_EPS = 1e-3
FRAMES, BANDS = 187, 96
LAYER_SHAPES = {
    "timbral": (FRAMES, 408), "temporal": (FRAMES, 153),
    "cnn1": (FRAMES, 64), "cnn2": (FRAMES, 64), "cnn3": (FRAMES, 64),
    "pool": (1506,), "penultimate": (200,), "taggram": (50,),
}
# name -> (the package's model folder, the training set, what the tags are)
MODELS = {"musicnn_msd": ("MSD_musicnn", "Million Song Dataset", "MSD_LABELS"),
          "musicnn_mtt": ("MTT_musicnn", "MagnaTagATune", "MTT_LABELS")}
_PACKAGE = "musicnn"
_TIMBRAL = (("conv2d", "batch_normalization_1", 38), ("conv2d_1", "batch_normalization_2", 67))
_TEMPORAL = (("conv2d_2", "batch_normalization_3", 128), ("conv2d_3", "batch_normalization_4", 64),
             ("conv2d_4", "batch_normalization_5", 32))
_MIDEND = (("conv2d_5", "batch_normalization_6"), ("conv2d_6", "batch_normalization_7"),
           ("conv2d_7", "batch_normalization_8"))


def read_checkpoint(index: bytes, data: bytes) -> dict[str, np.ndarray]:
    """The checkpoint's variables (without the optimiser's slots), from the bytes of its ``.index`` and
    ``.data-00000-of-00001`` files (read through a private folder: the reader wants files)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        prefix = os.path.join(folder, "model")
        for suffix, content in ((".index", index), (".data-00000-of-00001", data)):
            with open(prefix + suffix, "wb") as f:
                f.write(content)
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                if "Adam" not in name and not name.endswith("_power")}


def _scale_shift(weights: Mapping[str, np.ndarray], bn: str) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNorm in inference form: x * scale + shift."""
    scale = weights[f"{bn}/gamma"] / np.sqrt(weights[f"{bn}/moving_variance"] + BN_EPS)
    return scale.astype(np.float32), (weights[f"{bn}/beta"] - weights[f"{bn}/moving_mean"] * scale).astype(np.float32)


class _Layers:
    """Keras layers made from the checkpoint's arrays."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights

    def norm(self, bn: str, name: str):
        import keras

        scale, shift = _scale_shift(self.weights, bn)
        return keras.layers.Lambda(lambda t: t * scale + shift, name=name)

    def conv(self, conv: str, name: str, padding: str = "valid", one_d: bool = False):
        import keras

        kernel, bias = self.weights[f"{conv}/kernel"], self.weights[f"{conv}/bias"]
        if one_d:  # a (7, channels, 1, filters) kernel spanning every channel is a 1-D convolution over time
            kernel = kernel[:, :, 0, :]
            layer = keras.layers.Conv1D(kernel.shape[-1], kernel.shape[0], padding=padding, activation="relu",
                                        name=name)
        else:
            layer = keras.layers.Conv2D(kernel.shape[-1], kernel.shape[:2], padding=padding, activation="relu",
                                        name=name)
        layer.build((None, None, kernel.shape[1]) if one_d else (None, None, None, kernel.shape[2]))
        layer.set_weights([kernel, bias])
        return layer

    def dense(self, dense: str, name: str, activation=None):
        import keras

        kernel, bias = self.weights[f"{dense}/kernel"], self.weights[f"{dense}/bias"]
        layer = keras.layers.Dense(kernel.shape[1], activation=activation, name=name)
        layer.build((None, kernel.shape[0]))
        layer.set_weights([kernel, bias])
        return layer


def _frequency_max(t):
    import keras

    return keras.ops.max(t, axis=2)


def _front_end(make: _Layers, spectrogram):
    """(n, 187, 96) log-mel -> (timbral (n, 187, 408), temporal (n, 153))."""
    from keras import layers

    normalised = make.norm("batch_normalization", "input_norm")(layers.Reshape((FRAMES, BANDS, 1))(spectrogram))
    padded = layers.ZeroPadding2D(((3, 3), (0, 0)), name="timbral_pad")(normalised)
    timbral = [layers.Lambda(_frequency_max, name=f"timbral_{width}_max")(
        make.norm(bn, f"timbral_{width}_norm")(make.conv(conv, f"timbral_{width}")(padded)))
        for conv, bn, width in _TIMBRAL]
    temporal = [layers.Lambda(_frequency_max, name=f"temporal_{length}_max")(
        make.norm(bn, f"temporal_{length}_norm")(make.conv(conv, f"temporal_{length}", padding="same")(normalised)))
        for conv, bn, length in _TEMPORAL]
    return layers.Concatenate(name="timbral")(timbral), layers.Concatenate(name="temporal")(temporal)


def _mid_end(make: _Layers, front):
    """(n, 187, 561) -> [cnn1, cnn2, cnn3], each (n, 187, 64); cnn2 and cnn3 with residual sums."""
    from keras import layers

    outputs, x = [], front
    for i, (conv, bn) in enumerate(_MIDEND, start=1):
        padded = layers.ZeroPadding1D(3, name=f"cnn{i}_pad")(x)
        y = make.norm(bn, f"cnn{i}_norm")(make.conv(conv, f"cnn{i}_conv", one_d=True)(padded))
        x = y if i == 1 else layers.Add(name=f"cnn{i}")([y, x])
        outputs.append(x)
    return outputs


def _interleaved_pool(t):
    import keras

    pooled = keras.ops.stack([keras.ops.max(t, axis=1), keras.ops.mean(t, axis=1)], axis=-1)
    return keras.ops.reshape(pooled, (-1, 2 * t.shape[-1]))


def musicnn_network(weights: Mapping[str, np.ndarray], outputs: Sequence[str] = ("pool",)):
    """The network alone: a function from a (n, 187, 96) log-mel Keras tensor to ``{layer: activation}`` for
    ``outputs`` (``LAYER_SHAPES``: per patch; the time-series layers keep their 187 frames)."""
    from keras import layers

    unknown = [o for o in outputs if o not in LAYER_SHAPES]
    if unknown:
        raise UnknownBackboneError(f"unknown layer(s) {unknown}; musicnn has {', '.join(LAYER_SHAPES)}")
    make = _Layers(weights)

    def body(spectrogram):
        timbral, temporal = _front_end(make, spectrogram)
        front = layers.Concatenate(name="front_end")([timbral, temporal])
        cnn1, cnn2, cnn3 = _mid_end(make, front)
        found = {"timbral": timbral, "temporal": temporal, "cnn1": cnn1, "cnn2": cnn2, "cnn3": cnn3}
        if {"pool", "penultimate", "taggram"} & set(outputs):
            mid = layers.Concatenate(name="mid_end")([front, cnn1, cnn2, cnn3])
            found["pool"] = layers.Lambda(_interleaved_pool, name="pool")(mid)
            hidden = make.dense("dense", "penultimate_dense", "relu")(make.norm("batch_normalization_9", "pool_norm")(
                found["pool"]))
            found["penultimate"] = make.norm("batch_normalization_10", "penultimate")(hidden)
            found["taggram"] = make.dense("dense_1", "taggram", "sigmoid")(found["penultimate"])
        return {o: found[o] for o in outputs}

    return body


def build_musicnn(weights: Mapping[str, np.ndarray], outputs: Sequence[str] = ("pool",),
                  prep: AudioPreprocessing = AudioPreprocessing(), name: str = "musicnn"):
    """A frozen Keras model from (n, ``prep.patch_samples``) float32 samples (``audio_input.log_mel`` in the graph)
    to ``{layer: activation}`` for ``outputs``."""
    model = with_sample_input(prep, name, musicnn_network(weights, outputs))
    model.trainable = False
    return model


def _tags(labels: str) -> list[str]:
    from importlib import import_module

    return list(getattr(import_module(f"{_PACKAGE}.configuration"), labels))


def resolve(name: str) -> BackboneSpec:
    """The backbone as it ships (weights package installed), hashed: the checkpoint's data file is the weights,
    its index an asset."""
    folder, dataset, labels = MODELS[name]
    data = packaged_weights(name, _PACKAGE, folder, ".data-00000-of-00001")
    index = packaged_weights(name, _PACKAGE, folder, ".index")
    return BackboneSpec(
        name=name,
        weights_path=data,
        weights_sha256=sha256_of(data),
        preprocessing=AudioPreprocessing(),
        layer_shapes=LAYER_SHAPES,
        default_layer="pool",
        source=f"musicnn {folder} (Pons & Serra 2019, ISC), trained on the {dataset}, from musicnn==0.1.0",
        modality="audio",
        assets={"index": (index, sha256_of(index))},
        options={},
        builder=__name__,
    )


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the network on the spec's verified checkpoint, samples in."""
    weights = read_checkpoint(spec.read_asset("index"), spec.read_weights())
    return build_musicnn(weights, outputs=layers, prep=spec.preprocessing, name=spec.name)
