"""Writes the musicnn reference clips (``audio/``) and ``musicnn_reference.npz`` from the author's own TF graph.

The clips are synthetic and seeded (the same bytes on every run with the same libsndfile). The reference follows a
user of the original ``musicnn`` package: soundfile decode (float32), mean of channels, ``soxr`` 'HQ' resampling to
16 kHz (what ``librosa.load`` does in librosa >= 0.10, length fixed to ceil(N * 16000 / sr)), librosa's Slaney mel
power spectrogram (n_fft 512, hop 256, 96 bands, centred with reflect padding as in the author's librosa), rounded
through float16, ``log10(10000 * x + 1)`` in float32, non-overlapping 187-frame patches (last partial one dropped).
The patches go through the author's MetaGraph (``MSD_musicnn``, ``MTT_musicnn``) restored from the checkpoints,
one patch per run as in the author's extractor, with the is-training placeholder False.

Run in an environment of its own (never the project's; needs network access to the package registry)::

    python3 -m venv ref && ref/bin/pip install librosa soundfile soxr "tensorflow-cpu==2.21.*"
    ref/bin/pip install --no-deps musicnn==0.1.0
    ref/bin/python tests/data/make_musicnn_reference.py

Made with librosa 0.11.0, scipy 1.17.1, soundfile 0.14.0 (libsndfile 1.2.2), soxr 1.1.0, numpy 2.4.6 and
tensorflow-cpu 2.21.0.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SR, N_FFT, HOP, N_MELS, N_FRAMES = 16000, 512, 256, 96, 187
MODELS = ("MSD_musicnn", "MTT_musicnn")
TIME_SERIES = ("timbral", "temporal", "cnn1", "cnn2", "cnn3")
TENSORS = {
    "input": "model/Placeholder:0",
    "is_training": "model/Placeholder_2:0",
    "f74": "model/Squeeze:0", "f77": "model/Squeeze_1:0",
    "s1": "model/Squeeze_2:0", "s2": "model/Squeeze_3:0", "s3": "model/Squeeze_4:0",
    "frontend": "model/concat:0",
    "cnn1": "model/transpose:0", "cnn2": "model/Add:0", "cnn3": "model/Add_1:0",
    "midend": "model/concat_1:0",
    "max_pool": "model/Max:0", "mean_pool": "model/moments/Squeeze:0",
    "pool": "model/Flatten/flatten/Reshape:0",
    "penultimate": "model/batch_normalization_10/batchnorm/add_1:0",
    "logits": "model/dense_1/BiasAdd:0", "taggram": "model/Sigmoid:0",
}


def _envelope(n: int, sr: int, attack: float, release: float, decay: float) -> np.ndarray:
    """Attack ramp, exponential decay and release ramp over ``n`` samples."""
    t = np.arange(n) / sr
    env = np.exp(-t / decay) * np.minimum(1.0, t / attack)
    return env * np.minimum(1.0, (n - 1 - np.arange(n)) / (release * sr) + 1e-9)


def tone_mix(rng: np.random.Generator, sr: int = 16000, seconds: float = 7.0) -> np.ndarray:
    """Overlapping harmonic notes (1/k partials below 7.5 kHz) with envelopes and vibrato, plus a little noise."""
    t_all = np.arange(int(seconds * sr)) / sr
    y = np.zeros_like(t_all)
    notes = [(0.0, 1.6, 220.0), (0.8, 2.4, 277.18), (1.6, 3.6, 329.63), (3.0, 5.2, 440.0), (4.4, 7.0, 164.81),
             (5.5, 7.0, 554.37), (6.1, 6.9, 880.0)]
    for start, stop, f0 in notes:
        i0, i1 = int(start * sr), int(stop * sr)
        t = t_all[i0:i1] - start
        phase = 2 * np.pi * f0 * t + 0.006 * f0 / 5.5 * np.sin(2 * np.pi * 5.5 * t)  # 0.6 % vibrato at 5.5 Hz
        partials = sum(np.sin(k * phase) / k for k in range(1, 9) if k * f0 < 7500)
        y[i0:i1] += _envelope(i1 - i0, sr, 0.02, 0.05, 1.2) * partials
    y = 0.7 * y / np.abs(y).max()
    return y + 0.003 * rng.standard_normal(y.shape)


def chirp_stereo(rng: np.random.Generator, sr: int = 44100, seconds: float = 6.5) -> np.ndarray:
    """(N, 2): left a rising log chirp 80 Hz-12 kHz, right a falling linear chirp with a 3 Hz AM 1 kHz tone.

    White-noise bursts (0.3 s) at 1.0 s on the left and 3.7 s on the right; no steady noise (it would make the
    FLAC file several times larger).
    """
    from scipy.signal import chirp

    t = np.arange(int(seconds * sr)) / sr
    left = 0.4 * chirp(t, f0=80.0, t1=seconds, f1=12000.0, method="logarithmic")
    right = 0.3 * chirp(t, f0=5000.0, t1=seconds, f1=150.0, method="linear")
    right += 0.2 * (0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)) * np.sin(2 * np.pi * 1000.0 * t)
    y = np.stack([left, right], axis=1)
    for channel, start in ((0, 1.0), (1, 3.7)):
        i = int(start * sr)
        y[i:i + int(0.3 * sr), channel] += 0.02 * rng.standard_normal(int(0.3 * sr))
    return y


def _resonate(x: np.ndarray, sr: int, freq: float, bandwidth: float) -> np.ndarray:
    """``x`` through a two-pole resonator (one formant) at ``freq`` Hz with ``bandwidth`` Hz."""
    from scipy.signal import lfilter

    r = math.exp(-math.pi * bandwidth / sr)
    return lfilter([1.0 - r], [1.0, -2.0 * r * math.cos(2 * math.pi * freq / sr), r * r], x)


def speechlike(rng: np.random.Generator, sr: int = 22050, seconds: float = 3.5) -> np.ndarray:
    """Glottal-like pulse trains (f0 110-190 Hz) through vowel formants, 4 syllables/s, with noise bursts."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 150.0 + 40.0 * np.sin(2 * np.pi * 0.4 * t)
    pulses = np.diff(np.floor(np.cumsum(f0) / sr), prepend=0.0)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (660, 1720, 2410)]
    y = np.zeros(n)
    syllable = int(0.25 * sr)
    for index, start in enumerate(range(0, n, syllable)):
        stop = min(n, start + syllable)
        segment = pulses[start:stop]
        voiced = sum(_resonate(segment, sr, f, 60.0 + 0.05 * f) * g
                     for f, g in zip(vowels[index % len(vowels)], (1.0, 0.6, 0.3), strict=True))
        y[start:stop] = voiced * np.sin(np.pi * np.arange(stop - start) / (stop - start)) ** 2
        burst = rng.standard_normal(min(600, stop - start)) * 0.02
        y[start:start + burst.size] += np.diff(burst, prepend=0.0)
    return 0.6 * y / np.abs(y).max() + 0.002 * rng.standard_normal(n)


