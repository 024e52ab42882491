"""Bad recordings through the whole extraction: each is a recorded failure with its reason, the good ones and the
silent one are embedded, and the counts add up."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from pipeline.cli import main
from transforms.schema.manifest import read_manifest

RATE = 16000


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.slow
def test_every_bad_recording_is_a_failure_with_its_reason_and_the_counts_add_up(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    soundfile.write(str(clips / "good.wav"), _tone(4.0), RATE)
    soundfile.write(str(clips / "short.flac"), _tone(1.0), RATE)                 # repeated to one patch
    soundfile.write(str(clips / "silent.wav"), np.zeros(RATE * 4, np.float32), RATE)
    soundfile.write(str(clips / "long.wav"), _tone(40.0), RATE)                  # over --max-audio-seconds 30
    nan = _tone(4.0)
    nan[1000] = np.nan
    soundfile.write(str(clips / "nan.wav"), nan, RATE, subtype="FLOAT")
    (clips / "not-audio.mp3").write_bytes(b"this is text, not an mp3 frame" * 40)
    (clips / "empty.wav").write_bytes(b"")
    soundfile.write(str(clips / "zero.wav"), np.zeros(0, np.float32), RATE)
    whole = (clips / "good.wav").read_bytes()
    (clips / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "features"
    assert main(["extract", "--input", str(clips), "--backbone", "musicnn_msd", "--max-audio-seconds", "30",
                 "--output", str(out), "--runner=FnApiRunner", "--quiet", "--max-failure-fraction", "1"]) == 0

    manifest = read_manifest(str(out))
    assert manifest.counts == {"inputs": 9, "embedded": 3, "failed": 6, "duplicates": 0}
    errors = {json.loads(line)["key"].rsplit("/", 1)[-1]: json.loads(line)
              for f in sorted((out / "errors").glob("*")) for line in f.read_text().splitlines() if line.strip()}
    assert {name: (e["stage"], e["error_type"]) for name, e in errors.items()} == {
        "long.wav": ("decode", "AudioTooLong"), "nan.wav": ("decode", "NonFiniteSamples"),
        "not-audio.mp3": ("decode", "NotAudio"), "empty.wav": ("decode", "NotAudio"),
        "zero.wav": ("decode", "EmptyAudio"), "truncated.wav": ("decode", "TruncatedAudio")}
    assert all(e["message"] and "\n" not in e["message"] for e in errors.values())
    assert sum(manifest.failures_by_reason.values()) == 6
