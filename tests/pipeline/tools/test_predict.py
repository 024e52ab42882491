"""featurebeam predict: the job sums its own counts into summary.json, the counts the predictions themselves give."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline.tools.predict import SUMMARY_NAME, SummarizePredictions, read_summary
from tests.featuresets import blobs, write_feature_set
from transforms.schema.elements import Failure


def counted_back(output) -> dict:
    """The summary by reading every prediction and dead letter back (what the launcher must not do at scale)."""
    def rows(folder):
        return [json.loads(line) for f in sorted((output / folder).glob("part-*.jsonl"))
                for line in f.read_text().splitlines() if line.strip()]

    predictions, failed = rows("predictions"), rows("errors")
    labelled = [r for r in predictions if r["label"] is not None]
    correct = sum(r["label"] == r["predicted"] for r in labelled)
    return {"classified": len(predictions), "failed": len(failed), "labelled": len(labelled),
            "accuracy_on_labelled": correct / len(labelled) if labelled else None}


def prediction(key, label, predicted):
    return {"key": key, "label": label, "predicted": predicted, "probabilities": {"cat": 0.5, "dog": 0.5}}


CASES = {
    "labelled-and-not": ([prediction("a", "cat", "cat"), prediction("b", "cat", "dog"), prediction("c", None, "dog"),
                          prediction("d", "dog", "dog")], 2,
                         {"classified": 4, "failed": 2, "labelled": 3, "accuracy_on_labelled": 2 / 3}),
    "none-labelled": ([prediction("a", None, "cat")], 0,
                      {"classified": 1, "failed": 0, "labelled": 0, "accuracy_on_labelled": None}),
    "no-inputs": ([], 0, {"classified": 0, "failed": 0, "labelled": 0, "accuracy_on_labelled": None}),
}


@pytest.mark.parametrize("predictions, n_failed, expected", CASES.values(), ids=CASES.keys())
def test_the_job_writes_the_summary_of_its_predictions_and_failures(tmp_path, predictions, n_failed, expected):
    failures = [Failure(f"bad-{i}", "folder", "decode", "ValueError", "not an image") for i in range(n_failed)]
    with beam.Pipeline() as p:
        summary = ((p | "Predictions" >> beam.Create(predictions), p | "Failures" >> beam.Create(failures))
                   | SummarizePredictions(str(tmp_path)))
        assert_that(summary, equal_to([expected]))
    assert read_summary(str(tmp_path)) == expected
    assert list(read_summary(str(tmp_path))) == ["classified", "failed", "labelled", "accuracy_on_labelled"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pending", SUMMARY_NAME]
    assert list((tmp_path / ".pending").iterdir()) == []  # renamed into place, nothing half-written left


@pytest.fixture(scope="module")
def model(tmp_path_factory, mobilenet_spec):
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training

    root = tmp_path_factory.mktemp("predict")
    keys, labels, x = blobs(80, ["china", "flower"], seed=7, spread=4.0)  # the image_folder fixture's labels
    write_feature_set(str(root / "features"), keys, labels, x,
                      backbone={"name": "mobilenet_v2", "weights_sha256": mobilenet_spec.weights_sha256})
    run_training(TrainConfig(features=(str(root / "features"),), output=str(root / "model")), log=lambda m: None)
    return root / "model"


@pytest.mark.slow
def test_run_prediction_returns_what_reading_the_predictions_back_gives(model, image_folder, tmp_path, worker_env):
    from pipeline.flags import use_storage_flags, with_local_defaults
    from pipeline.tools.predict import PredictConfig, run_prediction

    out = tmp_path / "pred"
    for overwrite in (False, True):  # a second run replaces the first run's summary
        config = PredictConfig.create(str(model), [str(image_folder)], str(out), batch_size=4, overwrite=overwrite)
        summary = run_prediction(config, use_storage_flags(with_local_defaults([])))
        assert summary == counted_back(out) == json.loads((out / SUMMARY_NAME).read_text())
    assert (summary["classified"], summary["failed"], summary["labelled"]) == (8, 2, 7)
    assert summary["accuracy_on_labelled"] is not None
