"""The launch step of ``featurebeam extract``: everything it does before the job runs, said here and nowhere else.

``configure(options)`` turns the parsed flags into an ``ExtractConfig``: it points this process's filesystems
at the job's object storage, lists each input (one file is enough), resolves and hashes the backbone (and
stages it for a remote runner), checks that OUTDIR is empty or may be replaced and that it can be written, and
for ``--resume`` and ``--update`` that OUTDIR was started with the same settings (``--update``: that it holds a
finished feature set, whose next generation the run makes). ``prepare_output`` then readies OUTDIR for the run:
``--overwrite`` clears it, a fresh run records its settings, ``--resume`` and ``--update`` delete what a dead run
left uncommitted (and what a published generation no longer holds) and return the commit records to build on.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline.backbones.registry import resolve_backbone
from pipeline.backbones.staging import stage_backbone
from pipeline.errors import ConfigError
from pipeline.extract.config import ExtractConfig, check_flags, parse_formats
from pipeline.extract.embedding import embed_settings
from pipeline.extract.options import ExtractOptions
from pipeline.extract.runtime import LOCAL_RUNNERS, cpu_has_bfloat16, local_threads_per_worker, runner_name, uses_gpus
from pipeline.extract.settings import check_resumable, run_settings
from pipeline.flags import use_storage_options
from pipeline.folders import absolute
from pipeline.inputs import check_formats, check_text_field, resolve_input
from pipeline.outputs import check_output_dir, clear_previous_outputs
from transforms.embed.pooling import pooled_dim
from transforms.embed.protocol import Backbone
from transforms.read.tables import InputFields
from transforms.schema.fields import RESERVED_COLUMNS, OutputSpec
from transforms.schema.layout import (
    MANIFEST_NAME,
    RUN_NAME,
)
from transforms.schema.manifest import read_manifest
from transforms.write import commit_checks
from transforms.write.commit_format import current_commits
from transforms.write.generations import delete_replaced, start_update, update_in_progress

__all__ = ["configure", "prepare_output", "resolve_outputs", "EarlierRun"]


def configure(options: PipelineOptions) -> ExtractConfig:
    """The job's frozen configuration, with every check that needs the inputs, the backbone or OUTDIR done."""
    check_flags(options)
    o = options.view_as(ExtractOptions)
    use_storage_options(options, o.storage_retry_seconds)
    backbone = resolve_backbone(o.backbone, o.weights, o.preprocessing, fold_batchnorm=not o.no_fold_batchnorm,
                                tower=o.tower)
    inputs = tuple(resolve_input(uri, o.input_format, backbone.modality) for uri in o.input)
    check_formats(inputs, backbone.modality, backbone.name)
    formats = parse_formats(o.format)
    outputs = resolve_outputs(backbone, o.layer or [backbone.default_layer], o.pooling, o.feature_dtype, formats)
    local = runner_name(options) in LOCAL_RUNNERS
    gpus = uses_gpus(options)
    embed = embed_settings(o, backbone, outputs, gpus, local_threads_per_worker(options),
                           local_cpu_lacks_bfloat16=local and not gpus and not cpu_has_bfloat16())
    if not local:
        backbone = stage_backbone(backbone, remote_staging_location(options))
    output = absolute(o.output)
    if not (o.resume or o.update):
        check_output_dir(output, o.overwrite)
    fields = InputFields(o.uri_field, o.label_field, o.split_field, o.text_field, o.id_field, o.image_feature,
                         o.label_feature, max_input_bytes=o.max_input_bytes, allow_outside_paths=o.allow_outside_paths,
                         audio_feature=o.audio_feature, modality=backbone.modality)
    for spec in inputs:
        check_text_field(spec, fields)
    config = ExtractConfig(inputs, output, backbone, embed, o.records_per_shard, o.overwrite, o.max_failure_fraction,
                           o.quiet, fields, int(o.read_chunk_mb * 2**20), o.resume, template_launch=o.template_launch,
                           formats=formats, update=o.update, keep_removed=o.keep_removed)
    if o.resume or o.update:
        check_resumable(config)
        config = dataclasses.replace(config, generation=generation_to_make(config))
    return config


