"""featurebeam's audio backbone against musicnn's own extractor as its users run it. (Not part of the test run.)

The same musicnn weights (``MSD_musicnn`` from ``musicnn==0.1.0``), the same clips, the same cores, side by side,
interleaved, several times; the features are the 1506-wide ``pool`` layer, averaged over a clip's 3-s patches:

- ``featurebeam``: ``featurebeam extract --backbone musicnn_msd`` with its defaults, from a folder of recordings
  to TFRecords;
- ``musicnn, as shipped``: what ``musicnn.extractor.extractor()`` does per file: ``librosa.load(path, sr=16000)``,
  ``librosa.feature.melspectrogram`` with its ``batch_data`` settings (the float16 step taken in float32, as under
  NumPy 1), patches of 187 frames without overlap; a new graph, session and checkpoint restore for every file,
  the patches fed one at a time (its ``BATCH_SIZE``). The package's own model code needs ``tf.compat.v1.layers``
  (gone in TensorFlow 2.21), so the author's graph is read from the checkpoint's ``.meta`` instead
  (``import_meta_graph``, with the ``_output_shapes`` attributes dropped); the vector is its
  ``model/Flatten/flatten/Reshape`` (the flattened max and mean pools), averaged over the patches;
- ``musicnn, warm``: the same, with the graph restored once in a session that serves every file, and each
  file's patches fed as one batch: the extractor called in a loop as well as it can be.

librosa and the second TensorFlow live in a virtualenv of their own, never in the project's: ``--baseline-venv``
names it (default: ``$MUSICNN_BASELINE_VENV``, else a folder in the user's cache), created there when missing
(``pip install librosa soundfile soxr tensorflow-cpu==2.21.* numpy`` and ``pip install --no-deps musicnn==0.1.0``
for the checkpoints); its python runs this same script to time the musicnn rows.

The clips are made here, the same on every run: 30-s pieces of harmonic notes over a little noise and a
percussive click, in four formats in turn (16 kHz mono WAV, 44.1 kHz stereo WAV, FLAC and MP3). Each method is
timed on ``2N`` clips and on the first ``N``: the marginal rate is ``N / (T_2N - T_N)``, so each process's
start-up cancels out; the whole-command rate is ``2N / T_2N``. Prints the medians, featurebeam's ratio to each,
the vectors' agreement (a clip's two vectors' smallest cosine), the CPU and the commands. Without a
``musicnn_msd`` backbone in this checkout only the musicnn rows are timed:

    python tests/benchmarks/bench_audio.py [--clips 40] [--repeats 3] [--baseline-venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from peer_venv import cached_venv, ensure_venv

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASELINE_PACKAGES = (["librosa", "soundfile", "soxr", "tensorflow-cpu==2.21.*", "numpy"],
                     ["--no-deps", "musicnn==0.1.0"])
FEATUREBEAM, SHIPPED, WARM = "featurebeam", "musicnn, as shipped", "musicnn, warm"
RUN_NAMES = {SHIPPED: "shipped", WARM: "warm"}
SECONDS, FRAMES, POOL = 30, 187, "model/Flatten/flatten/Reshape:0"
# (extension, sample rate, channels, subtype): the formats the clips take in turn
FORMATS = (("wav", 16000, 1, "PCM_16"), ("wav", 44100, 2, "PCM_16"), ("flac", 44100, 2, "PCM_16"),
           ("mp3", 44100, 2, None))


def synthesize(seed: int, sample_rate: int, channels: int) -> np.ndarray:
    """(samples, channels) float32: a chord of 3 decaying 5-harmonic tones every half second, clicks, noise."""
    rng = np.random.default_rng(seed)
    n, note = SECONDS * sample_rate, sample_rate // 2
    t = np.arange(note) / sample_rate
    envelope = np.minimum(t / 0.01, 1.0) * np.exp(-3.0 * t)
    voices = np.zeros(n)
    for start in range(0, n - note + 1, note):
        for midi in rng.integers(40, 80, size=3):
            f0 = 440.0 * 2 ** ((midi - 69) / 12)
            tone = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
            voices[start:start + note] += envelope * tone
    click = np.zeros(n)
    burst = rng.standard_normal(note // 8) * np.exp(-np.arange(note // 8) / (sample_rate * 0.01))
    for start in range(0, n - burst.size, note):
        click[start:start + burst.size] += burst
    noise = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same")
    mixes = [voices + (0.6 + 0.2 * c) * click + 0.1 * noise for c in range(channels)]
    audio = np.stack(mixes, axis=1)
    return (0.8 * audio / np.abs(audio).max()).astype(np.float32)


def make_clips(folder: str, n: int) -> list[str]:
    """``n`` clips in ``folder`` (clip i is always the same file), the formats in turn; their paths."""
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        extension, sample_rate, channels, subtype = FORMATS[i % len(FORMATS)]
        path = os.path.join(folder, f"clip{i:04d}.{extension}")
        sf.write(path, synthesize(i, sample_rate, channels), sample_rate, subtype=subtype,
                 format="MP3" if extension == "mp3" else None)
        paths.append(path)
    return paths


def musicnn_patches(path: str) -> np.ndarray:
    """(patches, 187, 96) float32: ``musicnn.extractor.batch_data`` of one file without overlap, the float16
    rounding then ``log10`` in float32 (NumPy 1's promotion)."""
    import librosa

    audio, sr = librosa.load(path, sr=16000)
    mel = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=256, n_fft=512, n_mels=96).T
    spectrogram = np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1)
    starts = range(0, spectrogram.shape[0] - FRAMES + 1, FRAMES)
    return np.stack([spectrogram[s:s + FRAMES] for s in starts])


