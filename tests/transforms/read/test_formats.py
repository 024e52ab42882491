"""The pure readers under each input format: tables, tar shards, TFRecord files."""

from __future__ import annotations

import io
import tarfile

import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests import packing
from transforms.read import tables, tar_shards, tfrecords
from transforms.read.sources import InputSpec, ReadRecords, detect_format
from transforms.read.tables import InputFields, RowError
from transforms.records import Failure, FileRef, Record

FIELDS = InputFields()


def rows(name: str, data: bytes):
    return list(tables.iter_rows(name, io.BytesIO(data)))


# --- tables ------------------------------------------------------------------------------------------------------

def test_csv_rows_keep_quoted_newlines_and_report_bad_rows_in_place():
    data = ('\ufeffpath,label\n"a.jpg","cat"\n\n"b\nc.jpg",dog\n'.encode() + b"\xff\xfe.jpg,x\n"
            + b"d.jpg,a,extra\ne.jpg,\n")
    got = rows("m.csv", data)
    assert [r for r, _ in got] == [0, 1, 2, 3, 4]
    assert got[0][1] == {"path": "a.jpg", "label": "cat"}
    assert got[1][1] == {"path": "b\nc.jpg", "label": "dog"}
    assert isinstance(got[2][1], RowError) and "not valid UTF-8" in str(got[2][1])
    assert isinstance(got[3][1], RowError) and "has 3 values but the header names 2" in str(got[3][1])
    assert got[4][1] == {"path": "e.jpg", "label": ""}


def test_jsonl_rows_must_be_objects():
    got = rows("t.jsonl", b'{"text": "hi"}\n[1, 2]\n\n{broken\n{"text": "ok"}\n')
    assert [type(v).__name__ for _, v in got] == ["dict", "RowError", "RowError", "dict"]
    assert [r for r, _ in got] == [0, 1, 2, 3]


@pytest.mark.parametrize("table, ref, expected", [
    ("/data/index.csv", "img/a.jpg", "/data/img/a.jpg"),
    ("/data/sets/index.csv", "../img/a.jpg", "/data/img/a.jpg"),
    ("gs://b/sets/index.csv", "../img/a.jpg", "gs://b/img/a.jpg"),
    ("s3://b/index.csv", "./a.jpg", "s3://b/a.jpg"),
    ("gs://b/index.csv", "s3://other/a.jpg", "s3://other/a.jpg"),
    ("/data/index.csv", "/abs/a.jpg", "/abs/a.jpg"),
])
def test_relative_uris_resolve_against_the_manifest(table, ref, expected):
    assert tables.resolve_relative(table, ref) == expected


def test_manifest_rows_find_the_uri_field_or_say_which_they_wanted():
    got = list(tables.manifest_refs("/d/m.csv", [(0, {"filename": "a.jpg", "label": "cat", "split": "val"}),
                                                 (1, {"label": "dog"})], FIELDS))
    assert got[0] == FileRef("/d/a.jpg", "/d/a.jpg", "cat", "val")
    assert isinstance(got[1], Failure) and got[1].key == "/d/m.csv#1"
    assert "no file URI (field one of uri, path" in got[1].message
    (named,) = tables.manifest_refs("/d/m.csv", [(0, {"img": "x.png"})], InputFields(uri="img"))
    assert named.uri == "/d/x.png"


def test_text_keys_use_the_id_field_else_the_row_and_empty_text_is_a_failure():
    data = b'{"id": "q1", "text": "a question", "label": "faq"}\n{"text": "no id"}\n{"text": "  "}\n{"x": 1}\n'
    got = list(tables.text_records("gs://b/t.jsonl", rows("t.jsonl", data), FIELDS))
    assert got[0] == Record("gs://b/t.jsonl#q1", "a question", "faq", None)
    assert got[1] == Record("gs://b/t.jsonl#1", "no id", None, None)
    assert (got[2].error_type, got[3].error_type) == ("EmptyText", "MissingField")


