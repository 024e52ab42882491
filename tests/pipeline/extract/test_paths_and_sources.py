"""Inputs as people name them (paths with glob characters, ``file://`` URIs, one glob over files of every format),
and failures that name the file their input came from."""

from __future__ import annotations

import io
import json
import os
import tarfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.errors import ConfigError
from pipeline.extract.config import ExtractConfig
from pipeline.extract.job import run_extraction
from pipeline.extract.settings import run_settings
from pipeline.flags import use_storage_options
from pipeline.inputs import resolve_input
from tests import packing
from tests.conftest import encode
from tests.fakes import MEAN_COLOUR, POISON, MeanColourBackbone, PoisonedBackbone
from transforms.decode.images import DecodeImageFn, ImagePreprocessing
from transforms.decode.tokenize import TokenizeFn
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import list_source_files
from transforms.read.sources import ReadRecords
from transforms.schema.elements import FAILED, Record


def png(colour, size=(40, 30)) -> bytes:
    from PIL import Image

    return encode(Image.new("RGB", size, colour), "PNG")


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_tfrecord(path, examples: list[bytes]) -> None:
    with open(path, "wb") as f:
        for example in examples:
            f.write(packing.tfrecord_frame(example))


def assert_read(specs, records, failures=()) -> None:
    """``ReadRecords`` over ``specs`` gives exactly these records and these (key, source, error type) failures."""
    with beam.Pipeline() as p:
        read = p | ReadRecords(specs)
        unversioned = read["records"] | beam.Map(lambda r: r._replace(version=None))  # versions: test_update.py
        assert_that(unversioned, equal_to(list(records)), label="records")
        assert_that(read[FAILED] | beam.Map(lambda f: (f.key, f.source, f.error_type)), equal_to(list(failures)),
                    label="failures")


# --- paths with glob characters, taken literally when they exist -------------------------------------------------

def test_an_existing_folder_or_file_with_glob_characters_is_read_literally(tmp_path, bracketed):
    folder = str(bracketed)
    photo, cat = f"{folder}/a*b?.jpg", f"{folder}/cats/c[1].png"
    escaped = f"{tmp_path}/photos [[]2024]"
    directory = resolve_input(folder)
    assert (directory.kind, directory.uri, directory.pattern, directory.root, directory.format) == (
        "directory", folder, f"{escaped}/**", folder, "files")
    one = resolve_input(photo)
    assert (one.kind, one.uri, one.pattern, one.root, one.format) == (
        "glob", photo, f"{escaped}/a[*]b[?].jpg", folder, "files")
    assert [(f.uri, f.label, f.format) for f in list_source_files(directory)] == [
        (photo, None, "files"), (cat, "cats", "files")]
    assert_read([directory, one], [Record(photo, b"A", None, None, photo), Record(cat, b"C", "cats", None, cat),
                                   Record(photo, b"A", None, None, photo)])


def test_a_path_that_does_not_exist_is_still_a_glob(tmp_path, bracketed):
    spec = resolve_input(f"{tmp_path}/photos */*.jpg")
    assert (spec.pattern, spec.root) == (f"{tmp_path}/photos */*.jpg", str(tmp_path))
    assert [f.uri for f in list_source_files(spec)] == [f"{tmp_path}/photos 2/decoy.jpg", f"{bracketed}/a*b?.jpg"]
    with pytest.raises(ConfigError, match=r"photos \[2025\] matches no files"):
        resolve_input(f"{tmp_path}/photos [2025]")
    (tmp_path / "empty [x]").mkdir()
    with pytest.raises(ConfigError, match=r"empty \[x\] matches no files"):
        resolve_input(f"{tmp_path}/empty [x]")  # an empty folder is not read as the glob its name also is


