"""The forward pass in a narrower type (``--precision``): a backbone built under Keras' mixed policy, with the ends
that cost accuracy and save no time kept in float32. The vectors stored are float32 either way."""

from __future__ import annotations

from collections.abc import Sequence

from transforms.embed.protocol import Backbone

__all__ = ["PRECISION_POLICIES", "load_in_precision"]

PRECISION_POLICIES = {"float32": None, "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def load_in_precision(spec: Backbone, layers: Sequence[str], precision: str = "float32"):
    """``spec.load(layers)`` with its layers built to compute in ``precision`` (Keras' mixed policy), the
    process's global policy put back afterwards. Two ends stay in float32, both cheap: the input's
    normalisation and the first layer with weights (the stem convolution, on 3 channels): rounding the
    normalised pixels to bfloat16 costs more accuracy than all later layers together (EfficientNet-Lite0's
    features: cosine 0.9987 to float32 with it, 0.9995 without); and the extracted layers themselves, so the
    stored vectors carry no rounding of their own. A text backbone takes bfloat16 only, and only in its dense
    layers (``_dense_layers_in``): cosine to float32 0.99995 or more for minilm_l6's sentence vectors."""
    policy = PRECISION_POLICIES[precision]
    if policy is None:
        return spec.load(layers)
    if spec.modality == "text":
        if precision != "bfloat16":
            raise ValueError(f"a text backbone runs in float32 or bfloat16, not {precision}")
        return _dense_layers_in(spec.load(layers), policy)
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = spec.load(layers)
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in _layers_up_to_the_first_weights(model) + _named_layers(model, set(layers)):
        layer.dtype_policy = "float32"
    return model


def _dense_layers_in(model, policy: str):
    """``model``, built in float32, with only its ``Dense`` layers computing in ``policy``'s narrower type.

    (Building a text model under a mixed policy would put its attention softmax and every other step in the
    narrower type too.) The dense layers hold nearly all of a transformer's arithmetic, which bfloat16 matrix
    units do several times faster; LayerNorm, softmax and the residual sums stay float32. An activation stays
    in its dense layer where oneDNN fuses it into the matrix product (2-D inputs: the activation is applied to
    the float32 sums); on higher-rank inputs it would run as separate bfloat16 ops, slower than in float32 on
    a CPU and less exact, so there it is moved back to float32."""
    import keras

    for layer in _all_layers(model):
        if not isinstance(layer, keras.layers.Dense):
            continue
        layer.dtype_policy = policy
        if layer.activation not in (None, keras.activations.linear) and len(layer.input.shape) > 2:
            layer.activation = _in_float32(layer.activation)
    return model


def _in_float32(activation):
    import keras

    return lambda x: activation(keras.ops.cast(x, "float32"))


def _all_layers(model) -> list:
    """The model's layers in order, nested models walked into."""
    return [inner for layer in model.layers
            for inner in (_all_layers(layer) if hasattr(layer, "layers") else [layer])]


def _named_layers(model, names: set) -> list:
    """The model's layers (nested models walked into) with one of ``names``."""
    return [layer for layer in _all_layers(model) if layer.name in names]


def _layers_up_to_the_first_weights(model) -> list:
    """The model's layers in order (nested models walked into) up to and including the first with weights."""
    layers = _all_layers(model)
    first = next((i for i, layer in enumerate(layers) if layer.weights), len(layers) - 1)
    return layers[:first + 1]
