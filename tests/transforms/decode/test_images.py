"""Decoding and the resize/crop geometry, without Beam."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode
from transforms.decode.images import ImageDecodeError, ImagePreprocessing, decode_image, resize_and_crop

PREP = ImagePreprocessing()


@pytest.mark.parametrize("size, resized", [
    ((640, 427), (383, 256)),   # landscape: shorter side (height) to 256, width int(256 * 640 / 427)
    ((427, 640), (256, 383)),   # portrait
    ((300, 300), (256, 256)),
    ((100, 50), (512, 256)),    # upscaled when smaller than the target
], ids=["landscape", "portrait", "square", "small"])
def test_resize_then_centre_crop_follows_torchvision(size, resized):
    # A pattern that varies along both axes, so a crop taken at the wrong place cannot match.
    w, h = resized
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    pattern = Image.fromarray(np.stack([(xs * 3 + ys * 7) % 251] * 3, axis=-1).astype(np.uint8))
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    expected = np.asarray(pattern.resize(resized, Image.BILINEAR))[top:top + 224, left:left + 224]
    out = resize_and_crop(pattern, PREP)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_any_colour_mode_becomes_rgb(mode):
    image = Image.new("RGB", (300, 200), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(encode(image, fmt), PREP)
    assert out.shape == (224, 224, 3)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (400, 300), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 400, 150))  # blue on top, red below
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: blue ends at the bottom when applied
    out = decode_image(encode(image, "JPEG", exif=exif, quality=95), PREP)
    assert out[-1, 112, 2] > 200 and out[0, 112, 0] > 200


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is text, not pixels\n", "not an image"),
    (encode(Image.new("RGB", (300, 300)), "JPEG")[:200], "damaged image"),
], ids=["zero-bytes", "text", "truncated-jpeg"])
def test_bad_files_raise_a_reason_a_person_understands(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data, PREP)


@pytest.mark.parametrize("prep", [PREP, ImagePreprocessing(scale=1.0, mean=(127.0,) * 3, std=(128.0,) * 3),
                                  ImagePreprocessing(scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0,) * 3,
                                                     bgr=True)], ids=["torchvision", "efficientnet-lite", "caffe-bgr"])
def test_normalisation_in_graph_matches_numpy_with_or_without_a_fixed_width(prep):
    """Row-wise where the width is fixed (compiled for the backbone's input), per channel where it is not: both
    give numpy's values, and the same bits."""
    import tensorflow as tf

    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    rgb = pixels[..., ::-1] if prep.bgr else pixels
    expected = (rgb * np.float32(prep.scale) - np.float32(prep.mean)) / np.float32(prep.std)  # in float32
    fixed = tf.function(prep.normalize, input_signature=[tf.TensorSpec((None, 5, 7, 3), tf.uint8)])
    free = tf.function(prep.normalize, input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8)])
    np.testing.assert_allclose(fixed(pixels).numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fixed(pixels).numpy(), free(pixels).numpy())
    np.testing.assert_array_equal(prep.normalize(tf.constant(pixels)).numpy(), fixed(pixels).numpy())


def test_large_jpegs_decode_at_reduced_scale_with_nearly_the_same_result(sample_photos, mobilenet):
    from transforms.decode.images import reduce_jpeg_decoding

    china = Image.open(io.BytesIO(sample_photos["china.jpg"])).convert("RGB")
    big = encode(china.resize((2560, 1708), Image.BICUBIC), "JPEG", quality=95)
    with Image.open(io.BytesIO(big)) as image:
        reduce_jpeg_decoding(image, PREP)
        assert image.size == (1280, 854)  # DCT scaling by 1/2: still at least twice the 256 the resize needs
    with Image.open(io.BytesIO(sample_photos["china.jpg"])) as image:
        reduce_jpeg_decoding(image, PREP)
        assert image.size == (640, 427)   # a photo near the backbone's size decodes in full

    reduced = decode_image(big, PREP)
    with Image.open(io.BytesIO(big)) as image:
        full = resize_and_crop(image.convert("RGB"), PREP)
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 1.0
    a, b = (mobilenet(x[None])["features.18"][0] for x in (reduced, full))
    assert float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999


def test_pixel_limit_is_configurable_and_checked_before_decoding():
    png = encode(Image.new("RGB", (200, 100), (1, 2, 3)), "PNG")
    assert decode_image(png, PREP, max_pixels=20_000).shape == (224, 224, 3)
    with pytest.raises(ImageDecodeError, match=r"200x100 is 0 megapixels, over the limit of 0.019999"):
        decode_image(png, PREP, max_pixels=19_999)