def restore_musicnn(folder: str):
    """A session holding the author's graph (``.meta``, without ``_output_shapes``) and its trained weights."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    with open(os.path.join(folder, ".meta"), "rb") as f:
        meta.ParseFromString(f.read())
    for node in meta.graph_def.node:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta)
        session = tf.compat.v1.Session(graph=graph)
        saver.restore(session, folder + os.sep)
    return session


def pool_vector(session, patches: np.ndarray, batch: int) -> np.ndarray:
    """The ``pool`` activations of ``patches``, fed ``batch`` at a time, averaged over the patches."""
    feeds = {"model/Placeholder_2:0": False}
    pools = [session.run(POOL, feed_dict={**feeds, "model/Placeholder:0": patches[i:i + batch]})
             for i in range(0, len(patches), batch)]
    return np.concatenate(pools).mean(axis=0)


def run_musicnn(mode: str, clips: str, output: str) -> None:
    """In the baseline virtualenv: every clip's vector, ``shipped`` (a graph and session per file, one patch a
    run) or ``warm`` (one session, a file's patches in one run); saved as ``vectors.npy`` and ``names.json``."""
    import importlib.util

    from musicnn import configuration

    folder = os.path.join(os.path.dirname(importlib.util.find_spec("musicnn").origin), "MSD_musicnn")
    names = sorted(os.listdir(clips))
    session = restore_musicnn(folder) if mode == "warm" else None
    vectors = []
    for name in names:
        patches = musicnn_patches(os.path.join(clips, name))
        if mode == "warm":
            vectors.append(pool_vector(session, patches, len(patches)))
        else:
            fresh = restore_musicnn(folder)
            vectors.append(pool_vector(fresh, patches, configuration.BATCH_SIZE))
            fresh.close()
    os.makedirs(output, exist_ok=True)
    np.save(os.path.join(output, "vectors.npy"), np.stack(vectors))
    with open(os.path.join(output, "names.json"), "w") as f:
        json.dump(names, f)


def featurebeam_has_musicnn() -> bool:
    """Whether this checkout's featurebeam knows the ``musicnn_msd`` backbone (else only musicnn is timed)."""
    check = [sys.executable, "-m", "pipeline", "layers", "--backbone", "musicnn_msd"]
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(check, env=env, capture_output=True).returncode == 0


def command(method: str, clips: str, output: str, baseline_python: str) -> list[str]:
    """The command line of a method."""
    if method == FEATUREBEAM:
        return [sys.executable, "-m", "pipeline", "extract", "--input", clips, "--backbone", "musicnn_msd",
                "--output", output, "--overwrite", "--quiet"]
    return [baseline_python, os.path.abspath(__file__), "--run", RUN_NAMES[method], "--clips-dir", clips,
            "--output", output]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run (the CPU of every process it started and waited for)."""
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start, cpu = time.monotonic(), _children_cpu()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr[-3000:]}")
    return time.monotonic() - start, _children_cpu() - cpu


def featurebeam_vectors(root: str) -> dict[str, np.ndarray]:
    """File name -> the ``pool`` vector featurebeam wrote for it."""
    from transforms.schema.manifest import read_manifest, read_shard, shard_paths

    manifest = read_manifest(root)
    return {os.path.basename(record.key.split("#", 1)[0]): record.vectors["pool"]
            for shard in shard_paths(root, manifest) for record in read_shard(shard, manifest.outputs)}


def agreement(ours: dict[str, np.ndarray], baseline_out: str) -> float:
    """The smallest cosine between a clip's two vectors (NaN when a clip is missing from ``ours``)."""
    with open(os.path.join(baseline_out, "names.json")) as f:
        theirs = dict(zip(json.load(f), np.load(os.path.join(baseline_out, "vectors.npy")), strict=True))
    if set(theirs) - set(ours):
        return float("nan")
    return min(float(ours[n] @ v / np.linalg.norm(ours[n]) / np.linalg.norm(v)) for n, v in theirs.items())


def cpu_model() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((" ".join(line.split()) for line in lines if line.startswith("Model name")), "unknown CPU")


def report(methods: list[str], rates: dict, args, cosines: dict[str, float], commands: dict[str, str]) -> None:
    """The markdown table of medians, the machine and the commands."""
    median = {m: {k: statistics.median(v) for k, v in rates[m].items()} for m in methods}
    print(f"\n{2 * args.clips} clips of {SECONDS} s (and the first {args.clips}), musicnn_msd `pool` (1506), "
          f"{os.cpu_count()} cores (lscpu: {cpu_model()}), median of {args.repeats} runs each:\n")
    print("| method | clips/s marginal | featurebeam / this | clips/s whole command | featurebeam / this "
          "| clips per CPU-s marginal | smallest cosine to featurebeam |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    fb = median.get(FEATUREBEAM)
    for m in methods:
        r = median[m]
        ratio = {k: f"{fb[k] / r[k]:.2f}" if fb else "" for k in r}
        cosine = f"{cosines[m]:.6f}" if m in cosines else ""
        print(f"| {m} | {r['marginal']:.2f} | {ratio['marginal']} | {r['whole']:.2f} | {ratio['whole']} "
              f"| {r['cpu']:.2f} | {cosine} |")
    print("\nCommands (CLIPS: the clip folder, OUT: a fresh folder):\n")
    for m in methods:
        print(f"    {m}: {commands[m]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=40, help="N: timed on 2N clips and on N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-venv", default=cached_venv("bench-musicnn", "MUSICNN_BASELINE_VENV"),
                        help="virtualenv with librosa and musicnn (created when missing; default: %(default)s)")
    parser.add_argument("--run", choices=sorted(RUN_NAMES.values()), help=argparse.SUPPRESS)
    parser.add_argument("--clips-dir", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_musicnn(args.run, args.clips_dir, args.output)
        return

    sys.path.insert(0, REPO)
    baseline_python = ensure_venv(os.path.abspath(args.baseline_venv), BASELINE_PACKAGES,
                                  "librosa, soundfile, tensorflow, musicnn.configuration", "musicnn")
    methods = [FEATUREBEAM, WARM, SHIPPED] if featurebeam_has_musicnn() else [WARM, SHIPPED]
    if FEATUREBEAM not in methods:
        print("featurebeam has no musicnn_msd backbone here: timing musicnn alone", flush=True)
    with tempfile.TemporaryDirectory(prefix="featurebeam-audio-") as tmp:
        full, half = os.path.join(tmp, "all"), os.path.join(tmp, "half")
        paths = make_clips(full, 2 * args.clips)
        os.makedirs(half)
        for path in paths[:args.clips]:
            shutil.copyfile(path, os.path.join(half, os.path.basename(path)))
        rates = {m: {"marginal": [], "whole": [], "cpu": []} for m in methods}
        for r in range(args.repeats):
            for i, m in enumerate(methods):
                t_full, cpu_full = _time(command(m, full, os.path.join(tmp, f"out-{i}-{r}-all"), baseline_python))
                t_half, cpu_half = _time(command(m, half, os.path.join(tmp, f"out-{i}-{r}-half"), baseline_python))
                rates[m]["marginal"].append(args.clips / (t_full - t_half))
                rates[m]["whole"].append(2 * args.clips / t_full)
                rates[m]["cpu"].append(args.clips / (cpu_full - cpu_half))
                print(f"run {r + 1}: {m:20s} {rates[m]['marginal'][-1]:6.2f} clips/s, {rates[m]['cpu'][-1]:5.2f} "
                      f"clips/CPU-s marginal ({2 * args.clips} clips {t_full:.1f} s, {args.clips} clips "
                      f"{t_half:.1f} s; load {os.getloadavg()[0]:.1f})", flush=True)
        cosines = {}
        if FEATUREBEAM in methods:
            ours = featurebeam_vectors(os.path.join(tmp, "out-0-0-all"))
            cosines = {m: agreement(ours, os.path.join(tmp, f"out-{i}-0-all")) for i, m in enumerate(methods) if i}
    commands = {m: shlex.join(command(m, "CLIPS", "OUT", baseline_python)) for m in methods}
    report(methods, rates, args, cosines, commands)


if __name__ == "__main__":
    main()
