"""An hour-long recording is read, decoded and embedded in windows: the extraction's peak memory is that of a
5-minute recording's, the difference far below the hour's decoded size (230 MB of float32 samples at 16 kHz mono),
and its vector is the mean over all 1,203 patches.

What is compared is the peak of what Python and numpy allocate during the run (``tracemalloc``, TensorFlow imported
before it starts): the decoded samples and anything the job buffers, i.e. whatever could grow with the recording's
length. The process's resident peak is printed, not compared: TensorFlow's own (C++) memory is most of it and
varies by 400 MB from run to run of the very same input (1.67 to 2.18 GB measured, for an hour and for 20 minutes
alike), and it also grows over its first forward passes of a full batch whatever the records. Python's peak has no
such warm-up: 5 minutes (three full batches of 32 patches and one part-filled) peak as 20 minutes do."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

RATE = 16000
GROWTH_BOUND_MB = 40  # the most the hour's run may peak above the 5 minutes'

_PEAK = """
import resource, sys, tracemalloc
from pipeline.cli import main
import keras, tensorflow  # imported before tracing starts, as every run imports them
tracemalloc.start()
code = main(sys.argv[1:])
print("PEAK_KB", tracemalloc.get_traced_memory()[1] // 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def _write(path, seconds: int) -> None:
    """A slowly gliding chord, written ten seconds at a time (the test never holds the recording either)."""
    with soundfile.SoundFile(str(path), "w", RATE, 1, subtype="PCM_16", format="FLAC") as f:
        for start in range(0, seconds * RATE, 10 * RATE):
            t = (start + np.arange(10 * RATE)) / RATE
            f.write((0.2 * np.sin(2 * np.pi * 220 * t * (1 + 0.002 * np.sin(2 * np.pi * 0.05 * t)))
                     + 0.1 * np.sin(2 * np.pi * 660 * t)).astype(np.float32))


def _extract(folder, out) -> tuple[int, int]:
    """Peak traced and resident memory (KB) of one in-process extraction of ``folder``, in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", _PEAK, "extract", "--input", str(folder), "--backbone",
                             "musicnn_msd", "--output", str(out), "--runner=FnApiRunner", "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line.split() for line in result.stdout.splitlines() if line.startswith("PEAK_KB"))
    return int(line[1]), int(line[2])


@pytest.mark.slow
def test_an_hour_long_recording_embeds_in_the_memory_of_five_minutes(tmp_path):
    from transforms.schema.example import read_records
    from transforms.schema.manifest import read_manifest, shard_paths

    peaks, resident = {}, {}
    for name, seconds in (("minutes", 300), ("hour", 3600)):
        (tmp_path / name).mkdir()
        _write(tmp_path / name / f"{name}.flac", seconds)
        peaks[name], resident[name] = _extract(tmp_path / name, tmp_path / f"{name}-features")
    growth_mb = (peaks["hour"] - peaks["minutes"]) / 1024
    assert growth_mb < GROWTH_BOUND_MB, f"the hour peaked {growth_mb:.0f} MB above 5 minutes ({peaks})"

    out = str(tmp_path / "hour-features")
    manifest = read_manifest(out)
    assert manifest.counts["embedded"] == 1 and manifest.counts["failed"] == 0
    (record,) = [r for p in shard_paths(out, manifest) for r in read_records(p, manifest.outputs)]
    assert record.vectors["pool"].shape == (1506,) and np.isfinite(record.vectors["pool"]).all()
    print(json.dumps({"traced_peak_mb": {k: round(v / 1024) for k, v in peaks.items()},
                      "resident_peak_mb": {k: round(v / 1024) for k, v in resident.items()}}))
