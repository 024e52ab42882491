"""``featurebeam predict``: bulk classification of raw images, texts or recordings with a trained model directory.

1. ``ReadRecords`` (the same sources as extraction, read as the model's backbone reads them) -> images:
   ``DecodeImageFn`` with the backbone's preprocessing; texts: each record's text (``text_of``), as it is;
   recordings: decoded and embedded in windows, then classified (``predict_audio.ClassifyRecordings``);
2. ``RunInference`` over the serving SavedModel (loaded once per worker process, batched): decoded images go to
   its ``classify_images`` endpoint, raw texts to its ``serve`` endpoint, which tokenises them in the graph;
3. ``predictions/part-*.jsonl``: one ``{"key", "label" (true, if known), "predicted", "probabilities"}`` per
   record; undecodable files and records that are not text in ``errors/``, as in extraction;
4. ``summary.json``: the counts (classified, failed, labelled, accuracy on the labelled ones), summed by the job
   itself (``SummarizePredictions``) and written whole or not at all, so the launcher reads one small file.

MODELDIR, the inputs and OUTDIR may each be local, ``gs://`` or ``s3://``; each worker process copies a remote
serving model to its local disk before loading it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline.errors import ConfigError
from pipeline.folders import absolute, read_model_file
from pipeline.inputs import check_formats, resolve_input
from pipeline.outputs import check_output_dir, clear_previous_outputs
from pipeline.tools.predict_audio import ClassifyRecordings
from pipeline.tools.serving_handler import ServingModelHandler
from transforms.decode.audio import AudioPreprocessing
from transforms.decode.images import DecodeImageFn, ImagePreprocessing
from transforms.decode.tokenize import text_of
from transforms.read.input_specs import InputSpec
from transforms.read.sources import ReadRecords
from transforms.read.tables import InputFields
from transforms.schema.elements import FAILED, Failure, Record
from transforms.schema.layout import ERRORS_DIR, PENDING_DIR
from transforms.worker.process import WorkerDoFn
from transforms.write.commit_format import write_atomically
from transforms.write.sinks import WriteFailures

__all__ = ["PredictConfig", "build_prediction", "run_prediction", "format_prediction", "SummarizePredictions",
           "PredictionCountsFn", "TextOfRecordFn", "read_summary", "PREDICTIONS_DIR", "SUMMARY_NAME"]

PREDICTIONS_DIR = "predictions"
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class PredictConfig:
    """``preprocessing``: an image or audio model's; None for a text model, whose serving model takes raw text."""

    model_dir: str
    inputs: tuple[InputSpec, ...]
    output: str
    preprocessing: ImagePreprocessing | AudioPreprocessing | None
    batch_size: int = 32
    overwrite: bool = False

    @classmethod
    def create(cls, model_dir: str, inputs, output: str, batch_size: int = 32, overwrite: bool = False):
        """Checked at launch: the model has a serving model, the inputs exist, OUTDIR may be written. The inputs
        are read as the model's backbone reads them in extraction (for a text model a ``.jsonl`` is texts).

        Object storage must already be set up as the job sees it (``pipeline.flags.use_storage_options``)."""
        model_dir = absolute(model_dir)
        spec = read_model_spec(model_dir)
        prep = _serving_preprocessing(model_dir, spec)
        modality = "text" if prep is None else "audio" if isinstance(prep, AudioPreprocessing) else "image"
        output = absolute(output)
        check_output_dir(output, overwrite)
        specs = tuple(resolve_input(i, modality=modality) for i in inputs)
        check_formats(specs, modality, spec.get("backbone", {}).get("name", model_dir))
        return cls(model_dir, specs, output, prep, batch_size, overwrite)


def read_model_spec(model_dir: str) -> dict:
    """MODELDIR/model.json (local, gs:// or s3://), as featurebeam train wrote it."""
    return read_model_file(model_dir, "model.json", ConfigError)


def _serving_preprocessing(model_dir: str, spec: dict) -> ImagePreprocessing | AudioPreprocessing | None:
    """The image or audio preprocessing of a model with a serving model, or None for a text model (which
    tokenises in its serving model); a model without one is refused."""
    if not spec.get("serving"):
        raise ConfigError(f"{model_dir} has no serving model (its model.json names none); train it again")
    modality = spec.get("backbone", {}).get("modality")
    if modality == "text":
        return None
    prep = spec["preprocessing"]
    if modality == "audio":
        return AudioPreprocessing(**prep)
    return ImagePreprocessing(**{**prep, "mean": tuple(prep["mean"]), "std": tuple(prep["std"])})


class TextOfRecordFn(WorkerDoFn):
    """Record -> ((key, label, split), its text) (``text_of``: a ``str`` payload, or UTF-8 bytes); a payload
    that is not text goes to ``failed``, as in extraction. An empty text is a text (``[CLS] [SEP]``)."""

    def process(self, record: Record):
        try:
            text = text_of(record.payload)
        except (TypeError, ValueError) as e:
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record.key, record.origin, "tokenize", "NotText", str(e)))
            return
        yield (record.key, record.label, record.split), text


class ModelDirClassifier(ServingModelHandler):
    """``ServingModelHandler`` over decoded images (``classify_images``), or with ``texts`` raw texts, which a text
    model's ``serve`` endpoint tokenises in the graph."""

    def __init__(self, saved_model_path: str, batch_size: int = 32, texts: bool = False):
        super().__init__(saved_model_path, batch_size)
        self._texts = texts

    def run_inference(self, batch, model, inference_args=None):
        if not self._texts:
            return super().run_inference(batch, model, inference_args)
        import tensorflow as tf

        return self.predictions(model.serve(tf.constant(list(batch), tf.string)), len(batch))

    def get_num_bytes(self, batch) -> int:
        return sum(len(text.encode("utf-8")) for text in batch) if self._texts else super().get_num_bytes(batch)


