"""What tests do with commits: read a commit's keys, run the de-duplication step alone over an OUTDIR."""

from __future__ import annotations

import json
import os
import tempfile

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.write import committed
from transforms.write.commits import Commit
from transforms.write.dedupe import ResolveDuplicates


def commit_keys(output: str, commit: Commit) -> list[str]:
    return [key for key, _, _ in committed.read_commit_keys(output, commit)]


def resolve_in(output: str, records_per_commit: int = 4) -> tuple:
    """Run ``ResolveDuplicates`` over what OUTDIR holds; its (commits rewritten, copies dropped, smallest key)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "summary.json")
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
            _ = (p | beam.Create([0]) | ResolveDuplicates(output, records_per_commit)
                 | beam.Map(lambda summary: open(path, "w").write(json.dumps(summary))))
        with open(path) as f:
            return tuple(json.load(f))
