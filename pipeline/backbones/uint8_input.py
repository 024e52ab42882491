"""The one way an image backbone meets the pipeline: uint8 NHWC images in, normalised inside the graph.

Every image backbone (the embedded ports, keras.applications, model files, SavedModels) is wrapped here, so
decoding never depends on the backbone and the backbone's own normalisation runs where it cannot be skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from transforms.decode.images import ImagePreprocessing

__all__ = ["with_uint8_input"]


def with_uint8_input(prep: ImagePreprocessing, name: str, body: Callable):
    """A Keras model: uint8 (crop, crop, 3) images -> ``prep.normalize`` -> ``body`` (normalised float images
    -> ``{layer: activation}``)."""
    import keras

    images = keras.Input((prep.crop, prep.crop, 3), dtype="uint8", name="image_uint8")
    normalised = keras.layers.Lambda(prep.normalize, name="normalize")(images)
    return keras.Model(images, body(normalised), name=re.sub(r"[^A-Za-z0-9_.-]", "_", name.rsplit("/", 1)[-1]))
