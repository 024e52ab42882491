"""A failed job says why in one line, promptly; flags reach Beam as given; helpers that must not hang do not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from PIL import Image

from pipeline.flags import Parser, split_flags
from tests import object_storage
from tests.conftest import REPO


@pytest.mark.worker_processes
def test_beam_flags_come_back_as_given_and_defaults_are_added_once(monkeypatch):
    parser = Parser(prog="x", allow_abbrev=False)
    parser.add_argument("--workdir")
    own, beam = split_flags(parser, ["--workdir", "w", "--direct_num_workers=3"])
    assert own.workdir == "w" and beam == ["--direct_num_workers=3"]

    from pipeline.extract import command, launch

    class Configured(Exception):
        pass

    def configure(options):
        raise Configured(options.get_all_options(drop_default=True))

    monkeypatch.setattr(launch, "configure", configure)
    for extra, expected in (([], ("FnApiRunner", "multi_processing", 2)), (["--direct_num_workers=3"],
                                                                            ("FnApiRunner", None, 3))):
        with pytest.raises(Configured) as given:
            command.cmd_extract(["--input", "x", "--output", "y", *extra])
        flags = given.value.args[0]
        assert (flags["runner"], flags.get("direct_running_mode"), flags["direct_num_workers"]) == expected


def test_committed_and_plain_dead_letters_are_the_same_lines(tmp_path):
    import apache_beam as beam

    from transforms.schema.elements import Failure
    from transforms.write.sinks import CommitFailures, WriteFailures

    failures = [Failure(f"k{i}", "src", "decode", "ImageDecodeError", f"bad {i}") for i in range(5)]
    for name, sink in (("committed", CommitFailures(str(tmp_path / "committed"), 100)),
                       ("plain", WriteFailures(str(tmp_path / "plain")))):
        with beam.Pipeline(runner="FnApiRunner") as p:
            _ = p | beam.Create(failures) | name >> sink
    lines = {}
    for name in ("committed", "plain"):
        folder = tmp_path / name / "errors"
        lines[name] = sorted(line for f in folder.iterdir() for line in f.read_text().splitlines())
    assert lines["committed"] == lines["plain"] == sorted(f.to_json() for f in failures)


def test_the_memory_poller_stops_even_when_the_run_ends_before_its_thread_starts():
    from pipeline.tools.bench import ProcessTreeMemory

    class LateThread(ProcessTreeMemory):
        def _poll(self):
            time.sleep(0.3)  # the run is over (and __exit__ called) before polling begins
            super()._poll()

    done = threading.Event()

    def run():
        with LateThread(os.getpid(), every=0.05):
            pass
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "the poller never stopped"


def _photos(folder, n):
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (200, 150), (i % 250, 80, 160)).save(folder / f"{i:03d}.jpg")


@pytest.mark.slow
def test_a_run_that_cannot_write_fails_with_one_line(tmp_path):
    _photos(tmp_path / "images", 120)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "FEATUREBEAM_DEBUG"} | {"PYTHONPATH": REPO}
    run = subprocess.Popen([sys.executable, "-m", "pipeline", "extract", "--input", str(tmp_path / "images"),
                            "--output", str(out), "--batch-size", "2", "--records-per-shard", "4", "--quiet"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "commits").is_dir():
        time.sleep(0.05)
    os.rename(out, tmp_path / "gone")  # in one step, while workers write: a full or lost disk, as a job sees it
    out.write_text("a file where OUTDIR was: every write from now on fails")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 1
    lines = [line for line in err.splitlines() if line.strip() and not _tensorflow_start_up(line)]
    # the lease's heartbeat may meet the outage first (when depends on the machine's load): one warning line each
    failures = [line for line in lines if not line.startswith("featurebeam extract: warning: lease heartbeat failed: ")]
    assert len(failures) == 1 and failures[0] == lines[-1], err[-3000:]
    assert failures[0].startswith("featurebeam extract: failed: "), err[-3000:]
    assert "Not a directory" in failures[0] and "FEATUREBEAM_DEBUG=1" in failures[0]


def _tensorflow_start_up(line: str) -> bool:
    return "absl::InitializeLog" in line or "oneDNN custom operations" in line or "cpu_feature_guard" in line


def _create_bucket(host: str, name: str) -> None:
    request = urllib.request.Request(f"{host}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def _objects(host: str, bucket: str, prefix: str) -> list[str]:
    with urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}/o?prefix={prefix}", timeout=5) as response:
        return [item["name"] for item in json.load(response).get("items", [])]


@pytest.mark.slow
def test_a_storage_outage_fails_the_run_promptly_with_its_reason(tmp_path):
    _photos(tmp_path / "images", 200)
    with object_storage.gcs_emulator(str(tmp_path)) as server:
        _create_bucket(server.host, "outage")
        env = {k: v for k, v in os.environ.items() if k != "FEATUREBEAM_DEBUG"} | {
            "PYTHONPATH": REPO, "STORAGE_EMULATOR_HOST": server.host}
        run = subprocess.Popen([sys.executable, "-m", "pipeline", "extract", "--input", str(tmp_path / "images"),
                                "--output", "gs://outage/features", "--batch-size", "2", "--records-per-shard", "4",
                                "--storage-retry-seconds", "3", "--quiet"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and run.poll() is None and not _objects(server.host, "outage",
                                                                                  "features/commits/"):
            time.sleep(0.2)
        assert run.poll() is None, "the run ended before the outage"
    outage = time.monotonic()  # the emulator is gone: every call from now on fails
    _, err = run.communicate(timeout=300)
    waited = time.monotonic() - outage
    assert run.returncode == 1
    lines = [line for line in err.splitlines() if line.strip() and not _tensorflow_start_up(line)]
    # the lease's heartbeat may meet the outage first (when depends on the machine's load): one warning line each
    failures = [line for line in lines if not line.startswith("featurebeam extract: warning: lease heartbeat failed: ")]
    assert len(failures) == 1 and failures[0] == lines[-1], err[-3000:]
    assert failures[0].startswith("featurebeam extract: failed: "), err[-3000:]
    assert waited < 90, f"the run took {waited:.0f} s to fail after the outage"
    print(json.dumps({"seconds from outage to failure": round(waited, 1)}))
