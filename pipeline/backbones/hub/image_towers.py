"""What each KerasHub image architecture offers to embed an image: named outputs of its image tower.

``image_tower(backbone)`` -> ``Tower(images input, {name: output}, default)``. The names are featurebeam's layers
for the preset (``featurebeam layers``, ``--layer``):

- ``image_embedding``: the projected embedding of a CLIP-style model (what its text tower is compared with);
- ``pooled``: a CLIP-style model's pooled vision output (before the projection);
- ``cls_token``: the class token of the final, normalised sequence (ViT, DINOv2);
- ``patch_tokens``: the final sequence's patch tokens, one vector per patch (``--pooling avg``: their mean);
- ``block_<i>``: the token sequence after encoder block ``i`` (1-based; pooled over its tokens).

``converter_preprocessing(converter)``: a preset's image converter as featurebeam's ``ImagePreprocessing``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from pipeline.backbones.spec import UnknownBackboneError
from transforms.decode.images import CROP_TO_ASPECT_RATIO, ImagePreprocessing

__all__ = ["Tower", "TOWERS", "image_tower", "converter_preprocessing"]


class Tower(NamedTuple):
    images: object            # the images input (a KerasTensor)
    outputs: Mapping          # {name: KerasTensor}
    default: str


def _images_input(model):
    inputs = model.input
    return inputs["images"] if isinstance(inputs, dict) else inputs


def _vit(backbone) -> Tower:
    sequence = backbone.output
    if backbone.use_class_token:
        return Tower(_images_input(backbone), {"cls_token": sequence[:, 0], "patch_tokens": sequence[:, 1:]},
                     "cls_token")
    return Tower(_images_input(backbone), {"patch_tokens": sequence}, "patch_tokens")


def _dinov2(backbone) -> Tower:
    sequence = backbone.output
    first_patch = 1 + backbone.num_register_tokens
    blocks = {f"block_{name[len('stage'):]}": output for name, output in backbone.pyramid_outputs.items()
              if name.startswith("stage")}
    outputs = {"cls_token": sequence[:, 0], "patch_tokens": sequence[:, first_patch:], **blocks}
    return Tower(_images_input(backbone), outputs, "cls_token")


def _clip(backbone) -> Tower:
    vision = backbone.vision_encoder
    pooled = backbone.vision_pooler(vision.output)
    encoder_blocks = [layer for layer in vision.layers if type(layer).__name__ == "CLIPEncoderLayer"]
    blocks = {f"block_{i + 1}": layer.output for i, layer in enumerate(encoder_blocks)}
    outputs = {"image_embedding": backbone.vision_projection(pooled), "pooled": pooled,
               "patch_tokens": vision.output[:, 1:], **blocks}
    return Tower(_images_input(vision), outputs, "image_embedding")


TOWERS = {"ViTBackbone": _vit, "DINOV2Backbone": _dinov2, "CLIPBackbone": _clip}


def image_tower(backbone) -> Tower:
    """The image tower of a KerasHub backbone of one of ``TOWERS``' classes."""
    return TOWERS[type(backbone).__name__](backbone)


_RESAMPLE = ("bilinear", "bicubic", "nearest", "lanczos3", "lanczos5", "area")


def converter_preprocessing(converter, name: str) -> ImagePreprocessing:
    """A KerasHub ``ImageConverter`` as featurebeam's preprocessing: ``x * scale + offset`` per channel is
    ``(x - mean) / std`` with ``mean = -offset / scale`` and ``std = 1 / scale``."""
    size = converter.image_size
    if size is None or size[0] != size[1]:
        raise UnknownBackboneError(f"preset {name} resizes images to {size}; featurebeam needs a square size")
    if converter.pad_to_aspect_ratio:
        raise UnknownBackboneError(f"preset {name} pads images to its aspect ratio; featurebeam crops to it only")
    if converter.interpolation not in _RESAMPLE:
        raise UnknownBackboneError(f"preset {name} resizes with {converter.interpolation!r}, which featurebeam "
                                   f"does not reproduce ({', '.join(_RESAMPLE)})")
    scale = _per_channel(1.0 if converter.scale is None else converter.scale)
    offset = _per_channel(0.0 if converter.offset is None else converter.offset)
    if any(s == 0 for s in scale):
        raise UnknownBackboneError(f"preset {name} scales a channel by 0")
    return ImagePreprocessing(resize_shorter=int(size[0]), crop=int(size[0]), resample=converter.interpolation,
                              scale=1.0, mean=tuple(-o / s for o, s in zip(offset, scale, strict=True)),
                              std=tuple(1.0 / s for s in scale), fit=CROP_TO_ASPECT_RATIO,
                              antialias=bool(converter.antialias))


def _per_channel(value) -> tuple[float, float, float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    if len(values) != 3:
        raise UnknownBackboneError(f"a per-channel value of {len(values)} channels: featurebeam reads RGB")
    return tuple(values)
