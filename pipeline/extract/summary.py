"""What ``featurebeam extract`` prints: the summary of a finished run, the line for a staged or dry-run job,
and the warning for records too large to be useful."""

from __future__ import annotations

from pipeline.extract.progress import rate_unit

__all__ = ["format_summary", "update_line", "format_staged", "large_record_warnings", "input_notes", "text_input_notes",
           "audio_input_notes", "LARGE_RECORD_FLOATS"]

LARGE_RECORD_FLOATS = 50_000  # --pooling none beyond this many floats per record gets a warning


def _kept_by(manifest) -> str:
    if manifest.generation > 1:
        return "committed already and still current"
    return "committed by the interrupted run"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def update_line(generation: dict, seconds: float) -> str:
    """``featurebeam: generation 3: 10,000 new, 120 changed, 35 removed, 999,845 kept, in 2 min``."""
    counts = ", ".join(f"{generation.get(name, 0):,} {name}" for name in ("new", "changed", "removed", "kept"))
    return f"featurebeam: generation {generation['generation']}: {counts}, in {_duration(seconds)}"


def format_summary(manifest, output: str, seconds: float) -> str:
    """The run in a few lines: counts that add up, the outputs, where things are, an example of each failure."""
    c = manifest.counts
    done_now = c["embedded"] + c["failed"] - manifest.resumed_records  # what this run did: resumed records are
    rate = max(0, done_now) / seconds if seconds > 0 else 0.0        # embedded and failed ones alike
    duplicates = c.get("duplicates", 0)
    lines = [f"featurebeam: embedded {c['embedded']} of {c['inputs']} inputs ({c['failed']} failed"
             + (f", {duplicates} duplicates" if duplicates else "") + ") "
             f"in {seconds:.1f} s ({rate:.1f} {rate_unit(manifest.backbone.get('modality'))}/s"
             + (" this run" if manifest.resumed_records else "") + ")"
             + (f"; {manifest.resumed_records} of them were {_kept_by(manifest)} and skipped"
                if manifest.resumed_records else "")
             + (f"; {manifest.retired_commits} of its commits were damaged and retired, and their "
                f"{manifest.redone_records} inputs done again" if manifest.retired_commits else ""),
             f"  backbone  {manifest.backbone['name']} (weights sha256 {manifest.backbone['weights_sha256'][:16]}...)"]
    if manifest.generation > 1 and manifest.generations:
        lines.insert(0, update_line(manifest.generations[-1], seconds))
    runtime = manifest.runtime
    if runtime:
        lines.append(f"  runtime   {runtime.get('precision', 'float32')}, oneDNN {runtime.get('onednn', '?')}, on "
                     f"{runtime.get('cpu', 'an unknown CPU')}")
    for o in manifest.outputs:
        lines.append(f"  output    {o.name}: {o.dim} x {o.dtype}, pooling {o.pooling}, Example key {o.example_key!r}")
    if manifest.labels:
        shown = ", ".join(_short(label, 40) for label in manifest.labels[:12]) + (
            " ..." if len(manifest.labels) > 12 else "")
        lines.append(f"  labels    {len(manifest.labels)}: {shown}")
    shards = " + ".join(f"{len(files)} {name}" for name, files in (("TFRecord", manifest.shards),
                                                                  ("Parquet", manifest.parquet_shards)) if files)
    lines.append(f"  shards    {shards or 0} in {output.rstrip('/')}/features/")
    lines.append(f"  manifest  {output.rstrip('/')}/manifest.json")
    if duplicates:
        example = manifest.duplicate_example  # none when every copy was skipped as done by an earlier run
        lines.append(f"  duplicate {duplicates} inputs repeated a key given before (kept once)"
                     + (f", e.g. {_short(example)}" if example else ""))
    for reason, n in sorted(manifest.failures_by_reason.items(), key=lambda kv: -kv[1])[:5]:
        example = manifest.failure_examples.get(reason)
        lines.append(f"  failed    {n} x {_short(reason)}" + (f", e.g. {_short(example)}" if example else ""))
    if manifest.failures_by_reason:
        lines.append(f"  errors    one JSON line per failed input in {output.rstrip('/')}/errors/")
    return "\n".join(lines)


def _short(text, limit: int = 200) -> str:
    """A value as the summary shows it: at most ``limit`` characters, one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_staged(runner: str, template: str | None, template_launch: bool, output: str) -> str:
    """The line for a job that was built but not run here (``--dry_run``, ``--template_location``)."""
    if template and template_launch:
        return (f"featurebeam extract: template launch: {runner} staged the job at {template} to run now, writing "
                f"to {output}")
    if template:
        return (f"featurebeam extract: template: {runner} staged the job as a template at {template} (its code, "
                f"pipeline and weights under the staging location); nothing was written to {output}")
    return (f"featurebeam extract: dry run: {runner} built and pickled the whole job and did not submit it; nothing "
            f"was written to {output}")


def large_record_warnings(outputs) -> list[str]:
    """One warning per output kept whole (``--pooling none``) that makes records too large to be useful."""
    return [f"featurebeam extract: warning: --pooling none keeps layer {o.layer}'s whole map: {o.dim:,} floats "
            f"({4 * o.dim / 2**20:.1f} MB) per record; --pooling avg keeps its channels"
            for o in outputs if o.pooling == "none" and o.dim >= LARGE_RECORD_FLOATS]


def input_notes(config) -> list[str]:
    """For a text or audio backbone, one line per input saying what it reads there."""
    return {"text": text_input_notes, "audio": audio_input_notes}.get(config.backbone.modality, lambda c: [])(config)


def audio_input_notes(config) -> list[str]:
    """For an audio backbone, one line per input saying which recordings it reads and how each becomes a vector."""
    prep = config.backbone.preprocessing
    each = (f"each the mean over its {prep.patch_seconds:.2f}-s patches (mono, {prep.sample_rate:,} Hz; shorter "
            f"recordings repeated to one patch)")
    read_as = {
        "files": "audio files (.wav .flac .ogg .mp3 ...; labels from first-level folders of a directory)",
        "auto": "audio files (.wav .flac .ogg .mp3 ...; labels from first-level folders of a directory)",
        "manifest": "the audio files the manifest lists",
        "tar": "the audio member of each sample of the tar shards",
        "tfrecord": f"the {config.fields.audio_feature!r} bytes of each TFRecord Example",
    }
    return [f"featurebeam extract: {spec.uri}: {read_as.get(spec.format, spec.format)}, {each}"
            for spec in config.inputs]


def text_input_notes(config) -> list[str]:
    """For a text backbone, one line per input saying where its texts come from (which field of a table)."""
    if config.backbone.modality != "text":
        return []
    fields = config.fields
    table = (f"each row's {fields.text!r} field (label {fields.label!r}, split {fields.split!r}, id {fields.id!r}; "
             "--text-field names another)")
    read_as = {
        "text": f"texts from {table}",
        "lines": "one text per line (keys URI#line=N)",
        "files": "one text per file, UTF-8 (labels from first-level folders of a directory)",
        "manifest": "one text per file the manifest lists, UTF-8",
        "auto-text": f"tables (.jsonl, .csv, .tsv) as texts from {table}; other files one text each",
    }
    return [f"featurebeam extract: {spec.uri}: {read_as[spec.format]}" for spec in config.inputs]
