"""The launch step of ``featurebeam extract``: everything it does before the job runs, said here and nowhere else.

``configure(options)`` turns the parsed flags into an ``ExtractConfig``: it points this process's filesystems
at the job's object storage, lists each input (one file is enough), resolves and hashes the backbone (and
stages it for a remote runner), checks that OUTDIR is empty or may be replaced and that it can be written, and
for ``--resume`` that OUTDIR was started with the same settings. ``prepare_output`` then readies OUTDIR for
the run: ``--overwrite`` clears it, a fresh run records its settings, ``--resume`` deletes the dead run's
uncommitted files and returns its commit records.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline.backbones.registry import resolve_backbone
from pipeline.backbones.spec import BackboneSpec
from pipeline.backbones.staging import stage_backbone
from pipeline.extract.options import (
    CPU_BATCH_SIZE,
    GPU_BATCH_SIZE,
    LOCAL_RUNNERS,
    ConfigError,
    ExtractConfig,
    ExtractOptions,
    absolute,
    check_flags,
    cpu_has_bfloat16,
    local_threads_per_worker,
    parse_formats,
    precision_of,
    runner_name,
    uses_gpus,
)
from pipeline.extract.settings import check_resumable, run_settings
from pipeline.folders import objects_under
from transforms.embed.pooling import pooled_dim
from transforms.read import tables
from transforms.read.files import open_regular
from transforms.read.input_specs import (
    AUTO,
    AUTO_TEXT,
    IMAGE_FORMATS,
    TEXT_FORMATS,
    InputSpec,
    escape_glob,
    is_glob,
    local_path,
)
from transforms.read.tables import InputFields
from transforms.schema.fields import RESERVED_COLUMNS, OutputSpec
from transforms.schema.layout import (
    COMMITS_DIR,
    ERRORS_DIR,
    FEATURES_DIR,
    MANIFEST_NAME,
    PENDING_DIR,
    RETIRED_DIR,
    RUN_NAME,
)
from transforms.worker.storage import (
    bound_storage_retries,
    bucket_exists,
    bucket_of,
    share_storage_options,
    use_storage_emulator,
)
from transforms.write import commit_checks

__all__ = ["configure", "prepare_output", "check_formats", "check_text_field", "resolve_input", "resolve_outputs",
           "check_output_dir", "clear_previous_outputs", "use_storage_options"]


def configure(options: PipelineOptions) -> ExtractConfig:
    """The job's frozen configuration, with every check that needs the inputs, the backbone or OUTDIR done."""
    check_flags(options)
    o = options.view_as(ExtractOptions)
    gpus = uses_gpus(options)
    batch_size = o.batch_size if o.batch_size is not None else GPU_BATCH_SIZE if gpus else CPU_BATCH_SIZE
    use_storage_options(options)
    backbone = resolve_backbone(o.backbone, o.weights, o.preprocessing, fold_batchnorm=not o.no_fold_batchnorm)
    inputs = tuple(resolve_input(uri, o.input_format, backbone.modality) for uri in o.input)
    check_formats(inputs, backbone.modality, backbone.name)
    precision = precision_of(options)
    if precision == "bfloat16" and not gpus and runner_name(options) in LOCAL_RUNNERS and not cpu_has_bfloat16():
        raise ConfigError("--precision bfloat16 needs a CPU with AVX-512 BF16 or AMX (or a GPU); this one has "
                          "neither: drop the flag to run in float32")
    if backbone.modality == "text" and precision == "float16":
        flag = "--mixed-precision" if o.mixed_precision else "--precision float16"
        raise ConfigError(f"{flag} is for image backbones; text backbone {backbone.name} runs in float32 or "
                          "--precision bfloat16 (its dense layers only: its LayerNorm epsilon and attention "
                          "scores are not safe in float16)")
    if runner_name(options) not in LOCAL_RUNNERS:
        backbone = stage_backbone(backbone, remote_staging_location(options))
    formats = parse_formats(o.format)
    outputs = resolve_outputs(backbone, o.layer or [backbone.default_layer], o.pooling, o.feature_dtype, formats)
    output = absolute(o.output)
    if not o.resume:
        check_output_dir(output, o.overwrite)
    threads = o.threads_per_worker or local_threads_per_worker(options)
    fields = InputFields(o.uri_field, o.label_field, o.split_field, o.text_field, o.id_field, o.image_feature,
                         o.label_feature, max_input_bytes=o.max_input_bytes, allow_outside_paths=o.allow_outside_paths)
    for spec in inputs:
        check_text_field(spec, fields)
    config = ExtractConfig(inputs, output, backbone, outputs, batch_size, o.records_per_shard, threads, o.overwrite,
                           o.max_failure_fraction, o.quiet, fields, int(o.read_chunk_mb * 2**20), o.max_image_pixels,
                           o.resume, model_copies=(1 if gpus else 0) if o.model_copies is None else o.model_copies,
                           precision=precision, template_launch=o.template_launch, formats=formats)
    if o.resume:
        check_resumable(config)
    return config


