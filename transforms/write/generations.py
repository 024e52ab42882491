"""Generations of a feature set: what an update adds, replaces and removes, counted from its commit records.

Every commit records the generation it was made for (``commit_format.py``). A fresh run makes generation 1; each
``--update`` makes the next one: new commits for what is new or changed, and for each older commit that held a
stale record, a replacement commit that holds the rest and says how many records it dropped and why. The older
commit stays until the manifest of the new generation is written (its readers still read it), then
``delete_replaced`` deletes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from apache_beam.io.filesystems import FileSystems

from transforms.schema.layout import COMMITS_DIR, PENDING_DIR, UPDATE_NAME
from transforms.write.commit_checks import data_paths_of, delete_commit, retire_commit
from transforms.write.commit_format import Commit, write_atomically

__all__ = ["generation_counts", "delete_replaced", "is_published", "start_update", "update_in_progress",
           "end_update"]


def generation_counts(commits: Iterable[Commit], generation: int) -> dict[str, int]:
    """``{"new", "changed", "removed", "kept"}`` of ``generation``, from the commits the set holds once it is
    published (``current_commits``): records it committed afresh are new or changed (changed: as many as it
    dropped from older commits because their input changed); records of older commits it kept are kept."""
    made = changed = removed = total = 0
    for c in commits:
        total += c.records
        if c.generation != generation:
            continue
        if c.replaces:
            changed += c.stale.get("changed", 0)
            removed += c.stale.get("removed", 0)
        else:
            made += c.records
    return {"new": made - changed, "changed": changed, "removed": removed, "kept": total - made}


def is_published(commit: Commit, published_generation: int | None) -> bool:
    """Whether a commit belongs to a generation whose manifest is written."""
    return published_generation is not None and commit.generation <= published_generation


def delete_replaced(output: str, published_generation: int, commits: list[Commit]) -> list[Commit]:
    """Delete the commits (of ``commits``, OUTDIR's records as read) that a commit of a published generation
    replaces, then the replacements left with no records (they only hid what they replaced); idempotent, and safe
    to repeat after a crash at any point. Returns the commits left."""
    by_id = {c.id: c for c in commits}  # one OUTDIR's commit records: a summary per ~10,000 records
    gone = set()
    for c in commits:
        if not (c.replaces and is_published(c, published_generation)):
            continue
        replaced = by_id.get(c.replaces)
        if replaced is not None:
            delete_commit(output, replaced)
            gone.add(replaced.id)
        else:  # its record went before a crash: what is left of its files goes as a damaged commit's would
            retire_commit(output, f"{COMMITS_DIR}/{c.replaces}.json", data_paths_of(c.replaces), "replaced")
        if c.records == 0:
            delete_commit(output, c)
            gone.add(c.id)
    return [c for c in commits if c.id not in gone]


def start_update(output: str, generation: int) -> None:
    """Say in OUTDIR that an update to ``generation`` is under way (``UPDATE_NAME``), until ``end_update``: what it
    has written so far is not part of the published set, and ``inspect --check`` does not judge it."""
    write_atomically(FileSystems.join(output, UPDATE_NAME), FileSystems.join(output, PENDING_DIR, UPDATE_NAME),
                     json.dumps({"generation": generation}).encode("utf-8"))


def update_in_progress(output: str) -> int | None:
    """The generation an update under way (or interrupted) in OUTDIR makes, or None."""
    try:
        with FileSystems.open(FileSystems.join(output, UPDATE_NAME), compression_type="uncompressed") as f:
            return int(json.loads(f.read().decode("utf-8"))["generation"])
    except Exception:  # no update, or not a file this version wrote
        return None


def end_update(output: str) -> None:
    path = FileSystems.join(output, UPDATE_NAME)
    if FileSystems.exists(path):
        FileSystems.delete([path])
