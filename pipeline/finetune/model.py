"""A backbone split at a block boundary: a frozen bottom (run once per image) and a top to fine-tune.

Blocks are the layers ``featurebeam layers`` lists (the embedded ports: every block output, ``features.N`` /
``blocks.N``; keras:NAME and model files: their candidate layers), spatial ones up to the output layer. The
top is the last K blocks: from the output of block ``-(K + 1)`` to the output layer. A cut must carry all that
flows on (no residual connection may jump over it); one that does not is refused.

BatchNorm stays in inference mode: the embedded ports have none (folded into the convolutions at load); in
keras backbones every ``BatchNormalization`` layer of the top is made non-trainable (Keras then runs it in
inference mode whatever ``training`` says, with its moving statistics and its gamma/beta fixed) and the top
is always called with ``training=False``, so its moving statistics cannot change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import ConfigError

__all__ = ["SplitBackbone", "backbone_blocks", "split_backbone", "batchnorm_layers", "freeze_batchnorm",
           "finetuned_backbone"]


def backbone_blocks(spec, output_layer: str) -> list[str]:
    """The blocks of ``spec`` a top can be made of, in network order, ending at ``output_layer``."""
    names = list(spec.candidates) if spec.candidates else list(spec.layer_shapes)
    if output_layer not in names:
        names.append(output_layer)
    order = list(spec.layer_shapes)
    names = sorted((n for n in names if n in spec.layer_shapes), key=order.index)
    end = names.index(output_layer)
    return [n for n in names[: end + 1] if len(spec.layer_shapes[n]) == 3 or n == output_layer]


@dataclass
class SplitBackbone:
    """``normalize`` (uint8 -> network input), ``bottom`` (network input -> the cut's activation, frozen) and
    ``top`` (the cut's activation -> the output layer's, the blocks ``unfrozen``)."""

    normalize: Any
    bottom: Any
    top: Any
    cut: str
    output_layer: str
    unfrozen: tuple[str, ...]
    crop: int

    @property
    def cut_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.top.input_shape[1:])

    @property
    def top_weight_count(self) -> int:
        """How many weights fine-tuning trains in the top."""
        return int(sum(int(np.prod(w.shape)) for w in self.top.trainable_weights))


def _inner_model(loaded):
    """The float-in model inside a ``with_uint8_input`` wrapper: every builder nests one there."""
    import keras

    nested = [layer for layer in loaded.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ConfigError(f"backbone {loaded.name}: cannot find its network inside the uint8 wrapper")
    return nested[0]


def split_backbone(spec, output_layer: str, unfreeze: int) -> SplitBackbone:
    """Build the backbone once and cut it before its last ``unfreeze`` blocks; the top is trainable except its
    BatchNorm layers."""
    import keras

    blocks = backbone_blocks(spec, output_layer)
    if unfreeze >= len(blocks):
        raise ConfigError(f"--unfreeze {unfreeze}: {spec.name} has {len(blocks)} blocks up to {output_layer} "
                          f"({', '.join(blocks)}); at most {len(blocks) - 1} can be unfrozen above a frozen bottom")
    cut, unfrozen = blocks[-unfreeze - 1], tuple(blocks[-unfreeze:])
    loaded = spec.load([cut, output_layer])
    inner = _inner_model(loaded)
    outputs = inner.output if isinstance(inner.output, dict) else dict(zip((cut, output_layer), inner.outputs,
                                                                           strict=True))
    try:
        bottom = keras.Model(inner.inputs, outputs[cut], name="frozen_bottom")
        top = keras.Model(outputs[cut], outputs[output_layer], name="finetuned_top")
    except ValueError as e:
        raise ConfigError(f"{spec.name} cannot be cut at {cut} (a connection jumps over it: {str(e)[:160]}); "
                          "choose another --unfreeze") from None
    if len(top.inputs) != 1:
        raise ConfigError(f"{spec.name} cannot be cut at {cut}: the layers above it need other inputs too; choose "
                          "another --unfreeze")
    bottom.trainable = False
    top.trainable = True
    for layer in top.layers:  # the ports build frozen; a model cut from inner tensors does not pass this down
        layer.trainable = True
    freeze_batchnorm(top)
    return SplitBackbone(loaded.get_layer("normalize"), bottom, top, cut, output_layer, unfrozen,
                         spec.preprocessing.crop)


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer in ``model``, nested models included."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(batchnorm_layers(layer))
    return found


def freeze_batchnorm(model) -> int:
    """Make every BatchNorm layer of ``model`` non-trainable (inference mode); returns how many there are."""
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.trainable = False
    return len(layers)


def finetuned_backbone(split: SplitBackbone, name: str = "finetuned_backbone"):
    """uint8 images -> ``{output layer: activation}`` through bottom and fine-tuned top: the shape
    ``BackboneSpec.load`` gives, which the serving model takes."""
    import keras

    images = keras.Input((split.crop, split.crop, 3), dtype="uint8", name="image_uint8")
    activation = split.top(split.bottom(split.normalize(images), training=False), training=False)
    return keras.Model(images, {split.output_layer: activation}, name=name)
