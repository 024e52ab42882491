"""What each KerasHub image architecture offers to embed an image: named outputs of its image tower.

``image_tower(backbone)`` -> ``Tower(images input, {name: output}, default)``. The names are featurebeam's layers
for the preset (``featurebeam layers``, ``--layer``):

- ``image_embedding``: the projected embedding of a CLIP-style model (what its text tower is compared with);
- ``pooled``: a CLIP-style model's pooled vision output (before the projection);
- ``cls_token``: the class token of the final, normalised sequence (ViT, DINOv2);
- ``patch_tokens``: the final sequence's patch tokens, one vector per patch (``--pooling avg``: their mean);
- ``block_<i>``: the token sequence after encoder block ``i`` (1-based; pooled over its tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["Tower", "TOWERS", "image_tower"]


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