def test_extreme_aspect_ratios_resample_only_the_crop_with_the_same_pixels(sample_photos):
    photo = Image.open(io.BytesIO(sample_photos["flower.jpg"])).convert("RGB")
    needle = photo.resize((4000, 200), Image.BILINEAR)   # resizes to 5120x256: above the direct path's budget
    top, left = 16, (5120 - 224) // 2
    direct = np.asarray(needle.resize((5120, 256), Image.BILINEAR).crop((left, top, left + 224, top + 224)))
    assert np.abs(resize_and_crop(needle, PREP).astype(int) - direct).max() <= 1


# --- many threads at once (a Dataflow worker process runs several harness threads) ---------------------------------

SMALL = ImagePreprocessing(resize_shorter=32, crop=32)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, followed by no pixel data at all."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


def thread_mix() -> list[bytes]:
    """Good images (one a palette PNG with per-entry transparency), images too large by their header alone, and
    files that are not images or are broken."""
    ys, xs = np.mgrid[0:48, 0:64]
    pattern = Image.fromarray(np.stack([(xs * 3 + ys * 7) % 251, xs * 4, ys * 5], axis=-1).astype(np.uint8))
    palette = Image.fromarray((xs % 7).astype(np.uint8), "P")
    palette.putpalette([(i * 37) % 256 for i in range(768)])
    jpeg = encode(pattern, "JPEG", quality=90)
    return [encode(pattern, "PNG"), jpeg, encode(pattern.convert("L"), "PNG"),
            encode(palette, "PNG", transparency=bytes([0, 60, 120, 180, 240, 255, 30])),
            encode(pattern.resize((300, 4)), "PNG"),
            png_claiming(50_000, 50_000), png_claiming(20_000, 6_000),
            jpeg[:300], encode(pattern, "PNG")[:200], b"plain text, not pixels\n", b""]


def outcome(data: bytes):
    """What decoding gives: the pixels, or the reason it refused."""
    try:
        return "ok", decode_image(data, SMALL).tobytes()
    except ImageDecodeError as e:
        return "refused", str(e)


def test_the_mix_decodes_as_expected_and_warns_of_nothing():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [outcome(data) for data in thread_mix()]
    assert [kind for kind, _ in got] == ["ok"] * 5 + ["refused"] * 6
    assert [reason for _, reason in got[5:7]] == [
        "image too large: 50000x50000 is 2500 megapixels, over the limit of 100 (--max-image-pixels)",
        "image too large: 20000x6000 is 120 megapixels, over the limit of 100 (--max-image-pixels)"]
    assert [reason.split(":")[0] for _, reason in got[7:]] == [
        "damaged image", "damaged image", "not an image (unrecognised file format)", "empty file (0 bytes)"]
    assert [str(w.message) for w in caught] == []  # nothing that would need a warning filter


def test_many_threads_decode_as_one_does_and_no_global_state_changes(monkeypatch):
    import random
    import threading
    import warnings

    inputs = thread_mix()
    expected = [outcome(data) for data in inputs]  # the first call sets up PIL for the process, once
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10**12)  # another component's limit, far above these images
    filters = list(warnings.filters)
    start, stop, changes = threading.Barrier(9), threading.Event(), []

    def watch():
        start.wait()
        while not stop.is_set():
            if warnings.filters != filters or Image.MAX_IMAGE_PIXELS != 10**12:
                changes.append((list(warnings.filters[:2]), Image.MAX_IMAGE_PIXELS))

    def decode_all(seed: int, results: list):
        order = list(range(len(inputs))) * 20
        random.Random(seed).shuffle(order)
        start.wait()
        results.extend((i, outcome(inputs[i])) for i in order)

    results = [[] for _ in range(8)]
    threads = [threading.Thread(target=decode_all, args=(n, results[n])) for n in range(8)]
    watcher = threading.Thread(target=watch)
    for thread in [watcher, *threads]:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join()
    assert [len(r) for r in results] == [20 * len(inputs)] * 8
    assert [(i, got) for r in results for i, got in r if got != expected[i]] == []
    assert changes[:1] == []
    assert warnings.filters == filters and Image.MAX_IMAGE_PIXELS == 10**12
