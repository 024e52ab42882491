"""Tiny KerasHub presets for the tests of ``hub:`` backbones: randomly initialised CLIP (with a small tokenizer),
DINOv2 (with register tokens) and ViT, of 32x32 images, saved as KerasHub saves presets (``save_to_preset``): no
download is possible offline. And a small BERT with its WordPiece tokenizer. The fixtures that save them are in
``tests/pipeline/backbones/conftest.py``."""

from __future__ import annotations

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

SIZE = 32
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def converter_args(mean, std, interpolation, antialias=False):
    return {"image_size": (SIZE, SIZE), "scale": [1 / (255 * s) for s in std],
            "offset": [-m / s for m, s in zip(mean, std, strict=True)], "interpolation": interpolation,
            "antialias": antialias}


def clip_tokenizer():
    """A small CLIP tokenizer: every letter alone and word-final, a few words and their merges; the end token has
    the largest id, as in CLIP's own vocabulary (its text tower pools there)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = {"<|startoftext|>": 0}
    for token in [*letters, *(c + "</w>" for c in letters), ".</w>", "!</w>", "th", "the</w>", "ca", "cat</w>", "do",
                  "dog</w>", "ph", "pho", "phot", "photo</w>", "of</w>", "é", "é</w>"]:
        vocabulary.setdefault(token, len(vocabulary))
    vocabulary["<|endoftext|>"] = len(vocabulary)
    merges = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "p h", "ph o", "pho t", "phot o</w>",
              "o f</w>"]
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=None, merges=None)
    # KerasHub 0.32 builds its Python tokenizer from attributes that only its tensorflow-text path sets
    tokenizer.vocabulary, tokenizer.merges = vocabulary, merges
    tokenizer._set_vocabulary_and_merges_tokenizers(vocabulary, merges)
    tokenizer._update_special_token_ids()
    return tokenizer


def tiny_clip():
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=2, num_heads=2,
                                                intermediate_dim=32, image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=len(clip_tokenizer().vocabulary), embedding_dim=16,
                                            hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
                                            max_sequence_length=12)
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=12)
    return backbone, keras_hub.layers.CLIPImageConverter(**converter_args(CLIP_MEAN, CLIP_STD, "bicubic"))


def tiny_dinov2():
    backbone = keras_hub.models.DINOV2Backbone(patch_size=8, num_layers=2, hidden_dim=16, num_heads=2,
                                               intermediate_dim=32, image_shape=(SIZE, SIZE, 3),
                                               position_embedding_shape=(SIZE, SIZE), num_register_tokens=2)
    converter = keras_hub.layers.DINOV2ImageConverter(
        **converter_args((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", antialias=True))
    return backbone, converter


def tiny_vit():
    backbone = keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=2, num_heads=2,
                                            hidden_dim=16, mlp_dim=32)
    return backbone, keras_hub.layers.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1)


def tiny_bert():
    """A small uncased BERT and its WordPiece tokenizer (KerasHub's defaults: lower case, accents kept)."""
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "a", "photo", "of", "!", ".",
                  ",", "'", "t", "s", "don", "caf", "##e", "##é", "東", "京", "st", "##ra", "##ss", "##e", "is", "big"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), num_layers=2, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32, max_sequence_length=12)
    return backbone, tokenizer


MAKERS = {"clip": tiny_clip, "dinov2": tiny_dinov2, "vit": tiny_vit, "bert": tiny_bert}  # (backbone, preprocessing)
IMAGE_PRESETS = ("clip", "dinov2", "vit")


def pixels_of(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