def test_text_inputs_become_text_records_through_the_pipeline(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,text,label\n7,hello world,greeting\n,second,\n", encoding="utf-8")
    with TestPipeline() as p:
        read = p | ReadRecords([InputSpec.glob(str(path), "text")])
        assert_that(read["records"], equal_to([Record(f"{path}#7", "hello world", "greeting", None),
                                                Record(f"{path}#1", "second", None, None)]), label="records")
        assert_that(read["failed"], equal_to([]), label="failures")


@pytest.mark.parametrize("name, fmt", [("*.tar", "tar"), ("x.TFRecord", "tfrecord"), ("a.tfrec", "tfrecord"),
                                       ("i.csv", "manifest"), ("i.jsonl", "manifest"), ("*.jpg", "files"),
                                       ("**", "files")])
def test_format_is_detected_from_the_extension(name, fmt):
    assert detect_format(f"gs://b/{name}") == fmt


# --- tar shards ---------------------------------------------------------------------------------------------------

def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _read_all(uri, data, chunk_bytes=1 << 30):
    units = list(tar_shards.chunk_samples(uri, tar_shards.index_tar(io.BytesIO(data)), chunk_bytes))
    out = []
    for unit in units:
        out.extend([unit] if isinstance(unit, Failure) else tar_shards.read_tar_chunk(io.BytesIO(data), unit, FIELDS))
    return units, out


def test_tar_members_group_into_samples_with_labels_by_priority():
    data = _tar([("a/x.jpg", b"X"), ("a/x.cls", b"3\n"), ("a/x.json", b'{"label": "no", "split": "val"}'),
                 ("y.seg.png", b"Y"), ("y.txt", b"caption"),
                 ("z.json", b'{"label": 5}'), ("z.webp", b"Z"),
                 ("w.jpg", b"W")])
    _, got = _read_all("s.tar", data)
    assert got == [Record("s.tar#a/x.jpg", b"X", "3", "val"), Record("s.tar#y.seg.png", b"Y", "caption", None),
                   Record("s.tar#z.webp", b"Z", "5", None), Record("s.tar#w.jpg", b"W", None, None)]


def test_tar_chunks_cover_every_sample_once():
    members = [(f"{i:03d}.jpg", bytes([i]) * (100 + i)) for i in range(50)]
    data = _tar(members)
    units, got = _read_all("s.tar", data, chunk_bytes=1000)
    assert len(units) > 5
    assert [r.key for r in got] == [f"s.tar#{name}" for name, _ in members]
    assert [r.payload for r in got] == [payload for _, payload in members]


def test_tar_sample_without_an_image_and_damaged_shards_are_failures():
    data = _tar([("a.jpg", b"A"), ("readme.md", b"hello"), ("b.jpg", b"B" * 2000), ("c.jpg", b"C")])
    units, got = _read_all("s.tar", data)
    assert sorted((g.key, getattr(g, "error_type", None)) for g in got) == [
        ("s.tar#a.jpg", None), ("s.tar#b.jpg", None), ("s.tar#c.jpg", None), ("s.tar#readme.md", "NotAnImage")]

    truncated = data[:512 * 6 + 100]  # inside b.jpg's data
    _, got = _read_all("s.tar", truncated)
    by_key = {g.key: g for g in got}
    assert by_key["s.tar#a.jpg"].payload == b"A"
    assert "truncated" in by_key["s.tar#b.jpg"].message
    assert by_key["s.tar"].error_type == "TarError"  # what follows the damage cannot be listed

    _, got = _read_all("junk.tar", b"this is not a tar archive" * 40)
    assert len(got) == 1 and got[0].error_type == "TarError" and "not a tar archive" in got[0].message


# --- TFRecord files -----------------------------------------------------------------------------------------------

def test_tfrecord_chunks_index_every_record_and_damage_stays_local():
    frames = [packing.tfrecord_frame(packing.image_example(bytes([i]) * 50, i)) for i in range(20)]
    data = bytearray(b"".join(frames))
    chunks = list(tfrecords.index_tfrecord("r.tfrecord", io.BytesIO(bytes(data)), chunk_bytes=300))
    assert len(chunks) > 3 and sum(c.count for c in chunks) == 20
    corrupt = len(b"".join(frames[:5])) + 20
    data[corrupt] ^= 0xFF  # inside record 5's data: its checksum fails
    got = [r for c in chunks for r in tfrecords.read_tfrecord_chunk(io.BytesIO(bytes(data)), c, FIELDS)]
    assert [r.key for r in got] == [f"r.tfrecord#{i}" for i in range(20)]
    assert isinstance(got[5], Failure) and "fails its checksum" in got[5].message
    assert [r.label for i, r in enumerate(got) if i != 5] == [str(i) for i in range(20) if i != 5]


def test_truncated_tfrecord_keeps_what_precedes_the_damage():
    frames = [packing.tfrecord_frame(packing.image_example(b"img", "a")) for _ in range(3)]
    data = b"".join(frames) + frames[0][:7]
    units = list(tfrecords.index_tfrecord("r.tfrecord", io.BytesIO(data), chunk_bytes=1 << 20))
    assert isinstance(units[0], tfrecords.TFRecordChunk) and units[0].count == 3
    assert units[1].key == "r.tfrecord#3" and "truncated record header" in units[1].message
    junk = list(tfrecords.index_tfrecord("j.tfrecord", io.BytesIO(b"not a tfrecord at all"), 1 << 20))
    assert len(junk) == 1 and "corrupt record header at byte 0" in junk[0].message


def test_tar_member_names_are_keys_never_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _tar([("../../escape.jpg", b"E"), ("/abs/olute.png", b"A"), ("ok/../x.jpg", b"X")])
    _, got = _read_all("s.tar", data)
    assert sorted(r.key for r in got) == ["s.tar#../../escape.jpg", "s.tar#/abs/olute.png", "s.tar#ok/../x.jpg"]
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent.parent / "escape.jpg").exists()
