"""The pure readers under each input format: tables, tar shards, TFRecord files."""

from __future__ import annotations

import io
import os
import struct
import tarfile

import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests import packing
from transforms.read import tables, tar_shards, tfrecords
from transforms.read.input_specs import InputSpec, detect_format, list_source_files
from transforms.read.sources import ReadRecords
from transforms.read.tables import InputFields, RowError
from transforms.read.versions import file_version
from transforms.schema import framing
from transforms.schema.elements import Failure, FileRef, Record

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


def test_text_keys_use_the_id_field_else_the_row_and_an_empty_text_is_a_text():
    data = b'{"id": "q1", "text": "a question", "label": "faq"}\n{"text": "no id"}\n{"text": "  "}\n{"x": 1}\n'
    got = list(tables.text_records("gs://b/t.jsonl", rows("t.jsonl", data), FIELDS))
    assert got[0] == Record("gs://b/t.jsonl#id=q1", "a question", "faq", None, "gs://b/t.jsonl")
    assert got[1] == Record("gs://b/t.jsonl#row=1", "no id", None, None, "gs://b/t.jsonl")
    assert got[2] == Record("gs://b/t.jsonl#row=2", "  ", None, None, "gs://b/t.jsonl")
    assert got[3].error_type == "MissingField"


def test_text_inputs_become_text_records_through_the_pipeline(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,text,label\n7,hello world,greeting\n,second,\n", encoding="utf-8")
    with TestPipeline() as p:
        read = p | ReadRecords([InputSpec.glob(str(path), "text")])
        version = file_version(str(path))  # a table's rows take the table's version
        assert_that(read["records"], equal_to([Record(f"{path}#id=7", "hello world", "greeting", None, str(path),
                                                      version),
                                               Record(f"{path}#row=1", "second", None, None, str(path), version)]),
                    label="records")
        assert_that(read["failed"], equal_to([]), label="failures")


@pytest.mark.parametrize("name, fmt", [("*.tar", "tar"), ("x.TFRecord", "tfrecord"), ("a.tfrec", "tfrecord"),
                                       ("i.csv", "manifest"), ("i.jsonl", "manifest"), ("*.jpg", "files"),
                                       ("**", "files")])
def test_format_is_detected_from_the_extension(name, fmt):
    assert detect_format(f"gs://b/{name}") == fmt


@pytest.mark.parametrize("name, fmt", [("posts.jsonl", "text"), ("a.CSV", "text"), ("t.tsv", "text"),
                                       ("n.ndjson", "text"), ("notes.txt", "files"), ("readme", "files"),
                                       ("s.tar", "tar")])
def test_a_text_backbone_reads_tables_as_texts_and_other_files_as_one_text_each(name, fmt):
    assert detect_format(f"gs://b/{name}", "text") == fmt


def test_a_glob_of_mixed_names_is_read_by_each_files_extension_for_the_backbone(tmp_path):
    for name in ("a.jsonl", "b.txt", "c.csv"):
        (tmp_path / name).write_text("text\nx\n")
    images, texts = InputSpec.glob(f"{tmp_path}/*"), InputSpec.glob(f"{tmp_path}/*", modality="text")
    assert (images.format, texts.format) == ("auto", "auto-text")
    assert [f.format for f in list_source_files(images)] == ["manifest", "files", "manifest"]
    assert [f.format for f in list_source_files(texts)] == ["text", "files", "text"]


def test_lines_are_texts_keyed_by_line_number_and_a_line_that_is_not_utf8_fails():
    data = b"\xef\xbb\xbffirst\r\n\nthird \xff\nlast"
    got = list(tables.line_records("/t/n.txt", tables.bounded_lines(io.BytesIO(data), 100)))
    assert got[:2] == [Record("/t/n.txt#line=1", "first", None, None, "/t/n.txt"),
                       Record("/t/n.txt#line=2", "", None, None, "/t/n.txt")]
    assert (got[2].key, got[2].error_type, got[2].message) == ("/t/n.txt#line=3", "NotText",
                                                               "line 3 is not UTF-8 text (byte 6)")
    assert got[3] == Record("/t/n.txt#line=4", "last", None, None, "/t/n.txt")


# --- tar shards ---------------------------------------------------------------------------------------------------

def _read_all(uri, data, chunk_bytes=1 << 30):
    units = list(tar_shards.chunk_samples(uri, tar_shards.index_tar(io.BytesIO(data)), chunk_bytes))
    out = []
    for unit in units:
        out.extend([unit] if isinstance(unit, Failure) else tar_shards.read_tar_chunk(io.BytesIO(data), unit, FIELDS))
    return units, out


def test_tar_members_group_into_samples_with_labels_by_priority():
    data = packing.tar_of([("a/x.jpg", b"X"), ("a/x.cls", b"3\n"), ("a/x.json", b'{"label": "no", "split": "val"}'),
                 ("y.seg.png", b"Y"), ("y.txt", b"caption"),
                 ("z.json", b'{"label": 5}'), ("z.webp", b"Z"),
                 ("w.jpg", b"W")])
    _, got = _read_all("s.tar", data)
    assert got == [Record("s.tar#a/x.jpg", b"X", "3", "val", "s.tar"),
                   Record("s.tar#y.seg.png", b"Y", "caption", None, "s.tar"),
                   Record("s.tar#z.webp", b"Z", "5", None, "s.tar"), Record("s.tar#w.jpg", b"W", None, None, "s.tar")]


def test_tar_chunks_cover_every_sample_once():
    members = [(f"{i:03d}.jpg", bytes([i]) * (100 + i)) for i in range(50)]
    data = packing.tar_of(members)
    units, got = _read_all("s.tar", data, chunk_bytes=1000)
    assert len(units) > 5
    assert [r.key for r in got] == [f"s.tar#{name}" for name, _ in members]
    assert [r.payload for r in got] == [payload for _, payload in members]


def test_tar_sample_without_an_image_and_damaged_shards_are_failures():
    data = packing.tar_of([("a.jpg", b"A"), ("readme.md", b"hello"), ("b.jpg", b"B" * 2000), ("c.jpg", b"C")])
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
    data = packing.tar_of([("../../escape.jpg", b"E"), ("/abs/olute.png", b"A"), ("ok/../x.jpg", b"X")])
    _, got = _read_all("s.tar", data)
    assert sorted(r.key for r in got) == ["s.tar#../../escape.jpg", "s.tar#/abs/olute.png", "s.tar#ok/../x.jpg"]
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent.parent / "escape.jpg").exists()


