"""Zero-shot heads (``train --zero-shot``) on a KerasHub CLIP preset's image embeddings, against KerasHub itself:
its cosine-softmax of the same pictures and prompts."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.cli import main
from tests.hub_presets import clip_tokenizer, keras_hub, pixels_of

IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]

def _cosine_softmax_apart(preset: str, pixels: np.ndarray, classes, templates) -> np.ndarray:
    """CLIP's zero-shot probabilities computed with KerasHub alone: its converter, image and text embeddings,
    its tokenizer (start and end tokens, padded as its preprocessor pads), its logit scale."""
    converter = keras_hub.layers.ImageConverter.from_preset(preset)
    backbone, tokenizer = keras_hub.models.Backbone.from_preset(preset), clip_tokenizer()
    images = np.asarray(backbone.get_vision_embeddings(converter(pixels)), np.float64)
    packer = keras_hub.layers.StartEndPacker(12, tokenizer.start_token_id, tokenizer.end_token_id, pad_value=0)
    prompts = [np.asarray(tokenizer(t.format(c))).tolist() for c in classes for t in templates]
    texts = np.asarray(backbone.get_text_embeddings(np.asarray(packer(prompts))), np.float64)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    texts = texts.reshape(len(classes), len(templates), -1).mean(axis=1)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    logits = np.exp(float(backbone.clip_head.logit_scale.numpy())) * (
        images / np.linalg.norm(images, axis=1, keepdims=True)) @ texts.T
    return np.exp(logits - logits.max(1, keepdims=True)) / np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                                                                                       keepdims=True)


@pytest.mark.slow
def test_a_zero_shot_head_serves_and_predicts_clips_cosine_softmax_computed_apart(presets, pictures, tmp_path,
                                                                                  capsys):
    """No labels: extract a CLIP preset's image embeddings, make the zero-shot head (two templates, averaged),
    then ``predict`` on the raw pictures gives KerasHub's own cosine-softmax of the same pictures and prompts."""
    import json

    classes, templates = ["cat", "dog", "the photo"], ["a photo of a {}.", "the {}!"]
    features, model, predicted = (str(tmp_path / name) for name in ("features", "model", "predicted"))
    preset = presets["clip"]
    assert main(["extract", "--input", str(pictures), "--output", features, "--backbone", f"hub:{preset}",
                 *IN_PROCESS]) == 0
    assert main(["train", "--features", features, "--output", model, "--zero-shot", "--classes", ",".join(classes),
                 *[arg for t in templates for arg in ("--template", t)]]) == 0
    assert "zero_shot not scored (no labelled records)" in capsys.readouterr().out
    metrics = json.loads(open(os.path.join(model, "metrics.json")).read())
    assert metrics["best_head"] == "zero_shot" and metrics["classes"] == classes
    assert metrics["heads"]["zero_shot"]["hyperparameters"]["templates"] == templates
    assert main(["predict", "--model", model, "--input", str(pictures), "--output", predicted, *IN_PROCESS]) == 0
    rows = [json.loads(line) for f in sorted(os.listdir(os.path.join(predicted, "predictions")))
            for line in open(os.path.join(predicted, "predictions", f)) if line.strip()]
    exact = sorted((r for r in rows if r["key"].endswith(".png")), key=lambda r: r["key"])
    assert len(rows) == len(os.listdir(pictures)) and len(exact) == 4
    apart = _cosine_softmax_apart(preset, np.stack([pixels_of(r["key"]) for r in exact]), classes, templates)
    got = np.array([[r["probabilities"][c] for c in classes] for r in exact])
    np.testing.assert_allclose(got, apart, atol=1e-4)
    assert [r["predicted"] for r in exact] == [classes[i] for i in apart.argmax(1)]
    page = str(tmp_path / "report.html")
    assert main(["report", features, "--model", model, "--html", page]) == 0  # a model like any other
    assert "zero_shot" in open(page, encoding="utf-8").read()


def test_zero_shot_needs_clip_image_embeddings_and_the_sets_labels(presets, tmp_path, capsys):
    """One line, before MODELDIR is touched, for features a zero-shot head cannot score and for class names that
    are not the labelled set's own."""
    from pipeline.train.zero_shot import check_zero_shot
    from transforms.schema.fields import OutputSpec

    clip = {"name": "hub:clip", "options": {"kind": "hub", "class_name": "CLIPBackbone", "tower": "image"}}
    embedding = OutputSpec("image_embedding", "image_embedding", "none", 12)
    check_zero_shot(clip, embedding, ["cat", "dog"], ["a {}"], ["cat", "dog"])
    cases = [
        ({"name": "mobilenet_v2"}, embedding, ["cat", "dog"], ["a {}"], [], "these come from mobilenet_v2"),
        (clip, OutputSpec("pooled", "pooled", "none", 16), ["cat", "dog"], ["a {}"], [], "extract image_embedding"),
        (clip, embedding, ["cat"], ["a {}"], [], "two or more distinct"),
        (clip, embedding, ["cat", "dog"], ["a photo"], [], "must hold {} once"),
        (clip, embedding, ["cat", "dog"], ["a {}"], ["cat", "fox"], "must be the feature set's labels"),
    ]
    from pipeline.train.feature_sets import FeatureSetError

    for backbone, output, classes, templates, labels, message in cases:
        with pytest.raises(FeatureSetError, match=message.replace("{", r"\{").replace("}", r"\}")):
            check_zero_shot(backbone, output, classes, templates, labels)
    assert main(["train", "--features", str(tmp_path), "--output", str(tmp_path / "m"), "--classes", "a,b"]) == 2
    assert capsys.readouterr().err.strip().endswith("--classes and --template are for --zero-shot")


@pytest.mark.slow
def test_with_labels_train_scores_the_zero_shot_head_beside_the_linear_probe(presets, labelled, tmp_path, capsys):
    import json

    features, model = str(tmp_path / "features"), str(tmp_path / "model")
    assert main(["extract", "--input", str(labelled), "--output", features, "--backbone", f"hub:{presets['clip']}",
                 *IN_PROCESS]) == 0
    capsys.readouterr()
    assert main(["train", "--features", features, "--output", model, "--zero-shot", "--classes", "flower,china"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(open(os.path.join(model, "metrics.json")).read())
    assert list(metrics["heads"]) == ["linear", "zero_shot"] and metrics["classes"] == ["china", "flower"]
    linear, zero = (metrics["heads"][name]["splits"]["validation"] for name in ("linear", "zero_shot"))
    assert zero["examples"] == linear["examples"] > 0 and "zero_shot accuracy: train" in printed
    assert metrics["heads"]["zero_shot"]["hyperparameters"]["classes"] == ["china", "flower"]  # the set's order
