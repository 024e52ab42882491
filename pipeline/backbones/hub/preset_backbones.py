"""A KerasHub preset as a backbone, either of its towers: ``resolve`` at launch, ``build`` on the workers.

The image tower's preprocessing is the preset's image converter (``image_towers.converter_preprocessing``): its
geometry runs on the workers to uint8, its scale and offset in the graph. The text tower's is the preset's
tokenizer (``text_towers.tokenizer_json``: CLIP's, BERT's), run on the workers to token ids. The preset directory
travels as one reproducible tar, hashed and staged like the weights of any other backbone; a worker rebuilds the
preset from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from pipeline.backbones.hub import presets
from pipeline.backbones.hub.image_towers import TOWERS, converter_preprocessing, image_tower
from pipeline.backbones.hub.text_towers import TEXT_TOWERS, sequence_length, text_tower, tokenizer_json
from pipeline.backbones.packing import pack_directory, unpack_directory
from pipeline.backbones.spec import BackboneSpec, BackboneUnavailableError, UnknownBackboneError, sha256_of
from pipeline.backbones.uint8_input import with_uint8_input
from transforms.decode.tokenize import TextPreprocessing

__all__ = ["resolve", "build", "unpacked_preset", "load_preset"]


def resolve(handle: str, tower: str = "image") -> BackboneSpec:
    """The preset, resolved to local files and hashed; its architecture built once (without weights) to list
    the tower's layers."""
    keras_hub = presets.require_keras_hub()
    directory = presets.local_preset(handle)
    class_name = presets.preset_class(directory)
    towers = TOWERS if tower == "image" else TEXT_TOWERS
    if class_name not in towers:
        raise UnknownBackboneError(f"preset {handle} is a {class_name}; featurebeam embeds {tower}s with "
                                   f"{', '.join(sorted(towers))}")
    if tower == "image" and not os.path.isfile(os.path.join(directory, presets.IMAGE_CONVERTER_FILE)):
        raise UnknownBackboneError(f"preset {handle} has no {presets.IMAGE_CONVERTER_FILE}: its preprocessing is "
                                   "unknown (save the preset's image converter with it)")
    if tower == "text" and not presets.has_tokenizer(directory):
        raise UnknownBackboneError(f"preset {handle} has no tokenizer: its text preprocessing is unknown (save the "
                                   "preset's tokenizer with it)")
    try:
        backbone = keras_hub.models.Backbone.from_preset(directory, load_weights=False)
        described = _image_side(backbone, directory, handle) if tower == "image" else _text_side(backbone, directory)
    except (UnknownBackboneError, BackboneUnavailableError):
        raise
    except Exception as e:
        raise BackboneUnavailableError(f"cannot load KerasHub preset {handle}: {type(e).__name__}: "
                                       f"{presets.first_line(e)}") from None
    preprocessing, table, default, assets, source = described
    artifact = pack_directory(directory, keep=presets.backbone_files)
    return BackboneSpec(
        name=presets.HUB_PREFIX + handle,
        weights_path=artifact,
        weights_sha256=sha256_of(artifact),
        preprocessing=preprocessing,
        layer_shapes=table,
        default_layer=default,
        source=f"KerasHub preset {handle} ({class_name}, {tower} tower, keras-hub {keras_hub.__version__}); "
               f"preprocessing {source}",
        modality=tower,
        options={"kind": "hub", "origin": handle, "class_name": class_name, "tower": tower, "fold_batchnorm": False},
        assets=assets,
        candidates=tuple(table),
        builder=__name__,
    )


def _image_side(backbone, directory: str, handle: str):
    import keras_hub

    converter = keras_hub.layers.ImageConverter.from_preset(directory)
    tower = image_tower(backbone)
    table = {name: tuple(int(d) for d in output.shape[1:]) for name, output in tower.outputs.items()}
    return (converter_preprocessing(converter, handle), table, tower.default, {},
            f"its image converter's ({type(converter).__name__})")


def _text_side(backbone, directory: str):
    class_name = type(backbone).__name__
    handle, path = tempfile.mkstemp(prefix="featurebeam-tokenizer-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write(tokenizer_json(directory, class_name))
    length = sequence_length(backbone)
    table = {name: tuple(length if d is None else int(d) for d in output.shape[1:])
             for name, output in text_tower(backbone).output.items()}
    return (TextPreprocessing(max_length=length), table, TEXT_TOWERS[class_name].default,
            {"tokenizer": (path, sha256_of(path))}, f"its tokenizer's ({class_name.replace('Backbone', '')})")


@contextlib.contextmanager
def unpacked_preset(spec: BackboneSpec):
    """The preset directory of a hub spec, unpacked from the staged tar (hash-checked), for the ``with`` block."""
    directory = unpack_directory(spec.read_weights())
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def load_preset(spec: BackboneSpec):
    """The KerasHub backbone of a hub spec, with its weights, from the staged tar (hash-checked)."""
    import keras_hub

    with unpacked_preset(spec) as directory:
        return keras_hub.models.Backbone.from_preset(directory)


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the tower rebuilt from the staged tar, never from its origin: uint8 images or (ids, mask) in,
    ``{layer: activation}`` out."""
    import keras

    backbone = load_preset(spec)
    if spec.modality == "text":
        tower = text_tower(backbone)
        inputs, outputs = tower.inputs, tower.output
    else:
        tower = image_tower(backbone)
        inputs, outputs = tower.images, tower.outputs
    core = keras.Model(inputs, {layer: outputs[layer] for layer in layers})
    core.trainable = False
    if spec.modality == "text":
        return core
    return with_uint8_input(spec.preprocessing, spec.name, lambda normalised: core(normalised, training=False))
