"""``featurebeam extract`` against real object-storage servers on 127.0.0.1 (GCS emulator, moto S3).

Each test packs the image folder in every image format, uploads it to a bucket and runs the CLI over all four
inputs at once: gs:// in -> gs:// out (in a subprocess, with nothing but ``STORAGE_EMULATOR_HOST`` set) and
s3:// in -> local out. The features must equal the loose folder's, format by format.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests import object_storage, packing
from tests.conftest import REPO
from tests.pipeline.extract.test_input_formats import check_same_as_folder

ARGS = ["--layer", "features.18", "--batch-size", "4", "--read-chunk-mb", "0.1", "--quiet"]


def test_gcs_in_gcs_out_with_only_the_emulator_variable(tmp_path, image_folder, gcs):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.flags import use_storage_options

    for bucket in ("inbox", "outbox"):
        gcs.create_bucket(bucket)
    inputs, keys = packing.pack_layout(image_folder, tmp_path / "layout", "gs://inbox/archive")
    use_storage_options(PipelineOptions([]))
    object_storage.upload_tree(str(tmp_path / "layout"), "gs://inbox/archive")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
    env.update(STORAGE_EMULATOR_HOST=gcs.host, PYTHONPATH=REPO)
    env.pop("NO_GCE_CHECK", None)
    done = subprocess.run([sys.executable, "-m", "pipeline", "extract", *packing.input_flags(inputs),
                           "--output", "gs://outbox/features", *ARGS],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "default credentials" not in done.stderr  # no credential lookup, so no stall looking for them
    assert "embedded 32 of 40 inputs (8 failed)" in done.stdout

    manifest, records = packing.read_feature_set("gs://outbox/features")
    check_same_as_folder(manifest, records, keys)
    assert all(s.startswith("features/part-") for s in manifest.shards)


def test_s3_in_local_out(tmp_path, image_folder, s3, capsys):
    s3.create_bucket("raw")
    inputs, keys = packing.pack_layout(image_folder, tmp_path / "layout", "s3://raw/archive")
    client = s3.client()
    for folder, _, files in os.walk(tmp_path / "layout"):
        for name in files:
            path = os.path.join(folder, name)
            client.upload_file(path, "raw", "archive/" + os.path.relpath(path, tmp_path / "layout"))

    out = tmp_path / "features"
    assert main(["extract", *packing.input_flags(inputs), "--output", str(out), *ARGS, *s3.beam_flags]) == 0
    manifest, records = packing.read_feature_set(str(out))
    check_same_as_folder(manifest, records, keys)


@pytest.mark.parametrize("where, message", [
    (["--input", "gs://no-such-bucket/images", "--output", "OUT"],
     "input gs://no-such-bucket/images: bucket gs://no-such-bucket does not exist"),
    (["--input", "gs://inbox2/nothing-here/", "--output", "OUT"], "input gs://inbox2/nothing-here/ matches no files"),
    (["--input", "IMAGES", "--output", "gs://no-such-bucket/out"],
     "output gs://no-such-bucket/out: bucket gs://no-such-bucket does not exist"),
], ids=["input-bucket", "empty-prefix", "output-bucket"])
def test_missing_buckets_and_empty_prefixes_fail_at_launch(tmp_path, image_folder, gcs, capsys, where, message):
    gcs.create_bucket("inbox2") if where[1].startswith("gs://inbox2") else None
    args = [str(image_folder) if a == "IMAGES" else str(tmp_path / "out") if a == "OUT" else a for a in where]
    assert main(["extract", *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"featurebeam extract: error: {message}", err


def test_missing_s3_bucket_fails_at_launch(tmp_path, image_folder, s3, capsys):
    assert main(["extract", "--input", "s3://absent/x/", "--output", str(tmp_path / "o"), *s3.beam_flags]) == 2
    assert capsys.readouterr().err.strip() == (
        "featurebeam extract: error: input s3://absent/x/: bucket s3://absent does not exist")
    assert main(["extract", "--input", str(image_folder), "--output", "s3://absent/o", *s3.beam_flags]) == 2
    assert capsys.readouterr().err.strip() == (
        "featurebeam extract: error: output s3://absent/o: bucket s3://absent does not exist")
