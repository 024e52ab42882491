"""A text model end to end: real minilm_l6 features of real paragraphs -> train -> a serving model that takes raw
strings and gives what tokenizers -> encoder -> head give apart, and ``predict`` on the texts, which scores the
test split as train did."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from pipeline.cli import main
from transforms.schema.example import read_records
from transforms.schema.manifest import read_manifest, shard_paths

IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]
LAYERS = ("sentence", "layer.5")  # the sentence embedding, and a token layer pooled over the real tokens
HARD = ["", "   \t\n", "Café naïve ΑΣ Ёлка", "日本語のテキスト 🐍👍🏽", "x" * 150, "[MASK] a[CLS]b",
        " ".join(["tokenization"] * 300), "zero\u200bwidth \ufeff\x00\x07 controls"]


def paragraphs(texts, count: int) -> list[str]:
    """``count`` paragraphs of 80 characters or more, spread evenly over ``texts``, none twice."""
    found = list(dict.fromkeys(p.strip() for text in texts for p in text.split("\n\n") if len(p.strip()) >= 80))
    return [found[i * len(found) // count] for i in range(count)]


def corpus() -> dict[str, list[str]]:
    """Two topics of real prose, offline: Python's help topics and scikit-learn's dataset descriptions."""
    from pydoc_data.topics import topics

    import sklearn.datasets

    descriptions = sorted(glob.glob(os.path.join(os.path.dirname(sklearn.datasets.__file__), "descr", "*.rst")))
    return {"python": paragraphs([topics[k] for k in sorted(topics)], 50),
            "datasets": paragraphs([open(f, encoding="utf-8").read() for f in descriptions], 50)}


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    """train.jsonl (3 in 4) and test.jsonl (every 4th, ``split`` test) extracted at both layers; a model per
    layer trained on them. Returns the folder, the spec and {layer: (model dir, report)}."""
    from pipeline.backbones.registry import resolve_backbone
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training

    root = tmp_path_factory.mktemp("text-serving")
    rows = [{"id": f"{label}-{i}", "text": text, "label": label}
            for label, texts in corpus().items() for i, text in enumerate(texts)]
    write_rows(root / "train.jsonl", [{**r, "split": "train"} for i, r in enumerate(rows) if i % 4])
    write_rows(root / "test.jsonl", [{**r, "split": "test"} for i, r in enumerate(rows) if not i % 4])
    for split in ("train", "test"):
        assert main(["extract", "--input", str(root / f"{split}.jsonl"), "--input-format", "text", "--backbone",
                     "minilm_l6", *[a for layer in LAYERS for a in ("--layer", layer)],
                     "--output", str(root / f"features-{split}"), *IN_PROCESS]) == 0
    models = {}
    for layer in LAYERS:
        out = root / f"model-{layer}"
        report = run_training(TrainConfig(features=(str(root / "features-train"),), output=str(out),
                                          output_name=layer, test_features=(str(root / "features-test"),)),
                              log=lambda message: None)
        models[layer] = out, report
    return root, resolve_backbone("minilm_l6"), models


def token_ids(spec, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) as extraction makes them: ``tokenizers`` (``TokenizeFn``), padded to the longest."""
    from transforms.decode.tokenize import TokenizeFn
    from transforms.embed.model_inputs import pad_tokens
    from transforms.schema.elements import Record

    fn = TokenizeFn(spec)
    fn.setup()
    return pad_tokens([ids for text in texts for _, ids in fn.process(Record("k", text, None))])


def apart(spec, layer: str, head, ids_and_mask) -> np.ndarray:
    """The frozen encoder, as extraction embeds (pooled over the real tokens), then the head."""
    from transforms.embed.backbone import BackboneHandler
    from transforms.embed.settings import EmbedSettings
    from transforms.schema.fields import OutputSpec

    pooling = "none" if layer == "sentence" else "avg"
    encoder = BackboneHandler(spec, EmbedSettings([OutputSpec(layer, layer, pooling, 384)])).load_model()
    return head(encoder.embed(ids_and_mask)[layer]).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("layer", LAYERS)
def test_serving_raw_strings_equals_tokenizers_encoder_and_head_apart(text_models, layer):
    import keras
    import tensorflow as tf

    root, spec, models = text_models
    out, report = models[layer]
    assert report["serving"] == "serving" and json.loads((out / "model.json").read_text())["serving"] == "serving"
    head = keras.saving.load_model(str(out / "heads" / report["best_head"] / "head.keras"), safe_mode=True)
    texts = [*(json.loads(line)["text"] for line in (root / "test.jsonl").read_text().splitlines()[:12]), *HARD]
    ids, mask = token_ids(spec, texts)
    expected = apart(spec, layer, head, (ids, mask))

    serving = tf.saved_model.load(str(out / "serving"))
    served = serving.signatures["serving_default"](texts=tf.constant(texts))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5, rtol=0)
    assert [b.decode() for b in served["label"].numpy()] == [report["classes"][i] for i in expected.argmax(1)]
    assert [[b.decode() for b in row] for row in served["class_names"].numpy()] == [report["classes"]] * len(texts)
    by_ids = serving.classify_token_ids(tf.constant(ids), tf.constant(mask))["probabilities"].numpy()
    np.testing.assert_allclose(by_ids, expected, atol=1e-5, rtol=0)


def read_rows(folder) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("part-*.jsonl")) for line in f.read_text().splitlines()
            if line.strip()]


@pytest.mark.slow
def test_predict_on_the_texts_scores_the_test_split_as_train_did(text_models, tmp_path):
    import keras

    root, _, models = text_models
    out, report = models["sentence"]
    others = tmp_path / "others.jsonl"
    write_rows(others, [{"id": "empty", "text": ""}, {"id": "number", "text": 7}])
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "note.txt").write_text("A dataset of 150 iris flowers, four measurements each.", encoding="utf-8")
    (loose / "binary.txt").write_bytes(b"\xff\xfe\x00not text")
    assert main(["predict", "--model", str(out), "--input", str(root / "test.jsonl"), "--input", str(others),
                 "--input", str(loose), "--output", str(tmp_path / "pred"), "--batch-size", "7"]) == 0

    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    test_accuracy = report["heads"][report["best_head"]]["splits"]["test"]["accuracy"]
    n_test = len((root / "test.jsonl").read_text().splitlines())
    assert summary == {"classified": n_test + 2, "failed": 2, "labelled": n_test,
                       "accuracy_on_labelled": pytest.approx(test_accuracy, abs=1e-12)}
    errors = {e["key"]: e for e in read_rows(tmp_path / "pred" / "errors")}
    assert {key: e["error_type"] for key, e in errors.items()} == {
        f"{others}#id=number": "MissingField", str(loose / "binary.txt"): "NotText"}

    # each test record's probabilities are the head's on the very features extraction wrote for it
    manifest = read_manifest(str(root / "features-test"))
    features = {r.key: r.vectors["sentence"] for p in shard_paths(str(root / "features-test"), manifest)
                for r in read_records(p, manifest.outputs)}
    head = keras.saving.load_model(str(out / "heads" / report["best_head"] / "head.keras"), safe_mode=True)
    rows = {row["key"]: row for row in read_rows(tmp_path / "pred" / "predictions")}
    keys = sorted(features)
    expected = head(np.stack([features[k] for k in keys])).numpy()
    got = np.array([[rows[k]["probabilities"][c] for c in report["classes"]] for k in keys])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert all(rows[k]["split"] == "test" and rows[k]["label"] == k.split("#id=")[1].split("-")[0] for k in keys)
    assert rows[f"{others}#id=empty"]["label"] is None and str(loose / "note.txt") in rows
