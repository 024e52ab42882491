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
from tests.pipeline.extract.test_input_formats import check_same_as_folder

PROJECT, REGION = "featurebeam-test", "us-central1"
ARGS = ["--layer", "features.18", "--batch-size", "4", "--read-chunk-mb", "0.1", "--quiet"]


def _dataflow(staging_bucket: str) -> list[str]:
    return ["--runner", "DataflowRunner", "--project", PROJECT, "--region", REGION,
            "--temp_location", f"gs://{staging_bucket}/tmp", "--gpu", "nvidia-l4"]


def _staged(prefix: str) -> dict[str, str]:
    return {m.path.rsplit("/", 1)[-1]: m.path for m in FileSystems.match([f"{prefix}/**"])[0].metadata_list}


def _stage_template(bucket: str, inputs: list[str], output: str, setup_file: str) -> dict[str, str]:
    """Check 2: stage the GPU job as a template; returns the staged files by name."""
    template = f"gs://{bucket}/templates/extract.json"
    assert main(["extract", *inputs, "--output", output, *ARGS, *_dataflow(bucket),
                 "--template_location", template, "--setup_file", setup_file]) == 0
    staged = _staged(f"gs://{bucket}")
    assert {"extract.json", "pipeline.pb", "workflow.tar.gz"} <= set(staged), sorted(staged)
    with FileSystems.open(template) as f:  # the launcher's GPU defaults reached the job
        job = f.read().decode("utf-8")
    image = f"{REGION}-docker.pkg.dev/{PROJECT}/featurebeam/featurebeam-gpu:0.1.0"
    for expected in (f'"workerHarnessContainerImage": "{image}"', '"machineType": "g2-standard-8"',
                     "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"):
        assert expected in job, expected
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
    captured = capsys.readouterr()
    assert "dry run: DataflowRunner built and pickled the whole job" in captured.out
    assert "Dataflow defaults: " in captured.err and "--machine_type=g2-standard-8" in captured.err
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

    staged = _stage_template("df-staging", packing.input_flags(inputs), "gs://df-out/features",
                             os.path.join(REPO, "setup.py"))
    assert "staged the job as a template at gs://df-staging/templates/extract.json" in capsys.readouterr().out
    assert staged["mobilenet_v2-b0353104.pth"].endswith("/b03531047ffacf1e/mobilenet_v2-b0353104.pth")  # by hash
    assert FileSystems.match(["gs://df-out/**"])[0].metadata_list == []  # staging writes no output

    worker = tmp_path / "worker"
    done = _run_worker(staged, worker)
    assert done.returncode == 0, done.stderr[-5000:]
    assert f"pipeline from {worker / 'site' / 'pipeline'}" in done.stdout
    assert f"transforms from {worker / 'site' / 'transforms'}" in done.stdout

    remote, remote_records = packing.read_feature_set("gs://df-out/features")
    check_same_as_folder(remote, remote_records, keys)
    assert main(["extract", *packing.input_flags(inputs), "--output", str(tmp_path / "local"), *ARGS]) == 0
    local, local_records = packing.read_feature_set(str(tmp_path / "local"))
    assert remote.counts == local.counts and remote.failures_by_reason == local.failures_by_reason
    assert remote.backbone == local.backbone and remote.outputs == local.outputs
    by_key = {r.key: r for r in local_records}
    assert sorted(by_key) == sorted(r.key for r in remote_records)
    for record in remote_records:
        assert (record.label, record.split) == (by_key[record.key].label, by_key[record.key].split)
        np.testing.assert_allclose(record.vectors["features.18"], by_key[record.key].vectors["features.18"],
                                   atol=1e-5, err_msg=record.key)


