"""The Dataflow job, checked offline against the GCS emulator, in the order a submission goes:

1. ``--dry_run=True``: DataflowRunner builds and pickles the whole GPU job, nothing is written;
2. ``--template_location``: the job is staged to gs:// (sdist built from setup.py, pipeline proto, weights);
3. a simulated worker installs the staged sdist into an empty directory and runs the staged pipeline proto
   with FnApiRunner, gs:// in and gs:// out (``tests/dataflow_worker.py``); its features equal a local run's;
4. the negative control: with a package left out of setup.py, step 3 fails on the worker, so step 3 really
   runs the staged code and nothing from the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.cli import main
from tests import object_storage, packing
from tests.conftest import REPO
from tests.test_input_formats import check_same_as_folder
from transforms import schema

GPU = "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
ARGS = ["--layer", "features.18", "--batch-size", "4", "--read-chunk-mb", "0.1", "--quiet"]


def _dataflow(staging_bucket: str) -> list[str]:
    return ["--runner", "DataflowRunner", "--project", "featurebeam-test", "--region", "us-central1",
            "--temp_location", f"gs://{staging_bucket}/tmp", GPU]


def _staged(prefix: str) -> dict[str, str]:
    return {m.path.rsplit("/", 1)[-1]: m.path for m in FileSystems.match([f"{prefix}/**"])[0].metadata_list}


def _inputs(inputs: dict[str, str]) -> list[str]:
    return [arg for fmt in ("files", "manifest", "tar", "tfrecord") for arg in ("--input", inputs[fmt])]


def _read_back(output: str):
    manifest = schema.read_manifest(output)
    records = [schema.decode_example(data, manifest.outputs)
               for path in schema.shard_paths(output, manifest) for data in schema.iter_serialized(path)]
    return manifest, records


def _stage_template(bucket: str, inputs: list[str], output: str, setup_file: str) -> dict[str, str]:
    """Check 2: stage the GPU job as a template; returns the staged files by name."""
    template = f"gs://{bucket}/templates/extract.json"
    assert main(["extract", *inputs, "--output", output, *ARGS, *_dataflow(bucket),
                 "--template_location", template, "--setup_file", setup_file]) == 0
    staged = _staged(f"gs://{bucket}")
    assert {"extract.json", "pipeline.pb", "workflow.tar.gz"} <= set(staged), sorted(staged)
    return staged


def _download_sdist(staged: dict[str, str], folder) -> str:
    folder.mkdir(parents=True)
    local = folder / "workflow.tar.gz"
    with FileSystems.open(staged["workflow.tar.gz"], compression_type=CompressionTypes.UNCOMPRESSED) as f:
        local.write_bytes(f.read())
    return str(local)


def _sdist_members(sdist: str) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def _run_worker(staged: dict[str, str], worker) -> subprocess.CompletedProcess:
    """Check 3's worker: an empty directory, the staged sdist installed into ``site/``, the staged
    pipeline proto run there. The test's environment stands in for the worker image's dependencies."""
    sdist = _download_sdist(staged, worker)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", "site", sdist], cwd=worker, capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    shutil.copy(os.path.join(REPO, "tests", "dataflow_worker.py"), worker)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "dataflow_worker.py", "--site", "site", "--pipeline", staged["pipeline.pb"]],
                          cwd=worker, env=env, capture_output=True, text=True, timeout=600)


def test_dry_run_builds_the_gpu_job_and_writes_no_output(tmp_path, image_folder, gcs, capsys):
    for bucket in ("dry-in", "dry-out", "dry-staging"):
        gcs.create_bucket(bucket)
    object_storage.upload_tree(str(image_folder), "gs://dry-in/images")
    assert main(["extract", "--input", "gs://dry-in/images", "--output", "gs://dry-out/features", "--quiet",
                 *_dataflow("dry-staging"), "--dry_run=True"]) == 0
    assert "dry run: DataflowRunner built and pickled the whole job" in capsys.readouterr().out
    (staged,) = FileSystems.match(["gs://dry-staging/tmp/featurebeam-weights/**"])[0].metadata_list
    assert staged.path.endswith("/b03531047ffacf1e/mobilenet_v2-b0353104.pth"), staged.path
    assert FileSystems.match(["gs://dry-out/**"])[0].metadata_list == []


@pytest.mark.slow
def test_a_worker_with_only_the_staged_sdist_runs_the_template_like_a_local_run(tmp_path, image_folder, gcs,
                                                                                  capsys):
    for bucket in ("df-in", "df-out", "df-staging"):
        gcs.create_bucket(bucket)
    inputs, keys = packing.pack_layout(image_folder, tmp_path / "layout", "gs://df-in/archive")
    object_storage.upload_tree(str(tmp_path / "layout"), "gs://df-in/archive")

    staged = _stage_template("df-staging", _inputs(inputs), "gs://df-out/features", os.path.join(REPO, "setup.py"))
    assert "staged the job as a template at gs://df-staging/templates/extract.json" in capsys.readouterr().out
    assert staged["mobilenet_v2-b0353104.pth"].endswith("/b03531047ffacf1e/mobilenet_v2-b0353104.pth")  # by hash
    assert FileSystems.match(["gs://df-out/**"])[0].metadata_list == []  # staging writes no output

    worker = tmp_path / "worker"
    done = _run_worker(staged, worker)
    assert done.returncode == 0, done.stderr[-5000:]
    assert f"pipeline from {worker / 'site' / 'pipeline'}" in done.stdout
    assert f"transforms from {worker / 'site' / 'transforms'}" in done.stdout

    remote, remote_records = _read_back("gs://df-out/features")
    check_same_as_folder(remote, remote_records, keys)
    assert main(["extract", *_inputs(inputs), "--output", str(tmp_path / "local"), *ARGS]) == 0
    local, local_records = _read_back(str(tmp_path / "local"))
    assert remote.counts == local.counts and remote.failures_by_reason == local.failures_by_reason
    assert remote.backbone == local.backbone and remote.outputs == local.outputs
    by_key = {r.key: r for r in local_records}
    assert sorted(by_key) == sorted(r.key for r in remote_records)
    for record in remote_records:
        assert (record.label, record.split) == (by_key[record.key].label, by_key[record.key].split)
        np.testing.assert_allclose(record.vectors["features.18"], by_key[record.key].vectors["features.18"],
                                   atol=1e-5, err_msg=record.key)


def _project_copy(dest, left_out: str) -> str:
    """The project's packaging files and packages, with ``left_out`` excluded in setup.py."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), dest / name)
    for package in ("pipeline", "transforms"):
        shutil.copytree(os.path.join(REPO, package), dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    setup = dest / "setup.py"
    text = setup.read_text()
    edited = text.replace('"transforms.*"])', f'"transforms.*"], exclude=["{left_out}"])')
    assert edited != text, "setup.py no longer lists its packages the way this test expects"
    setup.write_text(edited)
    return str(setup)


@pytest.mark.slow
def test_a_package_left_out_of_setup_py_fails_on_the_worker(tmp_path, image_folder, gcs):
    for bucket in ("nc-in", "nc-out", "nc-staging"):
        gcs.create_bucket(bucket)
    object_storage.upload_tree(str(image_folder), "gs://nc-in/images")
    setup_file = _project_copy(tmp_path / "project", left_out="pipeline.backbones")

    staged = _stage_template("nc-staging", ["--input", "gs://nc-in/images"], "gs://nc-out/features", setup_file)
    members = _sdist_members(_download_sdist(staged, tmp_path / "sdist"))
    assert "pipeline/extract.py" in members and not any(m.startswith("pipeline/backbones/") for m in members)

    done = _run_worker(staged, tmp_path / "worker")
    assert done.returncode != 0
    assert "No module named 'pipeline.backbones'" in done.stderr, done.stderr[-3000:]
    assert FileSystems.match(["gs://nc-out/features/manifest.json"])[0].metadata_list == []


def test_the_sdist_holds_every_module_of_the_project(tmp_path):
    """What setup.py ships is what the workers can import: every module under pipeline/ and transforms/."""
    built = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (sdist,) = tmp_path.glob("featurebeam-*.tar.gz")
    members = _sdist_members(str(sdist))
    modules = {os.path.relpath(os.path.join(folder, name), REPO).replace(os.sep, "/")
               for package in ("pipeline", "transforms")
               for folder, _, files in os.walk(os.path.join(REPO, package)) for name in files if name.endswith(".py")}
    assert modules and modules <= members, sorted(modules - members)