def prepare_output(config: ExtractConfig) -> tuple[str, ...]:
    """Ready OUTDIR for the run; returns the commit records to resume from (none for a fresh run).

    Fresh (``--overwrite``, or an empty OUTDIR): earlier outputs go, the run's settings are recorded.
    ``--resume``: what the interrupted run left uncommitted goes; its commit records are returned, readable or
    not, for the job to verify (``VerifyCommitFn``): those that check out are skipped, the others redone."""
    if not config.resume:
        if config.overwrite:
            clear_previous_outputs(config.output)
        with FileSystems.create(FileSystems.join(config.output, RUN_NAME)) as f:
            f.write(json.dumps(run_settings(config), indent=2).encode("utf-8"))
        return ()
    done, unreadable = commit_checks.read_commit_records(config.output)
    leftovers = commit_checks.uncommitted_files(config.output, done)
    stale = [FileSystems.join(config.output, name) for name in (MANIFEST_NAME,)
             if FileSystems.exists(FileSystems.join(config.output, name))]
    if leftovers or stale:
        FileSystems.delete(leftovers + stale)
    return tuple(sorted([FileSystems.join(config.output, c.marker) for c in done] + unreadable))


def use_storage_options(options: PipelineOptions) -> None:
    """Let the launcher's own listing and checks see object storage as the workers will (S3 endpoint and
    keys, GCS emulator, how long a failing call is retried)."""
    FileSystems.set_options(options)
    use_storage_emulator()
    share_storage_options(options)
    bound_storage_retries(options.view_as(ExtractOptions).storage_retry_seconds)


def _missing_bucket(uri: str) -> str | None:
    found = bucket_of(uri)
    if found and bucket_exists(uri, FileSystems._pipeline_options) is False:
        scheme, bucket = found
        return f"bucket {scheme}://{bucket} does not exist"
    return None


def check_formats(inputs: Sequence[InputSpec], modality: str, backbone: str) -> None:
    """Every input in a format a backbone of ``modality`` can read: images from loose files, manifests, tar
    shards and TFRecord files; texts from tables, lines, and loose files (or manifests of them) of one text each."""
    allowed = TEXT_FORMATS if modality == "text" else IMAGE_FORMATS
    for spec in inputs:
        if spec.format in allowed or spec.format in (AUTO, AUTO_TEXT):
            continue
        if modality == "text":
            raise ConfigError(f"backbone {backbone} embeds text, but input {spec.uri} is read as images "
                              f"({spec.format}): give .jsonl/.csv/.tsv tables, .txt files, or --input-format lines")
        raise ConfigError(f"input {spec.uri} is read as texts (--input-format {spec.format}), but backbone "
                          f"{backbone} embeds images; choose a text backbone (minilm_l6)")


def check_text_field(spec: InputSpec, fields: InputFields) -> None:
    """A text table given as one file whose first row has no ``--text-field`` is refused, naming the fields it
    has (one line is read). Globs and directories are left to the workers, which record each such row."""
    if spec.format != "text" or spec.pattern != escape_glob(spec.uri):
        return
    try:
        with open_regular(spec.uri) as f:
            first = next(tables.iter_rows(spec.uri, tables.bounded_lines(f, fields.max_input_bytes)), None)
    except Exception:  # what cannot be read is recorded by the workers, with its reason
        return
    if first is None or not isinstance(first[1], dict) or fields.text in first[1]:
        return
    names = ", ".join(repr(name) for name in list(first[1])[:12]) or "none"
    raise ConfigError(f"input {spec.uri}: its first row has no field {fields.text!r} (it has {names}); name the "
                      "field that holds the text with --text-field")


