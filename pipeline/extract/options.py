"""Command-line options of ``featurebeam extract``: parsed once, validated, frozen; no side effects.

``ExtractOptions`` is the one ``PipelineOptions`` subclass; ``check_flags`` judges every value and combination
that needs no I/O, and ``ExtractConfig`` is the frozen result that the job is built from (made by
``launch.configure``, which resolves inputs, backbone and output). Mistakes raise ``ConfigError`` with one line
that says what to change, before any worker starts. Transforms never see ``PipelineOptions``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from pipeline.backbones.spec import BackboneSpec
from pipeline.errors import ConfigError
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.embed.pooling import POOLINGS
from transforms.read.input_specs import FORMATS, InputSpec
from transforms.read.sources import DEFAULT_CHUNK_BYTES
from transforms.read.tables import InputFields
from transforms.schema.fields import FEATURE_DTYPES, OutputSpec
from transforms.schema.layout import FORMATS as FORMATS_WRITTEN
from transforms.worker.storage import DEFAULT_RETRY_SECONDS
from transforms.write.committers import DEFAULT_RECORDS_PER_COMMIT

__all__ = ["ExtractOptions", "ExtractConfig", "parse_formats", "precision_of", "cpu_has_bfloat16",
           "DEFAULT_RUNNER", "DEFAULT_LOCAL_FLAGS",
           "LOCAL_RUNNERS"]

DEFAULT_RUNNER = "FnApiRunner"
DEFAULT_LOCAL_FLAGS = (f"--runner={DEFAULT_RUNNER}", "--direct_running_mode=multi_processing",
                       "--direct_num_workers=2")
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


class ExtractOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", action="append", metavar="INPUT",
                            help="a directory (recursive; first-level subfolders are labels), a glob or a file: "
                                 "loose images, .csv/.jsonl manifests, .tar shards, .tfrecord files; with a text "
                                 "backbone, .jsonl/.csv/.tsv tables of texts and .txt files (one text each); "
                                 "local, gs:// or s3://; repeatable")
        parser.add_argument("--input-format", default="auto", choices=("auto",) + FORMATS,
                            help="how to read every --input (default auto: from the file extension and the "
                                 "backbone; a directory is loose files); text: rows of a table; lines: one text "
                                 "per line")
        fields = InputFields()
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
        parser.add_argument("--label-feature", default=fields.label_feature, metavar="NAME",
                            help=f"TFRecord inputs: the bytes or int64 feature with the label "
                                 f"(default: {fields.label_feature})")
        parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                            help="images with more pixels are recorded failures, refused from their header before "
                                 f"decoding (default: {DEFAULT_MAX_PIXELS:,})")
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
        parser.add_argument("--output", metavar="OUTDIR", help="where features/ and manifest.json are written")
        parser.add_argument("--backbone", default="mobilenet_v2",
                            help="mobilenet_v2 (default), efficientnet_lite0, minilm_l6 (text), keras:NAME for any "
                                 "keras.applications model, or a .keras/.h5 model file (local or gs://)")
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
        parser.add_argument("--batch-size", type=int, default=None,
                            help=f"images per forward pass (default: {CPU_BATCH_SIZE}; {GPU_BATCH_SIZE} when the job "
                                 "runs on GPUs)")
        parser.add_argument("--gpu", metavar="TYPE",
                            help="DataflowRunner: one NVIDIA GPU of TYPE per worker (e.g. nvidia-l4, nvidia-tesla-t4); "
                                 "adds the worker_accelerator service option with the driver install and picks the "
                                 "worker image, machine type and harness threads for it (deploy/README.md)")
        parser.add_argument("--model-copies", type=int, default=None, metavar="N",
                            help="N copies of the model per worker machine, shared by all its worker processes; "
                                 "several let batches overlap on a GPU; 0: each worker process loads its own (on a "
                                 "Dataflow GPU with NVIDIA MPS, so they share the GPU) (default: 1 when the job runs "
                                 "on GPUs, else 0)")
        parser.add_argument("--precision", choices=PRECISIONS, default=None,
                            help="the forward pass in float32 (default), bfloat16 (CPUs with AVX-512 BF16 or AMX, "
                                 "and GPUs) or float16 (GPUs; image backbones only); a text backbone's bfloat16 is "
                                 "its dense layers only; vectors are stored as float32 either way")
        parser.add_argument("--mixed-precision", action="store_true",
                            help="compute in float16 on accelerators that gain from it (vectors stay float32)")
        parser.add_argument("--no-fold-batchnorm", action="store_true",
                            help="keras:NAME backbones and .keras/.h5 model files: run each BatchNorm as its own "
                                 "layer instead of folding it into the convolution before it (the default, about "
                                 "as exact and faster); to compare")
        parser.add_argument("--format", default="tfrecord", metavar="FORMATS",
                            help="what the feature shards are written as: tfrecord, parquet, or both as "
                                 "tfrecord,parquet (the same records in each; default: tfrecord)")
        parser.add_argument("--feature-dtype", default="float32", choices=FEATURE_DTYPES,
                            help="how vectors are stored; float16 halves the bytes, readers and train get float32 "
                                 "(default: float32)")
        parser.add_argument("--records-per-shard", type=int, default=DEFAULT_RECORDS_PER_COMMIT, metavar="N",
                            help="records per feature shard; each shard is committed as soon as it is full, so an "
                                 f"interrupted run keeps it (default: {DEFAULT_RECORDS_PER_COMMIT:,})")
        parser.add_argument("--threads-per-worker", type=int, default=None,
                            help="TensorFlow threads per worker process (default: cores / local workers)")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace the features, errors and manifest already in OUTDIR")
        parser.add_argument("--resume", action="store_true",
                            help="finish an interrupted run into the same OUTDIR: what it committed is kept and "
                                 "skipped, the rest is done; the settings must be the same")
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


@dataclass(frozen=True)
class ExtractConfig:
    inputs: tuple[InputSpec, ...]
    output: str
    backbone: BackboneSpec
    outputs: tuple[OutputSpec, ...]
    batch_size: int
    records_per_shard: int
    threads_per_worker: int | None
    overwrite: bool
    max_failure_fraction: float = 1.0
    quiet: bool = False
    fields: InputFields = InputFields()
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    resume: bool = False
    model_copies: int = 0            # 0: a model in each worker process; N: N per machine, shared (GPU workers)
    precision: str = "float32"       # the forward pass: float32, float16 (--mixed-precision) or bfloat16
    template_launch: bool = False    # a template staged now runs now (Flex Template): prepare OUTDIR at launch
    formats: tuple[str, ...] = ("tfrecord",)  # what feature shards are written as (schema.FORMATS)


def parse_formats(text: str) -> tuple[str, ...]:
    """``--format``: a comma-separated list of schema.FORMATS, each once, in a fixed order."""
    given = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in given if name not in FORMATS_WRITTEN]
    if unknown or not given:
        raise ConfigError(f"--format {text!r}: choose tfrecord, parquet or tfrecord,parquet")
    if len(set(given)) != len(given):
        raise ConfigError(f"--format {text!r} names a format twice")
    return tuple(name for name in FORMATS_WRITTEN if name in given)


def check_flags(options: PipelineOptions) -> None:
    """Every flag value and combination that can be judged without touching a file, a bucket or a model:
    ``ConfigError`` with one line that says what to change."""
    o = options.view_as(ExtractOptions)
    if not o.input:
        raise ConfigError("--input is required (a directory of images or a glob)")
    if not o.output:
        raise ConfigError("--output is required (the directory to write features into)")
    if o.batch_size is not None and o.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {o.batch_size}")
    if o.records_per_shard < 1:
        raise ConfigError(f"--records-per-shard must be at least 1, got {o.records_per_shard}")
    if o.resume and o.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume keeps what OUTDIR holds "
                          "and finishes it, --overwrite replaces it; choose one")
    if not 0.0 <= o.max_failure_fraction <= 1.0:
        raise ConfigError(f"--max-failure-fraction must be between 0 and 1, got {o.max_failure_fraction}")
    if o.model_copies is not None and o.model_copies < 0:
        raise ConfigError(f"--model-copies must be 0 (one per worker process) or more, got {o.model_copies}")
    if o.gpu and runner_name(options) != "DataflowRunner":
        raise ConfigError("--gpu asks Dataflow for GPU workers and needs --runner DataflowRunner; a local run "
                          "uses this machine's GPU when it has one")
    if o.threads_per_worker is not None and o.threads_per_worker < 1:
        raise ConfigError(f"--threads-per-worker must be at least 1, got {o.threads_per_worker}")
    if o.max_image_pixels < 1:
        raise ConfigError(f"--max-image-pixels must be at least 1, got {o.max_image_pixels}")
    if o.max_input_bytes < 1:
        raise ConfigError(f"--max-input-bytes must be at least 1, got {o.max_input_bytes}")
    if o.storage_retry_seconds <= 0:
        raise ConfigError(f"--storage-retry-seconds must be positive, got {o.storage_retry_seconds:g}")
    if o.read_chunk_mb <= 0:
        raise ConfigError(f"--read-chunk-mb must be positive, got {o.read_chunk_mb:g}")
    parse_formats(o.format)
    if o.mixed_precision and o.precision not in (None, "float16"):
        raise ConfigError(f"--mixed-precision (float16) contradicts --precision {o.precision}; choose one")


PRECISIONS = ("float32", "bfloat16", "float16")


def precision_of(options: PipelineOptions) -> str:
    """The forward pass's type: --precision, or float16 with --mixed-precision, else float32."""
    o = options.view_as(ExtractOptions)
    return o.precision or ("float16" if o.mixed_precision else "float32")


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU computes bfloat16 natively (AVX-512 BF16 or AMX), from its flags."""
    try:
        with open(cpuinfo) as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 128


def uses_gpus(options: PipelineOptions) -> bool:
    """Whether the job's workers have GPUs: ``--gpu``, Dataflow's ``worker_accelerator`` service option (or
    experiment), or, for a local runner, a GPU on this machine."""
    if options.view_as(ExtractOptions).gpu or requested_accelerator(options):
        return True
    if runner_name(options) not in LOCAL_RUNNERS or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    gpus = "/proc/driver/nvidia/gpus"
    return os.path.isdir(gpus) and bool(os.listdir(gpus))


def requested_accelerator(options: PipelineOptions) -> str | None:
    """Dataflow's ``worker_accelerator=...`` as the job gives it (service option, or the older experiment)."""
    gcp = options.view_as(GoogleCloudOptions)
    requested = list(gcp.dataflow_service_options or []) + list(options.view_as(DebugOptions).experiments or [])
    return next((str(item) for item in requested if str(item).startswith("worker_accelerator")), None)


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name however it was given: Beam also takes "dataflow", "direct", any case, or a module
    path; no --runner is Beam's DirectRunner."""
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        return "DirectRunner"
    if not isinstance(runner, str):
        return type(runner).__name__
    name = runner.rsplit(".", 1)[-1].lower()
    return next((known for known in StandardOptions.KNOWN_RUNNER_NAMES if known.lower() in (name, name + "runner")),
                runner)


def local_threads_per_worker(options: PipelineOptions) -> int | None:
    """Local runs share the machine's cores among worker processes (workers x threads <= cores)."""
    if runner_name(options) not in LOCAL_RUNNERS:
        return None
    direct = options.view_as(DirectOptions)
    cores = os.cpu_count() or 1
    if direct.direct_running_mode == "multi_processing":
        workers = direct.direct_num_workers
        workers = cores if workers == 0 else max(1, workers)
        return max(1, cores // workers)
    return cores
