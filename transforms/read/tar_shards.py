"""WebDataset-style tar shards: index the members, cut the shard into chunks, read a chunk's samples.

Members are grouped into samples as WebDataset does: consecutive members whose names agree up to the first
dot of the file name (``dir/x.jpg`` + ``dir/x.cls`` -> sample ``dir/x``). A sample's payload is its first
member with an image extension (``IMAGE_EXTENSIONS``), or for an audio backbone an audio one
(``AUDIO_EXTENSIONS``); its label comes from ``.cls`` (the text), else the label field of ``.json``, else
``.txt``. The record key is ``SHARD_URI#PAYLOAD_MEMBER``.

Nothing is extracted to disk, member names are never used as paths, and links are never followed: a sample whose
payload or label member is a symlink, hard link or other special member is a failure. Indexing reads the headers only
(seeking over the data); reading a chunk reads its byte range once, one member at a time, so a multi-GB shard
is never in memory and its chunks can go to different workers.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from typing import NamedTuple

from transforms.read.tables import DEFAULT_MAX_INPUT_BYTES, InputFields, InputTooLarge
from transforms.schema.elements import Failure, Record
from transforms.schema.fields import record_key

__all__ = ["IMAGE_EXTENSIONS", "AUDIO_EXTENSIONS", "payload_extensions", "TarMember", "TarSample", "TarChunk",
           "split_member_name", "index_tar", "chunk_samples", "read_tar_chunk"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "pbm")
AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "oga", "mp3", "m4a", "opus", "aiff", "aif")
LABEL_EXTENSIONS = ("cls", "json", "txt")
_MAX_LABEL_BYTES = 1 << 20


class TarMember(NamedTuple):
    name: str
    offset: int        # of the member's data in the shard (-1: not a regular file, nothing to read)
    size: int
    kind: str = "file"  # "file", "symlink", "hard link", "FIFO", "character device", "block device"
    link: str = ""      # a link's target, as the header names it


class TarSample(NamedTuple):
    prefix: str
    members: tuple[TarMember, ...]

    def member(self, extensions) -> TarMember | None:
        for ext in extensions:
            for m in self.members:
                if split_member_name(m.name)[1].lower().rsplit(".", 1)[-1] == ext:  # seg.png is a png
                    return m
        return None


class TarChunk(NamedTuple):
    """Consecutive samples of one shard: a unit of reading work that any worker can take."""

    uri: str
    samples: tuple[TarSample, ...]
    version: str | None = None  # the shard's source version (``transforms/read/versions.py``)


def payload_extensions(modality: str) -> tuple[str, ...]:
    """The extensions of the member a sample's record is read from, for a backbone of ``modality``."""
    return AUDIO_EXTENSIONS if modality == "audio" else IMAGE_EXTENSIONS


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/x.seg.jpg`` -> (``dir/x``, ``seg.jpg``), as WebDataset splits keys from extensions."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


_LINKS = ("symlink", "hard link")


def _member_kind(info: tarfile.TarInfo) -> str:
    checks = ((info.isreg, "file"), (info.issym, "symlink"), (info.islnk, "hard link"), (info.isfifo, "FIFO"),
              (info.ischr, "character device"), (info.isblk, "block device"))
    return next((kind for test, kind in checks if test()), "special member")


class _BoundedReads:
    """A file object whose single reads may not exceed ``limit`` bytes: tarfile reads a pax or GNU long-name
    header's data in one read of whatever size that header claims."""

    def __init__(self, fileobj, limit: int):
        self._fileobj, self._limit = fileobj, limit

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._limit:
            raise tarfile.ReadError(f"a tar header asks to read {'all' if size is None or size < 0 else f'{size:,}'}"
                                    f" bytes at once, over the limit of {self._limit:,} (--max-input-bytes)")
        return self._fileobj.read(size)

    def seek(self, *args) -> int:
        return self._fileobj.seek(*args)

    def tell(self) -> int:
        return self._fileobj.tell()


