"""Command-line options of ``featurebeam extract``: parsed once, validated at launch, frozen.

``ExtractOptions`` is the one ``PipelineOptions`` subclass; ``ExtractConfig.from_options`` checks every
value (backbone, layers, inputs, output directory, flag combinations) and raises ``ConfigError`` with one
line that says what to change, before any worker starts. Transforms never see ``PipelineOptions``.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from pipeline.backbones.registry import resolve_backbone
from pipeline.backbones.spec import BackboneSpec
from pipeline.backbones.staging import stage_backbone
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.embed.pooling import POOLINGS, pooled_dim
from transforms.read.sources import DEFAULT_CHUNK_BYTES, FORMATS, InputFields, InputSpec, is_glob
from transforms.read.storage import bucket_exists, bucket_of, share_storage_options, use_storage_emulator
from transforms.schema import (
    COMMITS_DIR,
    ERRORS_DIR,
    FEATURES_DIR,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PENDING_DIR,
    RUN_NAME,
    OutputSpec,
)
from transforms.write.commits import DEFAULT_RECORDS_PER_COMMIT

__all__ = ["ExtractOptions", "ExtractConfig", "ConfigError", "DEFAULT_RUNNER", "DEFAULT_LOCAL_FLAGS", "LOCAL_RUNNERS"]

DEFAULT_RUNNER = "FnApiRunner"
DEFAULT_LOCAL_FLAGS = (f"--runner={DEFAULT_RUNNER}", "--direct_running_mode=multi_processing",
                       "--direct_num_workers=2")
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


class ConfigError(ValueError):
    """A launch-time problem with what the user asked for; the message says what to change."""


class ExtractOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", action="append", metavar="INPUT",
                            help="a directory of images (recursive; first-level subfolders are labels), a glob or "
                                 "a file: loose images, .csv/.jsonl manifests, .tar shards, .tfrecord files; "
                                 "local, gs:// or s3://; repeatable")
        parser.add_argument("--input-format", default="auto", choices=("auto",) + FORMATS,
                            help="how to read every --input (default auto: from the file extension; a directory "
                                 "is loose files; text is never guessed)")
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
                            help=f"text inputs: the column with a row id; keys are URI#id, else URI#ROW "
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
        parser.add_argument("--mixed-precision", action="store_true",
                            help="compute in float16 on accelerators that gain from it (vectors stay float32)")
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
    mixed_precision: bool = False
    template_launch: bool = False    # a template staged now runs now (Flex Template): prepare OUTDIR at launch

    @classmethod
    def from_options(cls, options: PipelineOptions) -> ExtractConfig:
        o = options.view_as(ExtractOptions)
        if not o.input:
            raise ConfigError("--input is required (a directory of images or a glob)")
        if not o.output:
            raise ConfigError("--output is required (the directory to write features into)")
        gpus = uses_gpus(options)
        batch_size = o.batch_size if o.batch_size is not None else GPU_BATCH_SIZE if gpus else CPU_BATCH_SIZE
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
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
        if o.read_chunk_mb <= 0:
            raise ConfigError(f"--read-chunk-mb must be positive, got {o.read_chunk_mb:g}")
        use_storage_options(options)
        inputs = tuple(resolve_input(uri, o.input_format) for uri in o.input)
        backbone = resolve_backbone(o.backbone, o.weights, o.preprocessing)
        text = [spec.uri for spec in inputs if spec.format == "text"]
        images = [spec.uri for spec in inputs if spec.format != "text"]
        if backbone.modality == "image" and text:
            raise ConfigError(f"input {text[0]} is text, but backbone {backbone.name} embeds images; "
                              "choose a text backbone")
        if backbone.modality == "text" and images:
            raise ConfigError(f"backbone {backbone.name} embeds text, but input {images[0]} is read as images; "
                              "give text inputs with --input-format text")
        if runner_name(options) not in LOCAL_RUNNERS:
            backbone = stage_backbone(backbone, remote_staging_location(options))
        outputs = resolve_outputs(backbone, o.layer or [backbone.default_layer], o.pooling)
        output = absolute(o.output)
        if not o.resume:
            check_output_dir(output, o.overwrite)
        threads = o.threads_per_worker or local_threads_per_worker(options)
        fields = InputFields(o.uri_field, o.label_field, o.split_field, o.text_field, o.id_field,
                             o.image_feature, o.label_feature)
        config = cls(inputs, output, backbone, outputs, batch_size, o.records_per_shard, threads, o.overwrite,
                     o.max_failure_fraction, o.quiet, fields, int(o.read_chunk_mb * 2**20), o.max_image_pixels,
                     o.resume, model_copies=(1 if gpus else 0) if o.model_copies is None else o.model_copies,
                     mixed_precision=o.mixed_precision, template_launch=o.template_launch)
        if o.resume:
            check_resumable(config)
        return config


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


def run_settings(config: ExtractConfig) -> dict:
    """What decides a run's outputs: a resumed run must match it exactly (recorded in OUTDIR/run.json)."""
    backbone = config.backbone.describe()
    return {
        "format_version": FORMAT_VERSION,
        "backbone": {"name": backbone["name"], "weights_sha256": backbone["weights_sha256"]},
        "outputs": [o.to_json() for o in config.outputs],
        "inputs": [spec.to_json() for spec in config.inputs],
        "fields": config.fields.to_json(),
        "max_image_pixels": config.max_pixels,
    }


