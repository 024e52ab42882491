"""An audio model end to end: musicnn_msd features of recordings -> train -> a serving model that takes raw 16 kHz
samples and gives what decoder -> backbone -> head give apart, and ``predict`` on the recordings, which scores the
test split as train did. Recordings of 3.5 to 33 s with ``--batch-size 8`` make most of them several windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from pipeline.cli import main
from transforms.schema.example import read_records
from transforms.schema.manifest import read_manifest, shard_paths

IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]


def _recording(rng, label: str, seconds: float, rate: int) -> np.ndarray:
    """A tone with harmonics, vibrato and noise: "low" around 180 Hz, "high" around 1.4 kHz."""
    t = np.arange(int(seconds * rate)) / rate
    f = (180.0 if label == "low" else 1400.0) * (1 + 0.25 * rng.random())
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * (3 + 3 * rng.random()) * t)
    y = sum(np.sin(2 * np.pi * k * f * t * vibrato) / k for k in (1, 2, 3))
    return (0.2 * y * (0.6 + 0.4 * np.sin(2 * np.pi * rng.random() * t)) + 0.02 * rng.standard_normal(t.size)
            ).astype(np.float32)


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    """Recordings in a manifest with a split column (every 3rd is test), their features, a trained model."""
    root = tmp_path_factory.mktemp("audio-serving")
    rng = np.random.default_rng(0)
    rows = []
    for label in ("low", "high"):
        for i in range(9):
            rate, ext = ((16000, "wav"), (44100, "flac"), (22050, "mp3"))[i % 3]
            path = root / f"{label}-{i}.{ext}"
            soundfile.write(str(path), _recording(rng, label, 3.5 + 3.3 * i, rate), rate)
            rows.append({"uri": path.name, "label": label, "split": "test" if i % 3 == 1 else "train"})
    (root / "clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    features = str(root / "features")
    assert main(["extract", "--input", str(root / "clips.jsonl"), "--backbone", "musicnn_msd", "--batch-size", "8",
                 "--output", features, *IN_PROCESS]) == 0
    model = root / "model"
    assert main(["train", "--features", features, "--output", str(model), "--quiet"]) == 0
    return root, features, model, json.loads((model / "metrics.json").read_text())


def _head(model, report):
    import keras

    return keras.saving.load_model(str(model / "heads" / report["best_head"] / "head.keras"), safe_mode=True)


@pytest.mark.slow
def test_the_serving_model_takes_raw_samples_and_gives_decoder_backbone_head_apart(audio_model):
    import tensorflow as tf

    from pipeline.backbones.registry import resolve_backbone
    from transforms.decode.audio import decode_windows

    root, _, model, report = audio_model
    spec = resolve_backbone("musicnn_msd")
    backbone, head = spec.load(["pool"]), _head(model, report)
    serving = tf.saved_model.load(str(model / "serving"))
    for name in ("low-0.wav", "high-3.wav", "high-6.wav"):  # 16 kHz: the samples serve takes as they are
        samples, rate = soundfile.read(str(root / name), dtype="float32")
        patches = np.concatenate([w.patches(spec.preprocessing)
                                  for w in decode_windows((root / name).read_bytes(), spec.preprocessing)])
        vector = np.asarray(backbone(patches, training=False)["pool"]).mean(axis=0, keepdims=True)
        expected = np.asarray(head(vector, training=False))
        served = serving.signatures["serving_default"](samples=tf.constant(samples))
        np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5, rtol=0)
        assert served["label"].numpy()[0].decode() == report["classes"][int(expected.argmax())]
        by_patches = serving.classify_patches(tf.constant(patches), tf.zeros(len(patches), tf.int32),
                                              tf.constant(1))["probabilities"].numpy()
        np.testing.assert_allclose(by_patches, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_predict_on_the_recordings_scores_the_test_split_as_train_did(audio_model, tmp_path):
    root, features, model, report = audio_model
    (tmp_path / "not-audio.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert main(["predict", "--model", str(model), "--input", str(root / "clips.jsonl"), "--input",
                 str(tmp_path / "not-audio.wav"), "--output", str(tmp_path / "pred"), "--batch-size", "8"]) == 0
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    rows = [json.loads(line) for line in (root / "clips.jsonl").read_text().splitlines()]
    test_accuracy = report["heads"][report["best_head"]]["splits"]["split test"]["accuracy"]
    assert summary["classified"] == len(rows) and summary["failed"] == 1
    predictions = {json.loads(line)["key"]: json.loads(line)
                   for f in sorted((tmp_path / "pred" / "predictions").glob("part-*.jsonl"))
                   for line in f.read_text().splitlines()}
    tests = [p for p in predictions.values() if p.get("split") == "test"]
    assert len(tests) == sum(r["split"] == "test" for r in rows)
    assert np.mean([p["label"] == p["predicted"] for p in tests]) == pytest.approx(test_accuracy, abs=1e-12)

    # each recording's probabilities are the head's on the very vector extraction wrote for it
    manifest = read_manifest(features)
    vectors = {r.key: r.vectors["pool"]
               for p in shard_paths(features, manifest) for r in read_records(p, manifest.outputs)}
    keys = sorted(vectors)
    expected = np.asarray(_head(model, report)(np.stack([vectors[k] for k in keys]), training=False))
    got = np.array([[predictions[k]["probabilities"][c] for c in report["classes"]] for k in keys])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
