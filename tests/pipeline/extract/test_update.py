"""``--update``: a finished feature set brought up to date with its inputs (new, changed, removed, kept), as a new
generation that equals a fresh extraction of the inputs as they are now, crash-safe at every step."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from pipeline.extract.config import ExtractConfig
from pipeline.extract.job import run_extraction
from pipeline.extract.launch import generation_to_make
from pipeline.tools.inspect import format_inspection, inspect_feature_set
from tests.fakes import MEAN_COLOUR, MeanColourBackbone
from transforms.embed.settings import EmbedSettings
from transforms.read.input_specs import InputSpec
from transforms.schema.example import read_records
from transforms.schema.layout import COMMITS_DIR, ERRORS_DIR, FEATURES_DIR
from transforms.schema.manifest import read_manifest, shard_paths
from transforms.write import commit_checks, generations
from transforms.write.commit_format import current_commits

IN_PROCESS = ["--runner=FnApiRunner"]


def _config(tmp_path, root, output="out", **changes) -> ExtractConfig:
    config = ExtractConfig(inputs=(InputSpec.directory(str(root)),), output=str(tmp_path / output),
                           backbone=MeanColourBackbone(str(tmp_path / "loads.log")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=4,
                           overwrite=False)
    return dataclasses.replace(config, **changes)


def _update(config: ExtractConfig, **changes):
    """``extract --update`` on ``config``'s OUTDIR (the generation it makes decided as the launcher decides it)."""
    config = dataclasses.replace(config, update=True, **changes)
    return run_extraction(dataclasses.replace(config, generation=generation_to_make(config)),
                          PipelineOptions(IN_PROCESS))


def _held(output):
    """The feature set as its manifest lists it: key -> (label, vector), with each key once; and its dead letters."""
    manifest = read_manifest(output)
    records = [r for p in shard_paths(output, manifest) for r in read_records(p, manifest.outputs)]
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "a key is held twice"
    failed = sorted(json.loads(line)["key"] for f in manifest.error_files
                    for line in open(os.path.join(output, f)))
    return {r.key: (r.label, r.vectors["pixels"]) for r in records}, failed


def _same_set(got, expected) -> None:
    (records, failed), (want, want_failed) = got, expected
    assert sorted(records) == sorted(want) and failed == want_failed
    for key, (label, vector) in records.items():
        assert label == want[key][0]
        np.testing.assert_allclose(vector, want[key][1], atol=1e-5)


def _colour(path, rgb, size=(40, 30)):
    Image.new("RGB", size, rgb).save(path)


def _change(root):
    """A night's changes: 3 new files, 1 rewritten with other pixels, 1 with the same bytes and a new modification
    time, 2 deleted, the broken file fixed. Returns the keys of each kind."""
    new = [root / "cool" / f"new{i}.png" for i in range(3)]
    for i, path in enumerate(new):
        _colour(path, (10 * i, 10, 240))
    repainted, touched = root / "cool" / "00.png", root / "warm" / "01.png"
    _colour(repainted, (255, 0, 255))
    info = os.stat(touched)
    os.utime(touched, ns=(info.st_atime_ns, info.st_mtime_ns + 5_000_000_000))
    removed = [root / "cool" / "02.png", root / "warm" / "03.png"]
    for path in removed:
        path.unlink()
    fixed = next(root.glob("*/broken.jpg"))
    _colour(fixed, (1, 2, 3))
    return {"new": [str(p) for p in new], "changed": [str(repainted), str(touched), str(fixed)],
            "removed": [str(p) for p in removed]}


def test_an_update_equals_a_fresh_extraction_of_the_inputs_as_they_are_now(tmp_path, archive, worker_env):
    config = _config(tmp_path, archive)
    first = run_extraction(config, PipelineOptions(IN_PROCESS))
    assert first.generation == 1 and first.generations[0]["new"] == 31
    untouched = {c.id: c for c in commit_checks.read_commits(config.output)}
    changes = _change(archive)

    updated = _update(config)
    fresh = run_extraction(_config(tmp_path, archive, "fresh"), PipelineOptions(IN_PROCESS))

    _same_set(_held(config.output), _held(str(tmp_path / "fresh")))
    assert updated.generation == 2
    assert updated.generations[0] == first.generations[0]
    assert {k: updated.generations[1][k] for k in ("generation", "new", "changed", "removed", "kept")} == {
        "generation": 2, "new": 3, "changed": 3, "removed": 2, "kept": 31 - 3 - 2}
    assert updated.counts == fresh.counts == {"inputs": 32, "embedded": 32, "failed": 0, "duplicates": 0}
    inspected = inspect_feature_set(config.output)
    assert inspected.problems == [] and inspected.updating is None
    assert "  generation 2 (" in format_inspection(inspected, check=True)
    assert "3 new, 3 changed, 2 removed, 26 kept" in format_inspection(inspected, check=True)

    commits = commit_checks.read_commits(config.output)
    made = [c for c in commits if c.generation == 2 and not c.replaces]
    redone = {k for c in made for k in commit_checks.verified_keys(config.output, c)[1]}
    assert redone == set(changes["new"] + changes["changed"])  # only those were embedded
    kept_as_is = [c for c in commits if c.generation == 1]
    assert kept_as_is and all(untouched[c.id] == c for c in kept_as_is)  # commits with nothing stale: untouched
    assert all(commit_checks.verify_commit(config.output, c) is None for c in commits)
    # what is on disk is what the manifest lists: replaced commits went once it was written
    manifest = read_manifest(config.output)
    assert sorted(os.listdir(os.path.join(config.output, FEATURES_DIR))) == sorted(
        os.path.basename(s) for s in manifest.shards)
    assert all(c.records for c in commits) and current_commits(commits) == commits


