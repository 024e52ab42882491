"""musicnn features are worth extracting: on a held-out split of real sampled instruments (eight General MIDI
families rendered by fluidsynth, ``tests/audio_data.py``), ``featurebeam extract --backbone musicnn_msd`` then
``featurebeam train`` beats what a user gets without us, 20 MFCCs' mean and spread over frames with scikit-learn's
logistic regression, by at least ten points of accuracy."""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import pytest

from pipeline.cli import main
from tests.audio_data import FAMILIES, render_instrument_task

PER_CLASS = 30       # clips of each of the eight families: 18 train, 6 validation, 6 test
MARGIN = 0.10        # the least the probe must beat the MFCC baseline by
RATE = 16000
N_MFCC = 20
CS = (0.01, 0.1, 1.0, 10.0, 100.0)
CHANCE = 1 / len(FAMILIES)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def instrument_task(tmp_path_factory):
    """The rendered task, once a session: (folder, [(path, label, split)])."""
    folder = tmp_path_factory.mktemp("instruments")
    return folder, render_instrument_task(str(folder), per_class=PER_CLASS, seed=0)


def mfcc_summary(path: str) -> np.ndarray:
    """The 40 numbers a user would reach for first: the mean and standard deviation over frames of 20 MFCCs of a
    64-band log-mel spectrogram (mono, 16 kHz, 32 ms frames every 16 ms, 0 to 8 kHz)."""
    import soundfile
    import soxr
    import tensorflow as tf

    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE, "HQ")
    power = tf.abs(tf.signal.stft(mono, frame_length=512, frame_step=256, fft_length=512)) ** 2
    mel = tf.signal.linear_to_mel_weight_matrix(64, 257, RATE, lower_edge_hertz=0.0, upper_edge_hertz=RATE / 2)
    mfcc = tf.signal.mfccs_from_log_mel_spectrograms(tf.math.log(power @ mel + 1e-6))[:, :N_MFCC].numpy()
    return np.concatenate([mfcc.mean(axis=0), mfcc.std(axis=0)])


def logistic_accuracy(x: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> tuple[float, float]:
    """(test accuracy, C) of scikit-learn's logistic regression on standardised ``x``: C the best of ``CS`` on the
    validation split, then refit on train and validation together (as ``featurebeam train`` refits)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(c, rows):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x[rows], labels[rows])

    train, val, test = (splits == "train"), (splits == "validation"), (splits == "test")
    best = max(CS, key=lambda c: (fit(c, train).score(x[val], labels[val]), -c))
    return float(fit(best, train | val).score(x[test], labels[test])), best


def mfcc_baseline(task: list[tuple[str, str, str]]) -> float:
    """The MFCC baseline's test accuracy on ``task``."""
    x = np.stack([mfcc_summary(path) for path, _, _ in task])
    labels, splits = (np.array([row[i] for row in task]) for i in (1, 2))
    return logistic_accuracy(x, labels, splits)[0]


def test_the_task_is_balanced_mixed_and_audible(instrument_task):
    """Every family has its fixed 60/20/20 split; the clips come in several formats and rates, 3.5 to 8 s long,
    none silent; the manifest says the same as the list."""
    import soundfile

    folder, task = instrument_task
    counts = collections.Counter((label, split) for _, label, split in task)
    assert counts == {(f, s): n for f in FAMILIES for s, n in (("train", 18), ("validation", 6), ("test", 6))}
    infos = [soundfile.info(path) for path, _, _ in task]
    assert {os.path.splitext(p)[1] for p, _, _ in task} == {".wav", ".flac", ".mp3"}
    assert {i.samplerate for i in infos} == {16000, 22050, 44100}
    assert all(3.4 < i.duration < 8.2 for i in infos)
    for path, _, _ in task[::17]:
        assert np.abs(soundfile.read(path)[0]).max() > 0.005
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert [(str(folder / r["uri"]), r["label"], r["split"]) for r in rows] == task


def test_the_mfcc_baseline_is_well_above_chance(instrument_task):
    accuracy = mfcc_baseline(instrument_task[1])
    print(json.dumps({"mfcc test accuracy": accuracy}))
    assert accuracy > 3 * CHANCE


def test_the_musicnn_probe_beats_mfcc_by_ten_points(instrument_task, tmp_path, capsys):
    folder, task = instrument_task
    features, model, raw_model = tmp_path / "features", tmp_path / "model", tmp_path / "raw model"
    assert main(["extract", "--input", str(folder / "manifest.jsonl"), "--backbone", "musicnn_msd", "--output",
                 str(features), "--quiet"]) == 0
    assert main(["train", "--features", str(features), "--output", str(model)]) == 0
    metrics = json.loads((model / "metrics.json").read_text())
    held_out = metrics["heads"]["linear"]["splits"]["split test"]
    assert held_out["examples"] == sum(split == "test" for _, _, split in task)
    probe, mfcc = held_out["accuracy"], mfcc_baseline(task)
    assert metrics["heads"]["linear"]["hyperparameters"]["features"].startswith("standardised")
    # the same probe on the raw features: `pool` holds max and mean pools of very different scales
    assert main(["train", "--features", str(features), "--output", str(raw_model), "--no-standardize"]) == 0
    raw_metrics = json.loads((raw_model / "metrics.json").read_text())["heads"]["linear"]
    raw = raw_metrics["splits"]["split test"]["accuracy"]
    print(json.dumps({"test accuracy": {"musicnn_msd probe": probe, "on raw features": raw, "mfcc": mfcc}}))
    assert raw_metrics["hyperparameters"]["features"] == "raw"
    assert mfcc > 3 * CHANCE
    assert probe >= mfcc + MARGIN, f"the musicnn probe scored {probe:.3f}, the MFCC baseline {mfcc:.3f}"
    assert probe > raw
