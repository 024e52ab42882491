"""The eval transform of ``transforms.decode.images`` as TensorFlow ops, for models that take encoded bytes.

It reproduces the PIL path closely: JPEGs decode with libjpeg's accurate integer DCT (what PIL uses),
and the resize runs as PIL does it, a horizontal then a vertical antialiased bilinear pass, each rounded to
uint8. On real photos the result differs from PIL by at most one grey level on a fraction of a percent of
pixels. A KerasHub preset's geometry (``CROP_TO_ASPECT_RATIO``) is TensorFlow's own resize in both places, so it
is the same here. EXIF orientation is not applied here (PIL's path applies it).
"""

from __future__ import annotations

from transforms.decode.images import CROP_TO_ASPECT_RATIO, ImagePreprocessing

__all__ = ["decode_and_crop"]


def decode_and_crop(data, prep: ImagePreprocessing):
    """One encoded image (scalar tf.string) -> (crop, crop, 3) uint8 tensor."""
    import tensorflow as tf

    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8))
    if prep.fit == CROP_TO_ASPECT_RATIO:
        return _crop_to_aspect_and_resize(image, prep)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    size = prep.resize_shorter
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = tf.cast(tf.math.floor(size * tf.cast(long, tf.float64) / tf.cast(short, tf.float64)), tf.int32)
    new_h = tf.where(h <= w, size, new_long)
    new_w = tf.where(h <= w, new_long, size)

    def to_uint8_levels(x):
        return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)

    x = tf.cast(image, tf.float32)
    x = to_uint8_levels(tf.image.resize(x, [h, new_w], method=prep.resample, antialias=True))
    x = to_uint8_levels(tf.image.resize(x, [new_h, new_w], method=prep.resample, antialias=True))
    crop = prep.crop
    top = tf.cast(tf.round((new_h - crop) / 2), tf.int32)
    left = tf.cast(tf.round((new_w - crop) / 2), tf.int32)
    return tf.cast(x[top:top + crop, left:left + crop], tf.uint8)


def _crop_to_aspect_and_resize(image, prep: ImagePreprocessing):
    """``transforms.decode.images.crop_to_aspect_and_resize`` as ops: the largest centred square, resized, rounded."""
    import tensorflow as tf

    h, w = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    window = tf.cast(image[top:top + side, left:left + side], tf.float32)
    x = tf.image.resize(window, [prep.crop, prep.crop], method=prep.resample, antialias=prep.antialias)
    return tf.cast(tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0), tf.uint8)
