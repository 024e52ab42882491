"""Thumbnails and text lines of records named by their keys."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.report.thumbnails import (
    archive_of,
    first_line,
    image_preview,
    image_previews,
    jpeg_thumbnail,
    text_previews,
)
from tests.conftest import encode


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.format == "JPEG"
    return image


def test_a_photo_becomes_a_small_jpeg_of_the_same_picture(sample_photos):
    data = sample_photos["china.jpg"]
    thumb = Image.open(io.BytesIO(jpeg_thumbnail(data, 64)))
    assert thumb.format == "JPEG" and thumb.mode == "RGB" and thumb.size == (64, 43)  # 640x427, aspect kept
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 43)), np.float32)
    assert np.abs(np.asarray(thumb, np.float32) - reference).mean() < 12  # the same picture, small
    assert len(jpeg_thumbnail(data, 64)) < 4000


@pytest.mark.parametrize("make, size", [
    pytest.param(lambda: Image.new("RGBA", (300, 100), (255, 0, 0, 0)), (64, 21), id="transparent-rgba"),
    pytest.param(lambda: Image.new("L", (8, 8), 200), (8, 8), id="tiny-grey-never-enlarged"),
    pytest.param(lambda: Image.new("P", (100, 300)), (21, 64), id="palette-portrait"),
])
def test_any_image_mode_becomes_rgb_within_the_size(make, size):
    thumb = Image.open(io.BytesIO(jpeg_thumbnail(encode(make(), "PNG"), 64)))
    assert thumb.mode == "RGB" and thumb.size == size
    if size == (64, 21):  # transparency is shown on white
        assert np.asarray(thumb).min() > 240


def test_a_key_that_cannot_be_shown_says_why_in_one_line(tmp_path):
    good = tmp_path / "a.png"
    good.write_bytes(encode(Image.new("RGB", (80, 40), (0, 128, 0)), "PNG"))
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    shard = tmp_path / "shard.tar"
    shard.write_bytes(b"\0" * 1024)
    previews = image_previews([str(good), str(tmp_path / "b.jpg"), f"{shard}#0001", str(tmp_path / "gone.png"),
                               str(good)])
    assert len(previews) == 4
    assert decoded(previews[str(good)].src).size == (64, 32) and previews[str(good)].reason is None
    assert previews[str(tmp_path / "b.jpg")].reason.startswith("cannot be decoded as an image (")
    assert previews[f"{shard}#0001"].reason == (f"a record inside {shard} (tar shard or TFRecord file): not read for "
                                                "a thumbnail")
    assert previews[str(tmp_path / "gone.png")].reason.startswith("cannot be read (FileNotFoundError")
    assert all("\n" not in p.reason for p in previews.values() if p.reason)
    assert image_preview(str(tmp_path / "b.jpg")).src is None


@pytest.mark.parametrize("key, archive", [("/a/b.tar#x/y", "/a/b.tar"), ("gs://b/t.tfrecord#12", "gs://b/t.tfrecord"),
                                          ("/a/b.png", None), ("/a/b#", None)])
def test_the_archive_a_member_key_names(key, archive):
    assert archive_of(key) == archive


def test_first_line_is_the_first_non_blank_line_cut_to_width():
    assert first_line("\n  \n  Hello   there \nsecond") == "Hello there"
    assert first_line("x" * 200, 10) == "x" * 9 + "\u2026"
    assert first_line("") == ""


def test_text_keys_find_their_rows_first_lines(tmp_path):
    from transforms.read.tables import text_key

    path = tmp_path / "texts.jsonl"
    rows = [{"id": "a", "body": "first text\nmore"}, {"body": "  second  text "}, {"id": "c", "body": "third"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    uri = str(path)
    keys = [text_key(uri, 0, "a"), text_key(uri, 1, None), text_key(uri, 9, None)]
    previews = text_previews(keys, {"text": "body", "id": "id"})
    assert previews[keys[0]].text == "first text" and previews[keys[1]].text == "second text"
    assert previews[keys[2]].reason == f"no such row in {uri}"
    missing = text_previews([text_key(str(tmp_path / "none.jsonl"), 0, "a")])
    assert next(iter(missing.values())).reason.startswith("its text file cannot be read (FileNotFoundError")
