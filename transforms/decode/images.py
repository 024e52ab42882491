"""Image decoding and the geometric half of a backbone's preprocessing, as pure functions, and ``DecodeImageFn``,
the Beam step over them.

The backbone's eval transform is split in two: the geometry (resize, crop) runs here, on the worker's CPU,
and produces a fixed-shape uint8 array; the arithmetic (scale, mean, std) runs inside the compiled graph
(see ``ImagePreprocessing.normalize``), so uint8 is what crosses from decoding to inference.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.schema.elements import FAILED, METRICS_NAMESPACE, Failure, Record
from transforms.worker.process import WorkerDoFn

__all__ = ["DecodeImageFn", "ImagePreprocessing", "ImageDecodeError", "decode_image", "resize_and_crop",
           "DEFAULT_MAX_PIXELS", "SHORTER_SIDE", "CROP_TO_ASPECT_RATIO", "keras_crop_box"]

DEFAULT_MAX_PIXELS = 100_000_000  # larger images are refused before decoding (decompression bombs)

# How an image is brought to the backbone's size (``ImagePreprocessing.fit``).
SHORTER_SIDE = "shorter_side"                  # torchvision: resize the shorter side (PIL, antialiased), centre-crop
CROP_TO_ASPECT_RATIO = "crop_to_aspect_ratio"  # Keras' Resizing (KerasHub's image converters): the largest centred
#                                                window of the target's shape, resized with TensorFlow's kernels


class ImageDecodeError(ValueError):
    """The bytes are not an image this decoder can read; the message says why."""


@dataclass(frozen=True)
class ImagePreprocessing:
    """A backbone's eval transform: the geometry (``fit``), then ``(x * scale - mean) / std``.

    ``fit`` SHORTER_SIDE resizes the shorter side to ``resize_shorter`` with PIL's ``resample`` filter, then
    centre-crops ``crop`` (torchvision's eval transform); CROP_TO_ASPECT_RATIO cuts the largest centred square and
    resizes it to ``crop`` as Keras' ``Resizing(crop_to_aspect_ratio=True)`` does (TensorFlow's ``resample``
    kernel, ``antialias`` as given), which is what KerasHub's image converters run. Either way the pixels are
    rounded to uint8 here. ``mean`` and ``std`` are per channel in the scaled units (torchvision: scale 1/255,
    ImageNet mean/std; EfficientNet-Lite: scale 1, mean 127, std 128). ``bgr``: the channels are reversed before
    ``mean`` and ``std`` apply (Caffe-style models: ResNet50, VGG), so those are in BGR order.
    """

    resize_shorter: int = 256
    crop: int = 224
    resample: str = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    bgr: bool = False
    fit: str = SHORTER_SIDE
    antialias: bool = False

    def describe(self) -> dict:
        if self.fit == CROP_TO_ASPECT_RATIO:
            geometry = {"fit": "centre crop to a square, then resize (Keras Resizing, crop_to_aspect_ratio)",
                        "size": self.crop, "resample": f"TensorFlow {self.resample}", "antialias": self.antialias}
        else:
            geometry = {"resize_shorter_side": self.resize_shorter, "resample": f"PIL {self.resample}",
                        "center_crop": self.crop}
        return {
            "channels": "BGR" if self.bgr else "RGB",
            **geometry,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "input": "uint8 RGB, normalised inside the graph",
        }

    def normalize(self, images_uint8):
        """In-graph arithmetic: uint8 NHWC tensor -> float32 network input, ``(x * scale - mean) / std``.

        Where the width and channels are fixed (a backbone's input always is), each image is viewed as rows of
        width x channels values, with ``mean`` and ``1 / std`` tiled to a row. TensorFlow's CPU kernels broadcast
        a 3-vector along the last axis slowly: for 32 images of 224 x 224 that took 16-23 ms against 4 ms this
        way, and MobileNetV2's forward pass ran 1.05x faster. Dividing by ``std`` is multiplying by its
        reciprocal, as TensorFlow's graph optimizer rewrote the division before, so the values are the same bit
        for bit. The BGR flip is ``tf.reverse`` for the same reason (the reversed slice ``x[..., ::-1]`` took 36 ms
        there, this 3)."""
        import tensorflow as tf

        x = tf.cast(images_uint8, tf.float32) * self.scale
        if self.bgr:
            x = tf.reverse(x, axis=[-1])
        mean, inverse_std = np.asarray(self.mean, np.float32), 1 / np.asarray(self.std, np.float32)
        width, channels = x.shape[-2], x.shape[-1]
        if width is None or channels is None:
            return (x - mean) * inverse_std
        rows = tf.reshape(x, tf.concat([tf.shape(x)[:-2], [width * channels]], axis=0))
        mean, inverse_std = (np.tile(np.broadcast_to(v, (channels,)), width) for v in (mean, inverse_std))
        return tf.reshape((rows - mean) * inverse_std, tf.shape(x))


def _resample_filter(name: str):
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[name]


def keras_crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the window Keras' ``crop_to_aspect_ratio`` keeps: the largest of the target's
    shape, centred, in Keras' own integer arithmetic."""
    crop_height = max(min(height, int(float(width * target_height) / target_width)), 1)
    crop_width = max(min(width, int(float(height * target_width) / target_height)), 1)
    return int(float(height - crop_height) / 2), int(float(width - crop_width) / 2), crop_height, crop_width


def crop_to_aspect_and_resize(pixels: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """Keras' ``Resizing(crop_to_aspect_ratio=True)`` on one (H, W, 3) image, rounded -> (crop, crop, 3) uint8."""
    import tensorflow as tf

    top, left, height, width = keras_crop_box(pixels.shape[0], pixels.shape[1], prep.crop, prep.crop)
    window = np.ascontiguousarray(pixels[top:top + height, left:left + width], dtype=np.float32)
    resized = tf.image.resize(window, (prep.crop, prep.crop), method=prep.resample, antialias=prep.antialias)
    return np.clip(np.floor(resized.numpy() + 0.5), 0, 255).astype(np.uint8)


def resize_and_crop(image, prep: ImagePreprocessing) -> np.ndarray:
    """The geometry of ``prep`` on a PIL RGB image -> (crop, crop, 3) uint8 (``crop_to_aspect_and_resize`` for
    CROP_TO_ASPECT_RATIO)."""
    if prep.fit == CROP_TO_ASPECT_RATIO:
        return crop_to_aspect_and_resize(np.asarray(image, dtype=np.uint8), prep)
    return _shorter_side_and_crop(image, prep)


def _shorter_side_and_crop(image, prep: ImagePreprocessing) -> np.ndarray:
    """torchvision's ``Resize(shorter)`` + ``CenterCrop(crop)`` on a PIL RGB image -> (crop, crop, 3) uint8.

    When the resized image would be huge (an absurd aspect ratio: 100000x10 resizes to 2560000x256), only the
    crop's region is resampled (PIL's ``box``), which gives the same pixels to within 1 without the memory."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = prep.resize_shorter, int(prep.resize_shorter * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = int(round((new_h - prep.crop) / 2.0))
    left = int(round((new_w - prep.crop) / 2.0))
    if new_w * new_h > 16 * prep.crop * prep.crop:
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + prep.crop) * sx, (top + prep.crop) * sy)
        return np.asarray(image.resize((prep.crop, prep.crop), _resample_filter(prep.resample), box=box), np.uint8)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), _resample_filter(prep.resample))
    image = image.crop((left, top, left + prep.crop, top + prep.crop))
    return np.asarray(image, dtype=np.uint8)


def to_rgb(image):
    """Any PIL mode -> RGB as torchvision's loader does (``convert("RGB")``: alpha dropped, palette and CMYK
    mapped), except high-bit-depth greyscale, which PIL would clip to white: it is scaled to 8 bits."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and isinstance(image.info.get("transparency"), bytes):
        image = image.convert("RGBA")  # the same colours, without PIL's warning for a direct conversion
    return image if image.mode == "RGB" else image.convert("RGB")


# A JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling) only while its shorter side stays at least this many
# times the backbone's resize target, so the antialiased resize that follows still does the real downsampling.
DRAFT_MARGIN = 2


def reduce_jpeg_decoding(image, prep: ImagePreprocessing) -> None:
    """Let a large JPEG decode at reduced scale when the backbone needs far fewer pixels (no-op otherwise, and
    for CROP_TO_ASPECT_RATIO, whose resize need not antialias)."""
    if image.format != "JPEG" or prep.fit != SHORTER_SIDE:
        return
    width, height = image.size
    factor = DRAFT_MARGIN * prep.resize_shorter / max(1, min(width, height))
    if factor <= 0.5:
        image.draft(None, (max(1, int(width * factor)), max(1, int(height * factor))))


_PIL_LOCK = threading.Lock()
_PIL_READY = False


def ready_pil() -> None:
    """PIL's process-wide settings, made once per process (idempotent; any thread may call it first): every
    format plugin registered before any image opens, and PIL's own pixel limit off, since ``decode_image``
    checks its configurable one from the header itself (so it never warns or raises its own bomb errors)."""
    global _PIL_READY
    if _PIL_READY:
        return
    with _PIL_LOCK:
        if not _PIL_READY:
            from PIL import Image

            Image.preinit()  # the common formats first, tried in the order Image.open itself would
            Image.init()
            Image.MAX_IMAGE_PIXELS = None
            _PIL_READY = True


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse, from its header's size, an image of more than ``max_pixels`` pixels or of none."""
    if width * height > max_pixels:
        raise ImageDecodeError(f"image too large: {width}x{height} is {width * height / 1e6:.0f} "
                               f"megapixels, over the limit of {max_pixels / 1e6:g} (--max-image-pixels)")
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")


def decode_image(data: bytes, prep: ImagePreprocessing, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> the backbone's fixed-shape uint8 RGB input, or ``ImageDecodeError``.

    The first frame of animated or multi-page files is used; EXIF orientation is applied; an image of more
    than ``max_pixels`` is refused from its header, before any pixel is decoded. Safe to call from many threads
    at once: no process-wide state (warning filters, PIL settings) is changed after ``ready_pil``'s first call."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    ready_pil()
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_pixels(*image.size, max_pixels)
            reduce_jpeg_decoding(image, prep)
            ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
            return resize_and_crop(to_rgb(image), prep)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised file format)") from None
    except MemoryError:
        raise ImageDecodeError("image too large to decode in this worker's memory") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"damaged image: {e}") from None


class DecodeImageFn(WorkerDoFn):
    """Decodes, resizes and crops each image to the backbone's fixed input; bad images go to ``failed``."""

    def __init__(self, preprocessing: ImagePreprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
        self._prep = preprocessing
        self._max_pixels = max_pixels
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "records_decoded")

    def process(self, record: Record):
        try:
            image = decode_image(record.payload, self._prep, self._max_pixels)
        except Exception as e:  # a bad file is this record's failure, never the job's
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(record.key, record.origin, "decode", e))
            return
        self._decoded.inc()
        yield (record.key, record.label, record.split), image
