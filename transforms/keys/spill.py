"""Per-key shuffles carried as references to scratch files, so that no process carries every key of the job.

Why: the local runner (``FnApiRunner``) passes the data of every GroupByKey through its one launcher process,
which holds the encoded elements, the grouped copy and the copy encoded again for the next stage. Grouping
packed fingerprints (``transforms/keys/fingerprints.py``, 16 bytes a key) that way makes the launcher grow with the
number of records. So a worker writes each pack of more than ``INLINE_BYTES`` to a scratch file under OUTDIR
and outputs a ``Spilled`` reference instead (a path and a size, about 130 bytes encoded, whatever the pack
holds); the worker that examines a bucket reads the files its references name (``unspill``). On Dataflow,
whose shuffle is distributed anyway, it costs one write and one read per pack.

What keeps the answers exact when a bundle is retried:

1. a file is written whole, under a new random name, before the reference to it is output: a retried bundle
   writes new files, and the runner discards the failed attempt's outputs, so that attempt's files are never
   referenced, only left to sweep;
2. readers read the files named by the references they were grouped with, never a listing of the folder, and a
   reference given twice is read once. Names are not content hashes: two bundles may make the same pack (the
   same folder given twice as input), and both must count.

Layout: ``OUTDIR/.pending/shuffle/<step>/<uuid>``, each file the pack's columns as TFRecord frames (checksummed).
The job deletes ``OUTDIR/.pending/shuffle`` once its manifest is written (``clear_scratch``); what a crashed run
left there goes with its other uncommitted files on ``--resume``, and with the whole pending folder on
``--overwrite``.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems

from transforms.schema.framing import frame, iter_frames
from transforms.schema.layout import PENDING_DIR
from transforms.worker.storage import is_remote

__all__ = ["INLINE_BYTES", "SCRATCH_DIR", "Spilled", "scratch_folder", "spill", "spill_packs", "unspill",
           "clear_scratch"]

INLINE_BYTES = 4096  # a pack this small travels as it is: a file would cost more than it saves
SCRATCH_DIR = "shuffle"  # under the pending folder


class Spilled(NamedTuple):
    """Where a pack's columns were written (``size``: the file's bytes, checked when it is read)."""
    path: str
    size: int


Columns = tuple[bytes, ...]


def scratch_folder(output: str, step: str = "") -> str:
    """The scratch folder of OUTDIR, or of one of the job's steps in it."""
    root = FileSystems.join(output, PENDING_DIR, SCRATCH_DIR)
    return FileSystems.join(root, step) if step else root


def spill(folder: str, columns: Iterable[bytes]) -> Columns | Spilled:
    """A pack's columns as they are, when they hold at most ``INLINE_BYTES``; else a reference to a new file
    under ``folder`` that holds them, written whole before this returns."""
    columns = tuple(columns)
    if sum(len(c) for c in columns) <= INLINE_BYTES:
        return columns
    data = b"".join(frame(c) for c in columns)
    path = FileSystems.join(folder, uuid.uuid4().hex)
    with FileSystems.create(path, compression_type="uncompressed") as f:
        f.write(data)
    return Spilled(path, len(data))


def spill_packs(folder: str, packs: Iterable[tuple]) -> Iterator[tuple]:
    """``(bucket, columns)`` packs -> ``(bucket, spill(folder, columns))``."""
    for bucket, columns in packs:
        yield bucket, spill(folder, columns)


def unspill(packs: Iterable[Columns | Spilled]) -> Iterator[Columns]:
    """The columns of each pack, inline or spilled; a file named twice is read once."""
    seen = set()
    for pack in packs:
        if not isinstance(pack, Spilled):
            yield tuple(pack)
        elif pack.path not in seen:
            seen.add(pack.path)
            yield _read(pack)


def _read(pack: Spilled) -> Columns:
    with FileSystems.open(pack.path, compression_type="uncompressed") as f:
        data = f.read()
    if len(data) != pack.size:
        raise OSError(f"scratch file {pack.path} has {len(data)} bytes, {pack.size} were written")
    return tuple(iter_frames(io.BytesIO(data)))


def clear_scratch(output: str) -> None:
    """Delete OUTDIR's scratch folder and every file in it (on object stores, every object under its prefix)."""
    root = scratch_folder(output)
    if not is_remote(root):
        if FileSystems.exists(root):
            FileSystems.delete([root])
        return
    (match,) = FileSystems.match([FileSystems.join(root, "**")])
    if match.metadata_list:
        FileSystems.delete([m.path for m in match.metadata_list])
