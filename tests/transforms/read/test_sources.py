"""Input specs, labels from folders, listing, and what is refused before reading (special files, oversized inputs)."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time

import apache_beam as beam
import pytest

from transforms.read.sources import (
    ExpandSourceFn,
    InputFields,
    InputSpec,
    ReadUnitFn,
    label_from_path,
    list_source_files,
)
from transforms.records import FAILED, FileRef, Record, SourceFile


@pytest.mark.parametrize("root, uri, label", [
    ("/data", "/data/cat/1.jpg", "cat"),
    ("/data", "/data/cat/deeper/1.jpg", "cat"),
    ("/data", "/data/1.jpg", None),
    ("/data/", "/data/dog/2.png", "dog"),
    ("gs://bucket/set", "gs://bucket/set/dog/2.png", "dog"),
    ("/data", "/database/cat/1.jpg", None),
], ids=["first-level", "nested", "root-file", "trailing-slash", "gcs", "prefix-is-not-parent"])
def test_label_is_the_first_level_folder(root, uri, label):
    assert label_from_path(root, uri) == label


@pytest.mark.parametrize("pattern, root", [
    ("/data/*/*.jpg", "/data"),
    ("/data/train-*.png", "/data"),
    ("gs://b/set/**", "gs://b/set"),
], ids=["subfolders", "file-prefix", "gcs-recursive"])
def test_glob_labels_are_read_below_its_fixed_prefix(pattern, root):
    assert InputSpec.glob(pattern).root == root


def test_directory_listing_is_recursive_sorted_and_labelled(tmp_path):
    for rel in ("b/2.jpg", "a/1.jpg", "a/sub/3.jpg", "top.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = list(list_source_files(InputSpec.directory(str(tmp_path))))
    assert [(f.uri[len(str(tmp_path)) + 1:], f.label) for f in found] == [
        ("a/1.jpg", "a"), ("a/sub/3.jpg", "a"), ("b/2.jpg", "b"), ("top.jpg", None)]


def test_glob_lists_only_what_matches(tmp_path):
    for rel in ("a/1.jpg", "a/2.png", "b/3.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = list(list_source_files(InputSpec.glob(f"{tmp_path}/*/*.jpg")))
    assert [(f.uri[len(str(tmp_path)) + 1:], f.label) for f in found] == [("a/1.jpg", "a"), ("b/3.jpg", "b")]


# --- special files and the size limit ------------------------------------------------------------------------------

@contextlib.contextmanager
def fed_if_opened(fifo, after: float = 3.0):
    """Should anything open ``fifo`` for reading, write to it after ``after`` seconds, so that a test which would
    hang fails instead (the reader then gets these bytes). Yields a list that holds True once it was fed."""
    fed, stop = [], threading.Event()

    def feed():
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
            fed.append(True)
            return

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield fed
    finally:
        stop.set()
        thread.join()


def outputs(results) -> list[tuple[str, object]]:
    """A DoFn's outputs as (tag, value); "main" for the main output."""
    return [(r.tag, r.value) if isinstance(r, beam.pvalue.TaggedOutput) else ("main", r) for r in results]


@pytest.fixture
def specials(tmp_path):
    """A FIFO, a Unix socket, a directory and a character device, each where a file is expected."""
    os.mkfifo(tmp_path / "pipe.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.jpg"))
    (tmp_path / "folder.jpg").mkdir()
    yield {"pipe.jpg": (str(tmp_path / "pipe.jpg"), "a FIFO (named pipe)"),
           "sock.jpg": (str(tmp_path / "sock.jpg"), "a socket"),
           "folder.jpg": (str(tmp_path / "folder.jpg"), "a directory"),
           "null": ("/dev/null", "a character device")}
    server.close()


