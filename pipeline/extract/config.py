"""The frozen configuration of ``featurebeam extract`` and the judging of its flags: no side effects.

``check_flags`` judges every value and combination that needs no I/O; ``embed_settings`` turns the flags and
what the runner gives the job into one ``EmbedSettings``; ``ExtractConfig`` is the frozen result that the job is
built from (made by ``launch.configure``, which resolves inputs, backbone and output). Mistakes raise
``ConfigError`` with one line that says what to change, before any worker starts. Transforms never see
``PipelineOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.errors import ConfigError
from pipeline.extract.options import CPU_BATCH_SIZE, GPU_BATCH_SIZE, ExtractOptions
from pipeline.extract.runtime import LOCAL_RUNNERS, cpu_has_bfloat16, local_threads_per_worker, runner_name, uses_gpus
from transforms.embed.protocol import Backbone
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import InputSpec
from transforms.read.sources import DEFAULT_CHUNK_BYTES
from transforms.read.tables import InputFields
from transforms.schema.fields import OutputSpec
from transforms.schema.layout import FORMATS as FORMATS_WRITTEN

__all__ = ["ExtractConfig", "check_flags", "parse_formats", "precision_of", "embed_settings"]


@dataclass(frozen=True)
class ExtractConfig:
    """The frozen settings a job is built from: what to read, which backbone, how to embed (``embed``), where to
    write and how."""

    inputs: tuple[InputSpec, ...]
    output: str
    backbone: Backbone
    embed: EmbedSettings
    records_per_shard: int
    overwrite: bool
    max_failure_fraction: float = 1.0
    quiet: bool = False
    fields: InputFields = InputFields()
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    resume: bool = False
    template_launch: bool = False    # a template staged now runs now (Flex Template): prepare OUTDIR at launch
    formats: tuple[str, ...] = ("tfrecord",)  # what feature shards are written as (``layout.FORMATS``)


def parse_formats(text: str) -> tuple[str, ...]:
    """``--format``: a comma-separated list of ``FORMATS``, each once, in a fixed order."""
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


def precision_of(options: PipelineOptions) -> str:
    """The forward pass's type: --precision, or float16 with --mixed-precision, else float32."""
    o = options.view_as(ExtractOptions)
    return o.precision or ("float16" if o.mixed_precision else "float32")


def embed_settings(options: PipelineOptions, backbone: Backbone, outputs: tuple[OutputSpec, ...]) -> EmbedSettings:
    """How the job embeds: the flags, with the defaults the runner calls for (a larger batch and one shared model
    on GPUs, cores shared among local workers); a precision the backbone or this machine cannot run is refused."""
    o = options.view_as(ExtractOptions)
    gpus = uses_gpus(options)
    precision = precision_of(options)
    if precision == "bfloat16" and not gpus and runner_name(options) in LOCAL_RUNNERS and not cpu_has_bfloat16():
        raise ConfigError("--precision bfloat16 needs a CPU with AVX-512 BF16 or AMX (or a GPU); this one has "
                          "neither: drop the flag to run in float32")
    if backbone.modality == "text" and precision == "float16":
        flag = "--mixed-precision" if o.mixed_precision else "--precision float16"
        raise ConfigError(f"{flag} is for image backbones; text backbone {backbone.name} runs in float32 or "
                          "--precision bfloat16 (its dense layers only: its LayerNorm epsilon and attention "
                          "scores are not safe in float16)")
    return EmbedSettings(
        outputs,
        batch_size=o.batch_size if o.batch_size is not None else GPU_BATCH_SIZE if gpus else CPU_BATCH_SIZE,
        threads=o.threads_per_worker or local_threads_per_worker(options),
        model_copies=(1 if gpus else 0) if o.model_copies is None else o.model_copies,
        precision=precision,
        max_pixels=o.max_image_pixels)