# --- hostile inputs: long lines, colliding keys, paths that leave the folder -----------------------------------------

def test_a_table_line_over_the_limit_ends_the_table_without_reading_it_whole():
    reads = []

    class Stream(io.BytesIO):
        def readline(self, size=-1):
            reads.append(size)
            return super().readline(size)

    data = b'{"text": "short"}\n' + b'{"text": "' + b"x" * 5000 + b'"}\n' + b'{"text": "never"}\n'
    lines = tables.bounded_lines(Stream(data), 100)
    assert next(lines) == b'{"text": "short"}\n'
    with pytest.raises(tables.InputTooLarge, match=r"^line 2 is more than 100 bytes, over the limit of 100"):
        next(lines)
    assert reads == [102, 102]
    assert list(tables.bounded_lines(io.BytesIO(b"a" * 100 + b"\r\n" + b"b" * 100), 100)) == [
        b"a" * 100 + b"\r\n", b"b" * 100]


def test_text_keys_from_ids_and_from_rows_never_collide_and_a_repeated_id_is_a_failure():
    data = (b'{"id": "7", "text": "id seven"}\n' + b'{"text": "row one"}\n' * 6 + b'{"text": "row seven"}\n'
            + b'{"id": "7", "text": "id seven again"}\n' + b'{"id": "q", "text": ""}\n' + b'{"id": "q", "text": "b"}\n')
    got = list(tables.text_records("/t/a.jsonl", rows("a.jsonl", data), FIELDS))
    assert [(g.key, getattr(g, "payload", None)) for g in got[:1] + got[7:8]] == [
        ("/t/a.jsonl#id=7", "id seven"), ("/t/a.jsonl#row=7", "row seven")]
    assert len({g.key for g in got}) == len(got) == 11
    failures = [(g.key, g.error_type, g.message) for g in got if isinstance(g, Failure)]
    assert failures == [
        ("/t/a.jsonl#row=8", "DuplicateId", "row 8 repeats id '7' of row 0; the first is kept"),
        ("/t/a.jsonl#row=10", "DuplicateId", "row 10 repeats id 'q' of row 9; the first is kept")]


