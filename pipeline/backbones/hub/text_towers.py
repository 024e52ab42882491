"""The text tower of a KerasHub CLIP preset: its tokenizer for the workers, and its model over token ids.

- ``tokenizer_json(directory)``: the preset's byte-level BPE (``assets/tokenizer/vocabulary.json`` and
  ``merges.txt``) as a ``tokenizers`` JSON, built as KerasHub's ``CLIPTokenizer`` builds its own (NFC,
  whitespace runs to one space, lower case; CLIP's split pattern, byte-level, ``</w>`` ending each word), with the
  start and end tokens its ``CLIPPreprocessor`` adds; ``TokenizeFn`` runs it on the workers as it runs MiniLM's.
- ``text_tower(backbone)``: (ids, mask) in, ``{"text_embedding": projected, "pooled": before the projection}``
  out; the pooled token is the end token (the largest id, as CLIP pools it), and the causal attention keeps the
  padding after it out of everything before it, so the mask is not needed.
"""

from __future__ import annotations

import json
import os

__all__ = ["TEXT_TOWERS", "START_TOKEN", "END_TOKEN", "tokenizer_json", "text_tower", "sequence_length"]

TEXT_TOWERS = ("CLIPBackbone",)
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_ASSETS = ("assets", "tokenizer")


def tokenizer_json(directory: str) -> str:
    """The preset's tokenizer, start and end tokens added, as a ``tokenizers`` JSON string."""
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


def sequence_length(backbone) -> int:
    """The longest token sequence the text tower takes (start and end tokens included)."""
    return int(backbone.text_encoder.max_sequence_length)


def text_tower(backbone):
    """(ids, mask) -> ``{"text_embedding", "pooled"}`` of a CLIP backbone, as a Keras model."""
    import keras

    ids = keras.Input((None,), dtype="int32", name="ids")
    mask = keras.Input((None,), dtype="int32", name="mask")
    pooled = backbone.text_pooler(backbone.text_encoder({"token_ids": ids}), ids)
    return keras.Model([ids, mask], {"text_embedding": backbone.text_projection(pooled), "pooled": pooled},
                       name="text_tower")
