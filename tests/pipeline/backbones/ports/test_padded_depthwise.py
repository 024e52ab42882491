"""The strided depthwise convolution with torch's padding: the grouped form (padding inside the convolution) and the
padding step before a depthwise convolution compute the same numbers, forward and backward."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def example():
    rng = np.random.default_rng(7)
    return (rng.standard_normal((2, 10, 12, 6)).astype(np.float32),
            rng.standard_normal((3, 3, 6, 1)).astype(np.float32), rng.standard_normal(6).astype(np.float32))


def _layer(kernel, bias, grouped):
    from pipeline.backbones.ports.padded_depthwise import PaddedDepthwiseConv2D

    layer = PaddedDepthwiseConv2D(3, strides=2, pad=1, grouped=grouped, name="dw")
    layer.build((None, None, None, kernel.shape[2]))
    layer.set_weights([kernel, bias])
    return layer


def _torch_padded_reference(x, kernel, bias, stride=2, pad=1):
    """The definition, in numpy: pad by ``pad`` on every side, then each channel's own 3x3 window at ``stride``."""
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = (padded.shape[1] - 3) // stride + 1, (padded.shape[2] - 3) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, i * stride: i * stride + 3, j * stride: j * stride + 3, :]
            out[:, i, j, :] = np.einsum("nhwc,hwc->nc", window, kernel[..., 0])
    return out + bias


@pytest.mark.parametrize("grouped", [True, False])
def test_both_forms_compute_the_torch_padded_convolution(example, grouped):
    x, kernel, bias = example
    y = np.asarray(_layer(kernel, bias, grouped)(x))
    assert y.shape == (2, 5, 6, 6)
    np.testing.assert_allclose(y, _torch_padded_reference(x, kernel, bias), atol=1e-5, rtol=0)


def test_the_grouped_form_has_the_depthwise_gradients(example):
    """CPU TensorFlow has no gradient for a grouped convolution; the layer's is the depthwise one's, so fine-tuning
    trains it the same."""
    import tensorflow as tf

    x, kernel, bias = example
    upstream = np.random.default_rng(8).standard_normal((2, 5, 6, 6)).astype(np.float32)
    gradients = []
    for grouped in (True, False):
        layer, inputs = _layer(kernel, bias, grouped), tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs) * upstream)
        gradients.append([np.asarray(g) for g in tape.gradient(loss, [inputs, *layer.trainable_weights])])
    for grouped_gradient, depthwise_gradient in zip(*gradients, strict=True):
        assert np.abs(depthwise_gradient).max() > 0
        np.testing.assert_allclose(grouped_gradient, depthwise_gradient, atol=1e-5, rtol=0)


def test_a_saved_model_with_the_layer_loads_and_computes_the_same(example, tmp_path):
    import keras

    x, kernel, bias = example
    inputs = keras.Input((10, 12, 6))
    model = keras.Model(inputs, _layer(kernel, bias, True)(inputs))
    model.save(tmp_path / "top.keras")
    loaded = keras.saving.load_model(tmp_path / "top.keras", safe_mode=True)
    assert loaded.layers[-1].grouped and loaded.layers[-1].pad == 1
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_the_grouped_form_is_chosen_where_onednn_runs_the_cpu_kernels(monkeypatch):
    import tensorflow as tf

    from pipeline.backbones.ports import padded_depthwise
    from transforms.worker import cpu

    for state, gpus, expected in (("on", [], True), ("off", [], False), ("on", ["GPU:0"], False)):
        monkeypatch.setattr(cpu, "onednn_state", lambda state=state: state)
        monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None, gpus=gpus: gpus)
        assert padded_depthwise.grouped_form_is_faster() is expected