@pytest.fixture
def manifest_folder(tmp_path):
    """``sets/index.csv`` next to ``sets/img/a.jpg``, a symlink ``sets/escape`` to a folder outside, and
    ``secret.jpg`` outside."""
    (tmp_path / "sets" / "img").mkdir(parents=True)
    (tmp_path / "sets" / "img" / "a.jpg").write_bytes(b"a")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "b.jpg").write_bytes(b"b")
    (tmp_path / "secret.jpg").write_bytes(b"s")
    os.symlink(tmp_path / "outside", tmp_path / "sets" / "escape")
    return tmp_path


def test_local_manifest_rows_stay_inside_the_manifests_folder(manifest_folder):
    root, table = manifest_folder, str(manifest_folder / "sets" / "index.csv")
    refs = ["img/a.jpg", "img/../img/a.jpg", str(root / "sets" / "img" / "a.jpg"), "../secret.jpg",
            str(root / "secret.jpg"), "escape/b.jpg", "/etc/passwd", "gs://b/x.jpg", "s3://b/y.jpg"]
    got = list(tables.manifest_refs(table, enumerate({"path": r} for r in refs), FIELDS))
    inside = str(root / "sets" / "img" / "a.jpg")
    assert [g.uri for g in got if isinstance(g, FileRef)] == [inside, inside, inside, "gs://b/x.jpg", "s3://b/y.jpg"]
    failures = [(g.key, g.error_type, g.message) for g in got if isinstance(g, Failure)]
    folder = str(root / "sets")
    assert failures == [
        (f"{table}#{row}", "OutsidePath", f"row {row} names {refs[row]!r}, which leads to {where}, outside the "
                                          f"manifest's folder {folder}; pass --allow-outside-paths to read it")
        for row, where in [(3, root / "secret.jpg"), (4, root / "secret.jpg"), (5, root / "outside" / "b.jpg"),
                           (6, "/etc/passwd")]]
    allowed = list(tables.manifest_refs(table, enumerate({"path": r} for r in refs),
                                        InputFields(allow_outside_paths=True)))
    assert all(isinstance(g, FileRef) for g in allowed) and allowed[5].uri == str(root / "sets" / "escape/b.jpg")


def test_remote_manifests_resolve_in_their_bucket_and_refuse_local_paths():
    rows_ = enumerate({"path": r} for r in ["../img/a.jpg", "/etc/passwd", "s3://other/c.jpg"])
    got = list(tables.manifest_refs("gs://b/sets/index.csv", rows_, FIELDS))
    assert got[0] == FileRef("gs://b/img/a.jpg", "gs://b/img/a.jpg", None, None)
    assert (got[1].key, got[1].error_type) == ("gs://b/sets/index.csv#1", "OutsidePath")
    assert "'/etc/passwd', which leads to /etc/passwd, outside the manifest's folder gs://b/sets" in got[1].message
    assert got[2] == FileRef("s3://other/c.jpg", "s3://other/c.jpg", None, None)


# --- hostile tar shards: links, special members, oversized members and headers -------------------------------------