def _prediction(meta, inference) -> dict:
    key, label, split = meta[:3]  # recordings' meta carries their source version too
    prediction = {"key": key, "label": label, "predicted": inference["label"],
                  "probabilities": inference["probabilities"]}
    if split is not None:
        prediction["split"] = split
    return prediction


class PredictionCountsFn(beam.CombineFn):
    """Sums ``(classified, failed, labelled, correct)`` tuples; the output is the summary ``run_prediction``
    returns."""

    def create_accumulator(self):
        return 0, 0, 0, 0

    def add_input(self, accumulator, counts):
        return tuple(a + c for a, c in zip(accumulator, counts, strict=True))

    def merge_accumulators(self, accumulators):
        return tuple(sum(column) for column in zip(*accumulators, strict=True)) or self.create_accumulator()

    def extract_output(self, accumulator):
        classified, failed, labelled, correct = accumulator
        return {"classified": classified, "failed": failed, "labelled": labelled,
                "accuracy_on_labelled": correct / labelled if labelled else None}


def _counts(prediction: dict) -> tuple[int, int, int, int]:
    labelled = prediction["label"] is not None
    return 1, 0, int(labelled), int(labelled and prediction["label"] == prediction["predicted"])


class _WriteSummaryFn(WorkerDoFn):
    def __init__(self, output: str):
        self._output = output

    def process(self, summary: dict):
        pending = FileSystems.join(self._output, PENDING_DIR, f"{SUMMARY_NAME}.{uuid.uuid4().hex}")
        write_atomically(FileSystems.join(self._output, SUMMARY_NAME), pending,
                         json.dumps(summary).encode("utf-8"))
        yield summary


class SummarizePredictions(beam.PTransform):
    """(predictions as dicts, failures) -> ``OUTDIR/summary.json``, the counts of both; returns the summary.

    1. each prediction becomes ``(1, 0, labelled, correct)``, each failure ``(0, 1, 0, 0)``;
    2. one ``CombineGlobally`` sums them (a job with no inputs gives all zeros);
    3. the summary is written under a pending name, then renamed."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, inputs):
        predictions, failures = inputs
        return ((predictions | "Count prediction" >> beam.Map(_counts),
                 failures | "Count failure" >> beam.Map(lambda _: (0, 1, 0, 0)))
                | "All counts" >> beam.Flatten()
                | "Sum counts" >> beam.CombineGlobally(PredictionCountsFn())
                | "Write summary" >> beam.ParDo(_WriteSummaryFn(self._output)))


def build_prediction(p: beam.Pipeline, config: PredictConfig):
    serving = FileSystems.join(config.model_dir, "serving")
    audio = isinstance(config.preprocessing, AudioPreprocessing)
    read = p | "Read records" >> ReadRecords(config.inputs, InputFields(modality="audio") if audio else InputFields())
    texts = config.preprocessing is None
    if audio:
        classified = read["records"] | "Classify recordings" >> ClassifyRecordings(serving, config.preprocessing,
                                                                                   config.batch_size)
        decoded_failures, classified = classified[FAILED], classified["classified"]
    else:
        if texts:
            decoded = read["records"] | "Texts of records" >> beam.ParDo(TextOfRecordFn()).with_outputs(
                FAILED, main="ok")
        else:
            decoded = read["records"] | "Decode images" >> beam.ParDo(
                DecodeImageFn(config.preprocessing)).with_outputs(FAILED, main="ok")
        handler = KeyedModelHandler(ModelDirClassifier(serving, config.batch_size, texts))
        decoded_failures, classified = decoded[FAILED], decoded.ok | "Classify" >> RunInference(handler)
    predictions = classified | "Prediction" >> beam.MapTuple(lambda meta, result: _prediction(meta, result.inference))
    written = (predictions
               | "Prediction to JSON" >> beam.Map(lambda prediction: json.dumps(prediction, sort_keys=True))
               | "Write predictions" >> beam.io.WriteToText(
                   FileSystems.join(config.output, PREDICTIONS_DIR, "part"), file_name_suffix=".jsonl",
                   skip_if_empty=True))  # no empty shard: S3 cannot take an empty upload from Beam
    failures = (read[FAILED], decoded_failures) | "All failures" >> beam.Flatten()
    failures | "Write failures" >> WriteFailures(config.output)
    (predictions, failures) | "Summarize" >> SummarizePredictions(config.output)
    return written


def run_prediction(config: PredictConfig, options) -> dict:
    """Run to completion; returns the counts the job wrote to ``OUTDIR/summary.json``."""
    if config.overwrite:
        clear_previous_outputs(config.output, names=(PREDICTIONS_DIR, ERRORS_DIR, SUMMARY_NAME, PENDING_DIR))
    with beam.Pipeline(options=options) as p:
        build_prediction(p, config)
    return read_summary(config.output)


def read_summary(output: str) -> dict:
    """``OUTDIR/summary.json`` (local or remote), as ``SummarizePredictions`` wrote it."""
    with FileSystems.open(FileSystems.join(output, SUMMARY_NAME), compression_type="uncompressed") as f:
        return json.loads(f.read().decode("utf-8"))


def format_prediction(summary: dict, output: str, seconds: float) -> str:
    accuracy = summary["accuracy_on_labelled"]
    return (f"featurebeam: classified {summary['classified']} records ({summary['failed']} failed) in {seconds:.1f} s"
            + (f"; accuracy on the {summary['labelled']} labelled ones {accuracy:.4f}" if accuracy is not None else "")
            + f"\n  predictions {output}/predictions/part-*.jsonl")