@pytest.mark.parametrize("store", ["gcs", "s3"])
def test_an_existing_object_or_prefix_with_glob_characters_is_read_literally(request, store):
    from apache_beam.io.filesystems import FileSystems

    server = request.getfixturevalue(store)
    bucket = f"literal-{store}"
    server.create_bucket(bucket)
    use_storage_options(PipelineOptions(server.beam_flags if store == "s3" else []))
    root = f"{'gs' if store == 'gcs' else 's3'}://{bucket}"
    for name, data in {"photos [2024]/a*b?.jpg": b"A", "photos [2024]/cats/c[1].png": b"C",
                       "photos 2/decoy.jpg": b"D"}.items():
        with FileSystems.create(f"{root}/{name}") as f:
            f.write(data)
    folder = f"{root}/photos [2024]"
    photo, cat = f"{folder}/a*b?.jpg", f"{folder}/cats/c[1].png"
    directory, one = resolve_input(folder), resolve_input(photo)
    assert (directory.kind, directory.pattern, one.pattern) == (
        "directory", f"{root}/photos [[]2024]/**", f"{root}/photos [[]2024]/a[*]b[?].jpg")
    assert [(f.uri, f.label) for f in list_source_files(directory)] == [(photo, None), (cat, "cats")]
    assert [f.uri for f in list_source_files(one)] == [photo]
    glob = resolve_input(f"{root}/photos */*.jpg")
    assert [f.uri for f in list_source_files(glob)] == [f"{root}/photos 2/decoy.jpg", photo]


# --- file:// URIs ------------------------------------------------------------------------------------------------

def test_file_uris_resolve_to_the_same_inputs_keys_and_settings_as_plain_paths(tmp_path, bracketed):
    folder, photo = str(bracketed), f"{bracketed}/a*b?.jpg"
    for uri, plain in [(f"file://{folder}", folder), (bracketed.as_uri(), folder),
                       (f"file://localhost{folder}/", folder), ((bracketed / "a*b?.jpg").as_uri(), photo),
                       (f"file://{tmp_path}/photos */*.jpg", f"{tmp_path}/photos */*.jpg")]:
        spec = resolve_input(uri)
        assert spec == resolve_input(plain), uri
        assert [f.uri for f in list_source_files(spec)] == [f.uri for f in list_source_files(resolve_input(plain))]

    def settings(inputs):
        return run_settings(ExtractConfig(inputs=tuple(resolve_input(i) for i in inputs), output=str(tmp_path / "o"),
                                          backbone=MeanColourBackbone(str(tmp_path / "l")),
                                          embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1),
                                          records_per_shard=10, overwrite=False))

    assert settings([bracketed.as_uri(), f"file://{photo}"]) == settings([folder, photo])  # what --resume compares
    with pytest.raises(ConfigError, match="names a file on host 'nas'"):
        resolve_input("file://nas/share/photos")


# --- one glob over files of every format ---------------------------------------------------------------------------

@pytest.fixture
def mixed(tmp_path):
    """``data/{cat,dog}/``: loose images, a tar shard, a TFRecord file and a CSV manifest side by side, and the
    payload of every record they hold."""
    data = tmp_path / "data"
    (data / "cat" / "sub").mkdir(parents=True)
    (data / "dog").mkdir()
    payloads = {name: png((i * 40, 100, 200 - i * 30)) for i, name in enumerate("abxyrsm")}
    (data / "cat" / "a.png").write_bytes(payloads["a"])
    (data / "dog" / "b.jpg").write_bytes(payloads["b"])
    write_tar(data / "cat" / "shard.tar", [("x.png", payloads["x"]), ("x.cls", b"tiger\n"), ("y.png", payloads["y"])])
    write_tfrecord(data / "dog" / "recs.tfrecord", [packing.image_example(payloads["r"], "7"),
                                                    packing.image_example(payloads["s"], 3)])
    (data / "cat" / "sub" / "m.png").write_bytes(payloads["m"])
    (data / "cat" / "index.csv").write_text("path,label,split\nsub/m.png,lion,val\n")
    return data, payloads


