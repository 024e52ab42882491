"""Reading what a run committed: its commit records, the files no record names, failures by reason, and
keeping each key in one commit only. The write side of the protocol is ``commits.py``.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence

from apache_beam.io.filesystems import FileSystems

from transforms import schema
from transforms.framing import frame, iter_frames
from transforms.records import Failure
from transforms.write.commits import Commit, write_atomically

__all__ = ["read_commits", "uncommitted_files", "failure_reasons", "drop_duplicates"]


def read_commits(output: str) -> list[Commit]:
    """Every commit record in OUTDIR, in a stable order."""
    pattern = FileSystems.join(output, schema.COMMITS_DIR, "*.json")
    (match,) = FileSystems.match([pattern])
    commits = []
    for path in sorted(m.path for m in match.metadata_list):
        with FileSystems.open(path) as f:
            commits.append(Commit.from_json(f.read().decode("utf-8")))
    return commits


def uncommitted_files(output: str, commits: Iterable[Commit]) -> list[str]:
    """Files in features/, errors/ and the pending folder that no commit record names (a crash's leftovers)."""
    named = {FileSystems.join(output, c.path) for c in commits}
    leftovers = []
    for folder in (schema.FEATURES_DIR, schema.ERRORS_DIR, schema.PENDING_DIR):
        (match,) = FileSystems.match([FileSystems.join(output, folder, "*")])
        leftovers += [m.path for m in match.metadata_list if m.path not in named]
    return sorted(leftovers)


def failure_reasons(commits: Iterable[Commit]) -> dict[str, tuple[int, str]]:
    """reason -> (count, smallest example key) over the error commits."""
    counts, examples = Counter(), {}
    for c in commits:
        for reason, (n, key) in c.reasons.items():
            counts[reason] += n
            examples[reason] = key if reason not in examples else min(examples[reason], key)
    return {reason: (counts[reason], examples[reason]) for reason in sorted(counts)}


def _example_key(serialized: bytes) -> str:
    from tensorflow.core.example import example_pb2

    return example_pb2.Example.FromString(serialized).features.feature[schema.KEY].bytes_list.value[0].decode()


def drop_duplicates(output: str, commits: Sequence[Commit]) -> list[Commit]:
    """Keep each key in one commit only (the first, in commit order), rewriting the files that repeat one.

    Local runners never commit a record twice; a distributed runner that retries a bundle after some of its
    commits were made can. Returns the commit records as they are afterwards."""
    seen, result = set(), []
    for commit in commits:
        if len(set(commit.keys)) == len(commit.keys) and seen.isdisjoint(commit.keys):
            seen.update(commit.keys)
            result.append(commit)
            continue
        path = FileSystems.join(output, commit.path)
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
        kept_keys, chunks, reasons = [], [], commit.reasons
        if commit.kind == schema.FEATURES_DIR:
            for record in iter_frames(io.BytesIO(data)):
                key = _example_key(record)
                if key not in seen:
                    seen.add(key)
                    kept_keys.append(key)
                    chunks.append(frame(record))
        else:
            reasons = {}
            for line in data.decode("utf-8").splitlines(keepends=True):
                failure = Failure(**json.loads(line))
                if failure.key not in seen:
                    seen.add(failure.key)
                    kept_keys.append(failure.key)
                    chunks.append(line.encode("utf-8"))
                    count, example = reasons.get(failure.reason, (0, failure.key))
                    reasons[failure.reason] = [count + 1, min(example, failure.key)]
        pending = FileSystems.join(output, schema.PENDING_DIR, f"{commit.id}.rewrite")
        write_atomically(path, pending, b"".join(chunks))
        fixed = Commit(commit.id, commit.kind, commit.path, len(kept_keys), tuple(kept_keys), commit.labels,
                       commit.splits, reasons)
        marker = FileSystems.join(output, schema.COMMITS_DIR, f"{commit.id}.json")
        write_atomically(marker, pending + ".json", fixed.to_json().encode("utf-8"))
        result.append(fixed)
    return result

