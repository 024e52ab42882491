"""The text towers of KerasHub presets: the tokenizer the workers run, and the model over token ids.

``TEXT_TOWERS`` maps a backbone class to its ``TextTower``:

- CLIP: the preset's byte-level BPE (``assets/tokenizer/vocabulary.json`` and ``merges.txt``) as a
  ``tokenizers`` JSON, built as KerasHub's ``CLIPTokenizer`` builds its own (NFC, whitespace runs to one space,
  lower case; CLIP's split pattern, byte-level, ``</w>`` ending each word), with the start and end tokens its
  preprocessor adds. The model gives ``text_embedding`` (projected, the default) and ``pooled``; CLIP pools the
  end token (the largest id), and its causal attention keeps the padding after it out of everything before it.
- BERT (KerasHub's presets, and Hugging Face BERT checkpoints KerasHub converts): the preset's WordPiece
  vocabulary as a ``tokenizers`` JSON with KerasHub's ``BertTokenizer`` settings (lower case, accents kept or
  stripped, punctuation and CJK split, ``##`` continuations), ``[CLS] ... [SEP]`` around. The model gives
  ``pooled_output`` (the default) and ``sequence_output`` (pooled over the real tokens, ``--pooling avg``).

Either model takes featurebeam's text inputs, (ids, mask), and gives ``{layer: activation}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["TextTower", "TEXT_TOWERS", "START_TOKEN", "END_TOKEN", "tokenizer_json", "text_tower",
           "sequence_length"]

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_ASSETS = ("assets", "tokenizer")


class TextTower(NamedTuple):
    tokenizer: Callable   # preset directory -> tokenizers JSON
    model: Callable       # KerasHub backbone -> (ids, mask) Keras model
    default: str          # the default layer


def _clip_tokenizer(directory: str) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    with open(os.path.join(directory, *_ASSETS, "vocabulary.json"), encoding="utf-8") as f:
        vocabulary = json.load(f)
    with open(os.path.join(directory, *_ASSETS, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.rstrip("\n").split(" ")) for line in f
                  if line.strip() and "#version:" not in line.lstrip()]
    with open(os.path.join(directory, "tokenizer.json"), encoding="utf-8") as f:
        add_prefix_space = bool(json.load(f).get("config", {}).get("add_prefix_space", False))
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=merges, continuing_subword_prefix="",
                                     end_of_word_suffix="</w>", fuse_unk=False, unk_token=END_TOKEN))
    tokenizer.add_special_tokens([START_TOKEN, END_TOKEN])
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                 normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START_TOKEN} $A {END_TOKEN}",
        special_tokens=[(START_TOKEN, vocabulary[START_TOKEN]), (END_TOKEN, vocabulary[END_TOKEN])])
    return tokenizer.to_str()


def _clip_model(backbone):
    import keras

    ids = keras.Input((None,), dtype="int32", name="ids")
    mask = keras.Input((None,), dtype="int32", name="mask")
    pooled = backbone.text_pooler(backbone.text_encoder({"token_ids": ids}), ids)
    return keras.Model([ids, mask], {"text_embedding": backbone.text_projection(pooled), "pooled": pooled},
                       name="text_tower")


def _bert_tokenizer(directory: str) -> str:
    """KerasHub's BertTokenizer of the preset (its vocabulary and settings) as a ``tokenizers`` WordPiece."""
    import keras_hub
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    keras_tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(directory)
    vocabulary = {token: i for i, token in enumerate(keras_tokenizer.get_vocabulary())}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocabulary, unk_token=keras_tokenizer.oov_token,
                                           continuing_subword_prefix=keras_tokenizer.suffix_indicator,
                                           max_input_chars_per_word=100))
    special = [keras_tokenizer.cls_token, keras_tokenizer.sep_token, keras_tokenizer.pad_token,
               keras_tokenizer.mask_token]
    tokenizer.add_special_tokens(special)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=False, handle_chinese_chars=bool(keras_tokenizer.split_on_cjk),
        strip_accents=bool(keras_tokenizer.strip_accents), lowercase=bool(keras_tokenizer.lowercase))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = keras_tokenizer.cls_token, keras_tokenizer.sep_token
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, vocabulary[cls]), (sep, vocabulary[sep])])
    return tokenizer.to_str()


def _bert_model(backbone):
    import keras
    from keras import ops

    ids = keras.Input((None,), dtype="int32", name="ids")
    mask = keras.Input((None,), dtype="int32", name="mask")
    segments = keras.layers.Lambda(lambda t: ops.zeros_like(t), name="segment_ids")(ids)
    outputs = backbone({"token_ids": ids, "segment_ids": segments, "padding_mask": mask})
    return keras.Model([ids, mask], {"pooled_output": outputs["pooled_output"],
                                     "sequence_output": outputs["sequence_output"]}, name="text_tower")


TEXT_TOWERS = {"CLIPBackbone": TextTower(_clip_tokenizer, _clip_model, "text_embedding"),
               "BertBackbone": TextTower(_bert_tokenizer, _bert_model, "pooled_output")}


def tokenizer_json(directory: str, class_name: str) -> str:
    """The preset's tokenizer, as the workers run it, as a ``tokenizers`` JSON string."""
    return TEXT_TOWERS[class_name].tokenizer(directory)


def text_tower(backbone):
    """(ids, mask) -> ``{layer: activation}`` of the preset's text tower, as a Keras model."""
    return TEXT_TOWERS[type(backbone).__name__].model(backbone)


def sequence_length(backbone) -> int:
    """The longest token sequence the text tower takes (start and end tokens included)."""
    encoder = getattr(backbone, "text_encoder", backbone)
    return int(encoder.max_sequence_length)
