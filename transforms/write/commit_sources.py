"""Which containers a commit's records were read from: ``commits/<id>.sources``, beside the keys file, so that an
update can keep a whole unchanged tar shard, TFRecord or text file as it is without listing its keys
(``transforms/keys/whole_containers.py``).

A record is a member of a container when its key is the URI of the file it was read from, ``#``, and its place in
it (``record_key``): a tar member, a TFRecord index, a text row or line; so is the failure of a file that could not
be read as a whole, keyed by the file's URI (a damaged tar shard, say). A loose file's record, a manifest row's and
a duplicate conflict are members of none (a loose file that failed is taken as a container of one failure, which
no update keeps whole: only tar, TFRecord and text inputs are). The sources file gives the commit's records in its
keys file's order as runs, one JSON array ``[[container or null, source version or null, records], ...]``: so many
consecutive records of that container at that version (null: of none). Its size and sha256 are in the commit
record, checked with the other files'.

When a commit is rewritten without some records (``commit_checks.drop_records``), its runs are too. When the
records go as copies of a key held twice (the de-duplication), the containers they came from are marked as not
held whole (their version becomes null), since what the set holds of them is then not what a read gives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator

from apache_beam.io.filesystems import FileSystems

from transforms.schema.layout import COMMITS_DIR

__all__ = ["SOURCES_SUFFIX", "sources_path", "container_of", "Runs", "parse_runs", "runs_without", "checked_runs",
           "read_runs", "held_per_container"]

SOURCES_SUFFIX = ".sources"

Run = tuple[str | None, str | None, int]


def sources_path(commit_id: str) -> str:
    """A commit's sources file, relative to OUTDIR."""
    return f"{COMMITS_DIR}/{commit_id}{SOURCES_SUFFIX}"


def container_of(key: str, source: str | None, failed: bool = False) -> str | None:
    """The container a record of ``key`` read from ``source`` is a member of, or None; ``failed``: the record is a
    failure (one keyed by its file's URI stands for the whole file)."""
    return source if source and (key.startswith(source + "#") or (failed and key == source)) else None


class Runs:
    """A commit's runs, gathered record by record (``add``) and written as its sources file (``to_bytes``)."""

    def __init__(self, runs: Iterable[Run] = ()):
        self._runs = [list(r) for r in runs]

    def add(self, container: str | None, version: str | None, n: int = 1) -> None:
        if container is None:
            version = None
        last = self._runs[-1] if self._runs else None
        if last is not None and last[0] == container and last[1] == version:
            last[2] += n
        else:
            self._runs.append([container, version, n])

    def to_bytes(self) -> bytes:
        return json.dumps(self._runs, ensure_ascii=False).encode("utf-8")

    def __iter__(self) -> Iterator[Run]:
        return (tuple(r) for r in self._runs)


def parse_runs(data: bytes) -> list[Run]:
    """A sources file's runs; ``ValueError`` when it is not one."""
    runs = json.loads(data.decode("utf-8"))
    if not isinstance(runs, list) or not all(
            isinstance(r, list) and len(r) == 3 and isinstance(r[2], int) and r[2] > 0 for r in runs):
        raise ValueError("not a sources file (a run is not [container, version, records])")
    return [tuple(r) for r in runs]


def runs_without(runs: Iterable[Run], drop: set[int], copies: bool = False) -> Runs:
    """``runs`` without the records at positions ``drop``; ``copies``: those were copies of keys held twice, and
    the containers they came from are no longer held whole (version null)."""
    kept, tainted, position = Runs(), set(), 0
    rows = []
    for container, version, n in runs:
        for i in range(position, position + n):
            if i in drop:
                tainted.add(container)
            else:
                rows.append((container, version))
        position += n
    for container, version in rows:
        kept.add(container, None if copies and container in tainted else version)
    return kept


def checked_runs(output: str, commit) -> tuple[str | None, list[Run] | None]:
    """(why a commit's sources file is not the one committed, missing, another size or sha256, or unreadable; its
    runs when it is): read once, to check and to parse. ``(None, None)`` for a commit made before sources files."""
    if commit.sources_sha256 is None:
        return None, None
    path = FileSystems.join(output, sources_path(commit.id))
    if not FileSystems.exists(path):
        return f"{sources_path(commit.id)} is missing", None
    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read()
    if len(data) != commit.sources_bytes or hashlib.sha256(data).hexdigest() != commit.sources_sha256:
        return f"{sources_path(commit.id)} is not the one committed", None
    try:
        return None, parse_runs(data)
    except ValueError as e:
        return f"{sources_path(commit.id)} is damaged ({e})", None


def read_runs(output: str, commit) -> list[Run] | None:
    """A commit's runs, or None when it has no sources file (made before they were)."""
    if commit.sources_sha256 is None:
        return None
    with FileSystems.open(FileSystems.join(output, sources_path(commit.id)), compression_type="uncompressed") as f:
        return parse_runs(f.read())


def held_per_container(runs: Iterable[Run]) -> dict[str, tuple[set, int]]:
    """container -> (its versions, records held) over a commit's runs."""
    held: dict[str, tuple[set, int]] = {}
    for container, version, n in runs:
        if container is not None:
            versions, count = held.get(container, (set(), 0))
            versions.add(version)
            held[container] = (versions, count + n)
    return held
