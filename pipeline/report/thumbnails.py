"""What an input looks like, small: a record's key -> a JPEG thumbnail as a data URI, or its text's first line.

A key is the input's URI (``transforms.schema.record_key``), so a loose file is read from the place the key
names, through Beam's FileSystems (local, gs://, s3://), at most ``MAX_SOURCE_BYTES`` of it. A key of one record
inside a file (``URI#member`` of a tar shard or TFRecord file) is not a path: it gets no thumbnail, and a one-line
reason says why. Text keys (``URI#id=ID``, ``URI#row=N``) are found by streaming their text file's rows once,
holding only the rows asked for (recordings are previewed by ``audio_previews.py``). Nothing here fails: what
cannot be shown comes back as a ``Preview`` with a reason.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Mapping
from typing import NamedTuple

__all__ = ["Preview", "THUMBNAIL_PIXELS", "MAX_SOURCE_BYTES", "jpeg_thumbnail", "data_uri", "image_preview",
           "image_previews", "first_line", "text_previews", "archive_of", "short_error"]

THUMBNAIL_PIXELS = 64         # the longer side of a thumbnail; smaller images are kept at their size
JPEG_QUALITY = 75
MAX_SOURCE_BYTES = 32 << 20   # the most read of one input to make its thumbnail
LINE_CHARS = 120              # the most shown of a text's first line


class Preview(NamedTuple):
    """A thumbnail (``src``, a data URI), a text's first line (``text``), or why there is neither (``reason``).
    ``kind`` is what ``src`` shows: "thumb" (an image) or "spectrogram" (a recording, whose first seconds
    ``audio`` may hold as a WAV data URI for a player)."""

    key: str
    src: str | None = None
    text: str | None = None
    reason: str | None = None
    kind: str = "thumb"
    audio: str | None = None


def jpeg_thumbnail(data: bytes, pixels: int = THUMBNAIL_PIXELS, quality: int = JPEG_QUALITY) -> bytes:
    """An encoded image -> a JPEG whose longer side is at most ``pixels`` (aspect kept, never enlarged), in RGB."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (pixels, pixels))  # JPEG: decode at a reduced scale, much faster for big photos
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        else:
            image = image.convert("RGB")
        image.thumbnail((pixels, pixels), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def archive_of(key: str) -> str | None:
    """The file a ``URI#member`` key names one record of, or None for a key without a member part."""
    uri, sep, member = key.rpartition("#")
    return uri if sep and uri and member else None


def short_error(error: BaseException) -> str:
    """An exception as one short line: its type and the start of its message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


def image_preview(key: str, pixels: int = THUMBNAIL_PIXELS, limit: int = MAX_SOURCE_BYTES) -> Preview:
    """The thumbnail of the image file ``key`` names, or a one-line reason why there is none."""
    from transforms.read.files import read_whole

    try:
        data = read_whole(key, limit)
    except Exception as e:
        archive = archive_of(key)
        if archive is not None:
            return Preview(key, reason=f"a record inside {archive} (tar shard or TFRecord file): not read "
                                       "for a thumbnail")
        return Preview(key, reason=f"cannot be read ({short_error(e)})")
    try:
        return Preview(key, src=data_uri(jpeg_thumbnail(data, pixels)))
    except Exception as e:
        return Preview(key, reason=f"cannot be decoded as an image ({short_error(e)})")


def image_previews(keys: Iterable[str], pixels: int = THUMBNAIL_PIXELS) -> dict[str, Preview]:
    """``image_preview`` of each distinct key, each read once."""
    found: dict[str, Preview] = {}
    for key in keys:
        if key not in found:
            found[key] = image_preview(key, pixels)
    return found


def first_line(text: str, chars: int = LINE_CHARS) -> str:
    """A text's first non-blank line, whitespace collapsed, cut to ``chars`` (with an ellipsis)."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    return line if len(line) <= chars else line[:chars - 1].rstrip() + "\u2026"


def _text_fields(fields: Mapping | None):
    import dataclasses

    from transforms.read.tables import InputFields

    known = {f.name for f in dataclasses.fields(InputFields)}
    return InputFields(**{k: v for k, v in (fields or {}).items() if k in known})


def text_previews(keys: Iterable[str], fields: Mapping | None = None,
                  limit: int = MAX_SOURCE_BYTES) -> dict[str, Preview]:
    """The first line of each text record ``keys`` name (``URI#id=ID`` or ``URI#row=N``); ``fields`` are the
    manifest's input fields (which field holds the text, which the id). Each text file is streamed once and left
    as soon as every key asked of it is found; only the lines asked for are kept."""
    from transforms.read import tables
    from transforms.read.files import open_regular
    from transforms.schema.elements import Record

    wanted: dict[str, set[str]] = {}
    for key in keys:
        uri = archive_of(key)
        wanted.setdefault(uri or key, set()).add(key)
    input_fields = _text_fields(fields)
    found: dict[str, Preview] = {}
    for uri, asked in wanted.items():
        try:
            with open_regular(uri) as f:
                rows = tables.iter_rows(uri, tables.bounded_lines(f, limit))
                for record in tables.text_records(uri, rows, input_fields):
                    if isinstance(record, Record) and record.key in asked and record.key not in found:
                        found[record.key] = Preview(record.key, text=first_line(record.payload))
                        if asked <= found.keys():
                            break
        except Exception as e:
            for key in asked - found.keys():
                found[key] = Preview(key, reason=f"its text file cannot be read ({short_error(e)})")
        for key in asked - found.keys():
            found[key] = Preview(key, reason=f"no such row in {uri}")
    return found
