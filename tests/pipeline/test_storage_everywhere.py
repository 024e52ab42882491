"""Every command on every kind of path: ``train``, ``report --model`` and ``predict`` with their feature sets,
MODELDIR and outputs on a GCS emulator or a moto S3 server write what the same commands write on local disk,
``extract`` writes its feature set to S3, and reads recordings from GCS folders and S3 tar shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.cli import main
from tests import object_storage
from tests.conftest import REPO
from tests.featuresets import blobs, write_feature_set
from tests.vectors import assert_same_vector

pytestmark = pytest.mark.slow

CLASSES = ("china", "flower")  # the image_folder fixture's labels
PREDICT = ["--batch-size", "4"]
EXTRACT = ["--layer", "features.18", "--batch-size", "4", "--quiet"]
MODEL_FILES = ["heads/linear/confusion_test.png", "heads/linear/confusion_validation.png", "heads/linear/head.keras",
               "heads/linear/learning_curve.png", "metrics.json", "model.json", "serving/fingerprint.pb",
               "serving/saved_model.pb", "serving/variables/variables.data-00000-of-00001",
               "serving/variables/variables.index"]


def tree(root: str) -> list[str]:
    """Names of every file under a local folder or an object-store prefix, relative to it."""
    (match,) = FileSystems.match([FileSystems.join(root, "**")])
    prefix = root.rstrip("/") + "/"
    return sorted(m.path[len(prefix):] for m in match.metadata_list)


def read_text(path: str) -> str:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read().decode("utf-8")


def jsonl(folder: str) -> list[dict]:
    return [json.loads(line) for name in tree(folder) if name.endswith(".jsonl")
            for line in read_text(FileSystems.join(folder, name)).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def local_sets(tmp_path_factory, mobilenet_spec):
    """A tiny training set and test set of 1280-float features (mobilenet_v2's features.18, its real weights)."""
    root = tmp_path_factory.mktemp("sets")
    backbone = {"name": "mobilenet_v2", "weights_sha256": mobilenet_spec.weights_sha256}
    keys, labels, x = blobs(80, CLASSES, seed=7, spread=4.0)
    write_feature_set(str(root / "features"), keys, labels, x, shard_sizes=[50, 30], backbone=backbone)
    t_keys, t_labels, t_x = blobs(24, CLASSES, seed=7, spread=4.0)
    write_feature_set(str(root / "test"), [k.replace("/7/", "/test/") for k in t_keys], t_labels, t_x,
                      backbone=backbone)
    return root


def round_trip(features: str, test: str, images: str, model: str, html: str, out: str, flags=()) -> dict:
    """train, report --model and predict through the CLI; what they wrote, read back wherever it is."""
    assert main(["train", "--features", features, "--test-features", test, "--output", model, *flags]) == 0
    assert main(["report", features, "--model", model, "--html", html, *flags]) == 0
    assert main(["predict", "--model", model, "--input", images, "--output", out, *PREDICT, *flags]) == 0
    prefix = images.rstrip("/") + "/"
    predictions = {r["key"][len(prefix):]: (r["label"], r["predicted"], r["probabilities"])
                   for r in jsonl(FileSystems.join(out, "predictions"))}
    return {"files": tree(model), "metrics": json.loads(read_text(FileSystems.join(model, "metrics.json"))),
            "spec": json.loads(read_text(FileSystems.join(model, "model.json"))), "html": read_text(html),
            "predictions": predictions,
            "errors": sorted(e["key"][len(prefix):] for e in jsonl(FileSystems.join(out, "errors")))}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, local_sets, image_folder):
    """The round trip on local disk, what the remote ones must equal."""
    root = tmp_path_factory.mktemp("local")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))  # as worker_env does
        return round_trip(str(local_sets / "features"), str(local_sets / "test"), str(image_folder),
                          str(root / "model"), str(root / "report.html"), str(root / "predicted"))


def accuracies(metrics: dict) -> dict:
    return {(head, split): (m["examples"], m["accuracy"], m["macro_f1"], m["confusion_matrix"])
            for head, h in metrics["heads"].items() for split, m in h["splits"].items()}


def check_same_as_local(run: dict, local: dict) -> None:
    """The assertions every remote round trip must pass: the local run's files, metrics and predictions."""
    assert run["files"] == local["files"] == MODEL_FILES
    assert accuracies(run["metrics"]) == accuracies(local["metrics"])
    assert run["metrics"]["best_head"] == local["metrics"]["best_head"] == "linear"
    assert run["metrics"]["classes"] == list(CLASSES) and run["spec"]["serving"] == "serving"
    assert "best head: linear" in run["html"] and "Confusion matrix" in run["html"]
    assert sorted(run["predictions"]) == sorted(local["predictions"]) and len(local["predictions"]) == 8
    for rel, (label, predicted, probabilities) in local["predictions"].items():
        got_label, got_predicted, got = run["predictions"][rel]
        assert (got_label, got_predicted) == (label, predicted), rel
        np.testing.assert_allclose([got[c] for c in CLASSES], [probabilities[c] for c in CLASSES], atol=1e-6)
    assert run["errors"] == local["errors"] == ["china/empty.jpg", "flower/notes.txt"]


