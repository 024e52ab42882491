"""The extraction job: input files -> decoded images -> backbone features -> TFRecord shards + manifest.

1. ``ReadRecords`` lists the inputs on the workers with their source versions, expands manifests and archives,
   spreads the reading (on ``--resume`` and ``--update``, the earlier commits are verified first, and the
   records of those that check out are skipped there when their input is listed at the same version, by a
   join; the same join finds the committed records that are stale, which ``DropStaleRecords`` drops; an update
   keeps unchanged containers whole, unread, ``KeepWholeContainers``); every input's key is counted by
   fingerprint, so keys given more than once are known;
2. ``ExtractFeatures`` decodes to the backbone's fixed uint8 input and embeds in batches (``RunInference``);
3. ``CommitFeatures`` writes and commits ``features/part-<id>.tfrecord`` shards (and ``.parquet`` ones),
   ``CommitFailures`` the dead letters in ``errors/``, each with a commit record in ``commits/`` (see
   ``transforms/write/commit_format.py``);
4. once every commit of the run is made, ``ResolveDuplicates`` keeps each key in one commit only (on the
   workers, by fingerprint bucket), and the last step writes ``manifest.json`` from the commit records (small
   summaries), so a manifest exists only for a finished feature set; an update's manifest is its new
   generation, and only once it is written do the older commits it replaced go; then the scratch files go.

No step holds every key: keys travel as packed fingerprints, written to scratch files under
``OUTDIR/.pending/shuffle``, and the runner's shuffle carries references to those (``transforms/keys/spill.py``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import tempfile

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.extract.config import ExtractConfig
from pipeline.extract.launch import EarlierRun, prepare_output
from pipeline.extract.lease import OutputLease
from pipeline.extract.progress import ProgressLine, rate_unit
from pipeline.extract.runtime import LOCAL_RUNNERS, runner_name
from transforms.embed.extract import ExtractFeatures
from transforms.keys.dedupe import CountRepeatedKeys, ResolveDuplicates
from transforms.keys.done_keys import RETAINED, STALE, DropStaleRecords
from transforms.keys.spill import clear_scratch, scratch_folder
from transforms.keys.whole_containers import KEPT, KeepWholeContainers
from transforms.read.sources import SKIPPED, ReadRecords, unit_keys
from transforms.schema.elements import FAILED
from transforms.schema.layout import ERRORS_DIR, FEATURES_DIR, shard_format
from transforms.schema.manifest import Manifest, read_manifest, write_manifest
from transforms.worker.memory import ARENAS_VARIABLE, FreedMemoryTrimmer, limit_malloc_arenas
from transforms.worker.process import TRIM_MEMORY, ready_process
from transforms.write import commit_checks
from transforms.write.commit_format import current_commits
from transforms.write.generations import delete_replaced, end_update, generation_counts
from transforms.write.progress import CountProgress
from transforms.write.sinks import CommitFailures, CommitFeatures

__all__ = ["build_extraction", "run_extraction", "manifest_from_commits", "runtime_of"]


def manifest_from_commits(config: ExtractConfig, all_commits, n_inputs: int, created: str,
                          n_resumed: int = 0, duplicates: tuple[int, str | None] = (0, None), n_retired: int = 0,
                          n_redone: int = 0, n_retained: int = 0, earlier_generations=()) -> Manifest:
    """The manifest of a feature set, from its commit records (those it holds: ``current_commits``) and the
    number of inputs the job found (``duplicates``: how many inputs repeated a key given before, and one such
    key; ``n_retained``: records an update kept though their inputs are gone); ``earlier_generations``: the
    counts of the generations before ``config.generation``."""
    features = [c for c in all_commits if c.kind == FEATURES_DIR]
    errors = [c for c in all_commits if c.kind == ERRORS_DIR]
    reasons = commit_checks.failure_reasons(errors)
    counts = {"inputs": n_inputs, "embedded": sum(c.records for c in features),
              "failed": sum(c.records for c in errors), "duplicates": duplicates[0]}
    if n_retained:
        counts["retained"] = n_retained
    this = {"generation": config.generation, "created": created,
            **generation_counts(all_commits, config.generation)}
    return Manifest(
        backbone=config.backbone.describe(),
        outputs=config.embed.outputs,
        labels=sorted({label for c in features for label in c.labels}),
        counts=counts,
        shards=sorted(f.path for c in features if c.records for f in c.files
                      if shard_format(f.path) == "tfrecord"),
        parquet_shards=sorted(f.path for c in features if c.records for f in c.files
                              if shard_format(f.path) == "parquet"),
        inputs={"specs": [spec.to_json() for spec in config.inputs], "fields": config.fields.to_json()},
        error_files=sorted(c.path for c in errors if c.records),
        failures_by_reason={reason: n for reason, (n, _) in reasons.items()},
        failure_examples={reason: key for reason, (_, key) in reasons.items()},
        created=created,
        splits=sorted({split for c in features for split in c.splits}),
        resumed_records=n_resumed,
        duplicate_example=duplicates[1],
        retired_commits=n_retired,
        redone_records=n_redone,
        runtime=runtime_of(config),
        generation=config.generation,
        generations=(*[g for g in earlier_generations if g.get("generation", 0) < config.generation], this),
    )


def runtime_of(config: ExtractConfig) -> dict:
    """How the forward pass ran, as this process sees its machine (on a remote runner, a worker's): the CPU, whether
    TensorFlow's oneDNN kernels were on, the precision."""
    from transforms.worker.cpu import cpu_kind, onednn_state

    cpu = cpu_kind()
    return {"cpu": cpu.describe(), "onednn": onednn_state(config.embed.onednn, cpu=cpu),
            "onednn_choice": config.embed.onednn, "precision": config.embed.precision}


def _write_manifest(_, config: ExtractConfig, created: str, n_read, n_unreadable, n_skipped, repeated, resolved,
                    redone, retained):
    """Once every commit is de-duplicated (the ``resolved`` side input): read the commit records, earlier runs'
    included, and write the manifest; then the commits that an update replaced go."""
    ready_process()
    commits = commit_checks.read_commits(config.output)
    all_commits = current_commits(commits)
    earlier = read_manifest(config.output).generations if config.update else ()
    _, _, example = resolved
    manifest = manifest_from_commits(config, all_commits, n_read + n_unreadable + n_skipped, created, n_skipped,
                                     (repeated, example if repeated else None), len(redone), sum(redone),
                                     sum(retained), earlier)
    path = write_manifest(config.output, manifest)
    delete_replaced(config.output, config.generation, commits)
    end_update(config.output)
    return path


def _counted(pcoll, progress_dir, stage: str, weight=None, label: str | None = None):
    if not progress_dir:
        return pcoll
    return pcoll | f"Progress: {label or stage}" >> beam.ParDo(CountProgress(progress_dir, stage, weight=weight))


def _records_in(unit) -> int:
    return len(unit_keys(unit))


def build_extraction(p: beam.Pipeline, config: ExtractConfig, progress_dir: str | None = None,
                     earlier: EarlierRun = EarlierRun()) -> None:
    """Add the whole extraction job to ``p``; with ``progress_dir``, its steps also report progress there.

    ``earlier``: commit records of an earlier run of the same job; each is verified on the workers, the
    keys of those whose files check out are skipped, the others are retired and their inputs done again (and
    whether an update keeps unchanged containers whole)."""
    verified, redone, keep_whole = None, None, None
    if not earlier.commits:
        redone = p | "No earlier commits" >> beam.Create([])
    else:
        verify = commit_checks.VerifyCommitFn(config.output, parse=not earlier.whole_containers)
        checked = (p
                   | "Earlier commit records" >> beam.Create(list(earlier.commits))
                   | "Spread checks over workers" >> beam.Reshuffle()
                   | "Verify earlier commits" >> beam.ParDo(verify).with_outputs(commit_checks.REDONE, main="commits"))
        verified, redone = checked.commits, checked[commit_checks.REDONE]
        if earlier.whole_containers:
            damaged = redone | "Count damaged commits" >> beam.combiners.Count.Globally()
            keep_whole = KeepWholeContainers(config.output, verified, damaged)
    read = p | "Read records" >> ReadRecords(config.inputs, config.fields, config.chunk_bytes, verified,
                                             scratch_folder(config.output, "resume"), config.keep_removed, keep_whole)
    kept_whole = read.get(KEPT) or (p | "No containers kept whole" >> beam.Create([]))
    if verified is None:
        dropped = p | "No stale records" >> beam.Create([])
        retained = p | "None retained" >> beam.Create([])
    else:
        dropped = read[STALE] | "Drop stale records" >> DropStaleRecords(config.output, config.generation)
        retained = read[RETAINED]
    _counted(read["sources"], progress_dir, "listed")
    _counted(read["units"], progress_dir, "expected", weight=_records_in)  # inputs known once files are expanded
    _counted(read[SKIPPED], progress_dir, "skipped", weight=len)  # a tuple of keys per unit
    for stage in ("expected", "skipped"):  # a record count per container kept whole
        _counted(kept_whole, progress_dir, stage, weight=int, label=f"{stage} (kept whole)")
    records = _counted(read["records"], progress_dir, "read")
    extracted = records | "Extract features" >> ExtractFeatures(config.backbone, config.embed)
    _counted(extracted["embedded"], progress_dir, "embedded")
    feature_commits = extracted["embedded"] | "Commit features" >> CommitFeatures(
        config.output, config.embed.outputs, config.records_per_shard, config.formats, config.generation)
    failures = (read[FAILED], extracted[FAILED]) | "All failures" >> beam.Flatten()
    _counted(failures, progress_dir, "failed")
    error_commits = failures | "Commit failures" >> CommitFailures(config.output, config.records_per_shard,
                                                                   config.generation)

    # Counted where they are produced: a Flatten of the records would make the runner materialise every payload.
    n_read = read["records"] | "Count records read" >> beam.combiners.Count.Globally()
    n_unreadable = read[FAILED] | "Count unreadable" >> beam.combiners.Count.Globally()
    n_skipped = ((read[SKIPPED] | "Skipped per unit" >> beam.Map(len), kept_whole)
                 | "Skipped and kept whole" >> beam.Flatten()
                 | "Count skipped" >> beam.CombineGlobally(sum))
    repeated = ((read["records"] | "Keys read" >> beam.Map(lambda r: r.key),
                 read[FAILED] | "Keys unreadable" >> beam.Map(lambda f: f.key),
                 read[SKIPPED])  # packed where produced: no Flatten of single keys (skipped: tuples of them)
                | "Repeated keys" >> CountRepeatedKeys(scratch_folder(config.output, "repeats")))
    n_commits = ((feature_commits, error_commits, dropped)  # stale records are dropped by then too
                 | "Every commit of the run" >> beam.Flatten()
                 | "Count commits" >> beam.combiners.Count.Globally())
    distinct = (p
                | "Start counting keys" >> beam.Create([None])
                | "Distinct keys held" >> beam.Map(
                    lambda _, read, unreadable, skipped, repeats, kept: (read + unreadable + skipped - repeats
                                                                         + sum(kept)),
                    *(beam.pvalue.AsSingleton(n) for n in (n_read, n_unreadable, n_skipped, repeated)),
                    beam.pvalue.AsList(retained)))
    resolved = n_commits | "Keep each key once" >> ResolveDuplicates(config.output, config.records_per_shard,
                                                                     distinct, config.generation)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _ = (p
         | "Start manifest" >> beam.Create([None])
         | "Write manifest" >> beam.Map(
             _write_manifest, config, created,
             n_read=beam.pvalue.AsSingleton(n_read),
             n_unreadable=beam.pvalue.AsSingleton(n_unreadable),
             n_skipped=beam.pvalue.AsSingleton(n_skipped),
             repeated=beam.pvalue.AsSingleton(repeated),
             resolved=beam.pvalue.AsSingleton(resolved),
             redone=beam.pvalue.AsList(redone),
             retained=beam.pvalue.AsList(retained))
         | "Delete scratch files" >> beam.Map(_clear_scratch, config.output))


def _clear_scratch(_, output: str) -> None:
    """Once the manifest is written, the scratch files of the run's shuffles (``transforms/keys/spill.py``) go."""
    ready_process()
    clear_scratch(output)


@contextlib.contextmanager
def _local_memory(local: bool):
    """A local run's launcher and workers give freed memory back as they go (``transforms.worker.memory``): the
    launcher carries every stage's outputs between its workers, and would otherwise grow with the run's length."""
    if not local:
        yield
        return
    previous = {name: os.environ.get(name) for name in (TRIM_MEMORY, ARENAS_VARIABLE)}
    limit_malloc_arenas()  # here, and (MALLOC_ARENA_MAX) in the worker processes this run starts
    os.environ[TRIM_MEMORY] = "1"  # those workers trim too (``ready_process``)
    try:
        with FreedMemoryTrimmer():
            yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class CountsMismatchError(RuntimeError):
    pass


def run_extraction(config: ExtractConfig, options: PipelineOptions, progress: bool = False,
                   progress_every: float = 5.0, log=_stderr) -> Manifest | None:
    """Run the job to completion and return its manifest; the counts must add up.

    ``progress``: print a live progress line on stderr (local runners: the workers share this machine).
    With ``--dry_run`` (a remote runner builds the whole job and does not submit it) or ``--template_location``
    (the job is staged as a template, to run later) nothing is written to OUTDIR and None is returned. A
    Flex Template launch (``template_launch``) stages the job to run right away: OUTDIR is prepared first."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, TestOptions

    if options.view_as(TestOptions).dry_run or options.view_as(GoogleCloudOptions).template_location:
        launching = config.template_launch and not options.view_as(TestOptions).dry_run
        earlier = prepare_output(config) if launching else EarlierRun()
        with beam.Pipeline(options=options) as p:
            build_extraction(p, config, earlier=earlier)
        return None
    with OutputLease(config.output, takeover=config.resume or config.update or config.overwrite, log=log), \
            _local_memory(runner_name(options) in LOCAL_RUNNERS):
        earlier = prepare_output(config)
        if progress and runner_name(options) in LOCAL_RUNNERS:  # the workers share this machine
            with tempfile.TemporaryDirectory(prefix="featurebeam-progress-") as progress_dir:
                unit = rate_unit(config.backbone.modality)
                with ProgressLine(progress_dir, log_every=progress_every, unit=unit), \
                        beam.Pipeline(options=options) as p:
                    build_extraction(p, config, progress_dir, earlier)
        else:
            with beam.Pipeline(options=options) as p:
                build_extraction(p, config, earlier=earlier)
    manifest = read_manifest(config.output)
    counts = manifest.counts
    if counts["inputs"] + counts.get("retained", 0) != counts["embedded"] + counts["failed"] + counts.get(
            "duplicates", 0):
        raise CountsMismatchError(
            f"records were lost: {counts['inputs']} inputs"
            + (f" + {counts['retained']} retained" if counts.get("retained") else "")
            + f" but {counts['embedded']} embedded + {counts['failed']} failed + {counts.get('duplicates', 0)}"
            " duplicates")
    return manifest
