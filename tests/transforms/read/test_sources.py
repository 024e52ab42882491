"""Input specs, labels from folders, listing, and what is refused before reading (special files, oversized inputs)."""

from __future__ import annotations

import os
import re
import socket
import time

import apache_beam as beam
import pytest

from tests import packing
from transforms.read import files, input_specs
from transforms.read.input_specs import InputSpec, label_from_path, list_source_files
from transforms.read.sources import UNIT, ExpandSourceFn, ReadUnitFn
from transforms.read.tables import InputFields
from transforms.read.versions import file_version
from transforms.schema.elements import FAILED, FileRef, Record, SourceFile


def _read(fn: ReadUnitFn, unit):
    """A unit read as the job reads it: grouped by itself, with no done keys."""
    return fn.process(("unit", [(UNIT, unit)]))


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
    with packing.fed_if_opened([tmp_path / "b.jpg"], after=0.5) as fed:
        found = [f.uri for f in list_source_files(InputSpec.directory(str(tmp_path)))]
        time.sleep(1.0)
    assert found == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")] and not fed


@pytest.mark.parametrize("name", ["pipe.jpg", "sock.jpg", "folder.jpg", "null"])
def test_a_loose_file_that_is_not_a_regular_file_is_a_failure_decided_before_opening(specials, name):
    path, what = specials[name]
    with packing.fed_if_opened([specials["pipe.jpg"][0]], after=3.0) as fed:
        got = outputs(_read(ReadUnitFn(InputFields()), FileRef(path, path, None)))
    assert not fed
    assert [(tag, f.key, f.error_type, f.message) for tag, f in got] == [
        (FAILED, path, "NotARegularFile", f"{path} is {what}, not a regular file: not read")]


@pytest.mark.parametrize("fmt", ["manifest", "text", "tar", "tfrecord"])
def test_a_source_file_that_is_a_fifo_is_a_failure(tmp_path, fmt):
    path = str(tmp_path / f"source.{ {'manifest': 'csv', 'text': 'jsonl'}.get(fmt, fmt)}")
    os.mkfifo(path)
    with packing.fed_if_opened([path], after=3.0) as fed:
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
    assert outputs(_read(fn, FileRef(at, at, "x"))) == [("main", Record(at, b"a" * 100, "x", source=at))]
    assert [(tag, f.key, f.error_type, f.message) for tag, f in outputs(_read(fn, FileRef(over, over, None)))] == [
        (FAILED, over, "InputTooLarge", f"{over} is 101 bytes, over the limit of 100 (--max-input-bytes)")]


def test_a_read_stops_one_byte_past_the_limit_whatever_the_size_said(tmp_path, monkeypatch):

    path = tmp_path / "grown.jpg"
    path.write_bytes(b"g" * 5000)
    monkeypatch.setattr(files, "check_regular", lambda uri: 10)  # its size when it was checked
    reads = []
    real_open = files._open

    def counting_open(uri):
        f = real_open(uri)
        read = f.read
        f.read = lambda n=-1: reads.append(n) or read(n)
        return f

    monkeypatch.setattr(files, "_open", counting_open)
    got = outputs(_read(ReadUnitFn(InputFields(max_input_bytes=100)), FileRef(str(path), str(path), None)))
    assert [(f.error_type, f.message) for _, f in got] == [
        ("InputTooLarge", f"{path} is more than 100 bytes, over the limit of 100 (--max-input-bytes)")]
    assert reads == [101]


def test_an_object_without_a_local_path_is_measured_before_reading(monkeypatch):
    reads = []
    monkeypatch.setattr(files, "_open", lambda uri: packing.CountedReads(b"r" * 300, reads))
    got = outputs(_read(ReadUnitFn(InputFields(max_input_bytes=100)), FileRef("gs://b/r.jpg", "gs://b/r.jpg", None)))
    assert [(f.error_type, f.message) for _, f in got] == [
        ("InputTooLarge", "gs://b/r.jpg is 300 bytes, over the limit of 100 (--max-input-bytes)")]
    assert reads == []  # refused from its size, nothing read
    monkeypatch.setattr(files, "_open", lambda uri: packing.CountedReads(b"r" * 100, reads))
    assert outputs(_read(ReadUnitFn(InputFields(max_input_bytes=100)), FileRef("gs://b/r.jpg", "gs://b/r.jpg", None))
                   ) == [("main", Record("gs://b/r.jpg", b"r" * 100, None, source="gs://b/r.jpg"))]