def test_train_report_predict_on_gcs_equal_the_local_run(tmp_path, local_sets, image_folder, local_run, gcs,
                                                         worker_env, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a gs:// path taken for a local one would show up here as a folder "gs:"
    gcs.create_bucket("everything")
    for name in ("features", "test"):
        object_storage.upload_tree(str(local_sets / name), f"gs://everything/{name}")
    object_storage.upload_tree(str(image_folder), "gs://everything/images")

    run = round_trip("gs://everything/features", "gs://everything/test", "gs://everything/images",
                     "gs://everything/model", "gs://everything/report.html", "gs://everything/predicted")
    check_same_as_local(run, local_run)
    assert os.listdir(tmp_path) == []


def test_a_remote_model_dir_needs_overwrite_which_clears_its_prefix(tmp_path, local_sets, local_run, gcs, capsys):
    gcs.create_bucket("again")
    stray = "gs://again/model/stray.txt"
    with FileSystems.create(stray) as f:
        f.write(b"left from before")
    features = ["--features", str(local_sets / "features")]
    assert main(["train", *features, "--output", "gs://again/model"]) == 2
    assert capsys.readouterr().err.strip() == (
        "featurebeam train: error: output gs://again/model is not empty; pass --overwrite to replace it")
    assert main(["train", *features, "--output", "gs://again/model", "--overwrite"]) == 0
    assert tree("gs://again/model") == [f for f in MODEL_FILES if "confusion_test" not in f]
    capsys.readouterr()
    assert main(["train", *features, "--output", "gs://no-such-bucket/model"]) == 2
    assert capsys.readouterr().err.strip() == (
        "featurebeam train: error: output gs://no-such-bucket/model: bucket gs://no-such-bucket does not exist")


def test_the_layer_sweep_writes_its_files_to_a_remote_model_dir(tmp_path, local_sets, gcs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gcs.create_bucket("sweep")
    assert main(["train", "--features", str(local_sets / "features"), "--output", "gs://sweep/m",
                 "--sweep-layers"]) == 0
    assert {"layer_sweep.json", "layer_sweep.png", "metrics.json", "serving/saved_model.pb"} <= set(tree("gs://sweep/m"))
    metrics = json.loads(read_text("gs://sweep/m/metrics.json"))
    assert metrics["layer_sweep"] == json.loads(read_text("gs://sweep/m/layer_sweep.json"))
    assert os.listdir(tmp_path) == []


def test_train_report_predict_with_the_model_dir_on_s3_equal_the_local_run(tmp_path, local_sets, image_folder,
                                                                            local_run, s3, worker_env):
    s3.create_bucket("models")
    run = round_trip(str(local_sets / "features"), str(local_sets / "test"), str(image_folder), "s3://models/m",
                     "s3://models/report.html", "s3://models/predicted", flags=s3.beam_flags)
    check_same_as_local(run, local_run)


def test_predict_applies_the_s3_flags_before_it_looks_at_its_inputs(tmp_path, image_folder, local_run, local_sets,
                                                                    s3, worker_env, monkeypatch):
    from transforms.worker import storage

    s3.create_bucket("photos")
    client = s3.client()
    for folder, _, files in os.walk(image_folder):
        for name in files:
            path = os.path.join(folder, name)
            client.upload_file(path, "photos", "in/" + os.path.relpath(path, image_folder))
    model = tmp_path / "model"
    assert main(["train", "--features", str(local_sets / "features"), "--test-features", str(local_sets / "test"),
                 "--output", str(model)]) == 0
    FileSystems.set_options(PipelineOptions([]))  # nothing left from earlier commands: only the flags tell
    monkeypatch.setenv(storage._SHARED, "")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # without the flags: a quick failure, not minutes
    assert main(["predict", "--model", str(model), "--input", "s3://photos/in", "--output", str(tmp_path / "p"),
                 *PREDICT, *s3.beam_flags]) == 0
    got = {r["key"][len("s3://photos/in/"):]: r["predicted"] for r in jsonl(str(tmp_path / "p" / "predictions"))}
    assert got == {rel: predicted for rel, (_, predicted, _) in local_run["predictions"].items()}


def test_extract_writes_its_feature_set_to_s3(tmp_path, image_folder, s3, worker_env, capsys):
    from tests.packing import read_feature_set

    s3.create_bucket("features")
    assert main(["extract", "--input", str(image_folder), "--output", str(tmp_path / "local"), *EXTRACT]) == 0
    assert main(["extract", "--input", str(image_folder), "--output", "s3://features/run", *EXTRACT,
                 *s3.beam_flags]) == 0
    assert "embedded 8 of 10 inputs (2 failed)" in capsys.readouterr().out
    local_manifest, local_records = read_feature_set(str(tmp_path / "local"))
    manifest, records = read_feature_set("s3://features/run")
    assert manifest.counts == local_manifest.counts and manifest.labels == local_manifest.labels == CLASSES
    assert set(manifest.shards) <= set(tree("s3://features/run"))
    by_key = {r.key: r for r in local_records}
    assert sorted(r.key for r in records) == sorted(by_key) and len(records) == 8
    for record in records:
        assert record.label == by_key[record.key].label
        assert_same_vector(record.vectors["features.18"], by_key[record.key].vectors["features.18"], record.key)
    assert ".featurebeam-write-test" not in tree("s3://features/run")


def test_predict_refuses_a_model_without_a_serving_model(tmp_path, image_folder, capsys):
    model = tmp_path / "text-model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({
        "backbone": {"name": "minilm_l6", "modality": "text", "weights_sha256": "0" * 64},
        "preprocessing": {"max_length": 256}, "output": {"name": "pooled"}, "classes": ["a", "b"],
        "head": "linear", "serving": None}))
    out = tmp_path / "p"
    assert main(["predict", "--model", str(model), "--input", str(image_folder), "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"featurebeam predict: error: {model} has no serving model (its model.json names none); train it again")
    assert not out.exists()


def test_the_serving_module_keeps_no_unused_loader():
    from pipeline.serving import model

    assert not hasattr(model, "load_serving_model")
    assert all(hasattr(model, name) for name in model.__all__)


def test_recordings_on_gcs_and_in_a_tar_shard_on_s3_embed_as_the_authors_graph(tmp_path, gcs, s3, worker_env):
    """The musicnn reference clips (wav, flac, mp3) in class folders on a GCS bucket, and the same clips as the
    samples of a WebDataset tar shard on S3 (labels in ``.cls`` members), extracted with ``musicnn_msd`` and no
    other flag (the features written to S3 in the second run): each clip's ``pool`` vector is the author's graph's
    mean over its patches within 1e-4 of its scale, under the key the clip has in each place."""
    from tests.packing import read_feature_set, tar_of

    with np.load(os.path.join(REPO, "tests", "data", "musicnn_reference.npz")) as d:
        expected = {str(f): d[f"MSD_musicnn_{c}_pool"].mean(axis=0)
                    for c, f in zip(d["clips"], d["clip_files"], strict=True)}
    labels = {name: "speech" if name.startswith("speech") else "music" for name in expected}
    clips, members = tmp_path / "clips", []
    for name, label in labels.items():
        data = (Path(REPO) / "tests" / "data" / "audio" / name).read_bytes()
        (clips / label).mkdir(parents=True, exist_ok=True)
        (clips / label / name).write_bytes(data)
        members += [(name, data), (f"{name.rsplit('.', 1)[0]}.cls", label.encode())]
    gcs.create_bucket("recordings")
    object_storage.upload_tree(str(clips), "gs://recordings/clips")
    s3.create_bucket("archive")
    s3.client().put_object(Bucket="archive", Key="shards/clips-000.tar", Body=tar_of(members))

    runs = [("gs://recordings/clips", str(tmp_path / "from-gcs"), {n: f"gs://recordings/clips/{labels[n]}/{n}"
                                                                   for n in expected}),
            ("s3://archive/shards/clips-000.tar", "s3://archive/features",
             {n: f"s3://archive/shards/clips-000.tar#{n}" for n in expected})]
    for source, out, keys in runs:
        assert main(["extract", "--input", source, "--backbone", "musicnn_msd", "--output", out, "--quiet",
                     *s3.beam_flags]) == 0
        manifest, records = read_feature_set(out)
        assert manifest.counts["embedded"] == 3 and manifest.counts["failed"] == 0
        by_key = {r.key: r for r in records}
        assert sorted(by_key) == sorted(keys.values())
        for name, vector in expected.items():
            record = by_key[keys[name]]
            assert record.label == labels[name]
            error = np.abs(record.vectors["pool"] - vector).max() / np.abs(vector).max()
            assert error <= 1e-4, f"{keys[name]}: off by {error:.2e} of its scale"