def _project_copy(dest, left_out: str) -> str:
    """The project's packaging files and packages, with ``left_out`` (and its sub-packages) excluded in setup.py."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), dest / name)
    for package in ("pipeline", "transforms"):
        shutil.copytree(os.path.join(REPO, package), dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    setup = dest / "setup.py"
    text = setup.read_text()
    edited = text.replace('"transforms.*"])', f'"transforms.*"], exclude=["{left_out}", "{left_out}.*"])')
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
    assert "pipeline/extract/job.py" in members and not any(m.startswith("pipeline/backbones/") for m in members)

    done = _run_worker(staged, tmp_path / "worker")
    assert done.returncode != 0
    assert "No module named 'pipeline.backbones'" in done.stderr, done.stderr[-3000:]
    assert FileSystems.match(["gs://nc-out/features/manifest.json"])[0].metadata_list == []


def test_the_sdist_holds_every_module_of_the_project(tmp_path):
    """What setup.py ships is what the workers can import: every module under pipeline/ and transforms/."""
    built = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist",
                            "--dist-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (sdist,) = tmp_path.glob("featurebeam-*.tar.gz")
    members = _sdist_members(str(sdist))
    modules = {os.path.relpath(os.path.join(folder, name), REPO).replace(os.sep, "/")
               for package in ("pipeline", "transforms")
               for folder, _, files in os.walk(os.path.join(REPO, package)) for name in files if name.endswith(".py")}
    assert modules and modules <= members, sorted(modules - members)


def _defaults(tmp_path, sample_photos, *flags: str) -> tuple[list[str], object]:
    """The Dataflow defaults the launcher adds to ``flags``, and the job configuration they lead to."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.extract.dataflow import dataflow_defaults
    from pipeline.extract.launch import configure

    (tmp_path / "a.jpg").write_bytes(sample_photos["china.jpg"])
    args = ["--input", str(tmp_path / "a.jpg"), "--output", str(tmp_path / "out"), "--runner", "DataflowRunner",
            "--project", PROJECT, "--region", REGION, f"--temp_location={tmp_path / 'staging'}", *flags]
    defaults = dataflow_defaults(PipelineOptions(args))
    return defaults, configure(PipelineOptions([*args, *defaults]))


def test_a_gpu_job_gets_the_accelerator_image_machine_and_one_shared_model(tmp_path, sample_photos):
    from pipeline.extract.embedding import GPU_BATCH_SIZE

    defaults, config = _defaults(tmp_path, sample_photos, "--gpu", "nvidia-l4")
    assert defaults == [
        f"--setup_file={os.path.join(REPO, 'setup.py')}",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
        f"--sdk_container_image={REGION}-docker.pkg.dev/{PROJECT}/featurebeam/featurebeam-gpu:0.1.0",
        "--machine_type=g2-standard-8",
        "--number_of_worker_harness_threads=4",
    ]
    assert config.embed.batch_size == GPU_BATCH_SIZE and config.embed.model_copies == 1

    defaults, config = _defaults(tmp_path, sample_photos, "--runner", "dataflow", "--gpu", "nvidia-tesla-t4",
                                 "--model-copies", "2")  # Beam's short runner name is the same runner
    assert "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver" \
           in defaults and "--machine_type=n1-standard-8" in defaults
    assert config.embed.model_copies == 2

    defaults, config = _defaults(tmp_path, sample_photos, "--gpu", "nvidia-l4", "--model-copies", "0")
    assert "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver;" \
           "use_nvidia_mps" in defaults  # a copy in each worker process: MPS lets them share the GPU
    assert config.embed.model_copies == 0