def index_tar(fileobj, max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> Iterator[TarSample | tarfile.TarError]:
    """The samples of a seekable tar stream, in order, reading headers only (no read over ``max_bytes``).

    A damaged shard yields the samples before the damage, then the ``TarError``."""
    try:
        tar = tarfile.open(fileobj=_BoundedReads(fileobj, max(max_bytes, tarfile.BLOCKSIZE)), mode="r:")
    except tarfile.TarError as e:
        yield tarfile.ReadError(f"not a tar archive: {e}")
        return
    prefix, members, seen = None, [], 0
    while True:
        try:
            info = tar.next()
        except tarfile.TarError as e:
            if members:
                yield TarSample(prefix, tuple(members))
            yield tarfile.ReadError(f"damaged tar archive after {seen} members: {e}")
            return
        if info is None:
            break
        tar.members.clear()  # keep memory flat on shards with millions of members
        seen += 1
        if info.isdir():
            continue
        key, _ = split_member_name(info.name)
        if key != prefix and members:
            yield TarSample(prefix, tuple(members))
            members = []
        prefix = key
        kind = _member_kind(info)
        members.append(TarMember(info.name, info.offset_data if kind == "file" else -1, info.size, kind,
                                 info.linkname if kind in _LINKS else ""))
    if members:
        yield TarSample(prefix, tuple(members))


def _wanted(sample: TarSample, extensions) -> list[TarMember]:
    """The members a sample's record is read from: its payload (image or audio), then its label members."""
    labels = (sample.member([ext]) for ext in LABEL_EXTENSIONS)
    return [sample.member(extensions)] + [m for m in labels if m is not None]


def _special_member(uri: str, sample: TarSample, extensions) -> Failure | None:
    """The failure of a sample whose payload or label member is a link or another special member (never read)."""
    special = next((m for m in _wanted(sample, extensions) if m.kind != "file"), None)
    if special is None:
        return None
    link = special.kind in _LINKS
    what = f"{special.name} -> {special.link}" if link else special.name
    return Failure(record_key(uri, sample.member(extensions).name), uri, "read",
                   "TarLink" if link else "NotARegularFile", f"tar member is a {special.kind}: not read ({what})")


def _missing_payload(uri: str, sample: TarSample, modality: str) -> Failure:
    """The failure of a sample without a member the backbone reads (``NotAnImage``, ``NotAudio``)."""
    names = ", ".join(m.name + ("" if m.offset >= 0 else " (not a regular file)") for m in sample.members)
    audio = modality == "audio"
    what, plural = ("audio", "audio files") if audio else ("image", "images")
    return Failure(record_key(uri, sample.members[0].name), uri, "read", "NotAudio" if audio else "NotAnImage",
                   f"tar sample {sample.prefix!r} has no {what} member (members: {names}; "
                   f"{plural} end in .{', .'.join(payload_extensions(modality))})")


def chunk_samples(uri: str, samples, chunk_bytes: int, modality: str = "image") -> Iterator[TarChunk | Failure]:
    """Group samples into chunks of about ``chunk_bytes``; a sample without a payload member for a backbone of
    ``modality`` (an image, or audio), or whose payload or label is a link or special member, is a ``Failure``."""
    extensions = payload_extensions(modality)
    chunk, size = [], 0
    for sample in samples:
        if isinstance(sample, tarfile.TarError):
            yield Failure(uri, uri, "read", "TarError", str(sample))
            continue
        if sample.member(extensions) is None:
            yield _missing_payload(uri, sample, modality)
            continue
        if (special := _special_member(uri, sample, extensions)) is not None:
            yield special
            continue
        chunk.append(sample)
        size += sum(m.size for m in sample.members)
        if size >= chunk_bytes:
            yield TarChunk(uri, tuple(chunk))
            chunk, size = [], 0
    if chunk:
        yield TarChunk(uri, tuple(chunk))


def _read_member(fileobj, member: TarMember) -> bytes:
    position = fileobj.tell()
    gap = member.offset - position
    if 0 <= gap <= 1 << 20:
        fileobj.read(gap)  # stay sequential: one range read per chunk on object storage
    else:
        fileobj.seek(member.offset)
    data = fileobj.read(member.size)
    if len(data) != member.size:
        raise tarfile.ReadError(f"tar member {member.name} is truncated ({len(data)} of {member.size} bytes)")
    return data


def _label_of(sample: TarSample, payloads: dict, fields: InputFields) -> tuple[str | None, str | None]:
    label = split = None
    for ext in LABEL_EXTENSIONS:
        member = sample.member([ext])
        if member is None:
            continue
        text = payloads[member.name].decode("utf-8").strip()
        if ext == "json":
            meta = json.loads(text)
            if isinstance(meta, dict):
                split = None if meta.get(fields.split) is None else str(meta[fields.split])
                if label is None and meta.get(fields.label) is not None:
                    label = str(meta[fields.label])
        elif label is None and text:
            label = text
    return label, split


def read_tar_chunk(fileobj, chunk: TarChunk, fields: InputFields) -> Iterator[Record | Failure]:
    """The records of one chunk, read in one pass over its byte range (each sample's image member, or its audio
    member for ``fields.modality`` "audio", as bytes); a member over ``max_input_bytes`` is refused from its
    header's size, before reading."""
    extensions = payload_extensions(fields.modality)
    fileobj.seek(min(m.offset for m in chunk.samples[0].members if m.offset >= 0))
    for sample in chunk.samples:
        payload = sample.member(extensions)
        key = record_key(chunk.uri, payload.name)
        try:
            payloads = {}
            for member in sorted(_wanted(sample, extensions), key=lambda m: m.offset):
                if member.size > fields.max_input_bytes:
                    raise InputTooLarge.of(f"tar member {member.name}", member.size, fields.max_input_bytes)
                if member is not payload and member.size > _MAX_LABEL_BYTES:
                    raise ValueError(f"label member {member.name} is {member.size} bytes; labels are short text")
                payloads[member.name] = _read_member(fileobj, member)
            label, split = _label_of(sample, payloads, fields)
        except (OSError, tarfile.TarError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
            yield Failure.from_exception(key, chunk.uri, "read", e)
            continue
        yield Record(key, payloads[payload.name], label, split, chunk.uri)
