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
from tests.test_input_formats import check_same_as_folder
from transforms import schema

ARGS = ["--layer", "features.18", "--batch-size", "4", "--read-chunk-mb", "0.1", "--quiet"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with object_storage.gcs_emulator(str(tmp_path_factory.mktemp("gcs"))) as server:
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = server.host
        try:
            yield server
        finally:
            if previous is None:
                del os.environ["STORAGE_EMULATOR_HOST"]
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    with object_storage.s3_server(str(tmp_path_factory.mktemp("s3"))) as server:
        yield server
        FileSystems.set_options(PipelineOptions([]))


def _inputs(inputs: dict[str, str]) -> list[str]:
    return [arg for fmt in ("files", "manifest", "tar", "tfrecord") for arg in ("--input", inputs[fmt])]


def _read_back(output: str):
    manifest = schema.read_manifest(output)
    records = [schema.decode_example(data, manifest.outputs)
               for path in schema.shard_paths(output, manifest) for data in schema.iter_serialized(path)]
    return manifest, records


def test_gcs_in_gcs_out_with_only_the_emulator_variable(tmp_path, image_folder, gcs):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import use_storage_options

    for bucket in ("inbox", "outbox"):
        gcs.create_bucket(bucket)
    inputs, keys = packing.pack_layout(image_folder, tmp_path / "layout", "gs://inbox/archive")
    use_storage_options(PipelineOptions([]))
    object_storage.upload_tree(str(tmp_path / "layout"), "gs://inbox/archive")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
    env.update(STORAGE_EMULATOR_HOST=gcs.host, PYTHONPATH=REPO)
    env.pop("NO_GCE_CHECK", None)
    done = subprocess.run([sys.executable, "-m", "pipeline", "extract", *_inputs(inputs),
                           "--output", "gs://outbox/features", *ARGS],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "default credentials" not in done.stderr  # no credential lookup, so no stall looking for them
    assert "embedded 32 of 40 inputs (8 failed)" in done.stdout

    manifest, records = _read_back("gs://outbox/features")
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
    assert main(["extract", *_inputs(inputs), "--output", str(out), *ARGS, *s3.beam_flags]) == 0
    manifest, records = _read_back(str(out))
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


def test_dataflow_dry_run_builds_the_gpu_job_and_writes_no_output(tmp_path, image_folder, gcs, capsys):
    from apache_beam.io.filesystems import FileSystems

    for bucket in ("dry-in", "dry-out", "dry-staging"):
        gcs.create_bucket(bucket)
    object_storage.upload_tree(str(image_folder), "gs://dry-in/images")
    flags = ["--runner", "DataflowRunner", "--project", "featurebeam-test", "--region", "us-central1",
             "--temp_location", "gs://dry-staging/tmp", "--dry_run=True",
             "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert main(["extract", "--input", "gs://dry-in/images", "--output", "gs://dry-out/features", "--quiet",
                 *flags]) == 0
    assert "dry run: DataflowRunner built and pickled the whole job" in capsys.readouterr().out
    (staged,) = FileSystems.match(["gs://dry-staging/tmp/featurebeam-weights/*"])[0].metadata_list
    assert staged.path.endswith("-mobilenet_v2-b0353104.pth")
    assert FileSystems.match(["gs://dry-out/**"])[0].metadata_list == []


@pytest.mark.slow
def test_dataflow_template_stages_the_sdist_pipeline_and_weights_on_gcs(tmp_path, image_folder, gcs, capsys):
    import tarfile

    from apache_beam.io.filesystems import FileSystems

    for bucket in ("tpl-in", "tpl-out", "tpl-staging"):
        gcs.create_bucket(bucket)
    object_storage.upload_tree(str(image_folder), "gs://tpl-in/images")
    template = "gs://tpl-staging/templates/extract.json"
    assert main(["extract", "--input", "gs://tpl-in/images", "--output", "gs://tpl-out/features", "--quiet",
                 "--runner", "DataflowRunner", "--project", "featurebeam-test", "--region", "us-central1",
                 "--temp_location", "gs://tpl-staging/tmp", "--template_location", template,
                 "--setup_file", os.path.join(REPO, "setup.py"),
                 "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]) == 0
    assert f"staged the job as a template at {template}" in capsys.readouterr().out
    staged = {m.path.rsplit("/", 1)[-1]: m.path for m in FileSystems.match(["gs://tpl-staging/**"])[0].metadata_list}
    assert {"extract.json", "pipeline.pb", "workflow.tar.gz"} <= set(staged)
    with FileSystems.open(staged["workflow.tar.gz"]) as f:  # the sdist the workers will install
        local = tmp_path / "workflow.tar.gz"
        local.write_bytes(f.read())
    with tarfile.open(local) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"pipeline/extract.py", "pipeline/backbones/minilm.py", "transforms/sources.py", "transforms/commits.py",
            "setup.py"} <= members
    assert any(name.endswith("-mobilenet_v2-b0353104.pth") for name in staged)
    assert FileSystems.match(["gs://tpl-out/**"])[0].metadata_list == []
