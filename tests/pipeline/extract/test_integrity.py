"""Nothing lost, nothing doubled: damaged commits on --resume, duplicate inputs, a retried bundle's second copy,
two runs on one OUTDIR, and a manifest that is never half written."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
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
from pipeline.tools.inspect import inspect_feature_set
from tests.commit_tools import commit_keys, resolve_in
from tests.conftest import REPO
from tests.fakes import MEAN_COLOUR, MeanColourBackbone
from transforms.embed.settings import EmbedSettings
from transforms.keys import spill
from transforms.keys.dedupe import keep_one_copy
from transforms.keys.fingerprints import fingerprint
from transforms.read.input_specs import InputSpec
from transforms.schema.elements import Failure
from transforms.schema.example import read_records
from transforms.schema.layout import COMMITS_DIR, LEASE_NAME, MANIFEST_NAME, RETIRED_DIR
from transforms.schema.manifest import read_manifest, shard_paths, write_manifest
from transforms.write import commit_checks
from transforms.write.commit_format import commit_files, key_line, place_file

IN_PROCESS = ["--runner=FnApiRunner"]


def _config(tmp_path, inputs, **changes):
    config = ExtractConfig(inputs=tuple(inputs), output=str(tmp_path / "out"),
                           backbone=MeanColourBackbone(str(tmp_path / "loads.log")),
                           embed=EmbedSettings((MEAN_COLOUR,), batch_size=4, threads=1), records_per_shard=4,
                           overwrite=False)
    return dataclasses.replace(config, **changes)


def _vectors(output) -> dict[str, np.ndarray]:
    manifest = read_manifest(output)
    records = [r for p in shard_paths(output, manifest) for r in read_records(p, manifest.outputs)]
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "a key is in the feature set twice"
    return {r.key: r.vectors[MEAN_COLOUR.name] for r in records}


def _dead_letters(output) -> list[dict]:
    manifest = read_manifest(output)
    return [json.loads(line) for name in manifest.error_files
            for line in open(os.path.join(output, name)) if line.strip()]


def test_resume_verifies_what_it_skips_and_redoes_damaged_commits(tmp_path, colours, worker_env):
    config = _config(tmp_path, [InputSpec.directory(str(colours))])
    run_extraction(config, PipelineOptions(IN_PROCESS))
    reference = _vectors(config.output)

    # the crash: no manifest; then the damage: one shard truncated, one deleted, one commit record garbled
    out = config.output
    features = [c for c in commit_checks.read_commits(out) if c.kind == "features"]
    truncated, deleted, garbled = features[0], features[1], features[2]
    with open(os.path.join(out, truncated.path), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(out, truncated.path)) - 7)
    os.remove(os.path.join(out, deleted.path))
    with open(os.path.join(out, garbled.marker), "w") as f:
        f.write('{"id": "' + garbled.id + '", "kind": "feat')
    os.remove(os.path.join(out, MANIFEST_NAME))

    resumed = run_extraction(dataclasses.replace(config, resume=True), PipelineOptions(IN_PROCESS))

    assert resumed.counts == {"inputs": 31, "embedded": 30, "failed": 1, "duplicates": 0}
    assert resumed.retired_commits == 3
    assert resumed.redone_records == truncated.records + deleted.records  # the garbled record's count is unknown
    after = _vectors(out)
    assert sorted(after) == sorted(reference)                            # every key, exactly once
    for key, vector in reference.items():
        np.testing.assert_allclose(after[key], vector, atol=1e-6)
    retired = sorted(os.listdir(os.path.join(out, RETIRED_DIR)))
    assert retired == sorted(f"{c.id}.json" for c in (truncated, deleted, garbled))
    reasons = {name: json.load(open(os.path.join(out, RETIRED_DIR, name)))["reason"] for name in retired}
    assert "fails its sha256" in reasons[f"{truncated.id}.json"] or "bytes" in reasons[f"{truncated.id}.json"]
    assert "is missing" in reasons[f"{deleted.id}.json"]
    assert reasons[f"{garbled.id}.json"].startswith("unreadable commit record")
    assert inspect_feature_set(out).problems == []


def test_a_resumed_summary_says_what_was_redone(tmp_path, colours, capsys):
    out = str(tmp_path / "out")
    assert main(["extract", "--input", str(colours), "--output", out, "--quiet", "--records-per-shard", "8"]) == 0
    (first,) = [c for c in commit_checks.read_commits(out) if c.kind == "features"][:1]
    os.remove(os.path.join(out, first.path))
    os.remove(os.path.join(out, MANIFEST_NAME))
    capsys.readouterr()
    assert main(["extract", "--input", str(colours), "--output", out, "--quiet", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"1 of its commits were damaged and retired, and their {first.records} inputs done again" in printed


@pytest.mark.parametrize("spilled", [False, True], ids=["packs-inline", "packs-spilled"])
def test_the_same_folder_twice_is_embedded_once_and_counted(tmp_path, colours, worker_env, request, spilled):
    """Spilled, the two copies' packs hold the same bytes, in files of their own: both count."""
    read = request.getfixturevalue("every_pack_spilled") if spilled else []
    config = _config(tmp_path, [InputSpec.directory(str(colours))] * 2)
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))
    assert len(read) >= spilled and not os.path.exists(spill.scratch_folder(config.output))
    assert manifest.counts == {"inputs": 62, "embedded": 30, "failed": 1, "duplicates": 31}
    assert manifest.duplicate_example == min(str(p) for p in colours.iterdir())
    assert len(_vectors(config.output)) == 30 and len(_dead_letters(config.output)) == 1
    assert inspect_feature_set(config.output).problems == []


