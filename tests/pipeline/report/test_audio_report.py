"""featurebeam report for audio feature sets: each shown recording as the log-mel spectrogram of its first seconds,
players for the first few of the class strips, reasons for what cannot be shown; checked on synthetic recordings,
on a page built from a hand-written feature set, and end to end (extract, train, report) in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import soundfile
from PIL import Image

from pipeline.backbones.audio_input import hz_to_mel, mel_to_hz
from pipeline.cli import main
from pipeline.report.audio_previews import audio_preview, audio_previews, round_robin, tar_members
from pipeline.report.page import build_report
from pipeline.report.spectrograms import (
    first_seconds,
    log_mel_frames,
    spectrogram_png,
    wav_bytes,
)
from tests.featuresets import write_feature_set
from tests.packing import tar_of
from tests.pipeline.report.pages import load_in_chromium, section, tile_keys
from transforms.decode.audio import AudioPreprocessing, decode_windows

PREP = AudioPreprocessing()
IN_PROCESS = ["--runner=FnApiRunner", "--quiet"]
SPECTROGRAM = re.compile(r'<figure class="tile" data-key="([^"]*)"[^>]*><img class="spectrogram" alt="[^"]*" '
                         r'src="data:image/png;base64,([^"]+)">')
PLAYER = re.compile(r'<audio class="player" controls preload="metadata" src="data:audio/wav;base64,([^"]+)">')


def tone(hz: float, seconds: float, rate: int = 16000, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.003, t.size)
    return (amplitude * np.sin(2 * np.pi * hz * t) + noise).astype(np.float32)


def encoded(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=fmt)
    return out.getvalue()


def png(data: str) -> Image.Image:
    """A PNG from its base64 text or data URI."""
    return Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[-1])))


def wav(data: str) -> tuple[np.ndarray, soundfile._SoundFileInfo]:
    """A WAV's samples and what soundfile says of it, from its base64 text or data URI."""
    raw = io.BytesIO(base64.b64decode(data.split(",", 1)[-1]))
    info = soundfile.info(raw)
    raw.seek(0)
    return soundfile.read(raw, dtype="float32")[0], info


def band_of(hz: float) -> int:
    """The mel band whose centre is nearest ``hz``."""
    centres = mel_to_hz(np.linspace(hz_to_mel(PREP.fmin), hz_to_mel(PREP.fmax), PREP.n_mels + 2))[1:-1]
    return int(np.argmin(np.abs(centres - hz)))


