"""BatchNorm folded into the convolution before it, in any Keras functional model (inference only).

At inference a ``BatchNormalization`` is a per-channel affine map with fixed numbers, so a convolution followed
by one is a single convolution: kernel times ``scale = gamma / sqrt(moving_variance + epsilon)`` per output
channel (for ``DepthwiseConv2D`` per channel x multiplier, for ``SeparableConv2D`` on the pointwise kernel),
bias ``beta + (b - moving_mean) * scale``. The same arithmetic as the torch ports (``ports/folding.py``).

``fold_batchnorm(model)`` rebuilds the functional graph with each foldable pair replaced by one convolution
that takes the BatchNorm's name (so the BatchNorm's output, a candidate layer in some models, keeps its name,
shape and values); every other layer is kept as it is, the same objects with their weights. Nested functional
models are folded too. A pair is foldable only when nothing else needs the convolution's own output:

- the convolution is a ``Conv2D``, ``DepthwiseConv2D`` or ``SeparableConv2D`` (exactly: a subclass may compute
  something else), channels-last, without activation, LoRA or quantisation, called once in the graph;
- its output goes to that BatchNorm and nowhere else, and is not one of the model's outputs (a requested
  layer: ``with_layers`` folds the model of the requested outputs, so asking for a convolution keeps it);
- the BatchNorm normalises the last axis, is called once, and not with ``training=True``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

__all__ = ["FoldablePair", "foldable_pairs", "folded_weights", "fold_batchnorm"]


@dataclass(frozen=True)
class FoldablePair:
    conv: object      # the convolution layer
    bn: object        # the BatchNormalization layer after it
    input_shape: tuple  # the convolution's input shape (to build the folded layer)


def _is_functional(model) -> bool:
    import keras

    return isinstance(model, keras.Model) and not isinstance(model, keras.Sequential) and \
        hasattr(model, "_nodes_by_depth")


def _conv_types():
    import keras

    return (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def _foldable_conv(layer) -> bool:
    import keras

    return (type(layer) in _conv_types() and layer.data_format == "channels_last"
            and layer.activation is keras.activations.linear and not getattr(layer, "lora_enabled", False)
            and not getattr(layer, "quantization_mode", None))


def foldable_pairs(model) -> list[FoldablePair]:
    """The (convolution, BatchNorm) pairs of a functional ``model`` (not of its nested models) that fold, in
    graph order."""
    import keras

    nodes = [node for depth in sorted(model._nodes_by_depth, reverse=True) for node in model._nodes_by_depth[depth]]
    calls = Counter(id(node.operation) for node in nodes if node.operation is not None)
    consumers = defaultdict(int)
    for node in nodes:
        for tensor in node.input_tensors:
            consumers[id(tensor)] += 1
    outputs = {id(tensor) for tensor in model.outputs}
    node_of = {id(node.operation): node for node in nodes if node.operation is not None}
    pairs = []
    for node in nodes:
        bn = node.operation
        if type(bn) is not keras.layers.BatchNormalization or calls[id(bn)] != 1 or len(node.input_tensors) != 1:
            continue
        if node.arguments.kwargs.get("training") is True:
            continue
        x = node.input_tensors[0]
        conv = x._keras_history.operation
        if not _foldable_conv(conv) or calls[id(conv)] != 1 or consumers[id(x)] != 1 or id(x) in outputs:
            continue
        if bn.axis not in (-1, len(x.shape) - 1):
            continue
        pairs.append(FoldablePair(conv, bn, tuple(node_of[id(conv)].input_tensors[0].shape)))
    return pairs


def folded_weights(conv, bn) -> list:
    """The weights of the one convolution that computes ``bn(conv(x))`` at inference, in ``conv``'s layout (with
    a bias)."""
    import keras
    import numpy as np

    channels = int(bn.moving_mean.shape[0])
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones(channels)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros(channels)
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    scale = gamma / np.sqrt(var + bn.epsilon)
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(channels)
    bias = beta + (bias - mean) * scale
    if type(conv) is keras.layers.SeparableConv2D:
        depthwise = conv.depthwise_kernel.numpy()
        pointwise = np.asarray(conv.pointwise_kernel.numpy(), np.float64) * scale
        return [depthwise, pointwise.astype(np.float32), bias.astype(np.float32)]
    kernel = np.asarray(conv.kernel.numpy(), np.float64)
    if type(conv) is keras.layers.DepthwiseConv2D:  # output channel c * multiplier + m
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def _folded_layer(pair: FoldablePair):
    config = pair.conv.get_config()
    config.update(name=pair.bn.name, use_bias=True, bias_initializer="zeros")
    folded = type(pair.conv).from_config(config)
    folded.build(pair.input_shape)
    folded.set_weights(folded_weights(pair.conv, pair.bn))
    folded.trainable = pair.conv.trainable
    return folded


def _all_pairs(model, seen: set) -> list[FoldablePair]:
    if id(model) in seen:
        return []
    seen.add(id(model))
    pairs = foldable_pairs(model)
    for layer in model.layers:
        if _is_functional(layer):
            pairs += _all_pairs(layer, seen)
    return pairs


def fold_batchnorm(model):
    """``model`` (functional) rebuilt with every foldable conv + BatchNorm pair as one convolution named as the
    BatchNorm; the same inputs and outputs (structure and names), for inference. A model with nothing to fold
    comes back as it is."""
    import keras

    pairs = _all_pairs(model, set())
    if not pairs:
        return model
    replaced = {id(pair.conv): _folded_layer(pair) for pair in pairs}
    dropped = {id(pair.bn) for pair in pairs}

    def call(layer, *args, **kwargs):
        if id(layer) in replaced:
            return replaced[id(layer)](*args, **kwargs)
        if id(layer) in dropped:  # its input is already the folded convolution's output
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call, recursive=True)
