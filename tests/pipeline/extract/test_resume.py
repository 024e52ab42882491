"""Committed units, --resume after a crash, and the launch errors around them."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from pipeline.cli import main
from pipeline.extract.config import ExtractConfig
from pipeline.extract.job import run_extraction
from tests.commit_tools import commit_keys, recommit_with, resolve_in
from tests.conftest import REPO
from tests.fakes import MEAN_COLOUR, MeanColourBackbone
from tests.vectors import assert_same_vector
from transforms.embed.settings import EmbedSettings
from transforms.keys import spill
from transforms.read.input_specs import InputSpec
from transforms.schema.example import read_records
from transforms.schema.layout import COMMITS_DIR, FEATURES_DIR, MANIFEST_NAME, PENDING_DIR
from transforms.schema.manifest import read_manifest, shard_paths
from transforms.write import commit_checks

IN_PROCESS = ["--runner=FnApiRunner"]


def _config(tmp_path, root, **changes):
    config = ExtractConfig(inputs=(InputSpec.directory(str(root)),), output=str(tmp_path / "out"),
                           backbone=MeanColourBackbone(str(tmp_path / "loads.log")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=4,
                           overwrite=False)
    return dataclasses.replace(config, **changes)


def _records(output):
    manifest = read_manifest(output)
    return manifest, [r for p in shard_paths(output, manifest) for r in read_records(p, manifest.outputs)]


def test_outputs_are_committed_in_units_with_their_keys(tmp_path, colours, worker_env):
    config = _config(tmp_path, colours)
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))

    done = commit_checks.read_commits(config.output)
    features = [c for c in done if c.kind == "features"]
    assert len(features) >= 30 // 4 and all(c.records <= 4 for c in features)
    assert sorted(manifest.shards) == sorted(c.path for c in features)
    _, records = _records(config.output)
    assert sorted(k for c in features for k in commit_keys(config.output, c)) == sorted(r.key for r in records)
    by_key = {r.key: r.label for r in records}
    for c in features:  # the keys file says each record's label, in the file's order
        for key, label, split in commit_checks.read_commit_keys(config.output, c):
            assert (label, split) == (by_key[key], None)
    (errors,) = [c for c in done if c.kind == "errors"]
    assert commit_keys(config.output, errors) == [str(colours / "broken.jpg")] and errors.reasons == {
        "decode: ImageDecodeError": [1, str(colours / "broken.jpg")]}
    for c in done:  # a commit record is a summary: no keys in it, whatever the number of records
        record = json.load(open(os.path.join(config.output, c.marker)))
        assert "keys" not in record and record["keys_sha256"] == c.keys_sha256
    assert not os.listdir(os.path.join(config.output, PENDING_DIR))
    assert manifest.resumed_records == 0


@pytest.mark.parametrize("spilled", [False, True], ids=["packs-inline", "packs-spilled"])
def test_resume_skips_what_was_committed_and_finishes_the_rest(tmp_path, colours, worker_env, request, spilled):
    read = request.getfixturevalue("every_pack_spilled") if spilled else []
    config = _config(tmp_path, colours)
    full = run_extraction(config, PipelineOptions(IN_PROCESS))
    _, before = _records(config.output)

    # a crash: half the commits never happened, one shard was written but not committed, one was pending
    done = commit_checks.read_commits(config.output)
    lost = [c for c in done if c.kind == "features"][::2]
    for c in lost:
        os.remove(os.path.join(config.output, COMMITS_DIR, f"{c.id}.json"))
    os.remove(os.path.join(config.output, MANIFEST_NAME))
    pending = os.path.join(config.output, PENDING_DIR, "dead.tfrecord")
    open(pending, "wb").write(b"half a shard")

    resumed = run_extraction(dataclasses.replace(config, resume=True), PipelineOptions(IN_PROCESS))
    manifest, after = _records(config.output)
    assert resumed.counts == full.counts == {"inputs": 31, "embedded": 30, "failed": 1, "duplicates": 0}
    assert sorted(r.key for r in after) == sorted(r.key for r in before)          # every key, once
    by_key = {r.key: r.vectors["pixels"] for r in before}
    for r in after:
        np.testing.assert_array_equal(r.vectors["pixels"], by_key[r.key])
    redone = sum(c.records for c in lost)
    assert manifest.resumed_records == 31 - redone                                 # only the lost ones were redone
    assert not os.path.exists(pending)
    on_disk = sorted(os.listdir(os.path.join(config.output, FEATURES_DIR)))
    assert on_disk == sorted(os.path.basename(s) for s in manifest.shards)        # no orphan shards left
    assert os.listdir(os.path.join(config.output, PENDING_DIR)) == []      # scratch files deleted too
    if spilled:  # the repeat count's, the join's and each unit's done keys went through files, of both runs
        assert {os.path.basename(os.path.dirname(path)) for path in read} == {"repeats", "resume"}
        assert not any(os.path.exists(path) for path in read)


@pytest.mark.parametrize("flag", ["resume", "overwrite"])
def test_scratch_files_a_killed_run_left_are_swept(tmp_path, colours, flag):
    from pipeline.extract.launch import prepare_output

    config = _config(tmp_path, colours)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    os.remove(os.path.join(config.output, MANIFEST_NAME))
    left = [spill.spill(spill.scratch_folder(config.output, step), (os.urandom(spill.INLINE_BYTES + 1),)).path
            for step in ("repeats", "resume", "duplicates")]
    prepare_output(dataclasses.replace(config, **{flag: True}))
    assert not any(os.path.exists(path) for path in left)


@pytest.mark.parametrize("spilled", [False, True], ids=["packs-inline", "packs-spilled"])
def test_a_key_committed_twice_is_kept_once(tmp_path, colours, worker_env, request, spilled):
    read = request.getfixturevalue("every_pack_spilled") if spilled else []
    config = _config(tmp_path, colours)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    del read[:]
    first, second = [c for c in commit_checks.read_commits(config.output) if c.kind == "features"][:2]
    recommit_with(config.output, second, first)  # what a distributed runner's retried bundle can leave

    assert resolve_in(config.output) == (1, first.records, min(commit_keys(config.output, first)))
    keys = [k for c in commit_checks.read_commits(config.output) for k in commit_keys(config.output, c)]
    assert len(keys) == len(set(keys)) == 31
    for c in commit_checks.read_commits(config.output):  # each rewritten file holds exactly what its record says
        assert commit_checks.verify_commit(config.output, c) is None
        path = os.path.join(config.output, c.path)
        held = [json.loads(line)["key"] for line in open(path)] if c.kind == "errors" else [
            r.key for r in read_records(path, (MEAN_COLOUR,))]
        assert held == commit_keys(config.output, c)
    assert all(os.path.basename(os.path.dirname(path)) == "duplicates" for path in read) and len(read) >= spilled


@pytest.mark.parametrize("flags, message", [
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["--resume"], "nothing to resume in {out}: it has no run.json from an earlier run"),
    (["--records-per-shard", "0"], "--records-per-shard must be at least 1"),
], ids=["resume-and-overwrite", "nothing-to-resume", "records-per-shard"])
def test_resume_launch_errors(tmp_path, colours, capsys, flags, message):
    out = tmp_path / "out"
    assert main(["extract", "--input", str(colours), "--output", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurebeam extract: error: " + message.format(out=out)), err


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path, colours, capsys):
    out = str(tmp_path / "out")
    assert main(["extract", "--input", str(colours), "--output", out, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["extract", "--input", str(colours), "--output", out, "--quiet"]) == 2
    assert "is not empty; pass --overwrite to replace its features, or --resume" in capsys.readouterr().err
    assert main(["extract", "--input", str(colours), "--output", out, "--resume", "--layer", "features.17"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"featurebeam extract: error: cannot resume {out}: it was started with different "
        "--layer/--pooling/--feature-dtype; "
        "use the same settings, or --overwrite to start again")


@pytest.mark.slow
def test_killed_multi_process_run_resumes_to_the_same_features(tmp_path, image_folder):
    """SIGKILL the launcher and its worker processes part-way, rerun with --resume: every key once, the same
    features as a run that was never interrupted, and only the uncommitted part embedded again."""
    images = tmp_path / "images"
    images.mkdir()
    photos = [Image.open(image_folder / rel).convert("RGB") for rel in ("china/original.jpg", "flower/original.jpg")]
    for i in range(96):
        photos[i % 2].crop((i, i // 2, i + 400, i // 2 + 300)).save(images / f"{i:03d}.jpg", quality=90)
    flags = ["--input", str(images), "--batch-size", "2", "--records-per-shard", "4", "--quiet",
             "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    env = {**os.environ, "PYTHONPATH": REPO}

    killed = str(tmp_path / "killed")
    run = subprocess.Popen([sys.executable, "-m", "pipeline", "extract", *flags, "--output", killed],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    markers = os.path.join(killed, COMMITS_DIR)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if os.path.isdir(markers) and sum(name.endswith(".json") for name in os.listdir(markers)) >= 6:
            break
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be killed part-way"
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and every worker process, with no chance to clean up
    run.wait()
    assert not os.path.exists(os.path.join(killed, MANIFEST_NAME))

    resumed = subprocess.run([sys.executable, "-m", "pipeline", "extract", *flags, "--output", killed, "--resume"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    complete = str(tmp_path / "complete")
    assert main(["extract", *flags, "--output", complete]) == 0

    manifest, records = _records(killed)
    _, reference = _records(complete)
    assert not os.path.exists(spill.scratch_folder(killed)) and not os.path.exists(spill.scratch_folder(complete))
    assert manifest.counts == {"inputs": 96, "embedded": 96, "failed": 0, "duplicates": 0}
    assert sorted(r.key for r in records) == sorted(r.key for r in reference) and len(records) == 96
    expected = {r.key: r.vectors["features.18"] for r in reference}
    for r in records:
        assert_same_vector(r.vectors["features.18"], expected[r.key], r.key)
    assert 24 <= manifest.resumed_records < 96  # measurably less work: the committed part was not redone
    assert f"{manifest.resumed_records} of them were committed by the interrupted run" in resumed.stdout
    print(json.dumps({"skipped on resume": manifest.resumed_records, "of": 96}))


def test_resume_on_object_storage(tmp_path, colours, worker_env, gcs, every_pack_spilled):
    """The same crash and resume with OUTDIR on gs:// (a GCS emulator), where folders are only prefixes, and
    every pack of the per-key shuffles goes through a scratch object there."""
    from apache_beam.io.filesystems import FileSystems

    from tests.packing import read_feature_set

    gcs.create_bucket("resume-out")
    config = _config(tmp_path, colours, output="gs://resume-out/features")
    full = run_extraction(config, PipelineOptions(IN_PROCESS))
    _, before = read_feature_set(config.output)

    lost = [c for c in commit_checks.read_commits(config.output) if c.kind == "features"][::2]
    FileSystems.delete([FileSystems.join(config.output, COMMITS_DIR, f"{c.id}.json") for c in lost]
                       + [FileSystems.join(config.output, MANIFEST_NAME)])
    pending = FileSystems.join(config.output, PENDING_DIR, "dead.tfrecord")
    with FileSystems.create(pending) as f:
        f.write(b"half a shard")

    resumed = run_extraction(dataclasses.replace(config, resume=True), PipelineOptions(IN_PROCESS))
    manifest, after = read_feature_set(config.output)
    assert resumed.counts == full.counts == {"inputs": 31, "embedded": 30, "failed": 1, "duplicates": 0}
    assert sorted(r.key for r in after) == sorted(r.key for r in before)          # every key, once
    assert manifest.resumed_records == 31 - sum(c.records for c in lost)
    assert not FileSystems.exists(pending)
    (listed,) = FileSystems.match([FileSystems.join(config.output, FEATURES_DIR, "*")])
    assert sorted(m.path.rsplit("/", 1)[-1] for m in listed.metadata_list) == sorted(
        s.rsplit("/", 1)[-1] for s in manifest.shards)                             # no orphan shards left
    assert every_pack_spilled and all(path.startswith("gs://resume-out/features/.pending/shuffle/")
                                      for path in every_pack_spilled)
    (scratch,) = FileSystems.match([FileSystems.join(spill.scratch_folder(config.output), "**")])
    assert scratch.metadata_list == []                                             # the scratch objects are gone


def test_a_commit_is_trusted_only_with_its_keys_file_intact(tmp_path, colours, worker_env):
    config = _config(tmp_path, colours)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    first, second = [c for c in commit_checks.read_commits(config.output) if c.kind == "features"][:2]
    assert commit_checks.verified_keys(config.output, first) == (None, commit_keys(config.output, first))

    keys_file = os.path.join(config.output, first.keys_path)
    data = open(keys_file, "rb").read()
    open(keys_file, "wb").write(data.replace(b"png", b"jpg", 1))  # same size, other content
    assert commit_checks.verified_keys(config.output, first) == (f"{first.keys_path} fails its sha256", [])
    os.remove(os.path.join(config.output, second.keys_path))
    assert commit_checks.verify_commit(config.output, second) == f"{second.keys_path} is missing"
