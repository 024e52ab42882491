"""The extraction job: input files -> decoded images -> backbone features -> TFRecord shards + manifest.

1. ``ReadRecords`` lists the inputs on the workers, expands manifests and archives, spreads the reading;
2. ``ExtractFeatures`` decodes to the backbone's fixed uint8 input and embeds in batches (``RunInference``);
3. ``WriteFeatures`` writes ``features/part-*.tfrecord``; ``WriteFailures`` writes ``errors/part-*.jsonl``;
4. the last step writes ``manifest.json`` from the shards written and the counts, so a manifest exists only
   for a finished feature set.
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import ExtractConfig, clear_previous_outputs
from pipeline.progress import ProgressLine
from transforms import schema
from transforms.extract import ExtractFeatures
from transforms.progress import CountProgress
from transforms.records import FAILED
from transforms.sinks import WriteFailures, WriteFeatures
from transforms.sources import ReadRecords

__all__ = ["build_extraction", "run_extraction", "manifest_for"]


def _relative(root: str, paths: Iterable[str]) -> list[str]:
    prefix = root.rstrip("/") + "/"
    return sorted(p[len(prefix):] if p.startswith(prefix) else p for p in paths)


class CountWithExample(beam.CombineFn):
    """(count, smallest key) of a group: how often a failure reason occurred, and one key that shows it."""

    def create_accumulator(self):
        return 0, None

    def add_input(self, acc, key):
        return acc[0] + 1, key if acc[1] is None else min(acc[1], key)

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        keys = [k for _, k in accumulators if k is not None]
        return sum(n for n, _ in accumulators), min(keys) if keys else None

    def extract_output(self, acc):
        return acc


def manifest_for(config: ExtractConfig, shards, error_files, n_inputs, n_embedded, reasons, labels,
                 created: str, splits=()) -> schema.Manifest:
    failures = {reason: count for reason, (count, _) in sorted(reasons)}
    return schema.Manifest(
        backbone=config.backbone.describe(),
        outputs=config.outputs,
        labels=sorted(labels),
        counts={"inputs": n_inputs, "embedded": n_embedded, "failed": sum(failures.values())},
        shards=_relative(config.output, shards),
        inputs={"specs": [spec.to_json() for spec in config.inputs], "fields": config.fields.to_json()},
        error_files=_relative(config.output, error_files),
        failures_by_reason=failures,
        failure_examples={reason: example for reason, (_, example) in sorted(reasons)},
        created=created,
        splits=sorted(splits),
    )


def _write_manifest(_, config, created, shards, error_files, n_read, n_unreadable, n_embedded, reasons, labels,
                    splits):
    n_inputs = n_read + n_unreadable  # every record found, whether or not its bytes could be read
    manifest = manifest_for(config, shards, error_files, n_inputs, n_embedded, reasons, labels, created, splits)
    return schema.write_manifest(config.output, manifest)


def _counted(pcoll, progress_dir, stage: str):
    if not progress_dir:
        return pcoll
    return pcoll | f"Progress: {stage}" >> beam.ParDo(CountProgress(progress_dir, stage))


def build_extraction(p: beam.Pipeline, config: ExtractConfig, progress_dir: str | None = None) -> None:
    """Add the whole extraction job to ``p``; with ``progress_dir``, its steps also report progress there."""
    read = p | "Read records" >> ReadRecords(config.inputs, config.fields, config.chunk_bytes)
    _counted(read["sources"], progress_dir, "listed")
    records = _counted(read["records"], progress_dir, "read")
    extracted = records | "Extract features" >> ExtractFeatures(
        config.backbone, config.outputs, config.batch_size, config.threads_per_worker, config.max_pixels)
    _counted(extracted["embedded"], progress_dir, "embedded")
    shards = extracted["embedded"] | "Write features" >> WriteFeatures(config.output, config.outputs,
                                                                      config.num_shards)
    failures = (read[FAILED], extracted[FAILED]) | "All failures" >> beam.Flatten()
    _counted(failures, progress_dir, "failed")
    error_files = failures | "Write failures" >> WriteFailures(config.output)

    # Counted where they are produced: a Flatten of the records would make the runner materialise every payload.
    n_read = read["records"] | "Count records read" >> beam.combiners.Count.Globally()
    n_unreadable = read[FAILED] | "Count unreadable" >> beam.combiners.Count.Globally()
    n_embedded = extracted["embedded"] | "Count embedded" >> beam.combiners.Count.Globally()
    reasons = (failures
               | "Failure reason" >> beam.Map(lambda f: (f.reason, f.key))
               | "Count failures by reason" >> beam.CombinePerKey(CountWithExample()))
    labels = (read["records"]
              | "Label of input" >> beam.Map(lambda r: r.label)
              | "Labelled only" >> beam.Filter(lambda label: label is not None)
              | "Label vocabulary" >> beam.Distinct())
    splits = (read["records"]
              | "Split of input" >> beam.Map(lambda r: r.split)
              | "With a split only" >> beam.Filter(lambda split: split is not None)
              | "Split names" >> beam.Distinct())
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _ = (p
         | "Start manifest" >> beam.Create([None])
         | "Write manifest" >> beam.Map(
             _write_manifest, config, created,
             shards=beam.pvalue.AsList(shards),
             error_files=beam.pvalue.AsList(error_files),
             n_read=beam.pvalue.AsSingleton(n_read),
             n_unreadable=beam.pvalue.AsSingleton(n_unreadable),
             n_embedded=beam.pvalue.AsSingleton(n_embedded),
             reasons=beam.pvalue.AsList(reasons),
             labels=beam.pvalue.AsList(labels),
             splits=beam.pvalue.AsList(splits)))


class CountsMismatchError(RuntimeError):
    pass


def run_extraction(config: ExtractConfig, options: PipelineOptions, progress: bool = False,
                   progress_every: float = 5.0) -> schema.Manifest:
    """Run the job to completion and return its manifest; the counts must add up.

    ``progress``: print a live progress line on stderr (local runners: the workers share this machine)."""
    if config.overwrite:
        clear_previous_outputs(config.output)
    if progress and config.threads_per_worker is not None:  # a local run
        with tempfile.TemporaryDirectory(prefix="featurebeam-progress-") as progress_dir:
            with ProgressLine(progress_dir, log_every=progress_every), beam.Pipeline(options=options) as p:
                build_extraction(p, config, progress_dir)
    else:
        with beam.Pipeline(options=options) as p:
            build_extraction(p, config)
    manifest = schema.read_manifest(config.output)
    counts = manifest.counts
    if counts["inputs"] != counts["embedded"] + counts["failed"]:
        raise CountsMismatchError(
            f"records were lost: {counts['inputs']} inputs but {counts['embedded']} embedded + "
            f"{counts['failed']} failed")
    return manifest