def test_what_the_user_gives_is_kept(tmp_path, sample_photos):
    defaults, config = _defaults(tmp_path, sample_photos, "--gpu", "nvidia-l4", "--setup_file", "/src/setup.py",
                                 "--sdk_container_image", "example.com/img:1", "--machine_type", "g2-standard-16",
                                 "--number_of_worker_harness_threads", "8", "--batch-size", "64")
    assert defaults == ["--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert config.embed.batch_size == 64
    defaults, _ = _defaults(tmp_path, sample_photos, "--gpu", "nvidia-l4", "--worker_harness_container_image",
                            "example.com/img:1")  # Beam's older name for the image counts as given
    assert not any(flag.startswith("--sdk_container_image") for flag in defaults)


def test_a_cpu_job_gets_one_tensorflow_thread_per_sdk_process(tmp_path, sample_photos):
    from pipeline.extract.embedding import CPU_BATCH_SIZE

    defaults, config = _defaults(tmp_path, sample_photos)
    assert defaults == [f"--setup_file={os.path.join(REPO, 'setup.py')}", "--threads-per-worker=1",
                        "--number_of_worker_harness_threads=2"]
    assert (config.embed.batch_size, config.embed.model_copies, config.embed.threads) == (CPU_BATCH_SIZE, 0, 1)
    defaults, config = _defaults(tmp_path, sample_photos, "--model-copies", "2")  # shared copies: TF's own threads
    assert "--threads-per-worker=1" not in defaults and (config.embed.model_copies, config.embed.threads) == (2, None)


@pytest.mark.parametrize("flags, message", [
    (["--gpu", "nvidia-l4", "--runner", "FnApiRunner"], "--gpu asks Dataflow for GPU workers and needs --runner "
                                                        "DataflowRunner"),
    (["--gpu", "nvidia-l4", "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1"],
     "--gpu and a worker_accelerator option both ask for GPUs; give one of them"),
    (["--gpu", "nvidia-l4:2"], "--gpu takes a GPU type such as nvidia-l4 (one per worker), got 'nvidia-l4:2'"),
    (["--gpu", "nvidia-h100-80gb"], "no default machine type for --gpu nvidia-h100-80gb; give --machine_type"),
    (["--gpu", "nvidia-l4", "--model-copies", "-1"], "--model-copies must be 0 (one per worker process) or more, "
                                                     "got -1"),
], ids=["local-runner", "twice", "count", "machine-type", "copies"])
def test_gpu_flag_mistakes_are_one_line_errors(tmp_path, sample_photos, capsys, flags, message):
    (tmp_path / "a.jpg").write_bytes(sample_photos["china.jpg"])
    args = ["--input", str(tmp_path / "a.jpg"), "--output", str(tmp_path / "out"), "--quiet", "--project", PROJECT,
            "--region", REGION, f"--temp_location={tmp_path / 'staging'}", "--dry_run=True"]
    runner = [] if "--runner" in flags else ["--runner", "DataflowRunner"]
    assert main(["extract", *args, *runner, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"featurebeam extract: error: {message}"), err


METADATA = os.path.join(REPO, "deploy", "flex_template", "metadata.json")
EXAMPLES = {"input": "gs://bucket/images/", "output": "gs://bucket/features", "backbone": "efficientnet_lite0",
            "weights": "gs://bucket/w.weights.h5", "layer": "features.18", "pooling": "max", "input_format": "tar",
            "uri_field": "path", "label_field": "class", "text_field": "body", "records_per_shard": "5000",
            "batch_size": "64", "gpu": "nvidia-l4", "model_copies": "2", "mixed_precision": "true",
            "precision": "float16",
            "max_image_pixels": "50000000", "overwrite": "false", "resume": "true", "update": "true",
            "keep_removed": "false"}


def test_each_flex_template_parameter_is_a_featurebeam_flag():
    import json
    import re

    from pipeline.extract.command import extract_parser
    from pipeline.extract.flex_template import extract_args
    from pipeline.extract.options import UPDATE_FLAG
    from pipeline.flags import split_flags

    parameters = json.load(open(METADATA))["parameters"]
    assert sorted(p["name"] for p in parameters) == sorted(EXAMPLES)
    for p in parameters:
        assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_]*", p["name"]) and p["label"] and p["helpText"], p
        assert p.get("isOptional", False) is (p["name"] not in ("input", "output")), p["name"]
        for regex in p.get("regexes", []):
            assert re.fullmatch(regex, EXAMPLES[p["name"]]), (p["name"], regex)
    args = extract_args([f"--{name}={value}" for name, value in EXAMPLES.items()] + ["--runner=DataflowRunner"])
    own, beam_flags = split_flags(extract_parser(), args)
    assert beam_flags == ["--runner=DataflowRunner"]
    assert (own.input, own.layer, own.records_per_shard, own.gpu, own.model_copies) == (
        ["gs://bucket/images/"], ["features.18"], 5000, "nvidia-l4", 2)
    assert (own.mixed_precision, own.overwrite, own.resume, own.input_format) == (True, False, True, "tar")
    assert (own.update, own.keep_removed) == (True, False)  # Beam's own --update is never set
    assert "--update" not in args and UPDATE_FLAG in args


@pytest.mark.slow
def test_a_flex_template_launch_prepares_the_output_and_its_staged_job_runs(tmp_path, image_folder, gcs):
    for bucket in ("fx-in", "fx-out", "fx-staging"):
        gcs.create_bucket(bucket)
    object_storage.upload_tree(str(image_folder), "gs://fx-in/images")
    stale = ["gs://fx-out/features/manifest.json", "gs://fx-out/features/features/part-old.tfrecord"]
    for path in stale:
        with FileSystems.create(path) as f:
            f.write(b"from an earlier run")

    # what Dataflow's launcher runs: the entry point, parameters and pipeline options as --name=value
    parameters = {"input": "gs://fx-in/images", "output": "gs://fx-out/features", "gpu": "nvidia-l4",
                  "overwrite": "true", "batch_size": "4", "layer": "features.18", "mixed_precision": "false"}
    options = {"runner": "DataflowRunner", "project": PROJECT, "region": REGION, "temp_location": "gs://fx-staging/tmp",
               "template_location": "gs://fx-staging/template_launches/1/job_object"}
    args = [f"--{name}={value}" for name, value in {**parameters, **options}.items()]
    launched = subprocess.run([sys.executable, os.path.join(REPO, "deploy", "flex_template", "main.py"), *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "template launch: DataflowRunner staged the job at gs://fx-staging/template_launches/1/job_object" \
           in launched.stdout
    assert not any(FileSystems.exists(path) for path in stale)          # --overwrite cleared them at launch
    assert FileSystems.exists("gs://fx-out/features/run.json")          # so --resume can continue this run

    done = _run_worker(_staged("gs://fx-staging"), tmp_path / "worker")
    assert done.returncode == 0, done.stderr[-5000:]
    manifest, records = packing.read_feature_set("gs://fx-out/features")
    assert manifest.counts == {"inputs": 10, "embedded": 8, "failed": 2, "duplicates": 0}
    assert sorted(str(r.label) for r in records) == ["None"] + ["china"] * 4 + ["flower"] * 3


def _readme_dataflow_commands() -> list[list[str]]:
    """The shell commands of the README's "Running on Dataflow" block, placeholders filled in."""
    import shlex

    text = open(os.path.join(REPO, "README.md")).read()
    section = text[text.index("## Running on Dataflow"):text.index("## How the job runs")]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    filled = block.replace("PROJECT", PROJECT).replace("REGION", REGION).replace("BUCKET", "readme-bucket")
    return [shlex.split(line) for line in filled.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readmes_dataflow_commands_run_as_far_as_offline_allows(image_folder, gcs, capsys):
    from pipeline.extract.dataflow import gpu_image

    commands = _readme_dataflow_commands()
    (build,) = [c for c in commands if c[:3] == ["gcloud", "builds", "submit"]]
    assert f"_IMAGE={gpu_image(PROJECT, REGION)}" in build  # the image the launcher's default names
    extracts = [c for c in commands if c[0].endswith("featurebeam")]
    assert len(extracts) == 2 and "--dry_run=True" in extracts[0] and "--dry_run=True" not in extracts[1]

    gcs.create_bucket("readme-bucket")
    object_storage.upload_tree(str(image_folder), "gs://readme-bucket/images")
    assert main(extracts[0][1:]) == 0
    assert "dry run: DataflowRunner built and pickled the whole job" in capsys.readouterr().out
    # the run command, staged as a template instead of submitted (a real submission needs the cloud)
    assert main([*extracts[1][1:], "--template_location=gs://readme-bucket/templates/readme.json"]) == 0
    captured = capsys.readouterr()
    assert "staged the job as a template at gs://readme-bucket/templates/readme.json" in captured.out
    assert "--machine_type=g2-standard-8" in captured.err  # the printed defaults
    assert FileSystems.match(["gs://readme-bucket/features/**"])[0].metadata_list == []
