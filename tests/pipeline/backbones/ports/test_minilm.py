"""The embedded text encoder minilm_l6 reproduces sentence-transformers' all-MiniLM-L6-v2 (reference in
tests/data/minilm_l6.npz), alone, through the pipeline from raw text, and its features train heads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.cli import main
from tests.conftest import DATA
from transforms import schema

IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]


@pytest.fixture(scope="module")
def minilm_reference():
    with np.load(os.path.join(DATA, "minilm_l6.npz")) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def spec():
    from pipeline.backbones.registry import resolve_backbone

    return resolve_backbone("minilm_l6")


def test_sentence_embeddings_match_sentence_transformers(spec, minilm_reference):
    from tokenizers import Tokenizer

    from pipeline.backbones.ports.minilm import encode_texts
    from transforms.embed.backbone import BackboneHandler
    from transforms.embed.inputs import pad_tokens
    from transforms.schema import OutputSpec

    tokenizer = Tokenizer.from_str(spec.read_asset("tokenizer").decode())
    sequences = encode_texts(tokenizer, [str(s) for s in minilm_reference["sentences"]])
    model = BackboneHandler(spec, [OutputSpec("sentence", "sentence", "none", 384)]).load_model()
    batched = model.embed(pad_tokens(sequences))["sentence"]            # padded to the longest
    alone = np.stack([model.embed(pad_tokens([s]))["sentence"][0] for s in sequences])
    for got in (batched, alone):
        np.testing.assert_allclose(got, minilm_reference["embeddings"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)


def test_raw_text_through_the_pipeline_matches(tmp_path, minilm_reference):
    path = tmp_path / "texts.jsonl"
    with open(path, "w") as f:
        for i, sentence in enumerate(minilm_reference["sentences"]):
            f.write(json.dumps({"id": f"s{i}", "text": str(sentence)}) + "\n")
        f.write(json.dumps({"id": "blank", "text": "   "}) + "\n")
    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(path), "--input-format", "text", "--backbone", "minilm_l6",
                 "--layer", "sentence", "--layer", "layer.2", "--output", out, *IN_PROCESS]) == 0
    manifest = schema.read_manifest(out)
    assert manifest.counts == {"inputs": 5, "embedded": 4, "failed": 1, "duplicates": 0}
    assert [(o.name, o.dim, o.pooling) for o in manifest.outputs] == [("sentence", 384, "none"),
                                                                        ("layer.2", 384, "avg")]
    records = {r.key: r for p in schema.shard_paths(out, manifest) for r in schema.read_records(p, manifest.outputs)}
    got = np.stack([records[f"{path}#id=s{i}"].vectors["sentence"] for i in range(4)])
    np.testing.assert_allclose(got, minilm_reference["embeddings"], atol=1e-5, rtol=0)


def test_images_and_text_do_not_mix(tmp_path, capsys, sample_photos):
    (tmp_path / "a.jpg").write_bytes(sample_photos["china.jpg"])
    assert main(["extract", "--input", str(tmp_path), "--backbone", "minilm_l6", "--output", str(tmp_path / "o")]) == 2
    assert "embeds text, but input" in capsys.readouterr().err


@pytest.mark.slow
def test_heads_train_on_text_features_and_the_layer_sweep_picks_a_layer(tmp_path, capsys):
    animals = ["cat", "dog", "horse", "rabbit", "parrot", "goat"]
    machines = ["compiler", "database", "kernel", "browser", "router", "spreadsheet"]
    rows = []
    for i, (a, m) in enumerate((a, m) for a in animals for m in machines):
        rows.append({"id": f"a{i}", "text": f"The {a} slept in the barn after eating hay.", "label": "animal"})
        rows.append({"id": f"m{i}", "text": f"The {m} crashed after the latest software update.", "label": "software"})
    path = tmp_path / "topics.csv"
    with open(path, "w") as f:
        f.write("id,text,label\n" + "".join(f"{r['id']},{r['text']},{r['label']}\n" for r in rows))
    out, model = str(tmp_path / "features"), str(tmp_path / "model")
    layers = ["embeddings", "layer.2", "sentence"]
    assert main(["extract", "--input", str(path), "--input-format", "text", "--backbone", "minilm_l6",
                 "--output", out, *[a for layer in layers for a in ("--layer", layer)], *IN_PROCESS]) == 0
    assert main(["train", "--features", out, "--output", model, "--sweep-layers"]) == 0
    report = json.load(open(os.path.join(model, "metrics.json")))
    sweep = json.load(open(os.path.join(model, "layer_sweep.json")))
    assert sweep["order"] == layers and sweep == report["layer_sweep"]
    assert all(0.0 <= sweep["layers"][name]["validation_accuracy"] <= 1.0 for name in layers)
    best = sweep["best_layer"]
    accuracies = [r["validation_accuracy"] for r in sweep["layers"].values()]
    assert sweep["layers"][best]["validation_accuracy"] == max(accuracies)
    assert report["output"]["name"] == best                              # the heads were trained on the best layer
    assert report["heads"]["linear"]["splits"]["validation"]["accuracy"] >= 0.95
    assert os.path.getsize(os.path.join(model, "layer_sweep.png")) > 1000
    assert report["serving"] is None and os.path.exists(os.path.join(model, "heads", "linear", "head.keras"))
    printed = capsys.readouterr().out
    assert "no serving model for text backbones" in printed and f"layer {best}" in printed and "<- best" in printed
