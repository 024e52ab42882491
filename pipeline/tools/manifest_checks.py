"""The checks of ``featurebeam inspect --check`` that read no records: the files of a feature set (its shards on
disk, its error files, its commit records) and the manifest's counts, each against the manifest.

Each check reports what it finds to ``problem(kind, message)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from transforms.schema.layout import COMMITS_DIR, FEATURES_DIR, PARQUET_SUFFIX, SHARD_SUFFIX
from transforms.schema.manifest import Manifest
from transforms.write.generations import update_in_progress

__all__ = ["check_twins_listed", "check_shards_on_disk", "check_error_files", "check_commit_records",
           "commit_records", "commits_not_judged", "check_counts", "short_error", "Problem"]

Problem = Callable[[str, str], None]  # problem(kind, message)


def short_error(error: Exception) -> str:
    """An error in a few words, for a problem's message."""
    return str(error).split(":")[0][:200] if str(error) else type(error).__name__


def check_twins_listed(manifest: Manifest, problem: Problem) -> None:
    """In a set of both formats, every Parquet shard has a TFRecord twin in the manifest."""
    if manifest.shards and manifest.parquet_shards:
        twins = {s.removesuffix(SHARD_SUFFIX) + PARQUET_SUFFIX for s in manifest.shards}
        for orphan in sorted(set(manifest.parquet_shards) - twins):
            problem("formats", f"{orphan}: the manifest lists no TFRecord shard of its commit")


def check_shards_on_disk(root: str, manifest: Manifest, records: dict[str, dict], problem: Problem) -> None:
    """Every file in ``features/`` is a shard the manifest lists, or one of an update's that the manifest's
    generation does not hold: its commits (``commits_not_judged``) and, while it is under way or was interrupted,
    the files it wrote and did not commit yet (the next run deletes those). ``records``: ``commit_records``."""
    from apache_beam.io.filesystems import FileSystems

    listed = set(manifest.shards) | set(manifest.parquet_shards)
    elsewhere = {path for name in commits_not_judged(records, manifest) for path in _files_of(records[name])}
    updating = (update_in_progress(root) or 0) > manifest.generation
    named = {path for record in records.values() for path in _files_of(record)}
    try:
        (match,) = FileSystems.match([FileSystems.join(root, FEATURES_DIR, "*")])
    except Exception:  # listing is advisory; the records themselves are checked apart
        return
    prefix = root.rstrip("/") + "/"
    for m in match.metadata_list:
        rel = m.path[len(prefix):] if m.path.startswith(prefix) else m.path
        if rel in listed or rel in elsewhere or (updating and rel not in named):
            continue
        problem("unlisted", f"{rel}: a shard on disk that the manifest does not list")


def check_error_files(root: str, manifest: Manifest, problem: Problem) -> None:
    """The error files can be read and hold as many dead letters as the manifest counts failed."""
    from apache_beam.io.filesystems import FileSystems

    failed_lines = 0
    for name in manifest.error_files:
        try:
            with FileSystems.open(FileSystems.join(root, name), compression_type="uncompressed") as f:
                failed_lines += sum(1 for line in f.read().splitlines() if line.strip())
        except OSError as e:
            problem("missing", f"{name}: cannot be read ({e})")
    counts = manifest.counts
    if manifest.error_files and counts.get("failed") is not None and failed_lines != counts["failed"]:
        problem("count", f"the error files hold {failed_lines} dead letters, the manifest counts {counts['failed']}")


def commit_records(root: str, problem: Problem) -> dict[str, dict]:
    """Every readable commit record in the set, by path, as JSON; one that cannot be read is a problem of the set."""
    from apache_beam.io.filesystems import FileSystems

    records = {}
    try:
        (match,) = FileSystems.match([FileSystems.join(root, COMMITS_DIR, "*.json")])
    except Exception as e:
        problem("unlisted", f"{COMMITS_DIR}/: cannot be listed ({short_error(e)})")
        return records
    for m in match.metadata_list:
        try:
            with FileSystems.open(m.path, compression_type="uncompressed") as f:
                records[m.path] = json.loads(f.read().decode("utf-8"))
        except Exception as e:
            problem("unlisted", f"{COMMITS_DIR}/: a commit record cannot be read ({short_error(e)})")
    return records


def _files_of(record: dict) -> list[str]:
    return [record.get("path")] + [also.get("path") for also in record.get("also", ())]


def commits_not_judged(records: dict[str, dict], manifest: Manifest) -> set[str]:
    """The paths of commit records that the manifest's generation does not hold, and rightly: those of an update
    in progress (a later generation), those an update replaced once its manifest is written (they are deleted
    next), and replacements left with no records."""
    replaced = {r["replaces"] for r in records.values()
                if r.get("replaces") and r.get("generation", 1) <= manifest.generation}
    return {path for path, r in records.items()
            if r.get("generation", 1) > manifest.generation or r.get("id") in replaced or r.get("records") == 0}


def check_commit_records(manifest: Manifest, records: dict[str, dict], problem: Problem) -> None:
    """Every file a commit record names is one the manifest lists, but for ``commits_not_judged``.
    ``records``: ``commit_records``."""
    listed_files = set(manifest.shards) | set(manifest.parquet_shards) | set(manifest.error_files)
    skipped = commits_not_judged(records, manifest)
    for path, record in records.items():
        if path in skipped:
            continue
        for named in _files_of(record):
            if named not in listed_files:
                problem("unlisted", f"{path}: a commit record of {named}, which the manifest does not list")


def check_counts(counts: dict, records: int, problem: Problem) -> None:
    """The shards hold as many records as the manifest counts embedded, and its counts add up."""
    embedded = counts.get("embedded")
    if embedded is not None and records != embedded:
        problem("count", f"the shards hold {records} records, the manifest counts {embedded} embedded")
    if {"inputs", "embedded", "failed"} <= set(counts):
        parts = counts["embedded"] + counts["failed"] + counts.get("duplicates", 0)
        retained = counts.get("retained", 0)
        if counts["inputs"] + retained != parts:
            problem("count", f"the manifest's counts do not add up: {counts['inputs']} inputs"
                             + (f" + {retained} retained" if retained else "")
                             + f", but {counts['embedded']} embedded + {counts['failed']} failed + "
                             f"{counts.get('duplicates', 0)} duplicates = {parts}")
