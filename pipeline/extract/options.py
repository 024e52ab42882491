"""The flags of ``featurebeam extract``: ``ExtractOptions``, the one ``PipelineOptions`` subclass, so Beam and
Dataflow's templates read them as they read their own. Declared here in groups (the embedding flags in
``embedding.py``, beside the settings they become); judged in ``config.py``
(``check_flags``, ``ExtractConfig``); the runner and machine they meet are read in ``runtime.py``.
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.backbones.hub.presets import TOWERS
from pipeline.extract.embedding import add_embedding_flags
from transforms.embed.pooling import POOLINGS
from transforms.read.input_specs import FORMATS
from transforms.read.sources import DEFAULT_CHUNK_BYTES
from transforms.read.tables import InputFields
from transforms.schema.fields import FEATURE_DTYPES
from transforms.worker.storage import DEFAULT_RETRY_SECONDS
from transforms.write.committers import DEFAULT_RECORDS_PER_COMMIT

__all__ = ["ExtractOptions", "UPDATE_FLAG", "UPDATE_HELP"]

UPDATE_FLAG = "--update-feature-set"
UPDATE_HELP = ("bring a finished feature set in OUTDIR up to date with its inputs as they are now: embed what is new "
               "or changed (by each file's size and modification time), remove what is gone, keep the rest; the "
               "settings must be the same. An interrupted update is finished by --update again")


class ExtractOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        _input_flags(parser)
        _backbone_flags(parser)
        add_embedding_flags(parser)
        _output_flags(parser)
        _run_flags(parser)


def _input_flags(parser) -> None:
    """What to read and how: inputs, their format, the fields of manifests, tables and TFRecords, limits."""
    fields = InputFields()
    parser.add_argument("--input", action="append", metavar="INPUT",
                        help="a directory (recursive; first-level subfolders are labels), a glob or a file: "
                             "loose images, .csv/.jsonl manifests, .tar shards, .tfrecord files; with a text "
                             "backbone, .jsonl/.csv/.tsv tables of texts and .txt files (one text each); "
                             "local, gs:// or s3://; repeatable")
    parser.add_argument("--input-format", default="auto", choices=("auto",) + FORMATS,
                        help="how to read every --input (default auto: from the file extension and the "
                             "backbone; a directory is loose files); text: rows of a table; lines: one text "
                             "per line")
    parser.add_argument("--uri-field", default=None, metavar="NAME",
                        help="manifest column with each file's URI (default: the first of uri, path, filepath, "
                             "file, filename, image); relative URIs resolve against the manifest's folder")
    parser.add_argument("--label-field", default=fields.label, metavar="NAME",
                        help=f"manifest/text column, or tar sample .json field, with the label "
                             f"(default: {fields.label})")
    parser.add_argument("--split-field", default=fields.split, metavar="NAME",
                        help=f"manifest/text column with the split, kept in each record (default: {fields.split})")
    parser.add_argument("--text-field", default=fields.text, metavar="NAME",
                        help=f"text inputs: the column with the text (default: {fields.text})")
    parser.add_argument("--id-field", default=fields.id, metavar="NAME",
                        help=f"text inputs: the column with a row id; keys are URI#id=ID, else URI#row=N "
                             f"(default: {fields.id})")
    parser.add_argument("--image-feature", default=fields.image_feature, metavar="NAME",
                        help=f"TFRecord inputs: the bytes feature with the encoded image "
                             f"(default: {fields.image_feature})")
    parser.add_argument("--audio-feature", default=fields.audio_feature, metavar="NAME",
                        help="the bytes feature of TFRecord Examples that holds the encoded audio, for an audio "
                             f"backbone (default: {fields.audio_feature})")
    parser.add_argument("--label-feature", default=fields.label_feature, metavar="NAME",
                        help=f"TFRecord inputs: the bytes or int64 feature with the label "
                             f"(default: {fields.label_feature})")
    parser.add_argument("--max-input-bytes", type=int, default=fields.max_input_bytes, metavar="N",
                        help="the most bytes one input may hold (a file, a manifest or text row, a tar member, a "
                             "TFRecord record); larger ones are recorded failures, refused from their size "
                             f"before reading (default: {fields.max_input_bytes:,})")
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="manifests: read local paths that lie outside the manifest's folder (after .. and "
                             "symlinks); without it such rows are recorded failures")
    parser.add_argument("--read-chunk-mb", type=float, default=DEFAULT_CHUNK_BYTES / 2**20, metavar="MB",
                        help="tar shards and TFRecord files are read in chunks of about this size, spread "
                             "over the workers (default: 64)")


def _backbone_flags(parser) -> None:
    """Which backbone, which layers, and how each becomes a vector."""
    parser.add_argument("--backbone", default="mobilenet_v2",
                        help="mobilenet_v2 (default), efficientnet_lite0, minilm_l6 (text), keras:NAME for any "
                             "keras.applications model, hub:PRESET for a KerasHub preset (a name, kaggle://, hf:// "
                             "or a preset directory), or a .keras/.h5 model file (local or gs://)")
    parser.add_argument("--tower", choices=TOWERS, default=None,
                        help="hub: presets with an image and a text tower (CLIP): which one embeds the inputs "
                             "(default: image)")
    parser.add_argument("--weights", metavar="PATH",
                        help="keras:NAME backbones: a .weights.h5 of that architecture (local or gs://); "
                             "default: ImageNet weights, downloaded at launch")
    parser.add_argument("--preprocessing", choices=("tf", "torch", "caffe", "raw"), default=None,
                        help="model files: what the model expects of pixels (tf: x/127.5-1; torch: ImageNet "
                             "mean/std; caffe: BGR minus mean; raw: 0-255, the default)")
    parser.add_argument("--layer", action="append", metavar="NAME",
                        help="layer to extract (repeatable; default: the backbone's feature layer)")
    parser.add_argument("--pooling", default="avg", choices=POOLINGS,
                        help="how a spatial feature map becomes a vector (default: avg)")
    parser.add_argument("--no-fold-batchnorm", action="store_true",
                        help="keras:NAME backbones and .keras/.h5 model files: run each BatchNorm as its own "
                             "layer instead of folding it into the convolution before it (the default, about "
                             "as exact and faster); to compare")


def _output_flags(parser) -> None:
    """Where features go and as what; what happens to an OUTDIR that holds some."""
    parser.add_argument("--output", metavar="OUTDIR", help="where features/ and manifest.json are written")
    parser.add_argument("--format", default="tfrecord", metavar="FORMATS",
                        help="what the feature shards are written as: tfrecord, parquet, or both as "
                             "tfrecord,parquet (the same records in each; default: tfrecord)")
    parser.add_argument("--feature-dtype", default="float32", choices=FEATURE_DTYPES,
                        help="how vectors are stored; float16 halves the bytes, readers and train get float32 "
                             "(default: float32)")
    parser.add_argument("--records-per-shard", type=int, default=DEFAULT_RECORDS_PER_COMMIT, metavar="N",
                        help="records per feature shard; each shard is committed as soon as it is full, so an "
                             f"interrupted run keeps it (default: {DEFAULT_RECORDS_PER_COMMIT:,})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the features, errors and manifest already in OUTDIR")
    parser.add_argument("--resume", action="store_true",
                        help="finish an interrupted run into the same OUTDIR: what it committed is kept and "
                             "skipped, the rest is done; the settings must be the same")
    # ``--update`` on the command line (``pipeline.extract.command``): Beam's own ``--update`` (of a streaming
    # Dataflow job) owns that name among PipelineOptions.
    parser.add_argument(UPDATE_FLAG, dest="update", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep-removed", action="store_true",
                        help="with --update: keep the records of inputs that are gone")


def _run_flags(parser) -> None:
    """Where the run runs (GPU workers), how it reports, retries storage, and when it counts as failed."""
    parser.add_argument("--gpu", metavar="TYPE",
                        help="DataflowRunner: one NVIDIA GPU of TYPE per worker (e.g. nvidia-l4, nvidia-tesla-t4); "
                             "adds the worker_accelerator service option with the driver install and picks the "
                             "worker image, machine type and harness threads for it (deploy/README.md)")
    parser.add_argument("--quiet", action="store_true", help="no live progress line on stderr")
    parser.add_argument("--storage-retry-seconds", type=float, default=DEFAULT_RETRY_SECONDS, metavar="S",
                        help="how long a failing Cloud Storage call is retried before the run fails with its "
                             f"reason (default: {DEFAULT_RETRY_SECONDS:g})")
    parser.add_argument("--template-launch", action="store_true",
                        help="with --template_location: the template is launched right away (the Flex "
                             "Template entry point sets this), so OUTDIR is prepared now: --overwrite clears "
                             "it, --resume reads its commits, the run's settings are recorded")
    parser.add_argument("--max-failure-fraction", type=float, default=1.0, metavar="F",
                        help="end with a non-zero status when more than F of the inputs failed "
                             "(the outputs stay; default 1: never)")