def test_an_auto_glob_reads_each_file_by_its_own_format(mixed):
    data, p = mixed
    cat, dog = f"{data}/cat", f"{data}/dog"
    spec = resolve_input(f"{data}/*/*")
    assert spec.format == "auto"
    assert [(f.uri, f.label, f.format) for f in list_source_files(spec)] == [
        (f"{cat}/a.png", "cat", "files"), (f"{cat}/index.csv", None, "manifest"), (f"{cat}/shard.tar", None, "tar"),
        (f"{dog}/b.jpg", "dog", "files"), (f"{dog}/recs.tfrecord", None, "tfrecord")]
    assert_read([spec], [
        Record(f"{cat}/a.png", p["a"], "cat", None, f"{cat}/a.png"),
        Record(f"{dog}/b.jpg", p["b"], "dog", None, f"{dog}/b.jpg"),
        Record(f"{cat}/shard.tar#x.png", p["x"], "tiger", None, f"{cat}/shard.tar"),
        Record(f"{cat}/shard.tar#y.png", p["y"], None, None, f"{cat}/shard.tar"),
        Record(f"{dog}/recs.tfrecord#0", p["r"], "7", None, f"{dog}/recs.tfrecord"),
        Record(f"{dog}/recs.tfrecord#1", p["s"], "3", None, f"{dog}/recs.tfrecord"),
        Record(f"{cat}/sub/m.png", p["m"], "lion", "val", f"{cat}/sub/m.png")])


def test_a_told_format_applies_to_every_file_a_glob_lists(mixed):
    data, _ = mixed
    told = resolve_input(f"{data}/*/*", "files")
    assert {(os.path.basename(f.uri), f.label, f.format) for f in list_source_files(told)} == {
        ("a.png", "cat", "files"), ("index.csv", "cat", "files"), ("shard.tar", "cat", "files"),
        ("b.jpg", "dog", "files"), ("recs.tfrecord", "dog", "files")}
    assert resolve_input(f"{data}/*/*.tar").format == "tar"  # every name it matches says tar


# --- every failure names its source file ---------------------------------------------------------------------------

def test_decode_and_tokenize_failures_name_the_source_not_the_key():
    record = Record("s.tar#x.jpg", b"not an image", None, None, "s.tar")
    (decoded,) = DecodeImageFn(ImagePreprocessing()).process(record)
    assert (decoded.value.key, decoded.value.source, decoded.value.stage) == ("s.tar#x.jpg", "s.tar", "decode")

    class Spec:
        name = "minilm"

    (tokenized,) = TokenizeFn(Spec()).process(Record("t.jsonl#row=4", b"\xff\x00", None, None, "t.jsonl"))
    assert (tokenized.value.key, tokenized.value.source, tokenized.value.error_type) == (
        "t.jsonl#row=4", "t.jsonl", "NotText")
    (legacy,) = DecodeImageFn(ImagePreprocessing()).process(Record("/d/x.jpg", b"", None))
    assert legacy.value.source == "/d/x.jpg"  # a record made without a source: its key


def test_dead_letters_name_the_shard_the_file_and_the_tfrecord_they_came_from(tmp_path, worker_env):
    shard, folder, records = tmp_path / "shard.tar", tmp_path / "loose", tmp_path / "recs.tfrecord"
    write_tar(shard, [("good.png", png((10, 20, 30))), ("broken.png", b"\x89PNG\r\n\x1a\n broken"),
                      ("poison.png", png(POISON))])
    folder.mkdir()
    (folder / "ok.png").write_bytes(png((90, 80, 70)))
    (folder / "broken.jpg").write_bytes(png((1, 2, 3))[:60])
    write_tfrecord(records, [packing.image_example(png((5, 6, 7)), 1), packing.image_example(b"no pixels", 2)])
    inputs = tuple(resolve_input(str(p)) for p in (shard, folder, records))
    config = ExtractConfig(inputs=inputs, output=str(tmp_path / "out"),
                           backbone=PoisonedBackbone(str(tmp_path / "l")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=1000,
                           overwrite=False)
    manifest = run_extraction(config, PipelineOptions(["--runner=FnApiRunner"]))

    assert manifest.counts == {"inputs": 7, "embedded": 3, "failed": 4, "duplicates": 0}
    errors = [json.loads(line) for f in manifest.error_files for line in open(os.path.join(config.output, f))]
    assert sorted((e["key"], e["source"], e["stage"]) for e in errors) == sorted([
        (f"{shard}#broken.png", str(shard), "decode"),
        (f"{shard}#poison.png", str(shard), "embed"),
        (f"{folder}/broken.jpg", f"{folder}/broken.jpg", "decode"),
        (f"{records}#1", str(records), "decode")])