def test_listing_a_folder_with_a_fifo_opens_nothing(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    os.mkfifo(tmp_path / "b.jpg")
    with fed_if_opened(tmp_path / "b.jpg", after=0.5) as fed:
        found = [f.uri for f in list_source_files(InputSpec.directory(str(tmp_path)))]
        time.sleep(1.0)
    assert found == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")] and not fed


@pytest.mark.parametrize("name", ["pipe.jpg", "sock.jpg", "folder.jpg", "null"])
def test_a_loose_file_that_is_not_a_regular_file_is_a_failure_decided_before_opening(specials, name):
    path, what = specials[name]
    with fed_if_opened(specials["pipe.jpg"][0]) as fed:
        got = outputs(ReadUnitFn(InputFields()).process(FileRef(path, path, None)))
    assert not fed
    assert [(tag, f.key, f.error_type, f.message) for tag, f in got] == [
        (FAILED, path, "NotARegularFile", f"{path} is {what}, not a regular file: not read")]


@pytest.mark.parametrize("fmt", ["manifest", "text", "tar", "tfrecord"])
def test_a_source_file_that_is_a_fifo_is_a_failure(tmp_path, fmt):
    path = str(tmp_path / f"source.{ {'manifest': 'csv', 'text': 'jsonl'}.get(fmt, fmt)}")
    os.mkfifo(path)
    with fed_if_opened(path) as fed:
        got = outputs(ExpandSourceFn(InputFields()).process(SourceFile(path, None, fmt)))
    assert not fed
    assert [(tag, f.key, f.error_type, f.message) for tag, f in got] == [
        (FAILED, path, "NotARegularFile", f"{path} is a FIFO (named pipe), not a regular file: not read")]


def test_a_file_over_the_limit_is_refused_from_its_size_and_one_at_the_limit_is_read(tmp_path):
    (tmp_path / "at.jpg").write_bytes(b"a" * 100)
    (tmp_path / "over.jpg").write_bytes(b"o" * 101)
    fn = ReadUnitFn(InputFields(max_input_bytes=100))
    at = str(tmp_path / "at.jpg")
    over = str(tmp_path / "over.jpg")
    assert outputs(fn.process(FileRef(at, at, "x"))) == [("main", Record(at, b"a" * 100, "x"))]
    assert [(tag, f.key, f.error_type, f.message) for tag, f in outputs(fn.process(FileRef(over, over, None)))] == [
        (FAILED, over, "InputTooLarge", f"{over} is 101 bytes, over the limit of 100 (--max-input-bytes)")]


def test_a_read_stops_one_byte_past_the_limit_whatever_the_size_said(tmp_path, monkeypatch):
    from transforms.read import sources

    path = tmp_path / "grown.jpg"
    path.write_bytes(b"g" * 5000)
    monkeypatch.setattr(sources, "check_regular", lambda uri: 10)  # its size when it was checked
    reads = []
    real_open = sources._open

    def counting_open(uri):
        f = real_open(uri)
        read = f.read
        f.read = lambda n=-1: reads.append(n) or read(n)
        return f

    monkeypatch.setattr(sources, "_open", counting_open)
    got = outputs(ReadUnitFn(InputFields(max_input_bytes=100)).process(FileRef(str(path), str(path), None)))
    assert [(f.error_type, f.message) for _, f in got] == [
        ("InputTooLarge", f"{path} is more than 100 bytes, over the limit of 100 (--max-input-bytes)")]
    assert reads == [101]


def test_an_object_without_a_local_path_is_measured_before_reading(monkeypatch):
    from transforms.read import sources

    reads = []

    class Remote(io.BytesIO):
        def read(self, n=-1):
            reads.append(n)
            return super().read(n)

    monkeypatch.setattr(sources, "_open", lambda uri: Remote(b"r" * 300))
    got = outputs(ReadUnitFn(InputFields(max_input_bytes=100)).process(FileRef("gs://b/r.jpg", "gs://b/r.jpg", None)))
    assert [(f.error_type, f.message) for _, f in got] == [
        ("InputTooLarge", "gs://b/r.jpg is 300 bytes, over the limit of 100 (--max-input-bytes)")]
    assert reads == []  # refused from its size, nothing read
    monkeypatch.setattr(sources, "_open", lambda uri: Remote(b"r" * 100))
    assert outputs(ReadUnitFn(InputFields(max_input_bytes=100)).process(FileRef("gs://b/r.jpg", "gs://b/r.jpg", None))
                   ) == [("main", Record("gs://b/r.jpg", b"r" * 100, None))]