@pytest.mark.parametrize("spilled", [False, True], ids=["packs-inline", "packs-spilled"])
def test_a_manifest_row_given_twice_agreeing_or_not(tmp_path, colours, worker_env, request, spilled):
    if spilled:
        request.getfixturevalue("every_pack_spilled")
    folder = tmp_path / "rows"
    folder.mkdir()
    for name in ("00.png", "01.png", "02.png"):
        (folder / name).write_bytes((colours / name).read_bytes())
    rows = ["uri,label",
            "00.png,red", "00.png,red",       # the same file twice, with the same label: embedded once
            "01.png,red", "01.png,blue",      # copies that disagree: neither is kept
            "02.png,red"]
    (folder / "rows.csv").write_text("\n".join(rows) + "\n")
    colours = folder
    config = _config(tmp_path, [InputSpec.glob(str(folder / "rows.csv"))])
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))

    assert manifest.counts == {"inputs": 5, "embedded": 2, "failed": 1, "duplicates": 2}
    assert sorted(_vectors(config.output)) == [str(colours / "00.png"), str(colours / "02.png")]
    (letter,) = _dead_letters(config.output)
    assert letter["key"] == str(colours / "01.png") and letter["error_type"] == commit_checks.DUPLICATE_CONFLICT
    assert "'blue'" in letter["message"] and "'red'" in letter["message"]
    assert manifest.failures_by_reason == {f"dedupe: {commit_checks.DUPLICATE_CONFLICT}": 1}
    assert inspect_feature_set(config.output).problems == []


