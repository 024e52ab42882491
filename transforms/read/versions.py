"""A record's source version: what tells, without reading a byte, that an input is still the one embedded.

``--update`` (and ``--resume``) keep a committed record only while its input has the version it was read at. A
version is the size and last-modified time of the file the record comes from, as the store reports them when it
lists the file: a local file's ``st_size`` and ``st_mtime``; a Cloud Storage or S3 object's size and update time,
which the store sets anew for every generation or version of the object. Records inside a container (a tar
shard's members, a TFRecord file's records, a text table's rows) take the container's version: rewriting the
container changes it, and the record's place in the container is its key already (``URI#member``, ``URI#index``,
``URI#row``). A manifest row's version is the version of the file the row names, found by one metadata call
(local: ``os.stat``) per row, made while the manifest is expanded, several at a time for object stores.

A version is a string, compared for equality only; None means the store told nothing (the file could not be
looked at), and None matches only None.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from apache_beam.io.filesystems import FileSystems

from transforms.schema.elements import FileRef
from transforms.worker.storage import is_remote

__all__ = ["version_of", "file_version", "file_versions", "manifest_row_versions", "LOOKUPS_AT_ONCE"]

LOOKUPS_AT_ONCE = 16  # metadata calls in flight when versions of object-store files are looked up


def version_of(size: int, modified: float) -> str:
    """The version of a file of ``size`` bytes last modified at ``modified`` (seconds since the epoch)."""
    return f"{int(size)}:{float(modified):.6f}"


def file_version(uri: str) -> str | None:
    """The version of one file or object, or None when it cannot be looked at (missing, unreadable)."""
    try:
        if not is_remote(uri):
            info = os.stat(uri)
            return version_of(info.st_size, info.st_mtime)
        (match,) = FileSystems.match([uri])
        found = [m for m in match.metadata_list if m.path == uri]
        return version_of(found[0].size_in_bytes, found[0].last_updated_in_seconds) if found else None
    except Exception:  # a file that cannot be looked at has no version; reading it will say why
        return None


def file_versions(uris: Iterable[str]) -> Iterator[str | None]:
    """``file_version`` of each URI, in order; object-store lookups ``LOOKUPS_AT_ONCE`` at a time."""
    uris = list(uris)
    if not any(is_remote(u) for u in uris):
        yield from map(file_version, uris)
        return
    with ThreadPoolExecutor(LOOKUPS_AT_ONCE) as pool:
        yield from pool.map(file_version, uris)


_ROWS_AT_ONCE = 256  # manifest rows whose files' versions are looked up together


def manifest_row_versions(units, manifest_version: str | None):
    """A manifest's units: its ``FileRef``s with the versions of the files they name; its bad rows' failures with the
    manifest's own version (a corrected manifest is read again). Rows read before the manifest turns out
    damaged are given out before its error."""
    batch = []
    try:
        for unit in units:
            batch.append(unit)
            if len(batch) >= _ROWS_AT_ONCE:
                yield from _with_file_versions(batch, manifest_version)
                batch = []
    except Exception:
        yield from _with_file_versions(batch, manifest_version)
        raise
    yield from _with_file_versions(batch, manifest_version)


def _with_file_versions(units, manifest_version: str | None):
    refs = [u for u in units if isinstance(u, FileRef)]
    found = dict(zip((r.uri for r in refs), file_versions(r.uri for r in refs), strict=True))
    for unit in units:
        yield (unit._replace(version=found[unit.uri]) if isinstance(unit, FileRef)
               else unit.with_version(manifest_version))
