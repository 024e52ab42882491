"""``featurebeam predict``: bulk classification of raw images with a trained model directory.

1. ``ReadRecords`` (the same sources as extraction) -> ``DecodeImageFn`` with the backbone's preprocessing;
2. ``RunInference`` over the serving SavedModel (loaded once per worker process, batched);
3. ``predictions/part-*.jsonl``: one ``{"key", "label" (true, if known), "predicted", "probabilities"}`` per
   image; undecodable files in ``errors/``, as in extraction.

MODELDIR, the inputs and OUTDIR may each be local, ``gs://`` or ``s3://``; each worker process copies a remote
serving model to its local disk before loading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline.extract.launch import check_output_dir, clear_previous_outputs, resolve_input
from pipeline.extract.options import ConfigError, absolute
from pipeline.folders import read_model_file
from transforms.decode.image_fn import DecodeImageFn
from transforms.decode.images import ImagePreprocessing
from transforms.embed.classify import ClassifierHandler
from transforms.process import ready_process
from transforms.read.inputs import InputSpec
from transforms.read.sources import ReadRecords
from transforms.records import FAILED
from transforms.schema import ERRORS_DIR
from transforms.write.sinks import WriteFailures

__all__ = ["PredictConfig", "build_prediction", "run_prediction", "format_prediction", "PREDICTIONS_DIR"]

PREDICTIONS_DIR = "predictions"


@dataclass(frozen=True)
class PredictConfig:
    model_dir: str
    inputs: tuple[InputSpec, ...]
    output: str
    preprocessing: ImagePreprocessing
    batch_size: int = 32
    overwrite: bool = False

    @classmethod
    def create(cls, model_dir: str, inputs, output: str, batch_size: int = 32, overwrite: bool = False):
        """Checked at launch: the model can serve images, the inputs exist, OUTDIR may be written.

        Object storage must already be set up as the job sees it (``launch.use_storage_options``)."""
        model_dir = absolute(model_dir)
        prep = _serving_preprocessing(model_dir, read_model_spec(model_dir))
        output = absolute(output)
        check_output_dir(output, overwrite)
        return cls(model_dir, tuple(resolve_input(i) for i in inputs), output, prep, batch_size, overwrite)


def read_model_spec(model_dir: str) -> dict:
    """MODELDIR/model.json (local, gs:// or s3://), as featurebeam train wrote it."""
    return read_model_file(model_dir, "model.json", ConfigError)


def _serving_preprocessing(model_dir: str, spec: dict) -> ImagePreprocessing:
    """The image preprocessing of a model with a serving model; a text model has none, so it is refused."""
    backbone = spec.get("backbone", {})
    if backbone.get("modality") == "text":
        raise ConfigError(f"{model_dir} was trained on text backbone {backbone.get('name')}, which has no serving "
                          "model yet: predict classifies images")
    if not spec.get("serving"):
        raise ConfigError(f"{model_dir} has no serving model (its model.json names none); train it again")
    prep = spec["preprocessing"]
    return ImagePreprocessing(**{**prep, "mean": tuple(prep["mean"]), "std": tuple(prep["std"])})


class ModelDirClassifier(ClassifierHandler):
    """``ClassifierHandler`` over a serving model anywhere: a remote one is copied to local disk, once per worker
    process, since TensorFlow loads SavedModels from local paths."""

    def load_model(self):
        import tensorflow as tf

        from pipeline.folders import local_copy

        ready_process()
        with local_copy(self._path) as folder:
            return tf.saved_model.load(folder)


def _prediction_json(meta, inference) -> str:
    key, label, split = meta
    prediction = {"key": key, "label": label, "predicted": inference["label"],
                  "probabilities": inference["probabilities"]}
    if split is not None:
        prediction["split"] = split
    return json.dumps(prediction, sort_keys=True)


def build_prediction(p: beam.Pipeline, config: PredictConfig):
    read = p | "Read records" >> ReadRecords(config.inputs)
    decoded = read["records"] | "Decode images" >> beam.ParDo(
        DecodeImageFn(config.preprocessing)).with_outputs(FAILED, main="images")
    handler = KeyedModelHandler(ModelDirClassifier(FileSystems.join(config.model_dir, "serving"), config.batch_size))
    written = (decoded.images
               | "Classify" >> RunInference(handler)
               | "Prediction to JSON" >> beam.MapTuple(lambda meta, result: _prediction_json(meta, result.inference))
               | "Write predictions" >> beam.io.WriteToText(
                   FileSystems.join(config.output, PREDICTIONS_DIR, "part"), file_name_suffix=".jsonl",
                   skip_if_empty=True))  # no empty shard: S3 cannot take an empty upload from Beam
    failures = (read[FAILED], decoded[FAILED]) | "All failures" >> beam.Flatten()
    failures | "Write failures" >> WriteFailures(config.output)
    return written


def run_prediction(config: PredictConfig, options) -> dict:
    """Run to completion; returns counts read back from the outputs."""
    if config.overwrite:
        clear_previous_outputs(config.output, names=(PREDICTIONS_DIR, ERRORS_DIR))
    with beam.Pipeline(options=options) as p:
        build_prediction(p, config)
    return summarize_predictions(config.output)


def _jsonl(folder: str):
    """JSON objects of every ``part-*.jsonl`` under ``folder`` (local or remote)."""
    from apache_beam.io.filesystems import FileSystems

    (match,) = FileSystems.match([FileSystems.join(folder, "part-*.jsonl")])
    for path in sorted(m.path for m in match.metadata_list):
        with FileSystems.open(path, compression_type="uncompressed") as f:
            for line in f.read().decode("utf-8").splitlines():
                if line.strip():
                    yield json.loads(line)


def summarize_predictions(output: str) -> dict:
    from apache_beam.io.filesystems import FileSystems

    predictions = list(_jsonl(FileSystems.join(output, PREDICTIONS_DIR)))
    failed = list(_jsonl(FileSystems.join(output, ERRORS_DIR)))
    labelled = [r for r in predictions if r["label"] is not None]
    correct = sum(r["label"] == r["predicted"] for r in labelled)
    return {"classified": len(predictions), "failed": len(failed), "labelled": len(labelled),
            "accuracy_on_labelled": correct / len(labelled) if labelled else None}


def format_prediction(summary: dict, output: str, seconds: float) -> str:
    accuracy = summary["accuracy_on_labelled"]
    return (f"featurebeam: classified {summary['classified']} images ({summary['failed']} failed) in {seconds:.1f} s"
            + (f"; accuracy on the {summary['labelled']} labelled ones {accuracy:.4f}" if accuracy is not None else "")
            + f"\n  predictions {output}/predictions/part-*.jsonl")
