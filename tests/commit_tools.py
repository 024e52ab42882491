"""What tests do with commits: read a commit's keys, run the de-duplication step alone over an OUTDIR."""

from __future__ import annotations

import json
import os
import tempfile

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.keys.dedupe import ResolveDuplicates
from transforms.write import commit_checks
from transforms.write.commit_format import Commit, commit_files, place_file


def commit_keys(output: str, commit: Commit) -> list[str]:
    return [key for key, _, _ in commit_checks.read_commit_keys(output, commit)]


def read_committed(output: str, rel: str) -> bytes:
    """A committed file's bytes, by its path relative to OUTDIR."""
    with open(os.path.join(output, rel), "rb") as f:
        return f.read()


def recommit_with(output: str, commit: Commit, other: Commit, join=None) -> Commit:
    """``commit`` committed again holding ``other``'s records after its own, what a retried bundle can leave;
    each file's bytes from ``join(its path, the other's same-format path)`` (default: both files' bytes)."""
    join = join or (lambda mine, theirs: read_committed(output, mine) + read_committed(output, theirs))
    placed = [place_file(output, commit.id, mine.path, data=join(mine.path, theirs.path))
              for mine, theirs in zip(commit.files, other.files, strict=True)]
    keys = read_committed(output, commit.keys_path) + read_committed(output, other.keys_path)
    return commit_files(output, commit.id, commit.kind, placed, keys, records=commit.records + other.records,
                        labels=tuple(sorted({*commit.labels, *other.labels})))


def resolve_in(output: str, records_per_commit: int = 4) -> tuple:
    """Run ``ResolveDuplicates`` over what OUTDIR holds; its (commits rewritten, copies dropped, smallest key)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "summary.json")
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
            _ = (p | beam.Create([0]) | ResolveDuplicates(output, records_per_commit)
                 | beam.Map(lambda summary: open(path, "w").write(json.dumps(summary))))
        with open(path) as f:
            return tuple(json.load(f))
