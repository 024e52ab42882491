"""The serving model: frozen backbone + preprocessing + head, as one SavedModel.

Endpoints:
- ``serve`` (also ``serving_default``): ``image_bytes`` (N,) encoded images -> ``probabilities`` (N, C),
  ``label`` (N,) predicted class name, ``class_names`` (N, C).
- ``classify_images``: ``images`` (N, crop, crop, 3) uint8, already decoded and cropped the project's way
  (``transforms.decode.images.decode_image``) -> the same outputs; what ``featurebeam predict`` uses, so that
  undecodable files are recorded failures rather than a failed batch.

MODELDIR may be a local folder, ``gs://`` or ``s3://``. Keras and the SavedModel writer need local paths, so a
remote MODELDIR is built in a local temporary folder (``model_dir_for_writing``) and copied up with Beam's
FileSystems; readers take a local copy of it (``local_copy``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

from transforms.schema import OutputSpec

__all__ = ["export_serving_model", "is_remote", "is_empty_dir", "clear_dir", "copy_tree_to", "local_copy",
           "model_dir_for_writing"]

UNCOMPRESSED = "uncompressed"  # Beam's CompressionTypes.UNCOMPRESSED: copy bytes as they are, whatever the suffix


def export_serving_model(path: str, backbone_spec, output: OutputSpec, head, classes: Sequence[str]) -> None:
    import keras
    import tensorflow as tf

    from transforms.decode.tf_images import decode_and_crop
    from transforms.embed.pooling import pool

    backbone = backbone_spec.load([output.layer])
    prep = backbone_spec.preprocessing
    size = prep.crop
    names = list(classes)

    def classify(images):
        features = pool(backbone(images, training=False)[output.layer], output.pooling)
        probabilities = head(features, training=False)
        class_names = tf.constant(names)
        n = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "label": tf.gather(class_names, tf.argmax(probabilities, axis=1)),
            "class_names": tf.tile(class_names[None, :], [n, 1]),
        }

    def serve(image_bytes):
        images = tf.map_fn(lambda b: decode_and_crop(b, prep), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return classify(images)

    archive = keras.export.ExportArchive()
    archive.track(backbone)
    archive.track(head)
    archive.add_endpoint("serve", serve, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("classify_images", classify,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    archive.write_out(path, verbose=False)


def is_remote(path: str) -> bool:
    """Whether a path is an object-store URI (gs://, s3://) rather than a local path."""
    return "://" in path


def _objects_under(uri: str) -> list[str]:
    """Every object under a URI's prefix; object stores have no folders, only names."""
    from apache_beam.io.filesystems import FileSystems

    (match,) = FileSystems.match([FileSystems.join(uri, "**")])
    return sorted(m.path for m in match.metadata_list)


def is_empty_dir(path: str) -> bool:
    """Whether a local folder or an object-store prefix holds nothing (a missing one holds nothing)."""
    if not is_remote(path):
        return not (os.path.isdir(path) and os.listdir(path))
    from apache_beam.io.filesystems import FileSystems

    (match,) = FileSystems.match([FileSystems.join(path, "**")], limits=[1])
    return not match.metadata_list


def clear_dir(path: str) -> None:
    """Delete a local folder, or every object under a prefix: what --overwrite replaces."""
    if not is_remote(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        return
    from apache_beam.io.filesystems import FileSystems

    objects = _objects_under(path)
    if objects:
        FileSystems.delete(objects)


def copy_tree_to(local_root: str, uri: str) -> list[str]:
    """Copy every file under a local folder to the same relative names under a URI; returns what was written."""
    from apache_beam.io.filesystems import FileSystems

    written = []
    for folder, _, files in sorted(os.walk(local_root)):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(folder, name), local_root).replace(os.sep, "/")
            target = FileSystems.join(uri, rel)
            with open(os.path.join(folder, name), "rb") as src, \
                    FileSystems.create(target, compression_type=UNCOMPRESSED) as dst:
                shutil.copyfileobj(src, dst, 8 * 2**20)
            written.append(target)
    return written


def _download(uri: str, local_root: str) -> None:
    """Copy every object under a URI to the same relative names in a local folder (none may climb out of it)."""
    from apache_beam.io.filesystems import FileSystems

    prefix = uri.rstrip("/") + "/"
    root = os.path.realpath(local_root)
    for path in _objects_under(uri):
        rel = path[len(prefix):] if path.startswith(prefix) else ""
        if not rel or rel.endswith("/"):
            continue  # the prefix itself, or a folder marker
        target = os.path.realpath(os.path.join(root, *rel.split("/")))
        if not target.startswith(root + os.sep):
            raise ValueError(f"{path}: object name leads outside {uri}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(path, compression_type=UNCOMPRESSED) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 * 2**20)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local folder holding what ``path`` holds: the folder itself when local, else a temporary copy deleted on
    exit (TensorFlow and Keras read models from local paths)."""
    if not is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="featurebeam-model-") as folder:
        _download(path, folder)
        yield folder


@contextlib.contextmanager
def model_dir_for_writing(output: str, overwrite: bool = False) -> Iterator[str]:
    """A local folder to write MODELDIR in: MODELDIR itself when local (cleared first with ``overwrite``), else a
    temporary folder copied to the remote MODELDIR once all of it is written (its old objects cleared first)."""
    if not is_remote(output):
        if overwrite:
            clear_dir(output)
        os.makedirs(output, exist_ok=True)
        yield output
        return
    with tempfile.TemporaryDirectory(prefix="featurebeam-model-") as folder:
        yield folder
        if overwrite:
            clear_dir(output)
        copy_tree_to(folder, output)
