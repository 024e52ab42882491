"""Inputs built to hang, exhaust or mislead the job, through the real pipeline: special files, oversized inputs,
colliding text keys, manifest rows that leave their folder, tar links, damaged TFRecord headers. Each is a
recorded failure with a clear reason; nothing hangs, nothing is read that should not be, the rest is embedded."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.extract.config import ExtractConfig, check_flags
from pipeline.extract.job import run_extraction
from pipeline.extract.launch import configure, prepare_output
from pipeline.extract.settings import run_settings
from tests import packing
from tests.conftest import encode
from tests.fakes import MEAN_COLOUR, MeanColourBackbone
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import InputSpec
from transforms.read.sources import ReadRecords
from transforms.read.tables import InputFields
from transforms.read.versions import file_version
from transforms.schema.elements import Failure, Record

IN_PROCESS = ["--runner=FnApiRunner"]


def png(colour=(200, 40, 40), size=(40, 30)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


def noise_png(side: int = 120) -> bytes:
    """A PNG that does not compress: about 3 * side**2 bytes."""
    return encode(Image.frombytes("RGB", (side, side), os.urandom(3 * side * side)), "PNG")


def extract(tmp_path, specs, fields: InputFields = InputFields()):
    """Run the job over ``specs``; the manifest and {key: dead letter}."""
    config = ExtractConfig(inputs=tuple(specs), output=str(tmp_path / "out"),
                           backbone=MeanColourBackbone(str(tmp_path / "loads.log")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=1000,
                           overwrite=False, fields=fields)
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))
    errors = {e["key"]: e for f in manifest.error_files
              for e in map(json.loads, open(os.path.join(config.output, f)))}
    return manifest, errors


def counts(manifest) -> dict:
    return {k: manifest.counts[k] for k in ("inputs", "embedded", "failed")}


def test_special_files_are_failures_and_nothing_hangs(tmp_path, worker_env):
    photos, index = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    index.mkdir()
    (photos / "good.png").write_bytes(png())
    (index / "good.png").write_bytes(png((30, 200, 60)))
    (index / "sub").mkdir()
    fifos = [photos / "pipe.jpg", index / "pipe.png", tmp_path / "pipe.tar", tmp_path / "pipe.tfrecord"]
    for fifo in fifos:
        os.mkfifo(fifo)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(photos / "sock.png"))
    (index / "index.csv").write_text("path\ngood.png\n/dev/zero\nsub\npipe.png\n")
    specs = [InputSpec.directory(str(photos)), InputSpec.glob(str(index / "index.csv")),
             InputSpec.glob(str(tmp_path / "pipe.tar")), InputSpec.glob(str(tmp_path / "pipe.tfrecord"))]
    try:
        with packing.fed_if_opened(fifos) as fed:
            manifest, errors = extract(tmp_path, specs, InputFields(allow_outside_paths=True))  # /dev/zero is outside
    finally:
        server.close()

    assert fed == []  # no FIFO was ever opened
    assert counts(manifest) == {"inputs": 9, "embedded": 2, "failed": 7}
    assert manifest.failures_by_reason == {"read: NotARegularFile": 7}
    fifo = "a FIFO (named pipe)"
    expected = {photos / "pipe.jpg": fifo, photos / "sock.png": "a socket", "/dev/zero": "a character device",
                index / "sub": "a directory", index / "pipe.png": fifo, tmp_path / "pipe.tar": fifo,
                tmp_path / "pipe.tfrecord": fifo}
    assert {key: e["message"] for key, e in errors.items()} == {
        str(path): f"{path} is {what}, not a regular file: not read" for path, what in expected.items()}


def test_inputs_over_the_limit_are_refused_from_their_size(tmp_path, worker_env):
    limit = 10_000
    small, big = png(), noise_png()
    assert len(small) < limit < len(big)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "small.png").write_bytes(small)
    (tmp_path / "files" / "big.png").write_bytes(big)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("a.png", small), ("b.png", big), ("c.png", small)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    examples = [packing.image_example(data, "x") for data in (small, big, small)]
    (tmp_path / "r.tfrecord").write_bytes(b"".join(packing.tfrecord_frame(e) for e in examples))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "small.png").write_bytes(small)
    (tmp_path / "m" / "index.csv").write_text(f"path\nsmall.png\n{'x' * (2 * limit)}.png\nsmall.png\n")
    specs = [InputSpec.glob(str(tmp_path / "files" / "*.png")), InputSpec.glob(str(tmp_path / "s.tar")),
             InputSpec.glob(str(tmp_path / "r.tfrecord")), InputSpec.glob(str(tmp_path / "m" / "index.csv"))]
    manifest, errors = extract(tmp_path, specs, InputFields(max_input_bytes=limit))

    assert counts(manifest) == {"inputs": 10, "embedded": 6, "failed": 4}
    assert manifest.failures_by_reason == {"read: InputTooLarge": 4}
    over = "over the limit of 10,000 (--max-input-bytes)"
    assert {key: e["message"] for key, e in errors.items()} == {
        str(tmp_path / "files" / "big.png"): f"{tmp_path / 'files' / 'big.png'} is {len(big):,} bytes, {over}",
        f"{tmp_path / 's.tar'}#b.png": f"tar member b.png is {len(big):,} bytes, {over}",
        f"{tmp_path / 'r.tfrecord'}#1": f"record 1 is {len(examples[1]):,} bytes, {over}",
        str(tmp_path / "m" / "index.csv"): f"line 3 is more than 10,000 bytes, {over}"}  # its first row was read


def test_the_limit_and_the_outside_paths_flag_are_checked_carried_and_recorded(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png())
    base = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    for bad in ("0", "-5"):
        with pytest.raises(ConfigError, match=f"^--max-input-bytes must be at least 1, got {bad}$"):
            check_flags(PipelineOptions(base + ["--max-input-bytes", bad]))
    assert configure(PipelineOptions(base)).fields == InputFields()
    config = configure(PipelineOptions(base + ["--max-input-bytes", "1000", "--allow-outside-paths"]))
    assert (config.fields.max_input_bytes, config.fields.allow_outside_paths) == (1000, True)
    assert {k: run_settings(config)["fields"][k] for k in ("max_input_bytes", "allow_outside_paths")} == {
        "max_input_bytes": 1000, "allow_outside_paths": True}
    prepare_output(config)
    with pytest.raises(ConfigError, match="^cannot resume .*field options"):
        configure(PipelineOptions(base + ["--max-input-bytes", "2000", "--allow-outside-paths", "--resume"]))
    assert configure(PipelineOptions(base + ["--max-input-bytes", "1000", "--allow-outside-paths", "--resume"])).resume


def test_text_keys_never_collide_and_a_repeated_id_is_a_failure(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"id": "7", "text": "id seven"}] + [{"text": f"row {i}"} for i in range(1, 8)] + [
        {"id": "7", "text": "id seven again"}, {"id": "x", "text": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with TestPipeline() as p:
        read = p | ReadRecords([InputSpec.glob(str(path), "text")])
        source, version = str(path), file_version(str(path))
        assert_that(read["records"] | beam.Map(lambda r: r._replace(version=None)), equal_to(
            [Record(f"{path}#id=7", "id seven", None, None, source)]
            + [Record(f"{path}#row={i}", f"row {i}", None, None, source) for i in range(1, 8)]
            + [Record(f"{path}#id=x", "x", None, None, source)]), label="records")
        assert_that(read["failed"], equal_to([
            Failure(f"{path}#row=8", str(path), "read", "DuplicateId",
                    "row 8 repeats id '7' of row 0; the first is kept", version)]), label="failures")


@pytest.fixture
def escaping_manifest(tmp_path):
    """``sets/index.csv`` naming a file inside, one beside the folder, one through a symlink out, and an absolute
    path outside."""
    sets, outside = tmp_path / "sets", tmp_path / "outside"
    sets.mkdir()
    outside.mkdir()
    (sets / "in.png").write_bytes(png())
    (tmp_path / "beside.png").write_bytes(png((30, 200, 60)))
    (outside / "far.png").write_bytes(png((40, 60, 220)))
    os.symlink(outside, sets / "link")
    (sets / "index.csv").write_text(f"path\nin.png\n../beside.png\nlink/far.png\n{outside / 'far.png'}\n")
    return sets / "index.csv"


def test_manifest_rows_outside_its_folder_are_failures_unless_allowed(tmp_path, escaping_manifest, worker_env):
    index = str(escaping_manifest)
    manifest, errors = extract(tmp_path / "strict", [InputSpec.glob(index)])
    assert counts(manifest) == {"inputs": 4, "embedded": 1, "failed": 3}
    assert manifest.failures_by_reason == {"read: OutsidePath": 3}
    folder = escaping_manifest.parent
    far = tmp_path / "outside" / "far.png"
    assert {key: e["message"] for key, e in errors.items()} == {
        f"{index}#{row}": f"row {row} names {ref!r}, which leads to {where}, outside the manifest's folder {folder}; "
                          "pass --allow-outside-paths to read it"
        for row, ref, where in [(1, "../beside.png", tmp_path / "beside.png"), (2, "link/far.png", far),
                                (3, str(far), far)]}

    manifest, errors = extract(tmp_path / "allowed", [InputSpec.glob(index)], InputFields(allow_outside_paths=True))
    assert counts(manifest) == {"inputs": 4, "embedded": 4, "failed": 0} and errors == {}


def test_tar_links_are_failures_never_followed(tmp_path, worker_env):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((1, 2, 3)))
    entries = (("good.png", tarfile.REGTYPE, png()), ("soft.png", tarfile.SYMTYPE, str(secret)),
               ("hard.png", tarfile.LNKTYPE, "good.png"))
    shard = tmp_path / "links.tar"
    shard.write_bytes(packing.tar_with(entries, tarfile.USTAR_FORMAT))
    manifest, errors = extract(tmp_path, [InputSpec.glob(str(shard))])

    assert counts(manifest) == {"inputs": 3, "embedded": 1, "failed": 2}
    assert manifest.failures_by_reason == {"read: TarLink": 2}
    assert {key: e["message"] for key, e in errors.items()} == {
        f"{shard}#soft.png": f"tar member is a symlink: not read (soft.png -> {secret})",
        f"{shard}#hard.png": "tar member is a hard link: not read (hard.png -> good.png)"}


def test_a_damaged_tfrecord_header_says_what_is_lost(tmp_path, worker_env):
    frames = [packing.tfrecord_frame(packing.image_example(png((i * 40, 100, 100)), str(i))) for i in range(6)]
    starts = [sum(map(len, frames[:i])) for i in range(7)]
    data = bytearray(b"".join(frames))
    data[starts[2] + 3] ^= 0x40  # record 2's length: where records 3-5 start is lost
    path = tmp_path / "r.tfrecord"
    path.write_bytes(bytes(data))
    manifest, errors = extract(tmp_path, [InputSpec.glob(str(path))])

    assert counts(manifest) == {"inputs": 3, "embedded": 2, "failed": 1}
    assert manifest.labels == ("0", "1")
    assert {key: e["message"] for key, e in errors.items()} == {f"{path}#2": (
        f"corrupt record header at byte {starts[2]} (not a TFRecord file, or damaged); records from 2 on are not "
        f"read: bytes {starts[2]}-{starts[3]} ({len(frames[2])} bytes) are unreadable; bytes {starts[3]}-{starts[6]} "
        "after them hold 3 intact records, not read: after a damaged header record numbers are unknown, so those "
        "records cannot get stable keys")}
