"""The frozen configuration of ``featurebeam extract`` and the judging of its flags: no side effects.

``check_flags`` judges every value and combination that needs no I/O (the embedding flags in ``embedding.py``,
which also turns them into one ``EmbedSettings``); ``ExtractConfig`` is the frozen result that the job is
built from (made by ``launch.configure``, which resolves inputs, backbone and output). Mistakes raise
``ConfigError`` with one line that says what to change, before any worker starts. Transforms never see
``PipelineOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.errors import ConfigError
from pipeline.extract.embedding import check_embedding_flags
from pipeline.extract.options import ExtractOptions
from pipeline.extract.runtime import runner_name
from transforms.embed.protocol import Backbone
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import InputSpec
from transforms.read.sources import DEFAULT_CHUNK_BYTES
from transforms.read.tables import InputFields
from transforms.schema.layout import FORMATS as FORMATS_WRITTEN

__all__ = ["ExtractConfig", "check_flags", "parse_formats"]


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
    update: bool = False             # --update: a new generation of a finished feature set
    keep_removed: bool = False       # --keep-removed: an update keeps the records of inputs that are gone
    generation: int = 1              # the feature set generation this run makes (an update: the last one + 1)


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
    if o.records_per_shard < 1:
        raise ConfigError(f"--records-per-shard must be at least 1, got {o.records_per_shard}")
    if o.resume and o.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume keeps what OUTDIR holds "
                          "and finishes it, --overwrite replaces it; choose one")
    if o.update and o.overwrite:
        raise ConfigError("--update and --overwrite contradict each other: --update keeps what OUTDIR holds and "
                          "embeds only what is new or changed, --overwrite replaces it; choose one")
    if o.keep_removed and not o.update:
        raise ConfigError("--keep-removed says what an --update does with records whose inputs are gone; add --update")
    if not 0.0 <= o.max_failure_fraction <= 1.0:
        raise ConfigError(f"--max-failure-fraction must be between 0 and 1, got {o.max_failure_fraction}")
    if o.gpu and runner_name(options) != "DataflowRunner":
        raise ConfigError("--gpu asks Dataflow for GPU workers and needs --runner DataflowRunner; a local run "
                          "uses this machine's GPU when it has one")
    if o.max_input_bytes < 1:
        raise ConfigError(f"--max-input-bytes must be at least 1, got {o.max_input_bytes}")
    if o.storage_retry_seconds <= 0:
        raise ConfigError(f"--storage-retry-seconds must be positive, got {o.storage_retry_seconds:g}")
    if o.read_chunk_mb <= 0:
        raise ConfigError(f"--read-chunk-mb must be positive, got {o.read_chunk_mb:g}")
    parse_formats(o.format)
    check_embedding_flags(o)