def test_tar_links_and_special_members_are_failures_never_followed():
    data = packing.tar_with([("a.jpg", tarfile.REGTYPE, b"A"), ("b.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                      ("c.jpg", tarfile.LNKTYPE, "a.jpg"), ("d.jpg", tarfile.FIFOTYPE, ""),
                      ("e.jpg", tarfile.REGTYPE, b"E"), ("e.cls", tarfile.SYMTYPE, "../../labels"),
                      ("f.jpg", tarfile.REGTYPE, b"F")])
    _, got = _read_all("s.tar", data)
    assert sorted((g.key, getattr(g, "error_type", None), g.message if isinstance(g, Failure) else g.payload)
                  for g in got) == [
        ("s.tar#a.jpg", None, b"A"),
        ("s.tar#b.jpg", "TarLink", "tar member is a symlink: not read (b.jpg -> /etc/passwd)"),
        ("s.tar#c.jpg", "TarLink", "tar member is a hard link: not read (c.jpg -> a.jpg)"),
        ("s.tar#d.jpg", "NotARegularFile", "tar member is a FIFO: not read (d.jpg)"),
        ("s.tar#e.jpg", "TarLink", "tar member is a symlink: not read (e.cls -> ../../labels)"),
        ("s.tar#f.jpg", None, b"F")]


def test_tar_members_and_header_data_over_the_limit_are_refused_before_reading():
    data = packing.tar_of([("a.jpg", b"A" * 100), ("b.jpg", b"B" * 101), ("c.jpg", b"C")])
    units = list(tar_shards.chunk_samples("s.tar", tar_shards.index_tar(io.BytesIO(data), 100), 1 << 30))
    got = [r for u in units for r in tar_shards.read_tar_chunk(io.BytesIO(data), u, InputFields(max_input_bytes=100))]
    assert [(g.key, getattr(g, "message", None)) for g in got] == [
        ("s.tar#a.jpg", None),
        ("s.tar#b.jpg", "tar member b.jpg is 101 bytes, over the limit of 100 (--max-input-bytes)"),
        ("s.tar#c.jpg", None)]

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, comment in (("a.jpg", "short"), ("b.jpg", "x" * 5000)):  # b's pax header holds 5 kB
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = 1, {"comment": comment}
            tar.addfile(info, io.BytesIO(b"1"))
    indexed = list(tar_shards.index_tar(io.BytesIO(buf.getvalue()), max_bytes=1024))
    assert [s.prefix for s in indexed[:-1]] == ["a"]
    assert isinstance(indexed[-1], tarfile.ReadError)
    assert str(indexed[-1]) == ("damaged tar archive after 1 members: a tar header asks to read 5,120 bytes at once, "
                                "over the limit of 1,024 (--max-input-bytes)")


# --- hostile TFRecord files: oversized records, damaged headers -----------------------------------------------------

def test_a_record_over_the_limit_is_refused_from_its_header_before_allocating():
    small = [packing.tfrecord_frame(packing.image_example(b"s", "a"))]
    big = packing.tfrecord_frame(packing.image_example(b"b" * 500, "b"))
    claims = struct.pack("<Q", 1 << 40)  # a header, checksum valid, that claims a terabyte
    huge = claims + struct.pack("<I", framing.masked_crc32c(claims)) + b"tiny"
    data = small[0] + big + small[0] + huge
    (chunk,) = tfrecords.index_tfrecord("r.tfrecord", io.BytesIO(data), 1 << 30)
    got = list(tfrecords.read_tfrecord_chunk(io.BytesIO(data), chunk, InputFields(max_input_bytes=400)))
    assert [(g.key, getattr(g, "error_type", None), getattr(g, "message", None)) for g in got] == [
        ("r.tfrecord#0", None, None),
        ("r.tfrecord#1", "InputTooLarge",
         f"record 1 is {len(big) - 16} bytes, over the limit of 400 (--max-input-bytes)"),
        ("r.tfrecord#2", None, None),
        ("r.tfrecord#3", "InputTooLarge",
         "record 3 is 1,099,511,627,776 bytes, over the limit of 400 (--max-input-bytes)")]


def _frames(n: int, size: int = 50) -> list[bytes]:
    return [packing.tfrecord_frame(packing.image_example(bytes([i]) * size, i)) for i in range(n)]


def _damage_failure(data: bytes, chunk_bytes: int = 1 << 30):
    units = list(tfrecords.index_tfrecord("r.tfrecord", io.BytesIO(data), chunk_bytes))
    chunks, (failure,) = units[:-1], units[-1:]
    return chunks, failure


def test_a_damaged_header_says_which_bytes_are_unreadable_and_how_many_intact_records_follow():
    frames = _frames(10)
    starts = [sum(map(len, frames[:i])) for i in range(11)]
    data = bytearray(b"".join(frames))
    data[starts[3] + 2] ^= 0xFF  # record 3's length
    chunks, failure = _damage_failure(bytes(data))
    assert [(c.first_index, c.count) for c in chunks] == [(0, 3)]
    assert failure.key == "r.tfrecord#3" and failure.error_type == "TFRecordError"
    assert failure.message == (
        f"corrupt record header at byte {starts[3]} (not a TFRecord file, or damaged); records from 3 on are not "
        f"read: bytes {starts[3]}-{starts[4]} ({len(frames[3])} bytes) are unreadable; bytes {starts[4]}-{starts[10]} "
        "after them hold 6 intact records, not read: after a damaged header record numbers are unknown, so those "
        "records cannot get stable keys")
    got = [r for c in chunks for r in tfrecords.read_tfrecord_chunk(io.BytesIO(bytes(data)), c, FIELDS)]
    assert [r.label for r in got] == ["0", "1", "2"]  # what precedes the damage is read as before


def test_further_damage_after_the_first_is_counted_too():
    frames = _frames(10)
    starts = [sum(map(len, frames[:i])) for i in range(11)]
    data = bytearray(b"".join(frames))
    data[starts[2] + 9] ^= 0xFF   # record 2's header checksum
    data[starts[6] + 1] ^= 0xFF   # record 6's length
    data[starts[8] + 20] ^= 0xFF  # record 8's data
    _, failure = _damage_failure(bytes(data))
    assert failure.message.endswith(
        f"bytes {starts[2]}-{starts[3]} ({len(frames[2])} bytes) are unreadable; bytes {starts[3]}-{starts[10]} after "
        "them hold 5 intact records, not read: after a damaged header record numbers are unknown, so those records "
        f"cannot get stable keys; among them, records failing their checksums: 1, further unreadable bytes: "
        f"{len(frames[6])}")


def test_damage_with_no_intact_frame_after_it_loses_the_rest_of_the_file():
    frames = _frames(4)
    data = bytearray(b"".join(frames))
    start = len(b"".join(frames[:3]))
    data[start] ^= 0xFF
    _, failure = _damage_failure(bytes(data))
    assert failure.message.endswith(f"records from 3 on are not read: the rest of the file ({len(frames[3])} bytes "
                                    f"from byte {start}) is unreadable")
    _, junk = _damage_failure(b"not a tfrecord at all")
    assert junk.message.endswith("records from 0 on are not read: the rest of the file (21 bytes from byte 0) is "
                                 "unreadable")


def test_the_scan_finds_frames_across_block_edges_and_reads_in_blocks(monkeypatch):
    monkeypatch.setattr(tfrecords, "SCAN_BLOCK", 4096)
    rng = np.random.default_rng(3)
    junk = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    big = _frames(1, size=9000)[0]  # longer than a block: its data is checked by reading it
    tail = _frames(3)
    reads = []

    class Counted(io.BytesIO):
        def read(self, n=-1):
            reads.append(n)
            return super().read(n)

    for lead in (0, 4090, 4095, 4096, 4100):
        header = bytearray(tail[0][:12])
        header[0] ^= 0xFF
        data = bytes(header) + junk[:lead] + big + b"".join(tail)
        reads.clear()
        found = tfrecords.damage_extent(Counted(data), 0, len(data))
        assert found == tfrecords.Damage(12 + lead, 4, 0, 0), lead
        assert len(reads) < 40, lead  # blocks, never a read per byte

    start = 7
    scan_data = junk[:start] + b"".join(tail) + junk[:3000]
    assert tfrecords.next_intact_frame(io.BytesIO(scan_data), 1, len(scan_data)) == start


def test_header_checksums_of_a_block_agree_with_the_framing_module():
    rng = np.random.default_rng(5)
    block = bytearray(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    frames = b"".join(_frames(3))
    block[1234:1234 + len(frames)] = frames
    expected = [i for i in range(len(block) - 11)
                if framing.masked_crc32c(bytes(block[i:i + 8])) == struct.unpack("<I", block[i + 8:i + 12])[0]]
    assert expected[:1] == [1234] and tfrecords.header_offsets(bytes(block)) == expected