_SETTING_NAMES = {"backbone": "--backbone (or its weights)", "outputs": "--layer/--pooling",
                  "inputs": "--input/--input-format", "fields": "the field options", "format_version":
                  "the feature set format", "max_image_pixels": "--max-image-pixels"}


def check_resumable(config: ExtractConfig) -> None:
    """--resume needs an OUTDIR started by a run with the very same settings."""
    path = FileSystems.join(config.output, RUN_NAME)
    try:
        with FileSystems.open(path) as f:
            recorded = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"nothing to resume in {config.output}: it has no {RUN_NAME} from an earlier run "
                          "(drop --resume to start one)") from None
    current = run_settings(config)
    for name, value in current.items():
        if recorded.get(name) != value:
            raise ConfigError(f"cannot resume {config.output}: it was started with different "
                              f"{_SETTING_NAMES.get(name, name)}; use the same settings, or --overwrite to "
                              "start again")


def absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def use_storage_options(options: PipelineOptions) -> None:
    """Let the launcher's own listing and checks see object storage as the workers will (S3 endpoint and
    keys, GCS emulator)."""
    FileSystems.set_options(options)
    use_storage_emulator()
    share_storage_options(options)


def _missing_bucket(uri: str) -> str | None:
    found = bucket_of(uri)
    if found and bucket_exists(uri, FileSystems._pipeline_options) is False:
        scheme, bucket = found
        return f"bucket {scheme}://{bucket} does not exist"
    return None