# --- literal paths, file:// URIs, a glob's format ------------------------------------------------------------------

@pytest.mark.parametrize("pattern, fmt", [
    ("/d/*.tar", "tar"), ("/d/*/*.jpg", "files"), ("gs://b/x/part-*.tfrecord", "tfrecord"), ("/d/*.csv", "manifest"),
    ("/d/one.tar", "tar"), ("/d/*", "auto"), ("/d/**", "auto"), ("/d/*.t*", "auto"), ("/d/x.tar*", "auto"),
    ("/d/*.[tc]sv", "auto"), ("/d/*r", "auto"), ("/d/*.png", "files"),
])
def test_a_globs_format_is_fixed_only_when_every_name_it_matches_has_it(pattern, fmt):
    assert input_specs.glob_format(pattern) == fmt


@pytest.mark.parametrize("path, escaped, as_a_glob_matches", [
    ("/d/photos [2024]/a*b?.jpg", "/d/photos [[]2024]/a[*]b[?].jpg", "/d/photos 2/a-b!.jpg"),
    ("gs://b/x[!y]**", "gs://b/x[[]!y][*][*]", "gs://b/xz/deep"), ("/a]b", "/a]b", None)])
def test_escaped_paths_match_only_themselves(path, escaped, as_a_glob_matches):
    from apache_beam.io.filesystem import FileSystem

    assert input_specs.escape_glob(path) == escaped
    assert re.match(FileSystem.translate_pattern(escaped), path)
    if as_a_glob_matches:
        assert re.match(FileSystem.translate_pattern(path), as_a_glob_matches)
        assert not re.match(FileSystem.translate_pattern(escaped), as_a_glob_matches)


@pytest.mark.parametrize("uri, path", [
    ("file:///tmp/x/photos", "/tmp/x/photos"), ("file://localhost/tmp/x", "/tmp/x"), ("FILE:/tmp/x", "/tmp/x"),
    ("file:///tmp/photos%20%5B2024%5D/a%2Ab%3F.jpg", "/tmp/photos [2024]/a*b?.jpg"),
    ("file:///tmp/photos [2024]/a*b?.jpg", "/tmp/photos [2024]/a*b?.jpg"),
    ("/tmp/x", "/tmp/x"), ("gs://b/file:///x", "gs://b/file:///x"), ("file-list.csv", "file-list.csv"),
])
def test_file_uris_are_the_local_paths_they_name(uri, path):
    assert input_specs.local_path(uri) == path


def test_a_file_uri_of_another_host_is_refused():
    with pytest.raises(ValueError, match="names a file on host 'nas'"):
        input_specs.local_path("file://nas/share/x.jpg")


def test_a_folder_or_file_with_glob_characters_is_listed_literally(bracketed):
    folder = str(bracketed)
    found = list(list_source_files(InputSpec.directory(folder)))
    a, c = f"{folder}/a*b?.jpg", f"{folder}/cats/c[1].png"
    assert found == [SourceFile(a, None, "files", file_version(a)), SourceFile(c, "cats", "files", file_version(c))]
    assert list(list_source_files(InputSpec.file(a))) == [SourceFile(a, None, "files", file_version(a))]


def test_specs_of_file_uris_list_the_same_paths_as_plain_paths(bracketed):
    folder = str(bracketed)
    assert InputSpec.directory(bracketed.as_uri()) == InputSpec.directory(folder)
    assert InputSpec.file((bracketed / "a*b?.jpg").as_uri()) == InputSpec.file(f"{folder}/a*b?.jpg")
    assert InputSpec.glob(f"file://{bracketed.parent}/photos */*.jpg") == InputSpec.glob(
        f"{bracketed.parent}/photos */*.jpg")
    written = InputSpec("directory", f"file://{folder}", f"file://{input_specs.escape_glob(folder)}/**", f"file://{folder}")
    assert list(list_source_files(written)) == list(list_source_files(InputSpec.directory(folder)))


