"""Reading recordings for an audio backbone: loose files named (``LazyFile``) not read, manifests of them, the audio
member of tar samples, the audio feature of TFRecord Examples; what an image backbone reads stays as it was."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.errors import ConfigError
from pipeline.inputs import check_formats, resolve_input
from tests import packing
from transforms.read import files, tar_shards
from transforms.read.input_specs import InputSpec, list_source_files
from transforms.read.sources import UNIT, ReadRecords, ReadUnitFn, expand_source, read_unit, unit_keys
from transforms.read.tables import InputFields
from transforms.read.versions import file_version
from transforms.schema.elements import FAILED, LazyFile, NotARegularFile, Record, SourceFile, payload_bytes

AUDIO = InputFields(modality="audio")
CHUNK = 1 << 20
CLIPS = {"jazz/a.wav": b"RIFF\x24\x00\x00\x00WAVEfmt jazz-a", "jazz/b.flac": b"fLaC jazz-b",
         "rock/c.mp3": b"ID3 rock-c!", "d.ogg": b"OggS unlabelled"}


def _read_all(units, fields: InputFields) -> list:
    return [item for unit in units for item in read_unit(unit, fields)]


def _records(spec: InputSpec, fields: InputFields) -> list:
    units = [u for source in list_source_files(spec) for u in expand_source(source, fields, CHUNK)]
    return _read_all(units, fields)


@pytest.fixture
def clips(tmp_path):
    """A class folder of tiny recordings (their bytes need not be valid audio to be read)."""
    root = tmp_path / "clips"
    for rel, data in CLIPS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_a_class_folder_of_recordings_gives_keys_labels_and_files_named_not_read(clips, monkeypatch):
    monkeypatch.setattr(files, "_open", lambda uri: pytest.fail(f"{uri} was opened while reading"))
    got = _records(InputSpec.directory(str(clips)), AUDIO)
    expected = {str(clips / rel): rel.split("/")[0] if "/" in rel else None for rel in CLIPS}
    assert [(r.key, r.label, r.source) for r in got] == [(k, expected[k], k) for k in sorted(expected)]
    assert [r.payload for r in got] == [LazyFile(k, len(CLIPS[os.path.relpath(k, clips)])) for k in sorted(expected)]
    monkeypatch.undo()
    for record in got:
        with record.payload.open() as f:
            f.seek(4)
            assert f.read() == CLIPS[os.path.relpath(record.key, clips)][4:]


def test_a_glob_of_recordings_lists_only_what_matches(clips):
    got = _records(InputSpec.glob(f"{clips}/*/*.wav", modality="audio"), AUDIO)
    assert [(r.key, r.label, r.payload) for r in got] == [
        (str(clips / "jazz/a.wav"), "jazz", LazyFile(str(clips / "jazz/a.wav"), len(CLIPS["jazz/a.wav"])))]


def test_a_manifest_names_recordings_with_their_labels_and_splits(clips):
    (clips / "index.csv").write_text("path,label,split\njazz/a.wav,swing,train\nrock/c.mp3,,test\n")
    spec = resolve_input(str(clips / "index.csv"), "auto", "audio")
    assert spec.format == "manifest"
    got = _records(spec, AUDIO)
    assert got == [Record(str(clips / "jazz/a.wav"), LazyFile(str(clips / "jazz/a.wav"), len(CLIPS["jazz/a.wav"])),
                          "swing", "train", str(clips / "jazz/a.wav"), file_version(str(clips / "jazz/a.wav"))),
                   Record(str(clips / "rock/c.mp3"), LazyFile(str(clips / "rock/c.mp3"), len(CLIPS["rock/c.mp3"])),
                          None, "test", str(clips / "rock/c.mp3"), file_version(str(clips / "rock/c.mp3")))]
    # each row's version is that of the file it names, not the manifest's


def test_a_recording_over_the_limit_is_refused_from_its_size_and_a_big_one_is_never_read(tmp_path, monkeypatch):
    (tmp_path / "long.wav").write_bytes(b"w" * 5000)
    path = str(tmp_path / "long.wav")
    monkeypatch.setattr(files, "_open", lambda uri: pytest.fail(f"{uri} was opened while reading"))
    (ref,) = expand_source(SourceFile(path, None), AUDIO, CHUNK)
    (refused,) = [r.value for r in ReadUnitFn(InputFields(max_input_bytes=4999, modality="audio")).process(
        ("unit", [(UNIT, ref)]))]
    assert (refused.error_type, refused.message) == (
        "InputTooLarge", f"{path} is 5,000 bytes, over the limit of 4,999 (--max-input-bytes)")
    (kept,) = read_unit(ref, InputFields(max_input_bytes=5000, modality="audio"))
    assert kept.payload == LazyFile(path, 5000)


def test_an_object_is_measured_by_opening_it_and_nothing_is_read(monkeypatch):
    reads = []
    monkeypatch.setattr(files, "_open", lambda uri: packing.CountedReads(b"r" * 300, reads))
    assert files.lazy_file("gs://b/x.wav", 300) == LazyFile("gs://b/x.wav", 300)
    with pytest.raises(ValueError, match="gs://b/x.wav is 300 bytes, over the limit of 299"):
        files.lazy_file("gs://b/x.wav", 299)
    assert reads == []


def test_a_fifo_among_recordings_is_a_failure_never_opened(clips):
    fifo = clips / "jazz" / "pipe.wav"
    os.mkfifo(fifo)
    fn = ReadUnitFn(AUDIO)
    units = [u for s in list_source_files(InputSpec.directory(str(clips))) for u in expand_source(s, AUDIO, CHUNK)]
    with packing.fed_if_opened([fifo], after=3.0) as fed:
        got = [r for u in units for r in fn.process(("unit", [(UNIT, u)]))]
        with pytest.raises(NotARegularFile, match="is a FIFO"):
            LazyFile(str(fifo), None).open()
    assert not fed
    failures = [(r.value.key, r.value.error_type, r.value.message) for r in got
                if isinstance(r, beam.pvalue.TaggedOutput)]
    assert failures == [(str(fifo), "NotARegularFile", f"{fifo} is a FIFO (named pipe), not a regular file: not read")]
    assert sorted(r.key for r in got if isinstance(r, Record)) == sorted(str(clips / rel) for rel in CLIPS)


def test_read_metrics_count_a_named_files_size():
    counted = []

    class Counter:
        def inc(self, n=1):
            counted.append(n)

    fn = ReadUnitFn(AUDIO)
    fn._read, fn._bytes = Counter(), Counter()
    record = Record("k", LazyFile("k", 1234), None)
    assert list(fn.process(("unit", [(UNIT, record)]))) == [record]
    assert counted == [1, 1234]
    assert [payload_bytes(p) for p in (b"abc", "text", LazyFile("u", None))] == [3, 4, 0]


# --- tar shards and TFRecord files ----------------------------------------------------------------------------

@pytest.fixture
def shard(tmp_path):
    (tmp_path / "shards").mkdir()
    path = tmp_path / "shards" / "s.tar"
    path.write_bytes(packing.tar_of([("a.flac", b"FLAC-A"), ("a.cls", b"jazz\n"),
                           ("b.json", b'{"label": "rock", "split": "val"}'), ("b.flac", b"FLAC-B"),
                           ("c.jpg", b"JPEG-C"),
                           ("d.jpg", b"JPEG-D"), ("d.wav", b"WAVE-D"), ("d.cls", b"both")]))
    return str(path)


def test_a_tar_shard_gives_each_samples_audio_member_and_its_label(shard):
    units = list(expand_source(SourceFile(shard, None, "tar"), AUDIO, CHUNK))
    missing, chunk = units
    assert unit_keys(chunk, "audio") == [f"{shard}#a.flac", f"{shard}#b.flac", f"{shard}#d.wav"]
    assert (missing.key, missing.error_type, missing.message) == (
        f"{shard}#c.jpg", "NotAudio", "tar sample 'c' has no audio member (members: c.jpg; audio files end in "
        ".wav, .flac, .ogg, .oga, .mp3, .m4a, .opus, .aiff, .aif)")
    assert _read_all([chunk], AUDIO) == [Record(f"{shard}#a.flac", b"FLAC-A", "jazz", None, shard),
                                         Record(f"{shard}#b.flac", b"FLAC-B", "rock", "val", shard),
                                         Record(f"{shard}#d.wav", b"WAVE-D", "both", None, shard)]


def test_an_image_backbone_reads_the_same_shard_and_folder_as_before(shard, clips):
    units = list(expand_source(SourceFile(shard, None, "tar"), InputFields(), CHUNK))
    assert [u.error_type for u in units if not isinstance(u, tar_shards.TarChunk)] == ["NotAnImage", "NotAnImage"]
    (chunk,) = [u for u in units if isinstance(u, tar_shards.TarChunk)]
    assert unit_keys(chunk) == [f"{shard}#c.jpg", f"{shard}#d.jpg"]
    assert [(r.key, r.payload, r.label) for r in _read_all([chunk], InputFields())] == [
        (f"{shard}#c.jpg", b"JPEG-C", None), (f"{shard}#d.jpg", b"JPEG-D", "both")]

    got = _records(InputSpec.directory(str(clips)), InputFields())  # whole bytes, as for any loose file
    assert [(r.key, r.payload) for r in got] == [(str(clips / rel), CLIPS[rel]) for rel in sorted(CLIPS)]


def test_an_image_backbone_says_a_recording_is_not_an_image_in_one_line():
    from transforms.decode.images import ImageDecodeError, ImagePreprocessing, decode_image

    with pytest.raises(ImageDecodeError, match=r"^not an image \(unrecognised file format\)$"):
        decode_image(CLIPS["jazz/a.wav"], ImagePreprocessing())


def test_a_tfrecord_gives_the_audio_feature_and_an_image_backbone_its_image_feature(tmp_path):
    path = tmp_path / "r.tfrecord"
    path.write_bytes(b"".join(packing.tfrecord_frame(packing.image_example(data, label, image_feature="audio/encoded"))
                              for data, label in ((b"OGG-0", "jazz"), (b"OGG-1", 3))))
    uri = str(path)
    units = list(expand_source(SourceFile(uri, None, "tfrecord"), AUDIO, CHUNK))
    assert unit_keys(units[0], "audio") == [f"{uri}#0", f"{uri}#1"]
    assert _read_all(units, AUDIO) == [Record(f"{uri}#0", b"OGG-0", "jazz", None, uri),
                                       Record(f"{uri}#1", b"OGG-1", "3", None, uri)]
    assert [(f.error_type, f.message) for f in _read_all(units, InputFields())][:1] == [
        ("TFRecordError", "record has no bytes feature 'image/encoded' (features: audio/encoded, image/class/label)")]
    renamed = _read_all(units, InputFields(modality="audio", audio_feature="clip"))[0]
    assert "record has no bytes feature 'clip'" in renamed.message


def test_modality_and_the_audio_feature_are_recorded_with_the_fields():
    recorded = InputFields(modality="audio").to_json()
    assert (recorded["modality"], recorded["audio_feature"], recorded["image_feature"]) == (
        "audio", "audio/encoded", "image/encoded")
    assert InputFields().modality == "image"


# --- formats at launch ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "lines"])
def test_text_formats_are_refused_for_an_audio_backbone(clips, fmt):
    (clips / "t.jsonl").write_text('{"text": "x"}\n')
    spec = resolve_input(str(clips / "t.jsonl"), fmt, "audio")
    with pytest.raises(ConfigError) as refused:
        check_formats([spec], "audio", "musicnn_msd")
    assert str(refused.value) == (
        f"input {clips / 't.jsonl'} is read as texts (--input-format {fmt}), but backbone musicnn_msd embeds audio; "
        "give audio files, a .jsonl/.csv/.tsv manifest of them, .tar shards or .tfrecord files "
        "(--input-format files, manifest, tar, tfrecord or auto)")


def test_an_audio_backbone_reads_folders_manifests_shards_and_tfrecords(clips, shard):
    (clips / "m.jsonl").write_text('{"path": "jazz/a.wav"}\n')
    (clips / "r.tfrecord").write_bytes(b"")
    specs = [resolve_input(uri, "auto", "audio") for uri in
             (str(clips), str(clips / "m.jsonl"), shard, str(clips / "r.tfrecord"), f"{clips}/*")]
    assert [s.format for s in specs] == ["files", "manifest", "tar", "tfrecord", "auto"]
    check_formats(specs, "audio", "musicnn_msd")


def test_records_flow_through_the_pipeline_with_the_audio_members_keys(clips, shard):
    with TestPipeline() as p:
        read = p | ReadRecords([InputSpec.glob(f"{clips}/*/*.wav", modality="audio"), InputSpec.file(shard)],
                               AUDIO)
        wav = str(clips / "jazz/a.wav")
        assert_that(read["records"] | beam.Map(lambda r: (r.key, r.payload, r.label)), equal_to([
            (wav, LazyFile(wav, len(CLIPS["jazz/a.wav"])), "jazz"), (f"{shard}#a.flac", b"FLAC-A", "jazz"),
            (f"{shard}#b.flac", b"FLAC-B", "rock"), (f"{shard}#d.wav", b"WAVE-D", "both")]), label="records")
        assert_that(read[FAILED] | beam.Map(lambda f: (f.key, f.error_type)),
                    equal_to([(f"{shard}#c.jpg", "NotAudio")]), label="failures")