def resolve_input(uri: str, input_format: str = "auto", modality: str = "image") -> InputSpec:
    """Classify one ``--input`` and check, cheaply, that it names at least one file (no data is read).

    A path that exists (a file or directory; an object or prefix) is taken literally, glob characters and all;
    only then is it a glob. A ``file://`` URI is the local path it names. ``auto`` formats follow the file
    extension as read by a backbone of ``modality``: a ``.jsonl`` is a manifest of images, or a table of texts."""
    try:
        uri = absolute(local_path(uri))
    except ValueError as e:
        raise ConfigError(f"input {e}") from None
    fmt = None if input_format == "auto" else input_format
    if "://" in uri and (missing := _missing_bucket(uri)):
        raise ConfigError(f"input {uri}: {missing}")
    literal = _literal_input(uri, fmt, modality)
    if literal is not None:
        return literal
    if is_glob(uri):
        spec = InputSpec.glob(uri, fmt, modality)
        try:
            (result,) = FileSystems.match([spec.pattern], limits=[1])
        except Exception as e:
            raise ConfigError(f"cannot list input {uri}: {_first_line(e)}") from None
        if result.metadata_list:
            return spec
    elif "://" not in uri:
        raise ConfigError(f"input {uri} does not exist")
    raise ConfigError(f"input {uri} matches no files")


def _literal_input(uri: str, fmt: str | None, modality: str = "image") -> InputSpec | None:
    """The spec of an input that exists as named, taken literally: a file or object, or a directory or prefix
    that holds files (an empty directory is a ``ConfigError``); None when nothing has that very name.

    Checked without matching the spec's escaped pattern, which would list all that lies under the part of the
    path before its first glob character (the workers do match it)."""
    if "://" not in uri:
        if os.path.isfile(uri):
            return InputSpec.file(uri, fmt, modality)
        if not os.path.isdir(uri):
            return None
        if not any(files for _, _, files in os.walk(uri)):
            raise ConfigError(f"input {uri} matches no files")
        return InputSpec.directory(uri, fmt or "files")
    if not uri.endswith("/") and FileSystems.exists(uri):
        return InputSpec.file(uri, fmt, modality)
    try:  # the store's listing of a literal prefix, first page only
        listing = FileSystems.get_filesystem(uri)._list(uri.rstrip("/") + "/")
        holds_objects = next(iter(listing), None) is not None
    except Exception as e:
        raise ConfigError(f"cannot list input {uri}: {_first_line(e)}") from None
    return InputSpec.directory(uri, fmt or "files") if holds_objects else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def resolve_outputs(backbone: BackboneSpec, layers: list[str], pooling: str, dtype: str = "float32",
                    formats: tuple[str, ...] = ("tfrecord",)) -> tuple[OutputSpec, ...]:
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
        outputs.append(OutputSpec(layer, layer, layer_pooling, pooled_dim(shape, layer_pooling), dtype))
    if len({o.name for o in outputs}) != len(outputs):
        raise ConfigError("each --layer may be given once")
    clash = [o.name for o in outputs if o.name in RESERVED_COLUMNS]
    if clash and "parquet" in formats:
        raise ConfigError(f"layer {clash[0]!r} has the name of a Parquet column featurebeam writes (key, label, "
                          "split); extract it with --format tfrecord")
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
                f.write(b"featurebeam write test\n")  # not empty: Beam's S3 writer cannot complete an empty upload
            FileSystems.delete([probe])
        except Exception as e:
            raise ConfigError(f"output {output} is not writable: {_first_line(e)}") from None


def clear_previous_outputs(output: str, names=(MANIFEST_NAME, RUN_NAME, FEATURES_DIR, ERRORS_DIR, COMMITS_DIR,
                                              PENDING_DIR, RETIRED_DIR)) -> None:
    """What --overwrite replaces: the job's own outputs (by default the features, dead letters and
    manifest of an extraction), nothing else. Object stores have no folders: a folder there is every object
    under its prefix."""
    paths = []
    for name in names:
        path = FileSystems.join(output, name)
        if FileSystems.exists(path):  # a file, or a local folder (deleted with what it holds)
            paths.append(path)
        elif "://" in output:
            paths += objects_under(path)
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