def test_an_auto_glob_lists_each_file_with_its_own_format(tmp_path):
    for rel in ("cat/a.jpg", "cat/s.tar", "cat/r.tfrecord", "cat/m.csv", "cat/t.jsonl", "dog/notes.txt"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    auto = InputSpec.glob(f"{tmp_path}/*/*")
    assert auto.format == "auto"
    assert [(f.uri[len(str(tmp_path)) + 1:], f.label, f.format) for f in list_source_files(auto)] == [
        ("cat/a.jpg", "cat", "files"), ("cat/m.csv", None, "manifest"), ("cat/r.tfrecord", None, "tfrecord"),
        ("cat/s.tar", None, "tar"), ("cat/t.jsonl", None, "manifest"), ("dog/notes.txt", "dog", "files")]
    told = InputSpec.glob(f"{tmp_path}/*/*", "files")
    assert {(f.label, f.format) for f in list_source_files(told)} == {("cat", "files"), ("dog", "files")}


# --- resuming: the done keys of a unit ----------------------------------------------------------------------------

def test_a_unit_is_read_without_the_keys_an_earlier_run_committed(tmp_path):
    import json

    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.keys import done_keys
    from transforms.keys.fingerprints import fingerprint
    from transforms.read import tfrecords
    from transforms.read.sources import SKIPPED, unit_keys
    from transforms.write.commit_format import commit_files, key_line, place_file

    path = tmp_path / "r.tfrecord"
    path.write_bytes(b"".join(packing.tfrecord_frame(packing.image_example(bytes([i]) * 9, "a")) for i in range(6)))
    with open(path, "rb") as f:
        (chunk,) = tfrecords.index_tfrecord(str(path), f, chunk_bytes=1 << 20)
    keys = unit_keys(chunk)
    out = str(tmp_path / "out")
    placed = place_file(out, "c" * 32, "features/part-c.tfrecord", data=b"x")
    done = commit_files(out, "c" * 32, "features", [placed], key_line(keys[1], "a") + key_line(keys[4], "a"),
                        records=2)
    found = str(tmp_path / "found.json")
    scratch = str(tmp_path / "scratch")
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        matched = ((p | "Units" >> beam.Create([(done_keys.unit_id(chunk, keys), keys, "v1"),
                                                ("other", ["elsewhere#0"], "v1")]))
                   | done_keys.MatchCommitted(
                       p | "Commits" >> beam.Create([(done, [(keys[1], "v1"), (keys[4], "v1")])]), scratch))
        _ = (matched[done_keys.DONE]
             | beam.combiners.ToList()
             | beam.Map(lambda pairs: open(found, "w").write(
                 json.dumps([(uid, [c.hex() for c in fps]) for uid, fps in pairs]))))
    pairs = json.load(open(found))  # the unit with done keys, once per bucket they fall in; not the other unit
    uid = done_keys.unit_id(chunk, keys)
    assert {u for u, _ in pairs} == {uid} and sum(len(bytes.fromhex(c)) for _, fps in pairs for c in fps) == 2 * 16
    done_packs = [(done_keys.DONE, tuple(bytes.fromhex(c) for c in fps)) for _, fps in pairs]  # inline: a few bytes
    got = outputs(ReadUnitFn(InputFields()).process((uid, [(UNIT, chunk), *done_packs])))
    assert [(tag, v if tag == SKIPPED else v.key) for tag, v in got] == [  # the skipped ones at once, at the end
        ("main", keys[0]), ("main", keys[2]), ("main", keys[3]), ("main", keys[5]), (SKIPPED, (keys[1], keys[4]))]

    all_done = b"".join(fingerprint(k) for k in keys)
    path.unlink()  # a unit whose keys are all done is not opened
    got = outputs(ReadUnitFn(InputFields()).process((uid, [(UNIT, chunk), (done_keys.DONE, (all_done,))])))
    assert got == [(SKIPPED, tuple(keys))]