def write_clips(folder: Path) -> list[tuple[str, Path]]:
    """Writes the three reference clips; returns (clip name, path) pairs."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20190731)
    clips = [
        ("tone_mix_16k", "tone_mix_16k.wav", tone_mix(rng), 16000, "WAV", "PCM_16"),
        ("chirp_44k_stereo", "chirp_44k_stereo.flac", chirp_stereo(rng), 44100, "FLAC", "PCM_16"),
        ("speechlike_22k", "speechlike_22k.mp3", speechlike(rng), 22050, "MP3", "MPEG_LAYER_III"),
    ]
    for _, file_name, samples, sr, fmt, subtype in clips:
        sf.write(folder / file_name, samples.astype(np.float32), sr, format=fmt, subtype=subtype)
    return [(name, folder / file_name) for name, file_name, *_ in clips]


def load_16k(path: Path) -> np.ndarray:
    """Float32 mono 16 kHz samples as ``librosa.load(path, sr=16000)`` gives them (checked against it, 1e-6)."""
    import librosa
    import soundfile as sf
    import soxr

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    y = x.T.mean(axis=0)
    if sr != SR:
        y = librosa.util.fix_length(soxr.resample(y, sr, SR, quality="HQ"), size=math.ceil(x.shape[0] * SR / sr))
    y = np.ascontiguousarray(y, dtype=np.float32)
    expected, _ = librosa.load(path, sr=SR)  # MP3: libsndfile decodes 1 ulp apart when the stream is not seeked
    assert y.shape == expected.shape and np.abs(y - expected).max() <= 1e-6, f"{path.name}: not librosa.load's"
    return y


def log_mel_patches(y: np.ndarray, float16: bool = True) -> np.ndarray:
    """(n, 187, 96) float32 log-mel patches of 16 kHz samples, the author's way (partial last patch dropped)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=SR, hop_length=HOP, n_fft=N_FFT, n_mels=N_MELS, center=True,
                                         pad_mode="reflect").T
    if float16:
        mel = mel.astype(np.float16)
    log_mel = np.log10(10000 * mel.astype(np.float32) + 1)
    n = log_mel.shape[0] // N_FRAMES
    return np.ascontiguousarray(log_mel[: n * N_FRAMES].reshape(n, N_FRAMES, N_MELS), dtype=np.float32)


