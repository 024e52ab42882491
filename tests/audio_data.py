"""A labelled instrument-family task rendered offline: General MIDI melodies written here as standard MIDI files,
rendered through Debian's ``fluidsynth`` with the FluidR3 GM soundfont (sampled instruments), stored as WAV, FLAC
and MP3 at 16, 22.05 and 44.1 kHz, with a ``manifest.jsonl`` (``uri``, ``label``, ``split``) and a fixed split.

Eight classes, each a General MIDI instrument family played by several programs (so the task is the family's
timbre, not one sample set). Each clip is a seeded random melody: its own key, register within the family's range,
tempo, dynamics, articulation, note lengths, some chords; 3.5 to 8 seconds. Nothing is added to favour or defeat
any feature: the variation is what recordings of these instruments vary in.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["FAMILIES", "SOUNDFONT", "SPLITS", "Clip", "midi_file", "random_clip", "clip_events", "render_batch",
           "render_instrument_task", "fluidsynth_missing"]

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SPLITS = (("train", 0.6), ("validation", 0.2), ("test", 0.2))
RATES = (16000, 16000, 16000, 22050, 44100)   # drawn per clip: most at the models' rate, some resampled
FORMATS = ("wav", "wav", "wav", "flac", "mp3")  # drawn per clip
BATCH = 12      # clips rendered by one fluidsynth run, one after another (a run spends ~0.5 s loading the soundfont)
GAP_MS = 1500   # silence between two clips of a run: the reverb's tail dies out in it
# family -> (General MIDI programs, (lowest, highest) MIDI note of its usual range, most notes in a chord)
FAMILIES: dict[str, tuple[tuple[int, ...], tuple[int, int], int]] = {
    "piano": ((0, 1, 2, 3, 4, 5), (36, 96), 4),
    "organ": ((16, 17, 18, 19, 20), (36, 88), 4),
    "guitar": ((24, 25, 26, 27, 28, 29), (40, 81), 4),
    "bass": ((32, 33, 34, 35, 36, 37, 38), (28, 60), 2),
    "strings": ((40, 41, 42, 43, 44, 48, 49, 50, 51), (36, 91), 3),
    "brass": ((56, 57, 58, 59, 60, 61, 62, 63), (40, 82), 3),
    "reed": ((64, 65, 66, 67, 68, 69, 70, 71), (40, 88), 2),
    "pipe": ((72, 73, 74, 75, 76, 77, 78, 79), (60, 96), 2),
}
# the orchestral instruments' own ranges, inside which FluidR3 has samples (contrabass, tuba and baritone sax are
# silent above notes 57, 72 and 72)
PROGRAM_RANGES = {40: (55, 93), 41: (48, 84), 42: (36, 76), 43: (28, 57), 56: (54, 84), 57: (40, 72), 58: (28, 58),
                  60: (41, 77), 64: (56, 87), 65: (49, 81), 66: (44, 76), 67: (36, 69), 68: (58, 91), 69: (52, 81),
                  70: (34, 72), 71: (50, 91), 72: (74, 102), 73: (60, 96)}
_SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 3, 5, 7, 9, 10), (0, 2, 4, 7, 9))
_BEATS = np.array([0.25, 0.5, 0.5, 0.75, 1.0, 1.0, 1.5, 2.0])

Note = tuple[int, int, int, int]  # (start ms, length ms, MIDI note, velocity)


@dataclass(frozen=True)
class Clip:
    """One clip to render: a General MIDI program playing ``notes`` for ``ms``, stored at ``rate`` as ``fmt``."""

    name: str
    family: str
    program: int
    notes: tuple[Note, ...]
    ms: int
    rate: int
    fmt: str
    gain: float


def _varlen(n: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [n & 0x7F]
    while n > 0x7F:
        n >>= 7
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def midi_file(events: Sequence[tuple[int, int, bytes]]) -> bytes:
    """A format-0 standard MIDI file of ``events`` (time in ms, order among events at that time, message bytes),
    one tick a millisecond, ending with the last event."""
    tempo = bytes([0xFF, 0x51, 3]) + struct.pack(">I", 1000 * 1000)[1:]  # a beat a second, 1000 ticks a beat
    track, now = _varlen(0) + tempo, 0
    for ms, _, data in sorted(events, key=lambda e: (e[0], e[1])):
        track += _varlen(ms - now) + data
        now = ms
    track += _varlen(0) + bytes([0xFF, 0x2F, 0])
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000) + b"MTrk" + struct.pack(">I", len(track)) + track


def clip_events(clip: Clip, at: int) -> list[tuple[int, int, bytes]]:
    """``clip``'s messages on channel 0 from ``at`` ms: controllers reset, its program, its notes, and every sound
    cut at its end."""
    events = [(at, 0, bytes([0xB0, 121, 0])), (at, 1, bytes([0xC0, clip.program]))]
    for start, length, pitch, velocity in clip.notes:  # note-offs before note-ons at the same time
        events.append((at + min(start + length, clip.ms), 2, bytes([0x80, pitch, 0])))
        events.append((at + start, 3, bytes([0x90, pitch, velocity])))
    return events + [(at + clip.ms, 4, bytes([0xB0, 120, 0]))]


def _melody(rng: np.random.Generator, family: str, program: int, bpm: float, ms: int) -> list[Note]:
    """Notes of a random melody filling ``ms``: a scale in a random key, a walk of mostly small steps in a random
    register of the instrument's range, dynamics around a random level, articulation, rests and some chords."""
    _, family_range, chord_max = FAMILIES[family]
    low, high = PROGRAM_RANGES.get(program, family_range)
    scale = _SCALES[rng.integers(len(_SCALES))]
    key = int(rng.integers(12))
    pitches = [p for p in range(low, high + 1) if (p - key) % 12 in scale]
    span = min(len(pitches), int(rng.integers(6, 13)))  # the register: a window of the range
    first = int(rng.integers(0, len(pitches) - span + 1))
    register = pitches[first:first + span]
    level, articulation = rng.uniform(35, 120), rng.uniform(0.45, 1.0)
    chord_p = rng.uniform(0, 0.35) if chord_max > 1 else 0.0
    rest_p, beat = rng.uniform(0, 0.2), 60000 / bpm
    notes, t, at = [], 0, int(rng.integers(span))
    while t < ms:
        length = int(rng.choice(_BEATS) * beat)
        if rng.random() >= rest_p:
            at = int(np.clip(at + rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3, 4]), 0, span - 1))
            chord = [at] + ([at + 2, at - 2, at + 4][:int(rng.integers(1, chord_max))] if rng.random() < chord_p
                            else [])
            velocity = int(np.clip(rng.normal(level, 12), 10, 127))
            for step in sorted({s for s in chord if 0 <= s < span}):
                notes.append((t, max(30, int(length * articulation)), register[step], velocity))
        t += length
    return notes