def generation_to_make(config: ExtractConfig) -> int:
    """The feature set generation the run makes: an update, the published one + 1; a resumed run, the first.
    ``ConfigError`` for an update of an OUTDIR with no finished set, and for ``--resume`` of an interrupted update
    (``--update`` finishes that) or of a set an update made."""
    manifest_path = FileSystems.join(config.output, MANIFEST_NAME)
    published = read_manifest(config.output).generation if FileSystems.exists(manifest_path) else None
    if config.update:
        if published is None:
            raise ConfigError(f"nothing to update in {config.output}: it holds no finished feature set "
                              f"({MANIFEST_NAME}); drop --update to make one, or use --resume to finish an "
                              "interrupted run")
        return published + 1
    updating = update_in_progress(config.output)  # said before its first commit, unsaid once it is published
    if published is not None and updating is not None and updating > published:
        raise ConfigError(f"an update of {config.output} to generation {updating} was interrupted; run it with "
                          "--update again to finish it")
    if published is not None and published > 1:  # resuming would rewrite a published generation in place
        raise ConfigError(f"{config.output} holds a finished feature set, generation {published}: there is nothing "
                          "to resume; use --update to bring it up to date with its inputs")
    return 1


class EarlierRun(NamedTuple):
    """What a run builds on: the commit records of an earlier run of the same job (``--resume``, ``--update``), and
    whether the update may keep unchanged containers whole (``transforms/keys/whole_containers.py``): it starts
    from a published generation, not an interrupted update, and every commit of it has a sources file."""

    commits: tuple[str, ...] = ()
    whole_containers: bool = False


def prepare_output(config: ExtractConfig) -> EarlierRun:
    """Ready OUTDIR for the run; returns the commit records to resume from (none for a fresh run).

    Fresh (``--overwrite``, or an empty OUTDIR): earlier outputs go, the run's settings are recorded.
    ``--resume``: what the interrupted run left uncommitted goes, and its unfinished manifest; its commit records
    are returned, readable or not, for the job to verify (``VerifyCommitFn``): those that check out are skipped,
    the others redone. ``--update``: the same, except that the published manifest stays (readers read that
    generation until the update publishes the next) and commits it has replaced are not returned."""
    if not (config.resume or config.update):
        if config.overwrite:
            clear_previous_outputs(config.output)
        with FileSystems.create(FileSystems.join(config.output, RUN_NAME)) as f:
            f.write(json.dumps(run_settings(config), indent=2).encode("utf-8"))
        return EarlierRun()
    done, unreadable = commit_checks.read_commit_records(config.output)
    interrupted = update_in_progress(config.output) is not None
    if config.update:
        done = delete_replaced(config.output, config.generation - 1, done)
        start_update(config.output, config.generation)
    leftovers = commit_checks.uncommitted_files(config.output, done)
    stale = [FileSystems.join(config.output, name) for name in (MANIFEST_NAME,)
             if not config.update and FileSystems.exists(FileSystems.join(config.output, name))]
    if leftovers or stale:
        FileSystems.delete(leftovers + stale)
    current = current_commits(done)
    whole = config.update and not interrupted and not unreadable and all(c.sources_sha256 for c in current)
    return EarlierRun(tuple(sorted([FileSystems.join(config.output, c.marker) for c in current] + unreadable)),
                      whole)


def resolve_outputs(backbone: Backbone, layers: list[str], pooling: str, dtype: str = "float32",
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
        if backbone.modality == "audio" and len(shape) > 1 and pooling == "none":
            raise ConfigError(f"--pooling none is not available for audio layer {layer!r} (one vector per frame); use "
                              "avg or max over each patch's frames")
        layer_pooling = pooling if len(shape) > 1 else "none"
        outputs.append(OutputSpec(layer, layer, layer_pooling, pooled_dim(shape, layer_pooling), dtype))
    if len({o.name for o in outputs}) != len(outputs):
        raise ConfigError("each --layer may be given once")
    clash = [o.name for o in outputs if o.name in RESERVED_COLUMNS]
    if clash and "parquet" in formats:
        raise ConfigError(f"layer {clash[0]!r} has the name of a Parquet column featurebeam writes (key, label, "
                          "split); extract it with --format tfrecord")
    return tuple(outputs)


def remote_staging_location(options: PipelineOptions) -> str:
    """Where a remote runner's workers read the backbone's weights from."""
    gcp = options.view_as(GoogleCloudOptions)
    location = gcp.staging_location or gcp.temp_location
    if not location:
        raise ConfigError(f"runner {runner_name(options)} needs --temp_location (or --staging_location): "
                          "the backbone's weights are staged there for the workers")
    return location