def test_a_retried_bundles_second_copy_keeps_the_embedded_one(tmp_path, colours, worker_env):
    config = _config(tmp_path, [InputSpec.directory(str(colours))])
    run_extraction(config, PipelineOptions(IN_PROCESS))
    out = config.output
    features = [c for c in commit_checks.read_commits(out) if c.kind == "features"]
    key = commit_keys(out, features[0])[0]
    # what a retried bundle can leave: the same key also committed as a failure, in a commit of its own
    line = Failure(key, key, "embed", "ResourceExhaustedError", "out of memory").to_json() + "\n"
    placed = place_file(out, "0" * 32, "errors/part-" + "0" * 32 + ".jsonl", data=line.encode())
    copy = commit_files(out, "0" * 32, "errors", [placed], key_line(key), records=1,
                        reasons={"embed: ResourceExhaustedError": [1, key]})

    assert resolve_in(out) == (1, 1, key)
    kept = commit_checks.read_commits(out)
    holders = [c for c in kept if key in commit_keys(out, c)]
    assert [(c.kind, c.id) for c in holders] == [("features", features[0].id)]
    for path in (copy.path, copy.marker, copy.keys_path):
        assert not os.path.exists(os.path.join(out, path))
    assert sorted(os.listdir(os.path.join(out, COMMITS_DIR))) == sorted(
        name for c in kept for name in (f"{c.id}.json", f"{c.id}.keys", f"{c.id}.sources"))
    assert resolve_in(out) == (0, 0, None)  # nothing left to resolve


def _pack(commit_id, rank, keys_and_labels):
    fps = b"".join(fingerprint(k) for k, _ in keys_and_labels)
    metas = b"".join(fingerprint(json.dumps([label, None])) for _, label in keys_and_labels)
    return commit_id, rank, fps, metas, np.arange(len(keys_and_labels), dtype=np.int32).tobytes()


def test_which_copy_stays_does_not_depend_on_the_order_commits_come_in():
    packs = [_pack("b" * 32, 0, [("x", "cat"), ("y", "dog")]), _pack("a" * 32, 0, [("z", "cat"), ("x", "cat")]),
             _pack("c" * 32, 1, [("y", None), ("w", None)]), _pack("d" * 32, 0, [("v", "cat"), ("v", "dog")])]
    for order in (packs, packs[::-1], packs[1:] + packs[:1]):
        decided = {commit_id: (sorted(drop), sorted(conflicting))
                   for commit_id, (drop, conflicting) in keep_one_copy(order).items()}
        # x: the lowest commit id's copy stays; y: the embedded copy over the failed one; v: its two embedded
        # copies disagree on the label, so neither stays and both are the conflict's
        assert decided == {"b" * 32: ([0], []), "c" * 32: ([0], []), "d" * 32: ([0, 1], [0, 1])}


def test_the_manifest_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    from tests.featuresets import blobs, write_feature_set

    keys, labels, x = blobs(4, ["a", "b"], dim=8)
    manifest = write_feature_set(str(tmp_path), keys, labels, x)
    before = open(tmp_path / MANIFEST_NAME).read()
    real_create = FileSystems.create

    class DiskFull:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(FileSystems, "create", lambda path, *a, **k: DiskFull(real_create(path, *a, **k)))
    with pytest.raises(OSError):
        write_manifest(str(tmp_path), dataclasses.replace(manifest, created="2026-12-01T00:00:00+00:00"))
    assert open(tmp_path / MANIFEST_NAME).read() == before


def _lease(out, **fields):
    os.makedirs(out, exist_ok=True)
    lease = {"owner": "someone@elsewhere", "host": "elsewhere", "pid": 4242, "token": "t", "started": "earlier",
             "heartbeat": time.time(), **fields}
    with open(os.path.join(out, LEASE_NAME), "w") as f:
        json.dump(lease, f)


def test_a_live_lease_refuses_a_second_run_and_a_stale_one_is_taken_over(tmp_path, colours, capsys):
    out = str(tmp_path / "out")
    assert main(["extract", "--input", str(colours), "--output", out, "--quiet"]) == 0
    for flag in ("--resume", "--overwrite"):
        _lease(out)
        capsys.readouterr()
        assert main(["extract", "--input", str(colours), "--output", out, "--quiet", flag]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"featurebeam extract: error: output {out} is in use by another "
                                                   "run: someone@elsewhere (pid 4242 on elsewhere"), err
    assert os.path.exists(os.path.join(out, MANIFEST_NAME))  # the refused runs changed nothing

    _lease(out, heartbeat=time.time() - 3600)  # its owner stopped an hour ago
    assert main(["extract", "--input", str(colours), "--output", out, "--quiet", "--resume"]) == 0
    assert "taking over the lease of someone@elsewhere (pid 4242 on elsewhere" in capsys.readouterr().err
    _lease(out, host=socket.gethostname(), pid=2 ** 22 + 7)  # killed: a process of this machine that is gone
    assert main(["extract", "--input", str(colours), "--output", out, "--quiet", "--resume"]) == 0
    assert "has ended" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, LEASE_NAME))  # given back at the end
    assert inspect_feature_set(out).problems == []


