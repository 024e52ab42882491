"""``Backbone``: what the transforms need of a backbone, declared once. ``pipeline.backbones.spec.BackboneSpec`` is
the real one; tests use small stand-ins that satisfy the same protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from transforms.decode.audio import AudioPreprocessing
from transforms.decode.images import ImagePreprocessing
from transforms.decode.tokenize import TextPreprocessing

__all__ = ["Backbone"]


@runtime_checkable
class Backbone(Protocol):
    """A frozen network the job can build on any worker.

    ``modality`` is "image" (uint8 NHWC of ``preprocessing.crop`` in), "text" (token ids and a mask in; the
    tokenizer is the asset "tokenizer") or "audio" (float32 patches of ``preprocessing.patch_samples`` in).
    ``load(layers)`` builds a Keras model to ``{layer: activation}``; ``layer_shapes`` are those activations' shapes
    without the batch axis."""

    name: str
    modality: str
    preprocessing: ImagePreprocessing | TextPreprocessing | AudioPreprocessing
    layer_shapes: Mapping[str, tuple]
    default_layer: str

    @property
    def folds_batchnorm(self) -> bool:
        """Whether BatchNorm runs folded into the convolution before it (recorded in run.json)."""

    def describe(self) -> dict:
        """What the manifest says about the backbone: at least its name, weights_sha256 and preprocessing."""

    def load(self, layers: Sequence[str]):
        """The frozen Keras model to ``{layer: activation}`` for ``layers``."""

    def read_asset(self, name: str) -> bytes:
        """An asset's bytes (a text backbone's "tokenizer"), checked against the hash taken at launch."""
