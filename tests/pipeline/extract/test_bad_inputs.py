"""What real collections hold, mixed in one folder: every file gives correct features or a dead letter that
says why, and the counts add up."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from pipeline.extract.config import ExtractConfig
from pipeline.extract.job import run_extraction
from tests.conftest import REPO, encode
from tests.fakes import MEAN_COLOUR, MeanColourBackbone
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import InputSpec
from transforms.schema.example import read_records
from transforms.schema.manifest import shard_paths

RED, GREEN, BLUE, ORANGE = (220, 30, 30), (30, 200, 60), (40, 60, 220), (200, 100, 50)


def _frames(fmt: str, colours, **kwargs) -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **kwargs)
    return buf.getvalue()


def _palette_with_transparency() -> bytes:
    image = Image.new("RGB", (60, 60), BLUE).quantize(4)
    image.info["transparency"] = 0
    return encode(image, "PNG", transparency=0)


def _rgba() -> bytes:
    image = Image.new("RGBA", (50, 50), (*GREEN, 0))  # fully transparent: RGB kept, as torchvision's loader does
    return encode(image, "PNG")


def _sixteen_bit_grey() -> bytes:
    return encode(Image.fromarray(np.full((40, 50), 40000, np.uint16)), "PNG")


YCCK_CMYK = (40, 120, 200, 30)
YCCK_RGB = tuple(Image.new("CMYK", (1, 1), YCCK_CMYK).convert("RGB").getpixel((0, 0)))


def _ycck_jpeg() -> bytes:
    """An Adobe YCCK JPEG (what Photoshop writes for CMYK): the stored components are YCbCr of (C, M, Y) and
    inverted K. Pillow writes 4-component JPEGs as inverted CMYK, so give it the inverted components, then
    set the Adobe marker's transform byte to 2 (YCCK)."""
    c, m, y, k = YCCK_CMYK
    ycc = np.asarray(Image.fromarray(np.array([[[c, m, y]]], np.uint8)).convert("YCbCr"))[0, 0]
    stored = (int(ycc[0]), int(ycc[1]), int(ycc[2]), 255 - k)
    data = bytearray(encode(Image.new("CMYK", (64, 48), tuple(255 - v for v in stored)), "JPEG", quality=100))
    adobe = data.find(b"\xff\xeeAdobe".replace(b"\xeeA", b"\xee\x00\x0eA"))
    assert adobe > 0 and data[adobe + 15] == 0
    data[adobe + 15] = 2
    return bytes(data)


def _random_bytes() -> bytes:
    return np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes()


# name -> (file bytes, expected mean colour, or the start of the failure message)
CORPUS = {
    "good.jpg": (lambda: encode(Image.new("RGB", (80, 60), ORANGE), "JPEG", quality=95), ORANGE),
    "cmyk.jpg": (lambda: encode(Image.new("RGB", (80, 60), ORANGE).convert("CMYK"), "JPEG", quality=95), ORANGE),
    "ycck.jpg": (_ycck_jpeg, YCCK_RGB),
    "grey.jpg": (lambda: encode(Image.new("L", (80, 60), 90), "JPEG", quality=95), (90, 90, 90)),
    "sixteen-bit.png": (_sixteen_bit_grey, (155, 155, 155)),
    "palette-transparent.png": (_palette_with_transparency, BLUE),
    "alpha.png": (_rgba, GREEN),
    "animated.gif": (lambda: _frames("GIF", [RED, BLUE], duration=100, loop=0), RED),
    "multi-page.tiff": (lambda: _frames("TIFF", [GREEN, RED]), GREEN),
    "photo.webp": (lambda: encode(Image.new("RGB", (70, 50), BLUE), "WEBP", lossless=True), BLUE),
    "rotated.jpg": (lambda: encode(Image.new("RGB", (80, 40), RED), "JPEG", quality=95,
                                   exif=_orientation(6)), RED),
    "needle.png": (lambda: encode(Image.new("RGB", (40000, 2), GREEN), "PNG"), GREEN),
    "one-pixel.png": (lambda: encode(Image.new("RGB", (1, 1), RED), "PNG"), RED),
    "empty.jpg": (lambda: b"", "empty file (0 bytes)"),
    "truncated.jpg": (lambda: encode(Image.new("RGB", (300, 300), RED), "JPEG")[:300], "damaged image"),
    "random.jpg": (_random_bytes, "not an image (unrecognised file format)"),
    "notes.png": (lambda: b"just some text that claims to be a PNG\n", "not an image (unrecognised file format)"),
    "bomb.png": (lambda: encode(Image.new("1", (20000, 20000)), "PNG"),
                 "image too large: 20000x20000 is 400 megapixels, over the limit of 100"),
}


def _orientation(value: int):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name, (make, _) in CORPUS.items():
        (root / name).write_bytes(make())
    return root


def test_every_bad_input_is_a_dead_letter_and_every_good_one_has_its_features(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    config = ExtractConfig(inputs=(InputSpec.directory(str(corpus)),), output=str(tmp_path / "out"),
                           backbone=MeanColourBackbone(str(tmp_path / "l")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=1000,
                           overwrite=False)
    manifest = run_extraction(config, PipelineOptions(["--runner=FnApiRunner"]))

    good = {name: expected for name, (_, expected) in CORPUS.items() if isinstance(expected, tuple)}
    bad = {name: expected for name, (_, expected) in CORPUS.items() if isinstance(expected, str)}
    assert manifest.counts == {"inputs": len(CORPUS), "embedded": len(good), "failed": len(bad), "duplicates": 0}

    records = {os.path.basename(r.key): r for p in shard_paths(config.output, manifest)
               for r in read_records(p, manifest.outputs)}
    assert sorted(records) == sorted(good)
    for name, colour in good.items():
        np.testing.assert_allclose(records[name].vectors["pixels"], colour, atol=4, err_msg=name)

    errors = {os.path.basename(e["key"]): e for f in manifest.error_files
              for e in map(json.loads, open(os.path.join(config.output, f)))}
    assert sorted(errors) == sorted(bad)
    for name, message in bad.items():
        assert errors[name]["message"].startswith(message), errors[name]
        assert errors[name]["stage"] == "decode" and errors[name]["error_type"] == "ImageDecodeError"