def test_a_1_khz_tone_lights_up_its_mel_band_in_the_spectrogram_and_its_image_row():
    padded, signal = first_seconds(encoded(tone(1000.0, 4.0)), PREP)
    assert signal == PREP.patch_hop  # 4 s hold one whole patch of 2.99 s
    frames = log_mel_frames(padded, PREP, -(-signal // PREP.hop))
    assert frames.shape == (PREP.patch_frames, PREP.n_mels) and frames.dtype == np.float32
    band = band_of(1000.0)
    assert int(np.argmax(frames.mean(axis=0))) == band == 31  # 1 kHz: 15 of the 45.2 mels up to 8 kHz
    image = Image.open(io.BytesIO(spectrogram_png(frames)))
    assert image.format == "PNG" and image.mode == "P" and image.size == (63, 96)  # 187 frames, 3 per column
    rows = np.asarray(image).astype(np.float64).mean(axis=1)
    assert int(np.argmax(rows)) == PREP.n_mels - 1 - band  # low frequencies at the bottom
    assert np.asarray(image).max() == 255 and np.asarray(image).min() == 0


def test_the_spectrogram_is_the_models_own_front_end():
    import tensorflow as tf

    from pipeline.backbones.audio_input import log_mel

    window = next(decode_windows(encoded(tone(440.0, 7.0) + tone(3000.0, 7.0, seed=1)), PREP, 3600, 2))
    ours = log_mel_frames(window.samples, PREP)
    graph = log_mel(PREP)(tf.constant(window.patches(PREP))).numpy().reshape(-1, PREP.n_mels)
    assert ours.shape == graph.shape == (2 * PREP.patch_frames, PREP.n_mels)
    np.testing.assert_allclose(ours, graph, atol=2e-3)


def test_the_player_holds_the_first_ten_seconds_as_16_bit_wav_that_decodes_back_to_the_same_samples():
    recording = encoded(tone(440.0, 25.0, rate=44100), 44100, "FLAC")
    preview = audio_preview("k", recording, PREP, player=True)
    samples, info = wav(preview.audio)
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
    assert len(samples) == 160_000  # 10 s of 16 kHz, cut from the first 4 whole patches
    window = next(decode_windows(recording, PREP, 3600, 4))
    expected = window.samples[PREP.n_fft // 2:][:160_000]
    assert np.abs(samples - expected).max() <= 1 / 32768
    assert png(preview.src).size == (209, 96)  # 625 frames of 10 s
    assert audio_preview("k", recording, PREP).audio is None  # a player only when asked for


class CountingFile:
    """Encoded audio behind ``open()``, counting the bytes libsndfile reads from it (by ``readinto``)."""

    def __init__(self, data: bytes):
        self.data, self.read = data, 0

    def open(self):
        outer = self

        class Reader(io.BytesIO):
            def readinto(self, buffer):
                n = super().readinto(buffer)
                outer.read += n
                return n

        return Reader(self.data)


def test_only_the_first_seconds_of_a_long_recording_are_read():
    recording = CountingFile(encoded(tone(300.0, 120.0)))  # 2 minutes, 3.8 MB
    preview = audio_preview("long", recording, PREP, player=True)
    assert len(wav(preview.audio)[0]) == 160_000 and png(preview.src).size == (209, 96)
    assert 0 < recording.read < 20 * 32000  # 20 s of 16-bit samples: the first window of 12 s and a block beyond


def test_wav_bytes_round_trip_within_16_bit_steps():
    x = np.random.default_rng(3).uniform(-1, 1, 5000).astype(np.float32)
    back, rate = soundfile.read(io.BytesIO(wav_bytes(x, 16000)), dtype="float32")
    assert rate == 16000 and np.abs(back - x).max() <= 1 / 32768


def test_a_recording_shorter_than_one_patch_is_shown_repeated_to_one_patch():
    preview = audio_preview("short", encoded(tone(200.0, 1.0)), PREP, player=True)
    samples, _ = wav(preview.audio)
    assert len(samples) == PREP.patch_hop and png(preview.src).size == (63, 96)
    assert np.abs(samples[16000:32000] - samples[:16000]).max() <= 1 / 32768  # the second second repeats the first


def test_silence_draws_a_dark_spectrogram():
    image = np.asarray(Image.open(io.BytesIO(spectrogram_png(np.zeros((10, 96), np.float32)))))
    assert image.shape == (96, 4) and (image == 0).all()
    with pytest.raises(ValueError, match="no frames"):
        spectrogram_png(np.zeros((0, 96), np.float32))


def test_recordings_that_cannot_be_shown_say_why_in_one_line(tmp_path):
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really")
    (tmp_path / "shard.tar").write_bytes(tar_of([("a.flac", encoded(tone(500.0, 3.5), fmt="FLAC")), ("a.cls", b"low")]))
    keys = [str(tmp_path / "noise.wav"), str(tmp_path / "missing.wav"), f"{tmp_path}/x.tfrecord#3",
            f"{tmp_path}/shard.tar#a.flac", f"{tmp_path}/shard.tar#b.flac", f"{tmp_path}/gone.tar#a.flac"]
    found = audio_previews(keys, PREP, players=[keys[3]])
    assert set(found) == set(keys) and all(p.kind == "spectrogram" for p in found.values())
    assert found[keys[0]].reason.startswith("cannot be decoded as audio (NotAudio: not audio (15 bytes)")
    assert found[keys[1]].reason.startswith("cannot be read (")
    assert found[keys[2]].reason == (f"a record inside {tmp_path}/x.tfrecord: not read for a spectrogram (loose "
                                     "files and tar members are)")
    assert found[keys[3]].src.startswith("data:image/png;base64,") and found[keys[3]].audio
    assert found[keys[4]].reason == f"no member b.flac in {tmp_path}/shard.tar"
    assert found[keys[5]].reason.startswith("its tar shard cannot be read (")
    assert all("\n" not in (p.reason or "") for p in found.values())
    assert tar_members(str(tmp_path / "shard.tar"), ["a.cls"]) == {"a.cls": b"low"}


def test_players_go_round_the_class_strips():
    assert round_robin([["a1", "a2", "a3"], ["b1"], ["c1", "c2"]], 5) == ["a1", "b1", "c1", "a2", "c2"]
    assert round_robin([["a1"]], 12) == ["a1"] and round_robin([], 3) == [] and round_robin([["a"]], 0) == []


@pytest.fixture
def audio_set(tmp_path):
    """A feature set written by hand whose keys name 3 classes x 3 recordings (3.5 to 12 s, WAV, FLAC, 44.1 kHz
    stereo), plus one file that is not audio; random features."""
    keys, labels = [], []
    for c, (label, hz) in enumerate((("bass", 110.0), ("mid", 880.0), ("treble", 3520.0))):
        for i in range(3):
            seconds, rate = (3.5, 16000) if i < 2 else (12.0, 44100)
            x = tone(hz, seconds, rate, seed=3 * c + i)
            x = np.stack([x, x], axis=1) if rate == 44100 else x
            path = tmp_path / f"{label}-{i}.{'wav' if i == 0 else 'flac'}"
            soundfile.write(str(path), x, rate)
            keys.append(str(path))
            labels.append(label)
    (tmp_path / "broken.wav").write_bytes(b"no sound here")
    keys.append(str(tmp_path / "broken.wav"))
    labels.append("mid")
    features = np.random.default_rng(0).normal(0, 1, (len(keys), 16)).astype(np.float32)
    backbone = {"name": "musicnn_msd", "modality": "audio", "preprocessing": PREP.describe()}
    write_feature_set(str(tmp_path / "fs"), keys, labels, features, backbone=backbone)
    return str(tmp_path / "fs"), keys


def test_an_audio_page_shows_spectrograms_players_and_reasons(audio_set, tmp_path):
    root, keys = audio_set
    text = build_report(root, max_players=4)
    assert "<th>modality</th><td>audio</td>" in text
    assert ("<th>audio input</th><td>mono, 16000 Hz, log-mel of 96 bands (0-8000 Hz, n_fft 512, hop 256), patches "
            "of 187 frames (2.99 s)</td>") in text
    strips = section(text, "classes")
    shown = SPECTROGRAM.findall(strips)
    assert len(tile_keys(strips)) == 10 and len(shown) == 9  # every recording but the broken one
    sizes = {key.rsplit("/", 1)[1]: png(data).size for key, data in shown}
    assert sizes == {f"{label}-{i}.{'wav' if i == 0 else 'flac'}": ((63, 96) if i < 2 else (209, 96))
                     for label in ("bass", "mid", "treble") for i in range(3)}  # 10 s of the 12
    assert 'data-key="' + keys[-1] + '"' in strips and "no spectrogram" in strips
    assert "cannot be decoded as audio (NotAudio: not audio (13 bytes)" in strips
    players = PLAYER.findall(text)
    assert len(players) == 4 and len(PLAYER.findall(strips)) == 4  # only in the class strips
    with_player = [k for k, _ in re.findall(r'data-key="([^"]*)"[^>]*><img class="spectrogram"[^>]*>(<audio)',
                                            strips)]
    assert [k.rsplit("/", 1)[1] for k in with_player] == ["bass-0.wav", "bass-1.flac", "mid-0.wav", "treble-0.wav"]
    for data in players:
        samples, info = wav(data)
        assert (info.samplerate, info.channels, len(samples)) == (16000, 1, PREP.patch_hop)
    neighbours = section(text, "neighbours")
    broken_there = neighbours.count(f'data-key="{keys[-1]}"')
    n = text.count('<img class="spectrogram"')
    assert len(tile_keys(neighbours)) == 36 and len(SPECTROGRAM.findall(neighbours)) == 36 - broken_there
    assert n == 9 + 36 - broken_there and f"This page embeds {n} spectrograms (log-mel PNG), at most 300" in text
    assert "4 recordings of the samples per class have a player" in text and "at most 4" in text

    page = tmp_path / "audio.html"
    page.write_text(text)
    body, console, dom = load_in_chromium(page, tmp_path)
    assert 'data-ready="ok"' in body and 'data-errors="0"' in body, body
    assert 'data-players="4"' in body and 'data-players-ready="ok"' in body, body
    assert f'data-thumbnails="{n}"' in body and console == []
    assert len(SPECTROGRAM.findall(dom)) == n


def _clip(path, label: str, i: int, seconds: float = 3.5) -> None:
    """A tone with harmonics and noise: "low" around 220 Hz, "high" around 1.76 kHz."""
    rng = np.random.default_rng(i + (100 if label == "high" else 0))
    hz = (220.0 if label == "low" else 1760.0) * (1 + 0.05 * rng.random())
    x = sum(tone(k * hz, seconds, seed=i) / k for k in (1, 2, 3)) + rng.normal(0, 0.01, int(seconds * 16000))
    soundfile.write(str(path), x.astype(np.float32), 16000)


def _extract(folder, rows: list[dict], output) -> None:
    """``featurebeam extract --backbone musicnn_msd`` of the recordings a manifest of ``rows`` names."""
    (folder / f"{output.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["extract", "--input", str(folder / f"{output.name}.jsonl"), "--backbone", "musicnn_msd",
                 "--output", str(output), *IN_PROCESS]) == 0


@pytest.mark.slow
def test_extract_train_and_report_an_audio_set_in_headless_chromium(tmp_path):
    train, test = [], []
    for label in ("low", "high"):
        for i in range(5):
            name = f"{label}-{i}.{'wav' if i % 2 else 'flac'}"
            _clip(tmp_path / name, label, i)
            (test if i == 4 else train).append({"uri": name, "label": label})
    _clip(tmp_path / "odd.wav", "high", 9)  # a high tone labelled low: the held-out set's mistake
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    train.append({"uri": "bad.wav", "label": "low"})
    test.append({"uri": "odd.wav", "label": "low"})
    features, held_out, model = tmp_path / "features", tmp_path / "held-out", tmp_path / "model"
    _extract(tmp_path, train, features)
    _extract(tmp_path, test, held_out)
    assert main(["train", "--features", str(features), "--test-features", str(held_out), "--output", str(model),
                 "--quiet"]) == 0
    page = tmp_path / "report.html"
    assert main(["report", str(features), "--model", str(model), "--html", str(page)]) == 0

    text = page.read_text()
    metrics = json.loads((model / "metrics.json").read_text())
    wrong = metrics["heads"]["linear"]["splits"]["test"]["misclassified"]
    assert [r["key"] for r in wrong["records"]] == [str(tmp_path / "odd.wav")]
    assert "<th>modality</th><td>audio</td>" in text and "http://" not in text and "https://" not in text
    strips, mistakes = section(text, "classes"), section(text, "misclassified")
    assert len(SPECTROGRAM.findall(strips)) == len(tile_keys(strips)) == 8  # bad.wav failed: no record
    assert [k for k, _ in SPECTROGRAM.findall(mistakes)] == [str(tmp_path / "odd.wav")]
    assert len(PLAYER.findall(strips)) == len(PLAYER.findall(text)) == 8  # within the 12 players
    failures = section(text, "failures")
    assert f'data-key="{tmp_path / "bad.wav"}"' in failures and "no spectrogram" in failures
    assert "cannot be decoded as audio (NotAudio: " in failures
    n = len(SPECTROGRAM.findall(text))
    assert n == 8 + 6 * 6 + 1 and f"This page embeds {n} spectrograms (log-mel PNG), at most 300" in text
    body, console, dom = load_in_chromium(page, tmp_path)
    assert 'data-ready="ok"' in body and 'data-errors="0"' in body, body
    assert 'data-players="8"' in body and 'data-players-ready="ok"' in body and f'data-thumbnails="{n}"' in body
    assert console == [] and len(SPECTROGRAM.findall(dom)) == n
