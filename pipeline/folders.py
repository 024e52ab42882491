"""Folders of files on local disk, gs:// or s3:// alike: MODELDIR and other trees the commands read and write.

Keras and the SavedModel writer need local paths, so a remote MODELDIR is built in a local temporary folder
(``model_dir_for_writing``) and copied up with Beam's FileSystems once complete; readers take a local copy of a
remote folder (``local_copy``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from transforms.worker.storage import is_remote

__all__ = ["read_model_file", "objects_under", "absolute", "is_empty_dir", "clear_dir", "copy_tree_to",
           "local_copy", "model_dir_for_writing"]

UNCOMPRESSED = "uncompressed"  # Beam's CompressionTypes.UNCOMPRESSED: copy bytes as they are, whatever the suffix


def absolute(uri: str) -> str:
    """A local path made absolute (``~`` expanded); a URI as it is."""
    return uri if is_remote(uri) else os.path.abspath(os.path.expanduser(uri))


def objects_under(uri: str) -> list[str]:
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

    objects = objects_under(path)
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
    for path in objects_under(uri):
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


def read_model_file(model_dir: str, name: str, error: type[Exception]) -> dict:
    """MODELDIR/``name`` (a JSON file ``featurebeam train`` wrote), local or on gs:// or s3://; ``error`` with one
    line when it is not there."""
    import json

    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(model_dir, name)
    if not FileSystems.exists(path):
        raise error(f"{path} is missing: not a model directory written by featurebeam train")
    with FileSystems.open(path, compression_type=UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))
