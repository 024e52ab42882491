"""A KerasHub image preset as a backbone: ``resolve`` at launch, ``build`` on the workers.

The preset's own image converter is the preprocessing: its geometry (the largest centred square, resized with
its interpolation, as Keras' ``Resizing(crop_to_aspect_ratio=True)``) runs on the workers to uint8
(``transforms.decode.images``), its ``scale`` and ``offset`` inside the graph. Every file of the preset is staged
and hash-checked like the weights of any other backbone; a worker rebuilds the preset from those files.
"""

from __future__ import annotations

import os
import shutil

from pipeline.backbones.hub import presets
from pipeline.backbones.hub.image_towers import TOWERS, image_tower
from pipeline.backbones.packing import pack_directory, unpack_directory
from pipeline.backbones.spec import BackboneSpec, BackboneUnavailableError, UnknownBackboneError, sha256_of
from pipeline.backbones.uint8_input import with_uint8_input
from transforms.decode.images import CROP_TO_ASPECT_RATIO, ImagePreprocessing

__all__ = ["resolve", "build", "converter_preprocessing"]

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


def resolve(handle: str) -> BackboneSpec:
    """The preset, resolved to local files and hashed; its architecture built once (without weights) to list
    its layers."""
    keras_hub = presets.require_keras_hub()
    directory = presets.local_preset(handle)
    class_name = presets.preset_class(directory)
    if class_name not in TOWERS:
        raise UnknownBackboneError(f"preset {handle} is a {class_name}; featurebeam embeds images with "
                                   f"{', '.join(sorted(TOWERS))}")
    if not os.path.isfile(os.path.join(directory, presets.IMAGE_CONVERTER_FILE)):
        raise UnknownBackboneError(f"preset {handle} has no {presets.IMAGE_CONVERTER_FILE}: its preprocessing is "
                                   "unknown (save the preset's image converter with it)")
    try:
        backbone = keras_hub.models.Backbone.from_preset(directory, load_weights=False)
        converter = keras_hub.layers.ImageConverter.from_preset(directory)
    except Exception as e:
        raise BackboneUnavailableError(f"cannot load KerasHub preset {handle}: {type(e).__name__}: "
                                       f"{presets.first_line(e)}") from None
    tower = image_tower(backbone)
    table = {name: tuple(int(d) for d in output.shape[1:]) for name, output in tower.outputs.items()}
    artifact = pack_directory(directory, keep=presets.backbone_files)
    return BackboneSpec(
        name=presets.HUB_PREFIX + handle,
        weights_path=artifact,
        weights_sha256=sha256_of(artifact),
        preprocessing=converter_preprocessing(converter, handle),
        layer_shapes=table,
        default_layer=tower.default,
        source=f"KerasHub preset {handle} ({class_name}, keras-hub {keras_hub.__version__}); preprocessing its "
               f"image converter's ({type(converter).__name__})",
        options={"kind": "hub", "origin": handle, "class_name": class_name, "fold_batchnorm": False},
        candidates=tuple(table),
        builder=__name__,
    )


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the preset rebuilt from the staged tar (hash-checked), never from its origin."""
    import keras
    import keras_hub

    directory = unpack_directory(spec.read_weights())
    try:
        backbone = keras_hub.models.Backbone.from_preset(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    tower = image_tower(backbone)
    core = keras.Model(tower.images, {layer: tower.outputs[layer] for layer in layers})
    core.trainable = False
    return with_uint8_input(spec.preprocessing, spec.name, lambda normalised: core(normalised, training=False))