def random_clip(rng: np.random.Generator, family: str, name: str) -> Clip:
    """A clip of ``family``: one of its programs, a melody of 3.5 to 8 s at 60 to 160 bpm, a storage rate, format
    and gain."""
    programs = FAMILIES[family][0]
    program = int(programs[rng.integers(len(programs))])
    ms, bpm = int(rng.uniform(3500, 8000)), float(rng.uniform(60, 160))
    notes = tuple(_melody(rng, family, program, bpm, ms))
    return Clip(name, family, program, notes, ms, int(rng.choice(RATES)), str(rng.choice(FORMATS)),
                float(np.exp(rng.uniform(np.log(0.25), np.log(1.0)))))


def fluidsynth_missing() -> str | None:
    """Why the task cannot be rendered here (None: it can)."""
    if shutil.which("fluidsynth") is None:
        return "fluidsynth is not installed (make test installs it: apt-get install fluidsynth fluid-soundfont-gm)"
    if not os.path.exists(SOUNDFONT):
        return f"{SOUNDFONT} is missing (apt-get install fluid-soundfont-gm)"
    return None


def _store(samples: np.ndarray, rate: int, stem: str, fmt: str) -> None:
    """Write float ``samples`` (frames, channels) as ``stem.fmt``: 16-bit WAV or FLAC, or MP3."""
    import soundfile

    if fmt == "mp3":
        soundfile.write(f"{stem}.mp3", samples, rate, format="MP3", subtype="MPEG_LAYER_III")
    else:
        soundfile.write(f"{stem}.{fmt}", samples, rate, format=fmt.upper(), subtype="PCM_16")


