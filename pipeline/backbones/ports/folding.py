"""The torch ports' one loading path: a hash-checked ``.pth`` -> numpy state dict -> Keras layers with
BatchNorm folded into the convolution before it -> a uint8-in model.

Folding (inference only) computes ``conv`` then ``BatchNorm`` with its running statistics as one convolution:
the ported model has no BatchNorm layer at all, so it cannot run one in training mode, and it runs about twice
as fast on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.backbones.ports.torch_weights import read_legacy_state_dict
from pipeline.backbones.uint8_input import with_uint8_input

__all__ = ["fold_conv_bn", "build_torch_port"]


def fold_conv_bn(weights, conv: str, bn: str, eps: float, depthwise: bool = False):
    """A torch conv kernel (OIHW) and the BatchNorm after it -> the Keras kernel (HWIO, or HWC1 for depthwise)
    and bias that compute both at inference."""
    import numpy as np

    w = weights[f"{conv}.weight"].astype(np.float64)
    gamma, beta = weights[f"{bn}.weight"].astype(np.float64), weights[f"{bn}.bias"].astype(np.float64)
    mean, var = weights[f"{bn}.running_mean"].astype(np.float64), weights[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + eps)
    w = w * scale[:, None, None, None]
    bias = beta - mean * scale
    kernel = w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0)
    return kernel.astype(np.float32), bias.astype(np.float32)


def build_torch_port(spec, layers: tuple, build_core: Callable):
    """``build_core(state_dict, outputs=, input_size=)`` (a float-in Keras model) on the spec's verified weights,
    wrapped to take uint8 images."""
    weights = read_legacy_state_dict(spec.read_weights())
    core = build_core(weights, outputs=layers, input_size=spec.preprocessing.crop)
    return with_uint8_input(spec.preprocessing, spec.name, core)
