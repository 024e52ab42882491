"""The embedded text encoder minilm_l6 reproduces sentence-transformers' all-MiniLM-L6-v2 (reference in
tests/data/minilm_l6.npz), alone, through the pipeline from raw text, and its features train heads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.cli import main
from tests.conftest import DATA
from transforms.schema.example import read_records
from transforms.schema.manifest import read_manifest, shard_paths

IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]


@pytest.fixture(scope="module")
def minilm_reference():
    with np.load(os.path.join(DATA, "minilm_l6.npz")) as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def spec():
    from pipeline.backbones.registry import resolve_backbone

    return resolve_backbone("minilm_l6")


def _token_ids(spec, texts):
    """Token ids as the pipeline makes them (``TokenizeFn``, the model's own tokenizer.json)."""
    from transforms.decode.tokenize import TokenizeFn
    from transforms.schema.elements import Record

    fn = TokenizeFn(spec)
    fn.setup()
    return [ids for text in texts for _, ids in fn.process(Record(text, text, None))]


def test_sentence_embeddings_match_sentence_transformers(spec, minilm_reference):
    from transforms.embed.backbone import BackboneHandler
    from transforms.embed.model_inputs import pad_tokens
    from transforms.embed.settings import EmbedSettings
    from transforms.schema.fields import OutputSpec

    sequences = _token_ids(spec, [str(s) for s in minilm_reference["sentences"]])
    model = BackboneHandler(spec, EmbedSettings([OutputSpec("sentence", "sentence", "none", 384)])).load_model()
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
        f.write(json.dumps({"id": "number", "text": 7}) + "\n")
    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(path), "--input-format", "text", "--backbone", "minilm_l6",
                 "--layer", "sentence", "--layer", "layer.2", "--output", out, *IN_PROCESS]) == 0
    manifest = read_manifest(out)
    assert manifest.counts == {"inputs": 6, "embedded": 5, "failed": 1, "duplicates": 0}
    assert [(o.name, o.dim, o.pooling) for o in manifest.outputs] == [("sentence", 384, "none"),
                                                                        ("layer.2", 384, "avg")]
    records = {r.key: r for p in shard_paths(out, manifest) for r in read_records(p, manifest.outputs)}
    got = np.stack([records[f"{path}#id=s{i}"].vectors["sentence"] for i in range(4)])
    np.testing.assert_allclose(got, minilm_reference["embeddings"], atol=1e-5, rtol=0)
    spec = _spec()
    weights = _weights(spec)
    for i, sentence in enumerate(minilm_reference["sentences"]):  # a token layer, pooled over the real tokens
        (ids,) = _token_ids(spec, [str(sentence)])
        expected = _bert_layer(weights, ids, 2).mean(axis=0)
        np.testing.assert_allclose(records[f"{path}#id=s{i}"].vectors["layer.2"], expected, atol=2e-4, rtol=1e-4)


def _spec():
    from pipeline.backbones.registry import resolve_backbone

    return resolve_backbone("minilm_l6")


def _weights(spec):
    from safetensors.numpy import load

    return {k: v.astype(np.float64) for k, v in load(spec.read_weights()).items()}