def render_batch(clips: Sequence[Clip], folder: str) -> list[str]:
    """Render ``clips`` (all of one rate) in one fluidsynth run, one after another with ``GAP_MS`` of silence
    between them, and store each cut out of it as ``folder/<family>/<name>.<fmt>``; their paths relative to
    ``folder``. A clip that came out silent is an error (a note outside its instrument's samples)."""
    import soundfile

    rate, starts, events = clips[0].rate, [], []
    for clip in clips:
        at = sum(c.ms + GAP_MS for c in clips[:len(starts)])
        starts.append(at)
        events += clip_events(clip, at)
    with tempfile.TemporaryDirectory() as scratch:
        midi, wav = os.path.join(scratch, "clips.mid"), os.path.join(scratch, "clips.wav")
        with open(midi, "wb") as f:
            f.write(midi_file(events))
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", "1", "-r", str(rate), "-z", "4096", "-T", "wav", "-O",
                        "float", "-F", wav, SOUNDFONT, midi], check=True, capture_output=True, timeout=120)
        audio, _ = soundfile.read(wav, dtype="float32", always_2d=True)
    paths = []
    for clip, at in zip(clips, starts, strict=True):
        first = round(at * rate / 1000)
        samples = clip.gain * audio[first:first + round(clip.ms * rate / 1000)]
        if np.abs(samples).max(initial=0) < 1e-4:
            raise RuntimeError(f"{clip.name} (program {clip.program}) rendered silent")
        os.makedirs(os.path.join(folder, clip.family), exist_ok=True)
        _store(np.clip(samples, -1, 1), rate, os.path.join(folder, clip.family, clip.name), clip.fmt)
        paths.append(f"{clip.family}/{clip.name}.{clip.fmt}")
    return paths


def _split_of(rng: np.random.Generator, n: int) -> list[str]:
    """A fixed split of ``n`` clips of one class: ``SPLITS``' shares, in a random order."""
    counts = [round(n * share) for _, share in SPLITS[1:]]
    names = ["train"] * (n - sum(counts)) + [s for (s, _), k in zip(SPLITS[1:], counts, strict=True) for _ in range(k)]
    return [names[i] for i in rng.permutation(n)]


def render_instrument_task(folder: str, per_class: int = 40, seed: int = 0,
                           workers: int | None = None) -> list[tuple[str, str, str]]:
    """Render ``per_class`` clips of every family into ``folder`` (class folders) and write ``manifest.jsonl``;
    the (path, label, split) of every clip. The same seed gives the same clips and split."""
    reason = fluidsynth_missing()
    if reason:
        raise RuntimeError(reason)
    rng = np.random.default_rng(seed)
    clips, splits = [], []
    for family in FAMILIES:
        clips += [random_clip(rng, family, f"{family}_{i:03d}") for i in range(per_class)]
        splits += _split_of(rng, per_class)
    order = sorted(range(len(clips)), key=lambda i: clips[i].rate)  # stable: batches independent of ``workers``
    batches = [[i for i in order if clips[i].rate == rate][k:k + BATCH] for rate in sorted(set(RATES))
               for k in range(0, len(clips), BATCH)]
    batches = [b for b in batches if b]
    rels = [""] * len(clips)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for batch, paths in zip(batches, pool.map(lambda b: render_batch([clips[i] for i in b], folder), batches),
                                strict=True):
            for i, path in zip(batch, paths, strict=True):
                rels[i] = path
    rows = [{"uri": rel, "label": c.family, "split": s} for rel, c, s in zip(rels, clips, splits, strict=True)]
    with open(os.path.join(folder, "manifest.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return [(os.path.join(folder, r["uri"]), r["label"], r["split"]) for r in rows]
