"""Zero-shot heads (``featurebeam train --zero-shot --classes a,b,c``): a classifier made from a CLIP preset's
text tower, with no labels.

Each class name is put into every ``--template`` ("a photo of a {}." by default) and the prompts are embedded by
the preset's text tower; each prompt's embedding is normalised, a class's are averaged over the templates (prompt
ensembling) and normalised again. The head scores an image by the cosine of its ``image_embedding`` to each class,
times the preset's logit scale, through a softmax: CLIP's own zero-shot classification. It is a Keras model like a
trained head (``UnitNormalization``, a ``Dense`` without bias, ``Softmax``), so it exports the same serving model
(raw images in, probabilities out) and ``predict`` and ``report`` use it like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.train.feature_sets import FeatureSetError

__all__ = ["ZERO_SHOT", "DEFAULT_TEMPLATES", "check_zero_shot", "class_embeddings", "zero_shot_head", "make_zero_shot"]

ZERO_SHOT = "zero_shot"
DEFAULT_TEMPLATES = ("a photo of a {}.",)
EMBEDDING_LAYER = "image_embedding"
CLIP = "CLIPBackbone"  # the presets with an image and a text tower in one space


def check_zero_shot(backbone: Mapping, output, classes: Sequence[str], templates: Sequence[str],
                    labels: Sequence[str]) -> None:
    """One line for features a zero-shot head cannot score, or class names and templates it cannot use."""
    options = backbone.get("options") or {}
    if options.get("kind") != "hub" or options.get("class_name") != CLIP or options.get("tower", "image") != "image":
        raise FeatureSetError(f"--zero-shot needs image features of a hub: preset with a text tower (CLIP, e.g. "
                              f"--backbone hub:clip_vit_base_patch32); these come from {backbone.get('name')}")
    if output.layer != EMBEDDING_LAYER:
        raise FeatureSetError(f"--zero-shot compares texts with the {EMBEDDING_LAYER} layer (the projected "
                              f"embedding); these features are {output.layer!r}: extract {EMBEDDING_LAYER}")
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(c.strip() for c in classes):
        raise FeatureSetError(f"--classes needs two or more distinct, non-empty class names; got {list(classes)}")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise FeatureSetError(f"--template must hold {{}} once, where the class name goes; got {bad[0]!r}")
    if labels and set(classes) != set(labels):
        raise FeatureSetError(f"--classes must be the feature set's labels when it has them ({', '.join(labels)}); "
                              f"got {', '.join(classes)}")


def class_embeddings(spec, classes: Sequence[str], templates: Sequence[str]) -> tuple[np.ndarray, float]:
    """((classes, dim) unit vectors, the preset's logit scale) from the text tower of the hub ``spec``'s preset."""
    import keras_hub
    from tokenizers import Tokenizer

    from pipeline.backbones.hub.preset_backbones import unpacked_preset
    from pipeline.backbones.hub.text_towers import sequence_length, text_tower, tokenizer_json

    with unpacked_preset(spec) as directory:
        backbone = keras_hub.models.Backbone.from_preset(directory)
        tokenizer = Tokenizer.from_str(tokenizer_json(directory, CLIP))
    length = sequence_length(backbone)
    tokenizer.enable_truncation(length)
    prompts = [template.format(name) for name in classes for template in templates]
    ids, mask = np.zeros((len(prompts), length), np.int32), np.zeros((len(prompts), length), np.int32)
    for i, encoding in enumerate(tokenizer.encode_batch(prompts)):
        ids[i, :len(encoding.ids)], mask[i, :len(encoding.ids)] = encoding.ids, 1
    embedded = np.asarray(text_tower(backbone)([ids, mask])["text_embedding"], np.float64)
    embedded /= np.linalg.norm(embedded, axis=1, keepdims=True)
    per_class = embedded.reshape(len(classes), len(templates), -1).mean(axis=1)
    per_class /= np.linalg.norm(per_class, axis=1, keepdims=True)
    return per_class.astype(np.float32), float(np.exp(np.asarray(backbone.clip_head.logit_scale)))


def zero_shot_head(weights: np.ndarray, scale: float):
    """(dim) image embeddings -> class probabilities: softmax(scale x cosine to each row of ``weights``)."""
    import keras

    inputs = keras.Input((weights.shape[1],), name="features")
    unit = keras.layers.UnitNormalization(name="unit")(inputs)
    cosine = keras.layers.Dense(weights.shape[0], use_bias=False, name="scaled_cosine")(unit)
    model = keras.Model(inputs, keras.layers.Softmax(name="probabilities")(cosine), name="zero_shot_head")
    model.get_layer("scaled_cosine").set_weights([(scale * weights.T).astype(np.float32)])
    return model


def make_zero_shot(spec, templates: Sequence[str], classes: Sequence[str]):
    """(the zero-shot head over ``classes``, in that order; what it was made of, for metrics.json)."""
    weights, scale = class_embeddings(spec, classes, templates)
    hyper = {"classes": list(classes), "templates": list(templates), "logit_scale": scale,
             "prompt_ensembling": len(templates) > 1, "text_tower": spec.name}
    return zero_shot_head(weights, scale), hyper