def restore_graph(folder: str):
    """A ``tf.compat.v1.Session`` on the author's MetaGraph (``_output_shapes`` removed), checkpoint restored."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString(Path(folder, ".meta").read_bytes())
    for node in meta.graph_def.node:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
    bools = [op.name for op in graph.get_operations() if op.type == "Placeholder" and op.get_attr("dtype") == tf.bool]
    assert bools == [TENSORS["is_training"][:-2]], bools
    runner = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        saver.restore(runner, folder + "/")
    return runner


def run_graph(runner, patches: np.ndarray, batch: int = 1) -> dict[str, np.ndarray]:
    """All named tensors for ``patches``, ``batch`` patches per run; timbral/temporal concatenated as models.py."""
    names = [k for k in TENSORS if k not in ("input", "is_training")]
    runs = []
    for start in range(0, patches.shape[0], batch):
        feed = {TENSORS["input"]: patches[start:start + batch], TENSORS["is_training"]: False}
        runs.append(runner.run([TENSORS[k] for k in names], feed_dict=feed))
    out = {k: np.concatenate([r[i] for r in runs]).astype(np.float32) for i, k in enumerate(names)}
    out["timbral"] = np.concatenate([out["f74"], out["f77"]], axis=2)
    out["temporal"] = np.concatenate([out["s1"], out["s2"], out["s3"]], axis=2)
    for k in ("cnn1", "cnn2", "cnn3", "midend", "max_pool", "mean_pool"):
        out[k] = out[k][..., 0]
    return out


def check_wiring(out: dict[str, np.ndarray]) -> None:
    """Asserts that the fetched tensors relate as models.py says (shapes, concatenations, pooling, sigmoid)."""
    n = out["taggram"].shape[0]
    shapes = {"timbral": (n, 187, 408), "temporal": (n, 187, 153), "cnn1": (n, 187, 64), "cnn3": (n, 187, 64),
              "max_pool": (n, 753), "mean_pool": (n, 753), "pool": (n, 1506), "penultimate": (n, 200)}
    assert all(out[k].shape == s for k, s in shapes.items()), {k: out[k].shape for k in shapes}
    midend = np.concatenate([out["timbral"], out["temporal"], out["cnn1"], out["cnn2"], out["cnn3"]], axis=2)
    assert np.array_equal(midend, out["midend"]) and np.array_equal(out["midend"].max(axis=1), out["max_pool"])
    assert np.array_equal(out["pool"][:, 0::2], out["max_pool"]) and np.array_equal(out["pool"][:, 1::2],
                                                                                     out["mean_pool"])
    assert np.allclose(out["mean_pool"], out["midend"].mean(axis=1, dtype=np.float64), atol=1e-5)
    assert np.allclose(out["taggram"], 1 / (1 + np.exp(-out["logits"].astype(np.float64))), atol=1e-6)


def summarise(prefix: str, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-patch arrays to store: frame mean and max of the time-series layers, and the pooled outputs."""
    arrays = {}
    for layer in TIME_SERIES:
        arrays[f"{prefix}_{layer}_mean"] = out[layer].mean(axis=1, dtype=np.float64).astype(np.float32)
        arrays[f"{prefix}_{layer}_max"] = out[layer].max(axis=1)
    for layer in ("pool", "penultimate", "logits", "taggram"):
        arrays[f"{prefix}_{layer}"] = out[layer]
    return arrays