def _bert_layer(w, ids, last: int) -> np.ndarray:
    """An independent float64 BERT forward pass in numpy (Hugging Face's layout and names), one sequence, up to
    and including encoder layer ``last``: (tokens, 384)."""
    from scipy.special import erf

    def norm(x, key):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[f"{key}.weight"] + w[f"{key}.bias"]

    def dense(x, key):
        return x @ w[f"{key}.weight"].T + w[f"{key}.bias"]

    e = "embeddings"
    x = w[f"{e}.word_embeddings.weight"][ids] + w[f"{e}.position_embeddings.weight"][: len(ids)] \
        + w[f"{e}.token_type_embeddings.weight"][0]
    x = norm(x, f"{e}.LayerNorm")
    for i in range(last + 1):
        p = f"encoder.layer.{i}.attention"
        q, k, v = (dense(x, f"{p}.self.{n}").reshape(len(ids), 12, 32).transpose(1, 0, 2)
                   for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(32)
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        context = (attention @ v).transpose(1, 0, 2).reshape(len(ids), 384)
        x = norm(x + dense(context, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        inner = dense(x, f"encoder.layer.{i}.intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / np.sqrt(2)))
        x = norm(x + dense(inner, f"encoder.layer.{i}.output.dense"), f"encoder.layer.{i}.output.LayerNorm")
    return x


def test_images_and_text_do_not_mix(tmp_path, capsys, sample_photos):
    shard = tmp_path / "s.tar"
    shard.write_bytes(b"")
    assert main(["extract", "--input", str(shard), "--backbone", "minilm_l6", "--output", str(tmp_path / "o")]) == 2
    assert "embeds text, but input" in capsys.readouterr().err
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(sample_photos["china.jpg"])  # a file of a folder is a text: a JPEG is not UTF-8
    assert main(["extract", "--input", str(folder), "--backbone", "minilm_l6", "--output", str(tmp_path / "o"),
                 *IN_PROCESS]) == 0
    (failure,) = [json.loads(line) for p in (tmp_path / "o" / "errors").iterdir() for line in p.open()]
    assert (failure["error_type"], failure["message"][:33]) == ("NotText", "not UTF-8 text: byte 0 (0xff) can")


@pytest.fixture(scope="module")
def edge_cases():
    with np.load(os.path.join(DATA, "minilm_l6_edge_cases.npz")) as d:
        return {k: d[k] for k in d.files}


def test_empty_and_hard_texts_are_embedded_as_sentence_transformers_embeds_them(tmp_path, capsys, edge_cases):
    """Reference: tests/data/minilm_l6_edge_cases.npz (empty, whitespace, zero-width, accents, emoji, CJK, a word
    over 100 characters, a 400-word text), from sentence-transformers itself. A .jsonl needs no format flag."""
    sentences = [str(s) for s in edge_cases["sentences"]]
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps({"text": s, "label": "x"}) + "\n" for s in sentences), encoding="utf-8")
    out = str(tmp_path / "features")
    assert main(["extract", "--input", str(path), "--backbone", "minilm_l6", "--output", out,
                 "--runner=FnApiRunner"]) == 0
    assert f"featurebeam extract: {path}: texts from each row's 'text' field" in capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest.counts == {"inputs": 12, "embedded": 12, "failed": 0, "duplicates": 0}
    records = {r.key: r for p in shard_paths(out, manifest) for r in read_records(p, manifest.outputs)}
    got = np.stack([records[f"{path}#row={i}"].vectors["sentence"] for i in range(len(sentences))])
    np.testing.assert_allclose(got, edge_cases["embeddings"], atol=1e-4, rtol=0)
    ids = _token_ids(_spec(), sentences)
    for row, (expected, length) in enumerate(zip(edge_cases["token_ids"], edge_cases["lengths"], strict=True)):
        assert ids[row].tolist() == expected[:length].tolist(), sentences[row]


def test_texts_with_no_token_of_their_own_are_counted():
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.decode.tokenize import TokenizeFn
    from transforms.schema.elements import Record

    texts = ["", " \t\n", "\u200b", "a word", "\u00e9"]
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    _ = p | beam.Create([Record(str(i), t, None) for i, t in enumerate(texts)]) | beam.ParDo(TokenizeFn(_spec()))
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("empty_texts"))["counters"]
    assert [c.committed for c in counters] == [3]


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
    # the two topics share no content word: every layer's probe separates the held-out texts exactly
    assert {name: (r["dim"], r["validation_accuracy"]) for name, r in sweep["layers"].items()} == {
        name: (384, 1.0) for name in layers}
    best = sweep["best_layer"]
    accuracies = [r["validation_accuracy"] for r in sweep["layers"].values()]
    assert sweep["layers"][best]["validation_accuracy"] == max(accuracies)
    assert report["output"]["name"] == best                              # the heads were trained on the best layer
    assert report["heads"]["linear"]["splits"]["validation"]["accuracy"] >= 0.95
    assert os.path.getsize(os.path.join(model, "layer_sweep.png")) > 1000
    assert report["serving"] == "serving" and os.path.exists(os.path.join(model, "heads", "linear", "head.keras"))
    printed = capsys.readouterr().out
    assert f"serving model {model}/serving" in printed and f"layer {best}" in printed and "<- best" in printed
