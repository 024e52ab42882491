"""A strided depthwise convolution padded on every side, torch's way, with the padding inside oneDNN's kernel.

A torch port pads a 3x3 convolution by 1 on every side. At stride 1 that is TensorFlow's "same"; at stride 2 "same"
pads the bottom and right only, so the port pads in a step of its own, a full copy of the activation (MobileNetV2's
largest, 32 x 114 x 114 x 96 floats a batch). TensorFlow takes explicit padding in ``conv2d`` but not in its
depthwise convolution (2.21 aborts when oneDNN fuses one given explicit padding with its bias and ReLU6). A
depthwise convolution is also a grouped one, a group per channel: ``conv2d`` with a (kh, kw, 1, channels) filter.
Under oneDNN that computes the same numbers with the padding inside the convolution, 30-45 % faster than the pad
and the depthwise convolution (MobileNetV2's four such layers, batch 32). TensorFlow's Eigen kernels (oneDNN off)
run grouped convolutions about 5x slower than depthwise ones, so there, and on a GPU (not measured), the layer pads
and runs the depthwise convolution as before. CPU TensorFlow has no gradient for a grouped convolution,
so the grouped form takes the depthwise convolution's gradient (fine-tuning trains these layers).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["PaddedDepthwiseConv2D", "grouped_form_is_faster"]


def grouped_form_is_faster() -> bool:
    """Whether this process runs TensorFlow's CPU kernels through oneDNN, with no GPU to place the layer on."""
    from transforms.worker.cpu import onednn_state

    return onednn_state() == "on" and not tf.config.list_physical_devices("GPU")


def _paddings(pad: int) -> list[list[int]]:
    return [[0, 0], [pad, pad], [pad, pad], [0, 0]]


def padded_depthwise(x, kernel, stride: int, pad: int):
    """``depthwise_conv2d(pad(x), kernel, stride, "VALID")`` as a grouped ``conv2d`` with explicit padding;
    ``kernel`` is (kh, kw, channels, 1)."""
    strides = [1, stride, stride, 1]

    @tf.custom_gradient
    def forward(x, kernel):
        kh, kw, channels, _ = kernel.shape
        y = tf.nn.conv2d(x, tf.reshape(kernel, (kh, kw, 1, channels)), strides, _paddings(pad))

        def gradient(dy):
            padded = tf.pad(x, _paddings(pad))
            dpadded = tf.nn.depthwise_conv2d_backprop_input(tf.shape(padded), kernel, dy, strides, "VALID")
            dkernel = tf.nn.depthwise_conv2d_backprop_filter(padded, tf.shape(kernel), dy, strides, "VALID")
            return dpadded[:, pad:-pad, pad:-pad, :], dkernel

        return y, gradient

    return forward(x, kernel)


@keras.saving.register_keras_serializable(package="featurebeam")
class PaddedDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``DepthwiseConv2D`` whose input is padded by ``pad`` on every side first; ``grouped``: computed as a grouped
    convolution with the padding inside it (``grouped_form_is_faster``), else a padding step and the depthwise
    convolution. The weights are ``DepthwiseConv2D``'s either way."""

    def __init__(self, kernel_size, strides=1, pad: int = 1, grouped: bool = False, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(kernel_size, strides=strides, padding="valid", **kwargs)
        if self.depth_multiplier != 1 or self.strides[0] != self.strides[1]:
            raise ValueError("PaddedDepthwiseConv2D: one output channel per input channel, the same stride both ways")
        self.pad, self.grouped = int(pad), bool(grouped)

    def call(self, inputs):
        if not self.grouped:  # the padding step, then Keras' own depthwise convolution
            return super().call(tf.pad(inputs, _paddings(self.pad)))
        y = padded_depthwise(inputs, tf.convert_to_tensor(self.kernel), self.strides[0], self.pad)
        y = tf.nn.bias_add(y, tf.convert_to_tensor(self.bias)) if self.use_bias else y
        return self.activation(y)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        grown = [None if d is None else d + 2 * self.pad for d in (height, width)]
        return super().compute_output_shape((batch, *grown, input_shape[-1]))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "grouped": self.grouped}