def report(label: str, a: np.ndarray, b: np.ndarray) -> None:
    """Prints the largest absolute difference of two arrays."""
    print(f"  {label}: max |diff| {np.abs(a.astype(np.float64) - b).max():.3g}")


def sanity(runner, y: np.ndarray, patches: np.ndarray, out: dict[str, np.ndarray]) -> None:
    """Prints how much batching and the float16 rounding of the mel power move the outputs."""
    batched = run_graph(runner, patches, batch=64)
    for layer in ("cnn3", "penultimate", "taggram"):
        report(f"all patches in one run vs one per run: {layer}", batched[layer], out[layer])
    report("rerun, one per run: penultimate", run_graph(runner, patches)["penultimate"], out["penultimate"])
    no_f16 = log_mel_patches(y, float16=False)
    report("log-mel without the float16 rounding", no_f16, patches)
    plain = run_graph(runner, no_f16)
    for layer in ("cnn3", "penultimate", "taggram"):
        report(f"without the float16 rounding: {layer}", plain[layer], out[layer])


def main(out_path: Path, clip_folder: Path) -> None:
    """Writes the clips, runs both models on them and saves the reference arrays."""
    import musicnn
    from musicnn import configuration

    clips = write_clips(clip_folder)
    arrays: dict[str, np.ndarray] = {}
    inputs = {name: load_16k(path) for name, path in clips}
    for name, y in inputs.items():
        arrays[f"{name}_num_samples"] = np.int64(y.size)
        arrays[f"{name}_logmel"] = log_mel_patches(y)
        patches = len(arrays[f"{name}_logmel"])
        print(f"{name}: {y.size} samples at 16 kHz, {1 + y.size // HOP} frames, {patches} patches")
    outputs = {}
    for model in MODELS:
        runner = restore_graph(os.path.join(os.path.dirname(musicnn.__file__), model))
        tags = np.array(getattr(configuration, model[:3] + "_LABELS"))
        arrays[f"{model}_tags"] = tags
        for name, y in inputs.items():
            out = outputs[model, name] = run_graph(runner, arrays[f"{name}_logmel"])
            check_wiring(out)
            arrays.update(summarise(f"{model}_{name}", out))
            mean = out["taggram"].mean(axis=0)
            print(f"{model} {name} top-5: " + ", ".join(f"{tags[i]} {mean[i]:.3f}" for i in np.argsort(-mean)[:5]))
            sanity(runner, y, arrays[f"{name}_logmel"], out)
        runner.close()
    for name in inputs:
        for layer in ("timbral", "penultimate", "taggram"):
            a, b = outputs[MODELS[0], name][layer], outputs[MODELS[1], name][layer]
            assert np.abs(a - b).max() > 0.01, f"{name}: both models give the same {layer}"
            report(f"MSD vs MTT {layer}, {name}", a, b)
    arrays.update(clips=np.array([name for name, _ in clips]), clip_files=np.array([p.name for _, p in clips]),
                  models=np.array(MODELS), sample_rate=np.int64(SR), n_fft=np.int64(N_FFT),
                  hop_length=np.int64(HOP), n_mels=np.int64(N_MELS), n_frames=np.int64(N_FRAMES),
                  tensor_names=np.array([f"{k}={v}" for k, v in TENSORS.items()] + [
                      "timbral=concat(model/Squeeze:0, model/Squeeze_1:0; axis 2)",
                      "temporal=concat(model/Squeeze_2:0, model/Squeeze_3:0, model/Squeeze_4:0; axis 2)"]))
    np.savez_compressed(out_path, **arrays)
    print(f"wrote {out_path} ({out_path.stat().st_size} bytes), {len(arrays)} arrays")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "musicnn_reference.npz",
         Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "audio")
