
"""Pack a folder of images into each input format the pipeline reads, so tests can compare them.

Every packer returns ``{key the pipeline will give the record: path relative to the folder}``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tarfile
import threading
from collections.abc import Callable, Sequence

from transforms.schema.framing import frame as tfrecord_frame


def folder_files(root) -> list[str]:
    """Every file under ``root``, relative, sorted."""
    return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                  for d, _, files in os.walk(root) for f in files)


def folder_label(rel: str) -> str | None:
    return rel.split("/")[0] if "/" in rel else None


def write_manifest(root, path: str, uri_of: Callable[[str], str], fmt: str = "csv", uri_field: str = "path",
                   split_of: Callable[[str], str | None] = lambda rel: None) -> dict[str, str]:
    """A manifest with one row per file: its URI (as ``uri_of(rel)`` writes it), label and split."""
    rows = [{uri_field: uri_of(rel), "label": folder_label(rel) or "", "split": split_of(rel) or ""}
            for rel in folder_files(root)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            writer = csv.DictWriter(f, fieldnames=[uri_field, "label", "split"])
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                f.write(json.dumps({k: v for k, v in row.items() if v}) + "\n")
    return {os.path.join(str(root), rel): rel for rel in folder_files(root)}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def write_tar_shards(root, paths: list[str], shard_uri_of: Callable[[str], str] = lambda p: p) -> dict[str, str]:
    """The folder's files spread round-robin over ``paths`` as WebDataset shards: each image member is named
    by its relative path; its label goes in ``.cls`` (even positions) or a ``.json`` (odd positions)."""
    keys = {}
    tars = [tarfile.open(p, "w") for p in paths]
    try:
        for i, rel in enumerate(folder_files(root)):
            tar, shard = tars[i % len(paths)], shard_uri_of(paths[i % len(paths)])
            with open(os.path.join(root, rel), "rb") as f:
                _add(tar, rel, f.read())
            stem = rel.rsplit(".", 1)[0]
            label = folder_label(rel)
            if label is not None and i % 2 == 0:
                _add(tar, f"{stem}.cls", label.encode())
            elif label is not None:
                _add(tar, f"{stem}.json", json.dumps({"label": label, "index": i}).encode())
            keys[f"{shard}#{rel}"] = rel
    finally:
        for tar in tars:
            tar.close()
    return keys


def image_example(image: bytes | None, label: str | int | None, image_feature="image/encoded",
                  label_feature="image/class/label") -> bytes:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    feature = example.features.feature
    if image is not None:
        feature[image_feature].bytes_list.value.append(image)
    if isinstance(label, int):
        feature[label_feature].int64_list.value.append(label)
    elif label is not None:
        feature[label_feature].bytes_list.value.append(label.encode())
    return example.SerializeToString()


def write_tfrecords(root, paths: list[str], uri_of: Callable[[str], str] = lambda p: p) -> dict[str, str]:
    """The folder's files as tf.train.Examples (``image/encoded``, ``image/class/label``), round-robin
    over ``paths``."""
    keys, counts = {}, [0] * len(paths)
    outs = [open(p, "wb") for p in paths]
    try:
        for i, rel in enumerate(folder_files(root)):
            j = i % len(paths)
            with open(os.path.join(root, rel), "rb") as f:
                outs[j].write(tfrecord_frame(image_example(f.read(), folder_label(rel))))
            keys[f"{uri_of(paths[j])}#{counts[j]}"] = rel
            counts[j] += 1
    finally:
        for out in outs:
            out.close()
    return keys


def pack_layout(image_folder, local_root, uri_root: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The image folder in every image format, written under ``local_root`` to be served from ``uri_root``
    (the same directory, or a bucket prefix it is uploaded to):

    - ``folder/``: the loose files;
    - ``index.csv`` + ``copy/``: a manifest with relative paths, labels and splits, over a copy of the files;
    - ``shards/shard-{0,1}.tar``: WebDataset shards;
    - ``records/part-{0,1}.tfrecord``: tf.train.Examples.

    Returns the ``--input`` of each format and, for each, ``{record key: original relative path}``.
    """
    import shutil

    local_root, uri_root = str(local_root), str(uri_root).rstrip("/")

    def uri(local_path: str) -> str:
        return f"{uri_root}/{os.path.relpath(local_path, local_root).replace(os.sep, '/')}"

    for sub in ("shards", "records"):
        os.makedirs(os.path.join(local_root, sub), exist_ok=True)
    shutil.copytree(image_folder, os.path.join(local_root, "folder"))
    shutil.copytree(image_folder, os.path.join(local_root, "copy"))
    keys = {"files": {f"{uri_root}/folder/{rel}": rel for rel in folder_files(image_folder)}}
    write_manifest(image_folder, os.path.join(local_root, "index.csv"), lambda rel: f"copy/{rel}",
                   split_of=split_of)
    keys["manifest"] = {f"{uri_root}/copy/{rel}": rel for rel in folder_files(image_folder)}
    keys["tar"] = write_tar_shards(image_folder, [os.path.join(local_root, f"shards/shard-{i}.tar") for i in range(2)],
                                   uri)
    keys["tfrecord"] = write_tfrecords(image_folder,
                                       [os.path.join(local_root, f"records/part-{i}.tfrecord") for i in range(2)], uri)
    inputs = {"files": f"{uri_root}/folder", "manifest": f"{uri_root}/index.csv",
              "tar": f"{uri_root}/shards/shard-*.tar", "tfrecord": f"{uri_root}/records/part-*.tfrecord"}
    return inputs, keys