def resolve_input(uri: str, input_format: str = "auto") -> InputSpec:
    """Classify one ``--input`` and check, cheaply, that it names at least one file (no data is read)."""
    uri = absolute(uri)
    fmt = None if input_format == "auto" else input_format
    if is_glob(uri):
        spec = InputSpec.glob(uri, fmt)
    elif "://" not in uri:
        if os.path.isfile(uri):
            spec = InputSpec.glob(uri, fmt)  # a single file: a glob that matches itself
        elif os.path.isdir(uri):
            spec = InputSpec.directory(uri, fmt or "files")
        else:
            raise ConfigError(f"input {uri} does not exist")
    else:
        missing = _missing_bucket(uri)
        if missing:
            raise ConfigError(f"input {uri}: {missing}")
        is_file = not uri.endswith("/") and FileSystems.exists(uri)
        spec = InputSpec.glob(uri, fmt) if is_file else InputSpec.directory(uri, fmt or "files")
    try:
        (result,) = FileSystems.match([spec.pattern], limits=[1])
    except Exception as e:
        raise ConfigError(f"cannot list input {uri}: {_first_line(e)}") from None
    if not result.metadata_list:
        raise ConfigError(f"input {uri} matches no files")
    return spec


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def resolve_outputs(backbone: BackboneSpec, layers: list[str], pooling: str) -> tuple[OutputSpec, ...]:
    outputs = []
    for layer in layers:
        if layer not in backbone.layer_shapes:
            near = difflib.get_close_matches(layer, list(backbone.layer_shapes), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            raise ConfigError(f"backbone {backbone.name} has no layer {layer!r}; {hint}"
                              f"'featurebeam layers --backbone {backbone.name}' lists them")
        shape = backbone.layer_shapes[layer]
        if backbone.modality == "text" and len(shape) > 1 and pooling == "none":
            raise ConfigError(f"--pooling none keeps no fixed size for text layer {layer!r} (one vector per token); "
                              "use avg or max")
        layer_pooling = pooling if len(shape) > 1 else "none"
        outputs.append(OutputSpec(layer, layer, layer_pooling, pooled_dim(shape, layer_pooling)))
    if len({o.name for o in outputs}) != len(outputs):
        raise ConfigError("each --layer may be given once")
    return tuple(outputs)


def check_output_dir(output: str, overwrite: bool) -> None:
    """Refuse a non-empty OUTDIR without --overwrite; prove the directory is writable."""
    if "://" not in output:
        if os.path.exists(output) and not os.path.isdir(output):
            raise ConfigError(f"output {output} exists and is not a directory")
        if os.path.isdir(output) and os.listdir(output) and not overwrite:
            raise ConfigError(f"output {output} is not empty; pass --overwrite to replace its features, or "
                              "--resume to finish the run that wrote them")
        try:
            os.makedirs(output, exist_ok=True)
            probe = os.path.join(output, ".featurebeam-write-test")
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as e:
            raise ConfigError(f"output {output} is not writable: {e.strerror or e}") from None
    else:
        missing = _missing_bucket(output)
        if missing:
            raise ConfigError(f"output {output}: {missing}")
        try:
            (existing,) = FileSystems.match([FileSystems.join(output, "**")], limits=[1])
        except Exception as e:
            raise ConfigError(f"cannot list output {output}: {_first_line(e)}") from None
        if existing.metadata_list and not overwrite:
            raise ConfigError(f"output {output} is not empty; pass --overwrite to replace its features, or "
                              "--resume to finish the run that wrote them")
        probe = FileSystems.join(output, ".featurebeam-write-test")
        try:
            with FileSystems.create(probe) as f:
                f.write(b"")
            FileSystems.delete([probe])
        except Exception as e:
            raise ConfigError(f"output {output} is not writable: {_first_line(e)}") from None


def clear_previous_outputs(output: str, names=(MANIFEST_NAME, RUN_NAME, FEATURES_DIR, ERRORS_DIR, COMMITS_DIR,
                                              PENDING_DIR)) -> None:
    """What --overwrite replaces: the job's own outputs (by default the features, dead letters and
    manifest of an extraction), nothing else. Object stores have no folders: a folder there is every object
    under its prefix."""
    paths = []
    for name in names:
        path = FileSystems.join(output, name)
        if FileSystems.exists(path):  # a file, or a local folder (deleted with what it holds)
            paths.append(path)
        elif "://" in output:
            paths += [m.path for m in FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list]
    if paths:
        FileSystems.delete(paths)


def remote_staging_location(options: PipelineOptions) -> str:
    """Where a remote runner's workers read the backbone's weights from."""
    gcp = options.view_as(GoogleCloudOptions)
    location = gcp.staging_location or gcp.temp_location
    if not location:
        raise ConfigError(f"runner {runner_name(options)} needs --temp_location (or --staging_location): "
                          "the backbone's weights are staged there for the workers")
    return location


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
