"""A tiny stand-in backbone for pipeline tests where the real one adds nothing but minutes; it satisfies the
``transforms.embed.protocol.Backbone`` protocol as the real specs do."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from transforms.decode.images import ImagePreprocessing
from transforms.schema.fields import OutputSpec

MEAN_COLOUR = OutputSpec("pixels", "pixels", "avg", 3)


@dataclass(frozen=True)
class MeanColourBackbone:
    """"Embeds" an image as its mean RGB after a 32x32 resize-and-crop; logs each load's process id."""

    load_log: str
    name: str = "mean_colour"
    preprocessing: ImagePreprocessing = ImagePreprocessing(resize_shorter=32, crop=32, scale=1.0,
                                                           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    layer_shapes: Mapping[str, tuple] = field(default_factory=lambda: {"pixels": (32, 32, 3)})
    default_layer: str = "pixels"
    modality: str = "image"
    folds_batchnorm: bool = False

    def describe(self) -> dict:
        return {"name": self.name, "weights_sha256": "0" * 64, "preprocessing": self.preprocessing.describe()}

    def read_asset(self, name: str) -> bytes:
        raise KeyError(f"backbone {self.name} has no asset {name!r}")

    def load(self, layers):
        import keras

        with open(self.load_log, "a") as f:
            f.write(f"{os.getpid()}\n")
        images = keras.Input((32, 32, 3), dtype="uint8")
        pixels = keras.layers.Lambda(self.preprocessing.normalize)(images)
        return keras.Model(images, {"pixels": pixels})


def load_pids(log_path: str) -> list[int]:
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [int(line) for line in f if line.strip()]


POISON = (13, 13, 13)  # the colour that PoisonedBackbone cannot embed


@dataclass(frozen=True)
class PoisonedBackbone(MeanColourBackbone):
    """MeanColourBackbone that fails, like a real model on an input it cannot handle, on any batch holding an
    image of exactly the ``POISON`` colour."""

    name: str = "poisoned"

    def load(self, layers):
        import keras
        import tensorflow as tf

        def check(images):
            pixels = tf.reshape(tf.cast(images, tf.int32), [tf.shape(images)[0], -1, 3])
            poisoned = tf.reduce_any(tf.reduce_all(tf.equal(pixels, tf.constant(POISON)), axis=[1, 2]))
            with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(poisoned), ["poisoned image"])]):
                return self.preprocessing.normalize(tf.identity(images))

        with open(self.load_log, "a") as f:
            f.write(f"{os.getpid()}\n")
        images = keras.Input((32, 32, 3), dtype="uint8")
        return keras.Model(images, {"pixels": keras.layers.Lambda(check)(images)})