def records_by_format(records, keys: dict[str, dict[str, str]]) -> dict[str, dict]:
    """{format: {original relative path: record}} for the records of a run over ``pack_layout``'s inputs."""
    where = {key: (fmt, rel) for fmt, mapping in keys.items() for key, rel in mapping.items()}
    out = {fmt: {} for fmt in keys}
    for record in records:
        fmt, rel = where[record.key]
        out[fmt][rel] = record
    return out


def split_of(rel: str) -> str:
    """The split ``pack_layout`` writes into its manifest for a file."""
    return "test" if rel.startswith("china/p") else "train"


def input_flags(inputs: dict[str, str]) -> list[str]:
    """``--input`` flags for ``pack_layout``'s four inputs, in a fixed order."""
    return [arg for fmt in ("files", "manifest", "tar", "tfrecord") for arg in ("--input", inputs[fmt])]


def read_feature_set(output: str):
    """A feature set's manifest and every record of its shards (local or remote)."""
    from transforms.schema.example import decode_example, iter_serialized
    from transforms.schema.manifest import read_manifest, shard_paths

    manifest = read_manifest(output)
    records = [decode_example(data, manifest.outputs)
               for path in shard_paths(output, manifest) for data in iter_serialized(path)]
    return manifest, records


def tar_of(members: Sequence[tuple[str, bytes]]) -> bytes:
    """(name, data) -> a tar archive of those regular files, in that order."""
    return tar_with([(name, tarfile.REGTYPE, data) for name, data in members])


class CountedReads(io.BytesIO):
    """A stream over ``data`` that appends the size asked of each ``read`` to ``reads``."""

    def __init__(self, data: bytes, reads: list):
        super().__init__(data)
        self.reads = reads

    def read(self, n=-1):
        self.reads.append(n)
        return super().read(n)


def tar_with(entries, format=tarfile.PAX_FORMAT) -> bytes:
    """(name, tar member type, data or link target) -> a tar archive, links and special members included."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tar:
        for name, kind, value in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
            else:
                info.linkname = value
                tar.addfile(info)
    return buf.getvalue()


@contextlib.contextmanager
def fed_if_opened(fifos, after: float = 20.0):
    """Should the job open one of ``fifos`` for reading, write to it after ``after`` seconds, so that a job which
    would hang ends (and the test fails on what it read) instead. Yields the list of FIFOs it had to feed."""
    fed, stop = [], threading.Event()

    def feed(fifo):
        if stop.wait(after):
            return
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # fails while no reader has it open
            except OSError:
                stop.wait(0.05)
                continue
            os.write(fd, b"fed by the test")
            os.close(fd)
            fed.append(str(fifo))
            stop.wait(1.0)  # it may be opened again (indexed, then read)

    threads = [threading.Thread(target=feed, args=(f,), daemon=True) for f in fifos]
    for thread in threads:
        thread.start()
    try:
        yield fed
    finally:
        stop.set()
        for thread in threads:
            thread.join()