def test_nothing_changed_makes_a_generation_that_keeps_everything(tmp_path, archive, worker_env):
    config = _config(tmp_path, archive)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    before = {c.id: c for c in commit_checks.read_commits(config.output)}
    updated = _update(config)
    assert {k: updated.generations[1][k] for k in ("new", "changed", "removed", "kept")} == {
        "new": 0, "changed": 0, "removed": 0, "kept": 31}
    assert {c.id: c for c in commit_checks.read_commits(config.output)} == before


def test_keep_removed_keeps_the_records_of_inputs_that_are_gone(tmp_path, archive, worker_env):
    config = _config(tmp_path, archive)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    gone = archive / "cool" / "04.png"
    before, _ = _held(config.output)
    gone.unlink()
    updated = _update(config, keep_removed=True)
    held, _ = _held(config.output)
    assert sorted(held) == sorted(before)
    np.testing.assert_array_equal(held[str(gone)][1], before[str(gone)][1])
    assert updated.counts["retained"] == 1 and updated.generations[1]["removed"] == 0
    assert inspect_feature_set(config.output).problems == []
    dropped = _update(config)  # the next update without the flag removes it
    assert str(gone) not in _held(config.output)[0] and dropped.generations[2]["removed"] == 1


class Killed(RuntimeError):
    """Stands for the process being killed at that point."""


def _kill_after(monkeypatch, module, name, calls: int):
    real = getattr(module, name)
    made = []

    def dying(*args, **kwargs):
        if len(made) >= calls:
            raise Killed(f"killed after {calls} {name}")
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)


@pytest.mark.parametrize("point", ["while-committing", "while-dropping-stale", "after-the-manifest"])
def test_an_update_killed_at_any_point_leaves_the_last_generation_and_finishes_when_run_again(
        tmp_path, archive, worker_env, monkeypatch, point):
    from transforms.write import committers

    config = _config(tmp_path, archive)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    published = _held(config.output)
    _change(archive)
    expected_dir = tmp_path / "expected"
    shutil.copytree(config.output, expected_dir)
    _update(_config(tmp_path, archive, "expected"))  # the same update, never interrupted
    expected = _held(str(expected_dir))

    with monkeypatch.context() as m:
        if point == "while-committing":
            _kill_after(m, committers, "commit_files", 1)
        elif point == "while-dropping-stale":
            _kill_after(m, commit_checks, "drop_records", 1)
        else:
            _kill_after(m, generations, "delete_commit", 1)
        with pytest.raises(Exception, match="killed after"):
            _update(config)

    if point == "after-the-manifest":  # the new generation is published, and whole
        assert read_manifest(config.output).generation == 2
        _same_set(_held(config.output), expected)
    else:  # the last generation is what readers see, intact
        assert read_manifest(config.output).generation == 1
        _same_set(_held(config.output), published)
        inspected = inspect_feature_set(config.output)
        assert inspected.problems == [] and inspected.updating == 2
        assert "an update to generation 2 is under way or was interrupted" in format_inspection(inspected, True)
        assert any(c.generation == 2 for c in commit_checks.read_commits(config.output))  # work in progress

    finished = _update(config) if point != "after-the-manifest" else None
    _same_set(_held(config.output), expected)
    manifest = read_manifest(config.output)
    counts = {k: manifest.generations[-1][k] for k in ("new", "changed", "removed", "kept")}
    if finished is not None:
        assert manifest.generation == 2 and counts == {"new": 3, "changed": 3, "removed": 2, "kept": 26}
    else:  # run again after a published generation: the next one, with nothing to do but the cleaning
        assert inspect_feature_set(config.output).problems == []
        again = _update(config)
        assert again.generation == 3 and again.generations[-1]["kept"] == 32
    commits = commit_checks.read_commits(config.output)
    assert current_commits(commits) == commits and all(c.records for c in commits)
    assert sorted(os.listdir(os.path.join(config.output, FEATURES_DIR))) == sorted(
        os.path.basename(s) for s in read_manifest(config.output).shards)
    assert sorted(os.listdir(os.path.join(config.output, ERRORS_DIR))) == sorted(
        os.path.basename(s) for s in read_manifest(config.output).error_files)
    assert all(name.endswith((".json", ".keys", ".sources"))
               for name in os.listdir(os.path.join(config.output, COMMITS_DIR)))