@pytest.mark.slow
def test_two_real_runs_on_one_outdir(tmp_path, image_folder):
    """A second run started while the first is live is refused, whatever its flags, and the first finishes a
    set that passes inspect --check."""
    images = tmp_path / "images"
    images.mkdir()
    photo = Image.open(image_folder / "china/original.jpg").convert("RGB")
    for i in range(48):
        photo.crop((i, i, i + 300, i + 200)).save(images / f"{i:03d}.jpg")
    out = str(tmp_path / "out")
    flags = ["--input", str(images), "--output", out, "--batch-size", "2", "--records-per-shard", "4", "--quiet"]
    env = {**os.environ, "PYTHONPATH": REPO}
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "extract", *flags], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(out, LEASE_NAME)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before a second could be tried"
    for flag in ("--resume", "--overwrite"):
        second = subprocess.run([sys.executable, "-m", "pipeline", "extract", *flags, flag], env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "is in use by another run" in second.stderr, second.stderr[-1000:]
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert inspect_feature_set(out).problems == []
    assert read_manifest(out).counts == {"inputs": 48, "embedded": 48, "failed": 0, "duplicates": 0}


def test_labels_too_long_for_a_manifest_are_failures_and_summaries_stay_short(tmp_path, colours, worker_env):
    from pipeline.extract.summary import format_summary
    from transforms.read.sources import MAX_FIELD_CHARS

    folder = tmp_path / "rows"
    folder.mkdir()
    for name in ("00.png", "01.png"):
        (folder / name).write_bytes((colours / name).read_bytes())
    (folder / "rows.csv").write_text(f"uri,label\n00.png,{'x' * (MAX_FIELD_CHARS + 1)}\n01.png,{'y' * 300}\n")
    config = _config(tmp_path, [InputSpec.glob(str(folder / "rows.csv"))])
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))

    assert manifest.counts == {"inputs": 2, "embedded": 1, "failed": 1, "duplicates": 0}
    assert manifest.labels == ("y" * 300,) and manifest.failures_by_reason == {"read: FieldTooLong": 1}
    (letter,) = _dead_letters(config.output)
    assert letter["key"] == str(folder / "00.png") and f"its label is {MAX_FIELD_CHARS + 1:,} characters" in letter[
        "message"]
    summary = format_summary(manifest, config.output, 1.0)
    assert max(len(line) for line in summary.splitlines()) < 400 and "y" * 41 not in summary


def test_keys_are_read_again_only_when_the_commits_hold_more_records_than_there_are_distinct_keys(
        tmp_path, colours, worker_env, monkeypatch):
    from transforms.keys import dedupe

    config = _config(tmp_path, [InputSpec.directory(str(colours))])
    real = commit_checks.read_commit_keys
    reads = []
    monkeypatch.setattr(commit_checks, "read_commit_keys", lambda *a: reads.append(a) or real(*a))
    manifest = run_extraction(config, PipelineOptions(IN_PROCESS))
    assert manifest.counts == {"inputs": 31, "embedded": 30, "failed": 1, "duplicates": 0} and reads == []

    listing = dedupe._ListCommitsFn(config.output)
    markers = sorted(os.path.join(config.output, c.marker) for c in commit_checks.read_commits(config.output))
    assert list(listing.process(None, 1, 31)) == []          # 31 records in commits, 31 distinct keys: each once
    assert sorted(listing.process(None, 1, 30)) == markers   # one more record than keys: a copy to find
    assert sorted(listing.process(None, 1)) == markers       # no count given: always looked at