def test_a_tar_shard_rewritten_is_embedded_again_and_the_others_are_kept(tmp_path, archive, worker_env):
    from tests.packing import tar_of

    def write_shard(name, folder, skip=()):
        members = [(f"{folder}/{p.name}", p.read_bytes()) for p in sorted((archive / folder).glob("*.png"))
                   if p.name not in skip]
        (shards / name).write_bytes(tar_of(members))
        return len(members)

    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard("a.tar", "cool")
    n_warm = write_shard("b.tar", "warm")
    spec = (InputSpec.glob(str(shards / "*.tar")),)
    config = _config(tmp_path, archive, inputs=spec)
    run_extraction(config, PipelineOptions(IN_PROCESS))

    _colour(archive / "cool" / "00.png", (255, 0, 255))  # one member with other pixels, one new, one gone
    _colour(archive / "cool" / "zz.png", (0, 99, 0))
    n_cool = write_shard("a.tar", "cool", skip=("02.png",))
    updated = _update(config)
    fresh = run_extraction(_config(tmp_path, archive, "fresh", inputs=spec), PipelineOptions(IN_PROCESS))

    _same_set(_held(config.output), _held(str(tmp_path / "fresh")))
    assert updated.counts == fresh.counts
    # a rewritten shard has a new version: each of its members that was there before is changed
    assert {k: updated.generations[1][k] for k in ("new", "changed", "removed", "kept")} == {
        "new": 1, "changed": n_cool - 1, "removed": 1, "kept": n_warm}
    assert inspect_feature_set(config.output).problems == []


def test_objects_replaced_added_and_deleted_in_a_bucket(tmp_path, archive, worker_env, gcs):
    from apache_beam.io.filesystems import FileSystems

    from tests.object_storage import upload_tree

    gcs.create_bucket("nightly")
    upload_tree(str(archive), "gs://nightly/archive")
    spec = (InputSpec.directory("gs://nightly/archive"),)
    config = _config(tmp_path, archive, inputs=spec)
    run_extraction(config, PipelineOptions(IN_PROCESS))

    def put(rel, data):
        with FileSystems.create(f"gs://nightly/archive/{rel}") as f:
            f.write(data)

    _colour(tmp_path / "new.png", (3, 200, 9))
    put("cool/new.png", (tmp_path / "new.png").read_bytes())       # new
    _colour(tmp_path / "other.png", (255, 0, 255))
    put("cool/00.png", (tmp_path / "other.png").read_bytes())      # other bytes
    put("warm/01.png", (archive / "warm" / "01.png").read_bytes())  # the same bytes, a new generation
    FileSystems.delete(["gs://nightly/archive/cool/02.png"])       # gone
    updated = _update(config)
    fresh = run_extraction(_config(tmp_path, archive, "fresh", inputs=spec), PipelineOptions(IN_PROCESS))

    _same_set(_held(config.output), _held(str(tmp_path / "fresh")))
    assert updated.counts == fresh.counts
    assert {k: updated.generations[1][k] for k in ("new", "changed", "removed", "kept")} == {
        "new": 1, "changed": 2, "removed": 1, "kept": 31 - 2 - 1}
    assert inspect_feature_set(config.output).problems == []


@pytest.mark.parametrize("flags, message", [
    (["--update", "--overwrite"], "--update and --overwrite contradict each other"),
    (["--keep-removed"], "--keep-removed says what an --update does with records whose inputs are gone"),
    (["--update"], "nothing to update in {out}: it has no run.json from an earlier run"),
], ids=["update-and-overwrite", "keep-removed-alone", "nothing-to-update"])
def test_update_launch_errors(tmp_path, colours, capsys, flags, message):
    from pipeline.cli import main

    out = tmp_path / "out"
    assert main(["extract", "--input", str(colours), "--output", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurebeam extract: error: " + message.format(out=out)), err


def test_an_interrupted_update_is_finished_by_update_not_resume(tmp_path, archive, worker_env):
    from pipeline.errors import ConfigError
    from pipeline.extract.launch import prepare_output

    config = _config(tmp_path, archive)
    run_extraction(config, PipelineOptions(IN_PROCESS))
    with pytest.raises(ConfigError, match="nothing to update in .*: it holds no finished feature set"):
        os.rename(os.path.join(config.output, "manifest.json"), str(tmp_path / "aside.json"))
        generation_to_make(dataclasses.replace(config, update=True))
    os.rename(str(tmp_path / "aside.json"), os.path.join(config.output, "manifest.json"))
    update = dataclasses.replace(config, update=True)
    prepare_output(dataclasses.replace(update, generation=generation_to_make(update)))  # then killed
    assert generations.update_in_progress(config.output) == 2
    with pytest.raises(ConfigError, match="update of .* to generation 2 was interrupted; run it with --update"):
        generation_to_make(dataclasses.replace(config, resume=True))
    assert read_manifest(config.output).generation == 1  # untouched
    assert _update(config).generation == 2 and generations.update_in_progress(config.output) is None
    with pytest.raises(ConfigError, match="holds a finished feature set, generation 2: there is nothing to resume"):
        generation_to_make(dataclasses.replace(config, resume=True))
