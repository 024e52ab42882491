"""Streamed audio decoding (libsndfile, soxr): an encoded file -> mono float32 windows of whole patches
(``decode_windows``), and ``DecodeAudioFn``, the Beam step over it; the mel spectrogram runs later, in the graph.

As the models were trained: the mean of the channels, soxr 'HQ' to the model's rate, centred STFT frames with
reflect padding of ``n_fft // 2`` (N samples give ``1 + N // hop`` frames), patches of ``patch_frames`` frames (the
last partial one dropped), a clip shorter than one patch repeated end to end first. Blocks are read, resampled by
one stream and cut into windows as they come: about one window and one block are held, whatever the length.
libsndfile never returns frames past the count a header declares: an MP3 or FLAC whose count stops well short of
its data (an MP3 without a Xing/Info header, whose length libsndfile estimates) is refused (``HeaderMismatch``),
not cut short; a smaller excess goes unread."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import soundfile
import soxr
from apache_beam.metrics import Metrics

from transforms.schema.elements import FAILED, METRICS_NAMESPACE, Failure, Record
from transforms.worker.process import WorkerDoFn

__all__ = ["AudioPreprocessing", "AudioWindow", "DecodeStats", "decode_windows", "DecodeAudioFn", "AudioError",
           "NotAudio", "UnsupportedAudio", "DamagedAudio", "TruncatedAudio", "HeaderMismatch", "EmptyAudio",
           "NonFiniteSamples", "AudioTooLong", "DEFAULT_MAX_AUDIO_SECONDS", "DEFAULT_PATCHES_PER_WINDOW"]

DEFAULT_MAX_AUDIO_SECONDS = 4 * 3600  # one record's longest decoded duration (--max-audio-seconds)
DEFAULT_PATCHES_PER_WINDOW = 16  # patches per window (48 s)
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000  # file rates accepted
BLOCK_SECONDS, BLOCK_VALUES = 2, 1 << 19  # input read per block, at most BLOCK_VALUES samples over all channels
_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count when the header does not give one
_SIZE_FIELD = re.compile(r"^\s*(data|SSND|riff|Riff size)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(ValueError):
    """The bytes are not audio this decoder accepts; the one-line message says what was found."""


class NotAudio(AudioError):
    """Not an audio file libsndfile knows (or no bytes at all)."""


class UnsupportedAudio(AudioError):
    """Audio, but at a sample rate outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE."""


class DamagedAudio(AudioError):
    """The decoder failed part-way through the data."""


class TruncatedAudio(DamagedAudio):
    """The file ends before the data its header declares."""


class HeaderMismatch(DamagedAudio):
    """Much more data follows the frames the header declares."""


class EmptyAudio(AudioError):
    """No samples at all."""


class NonFiniteSamples(AudioError):
    """NaN or infinite samples (float formats)."""


class AudioTooLong(AudioError):
    """Longer than the limit, by the header or while decoding."""


@dataclass(frozen=True)
class AudioPreprocessing:
    """An audio backbone's input side: rate, STFT and mel settings (the mel runs in the graph) and patch size."""

    sample_rate: int = 16000
    n_fft: int = 512
    hop: int = 256
    n_mels: int = 96
    fmin: float = 0.0
    fmax: float = 8000.0
    patch_frames: int = 187
    padding: str = "repeat"  # how a clip shorter than one patch is padded

    def describe(self) -> dict:
        return {**asdict(self), "mono": "mean of channels", "resampler": "soxr HQ",
                "frames": "centred, reflect padding", "log": "log10(10000 * float16(mel) + 1)",
                "record": "mean over its non-overlapping patches, a last partial patch dropped"}

    @property
    def patch_hop(self) -> int:  # samples between the starts of two patches
        return self.patch_frames * self.hop

    @property
    def patch_samples(self) -> int:  # samples one patch's frames read
        return (self.patch_frames - 1) * self.hop + self.n_fft

    @property
    def patch_seconds(self) -> float:
        return self.patch_hop / self.sample_rate


class AudioWindow(NamedTuple):
    """Consecutive patches of one recording: the reflect-padded signal from its first patch's first sample to its
    last patch's last (``n_patches * patch_hop + n_fft - hop`` samples); ``last``: no window follows."""

    samples: np.ndarray
    first_patch: int
    n_patches: int
    last: bool

    def patches(self, prep: AudioPreprocessing) -> np.ndarray:
        """(n_patches, patch_samples) float32: patch i is ``samples[i * patch_hop:][:patch_samples]``."""
        view = np.lib.stride_tricks.sliding_window_view(self.samples, prep.patch_samples)[::prep.patch_hop]
        return np.ascontiguousarray(view[:self.n_patches], dtype=np.float32)


@dataclass
class DecodeStats:
    """What decoding one recording found, filled in as it goes (for metrics and messages)."""

    format: str = ""
    sample_rate: int = 0
    channels: int = 0
    frames: int = 0  # decoded, at the file's rate
    padded: bool = False  # repeated to one patch
    silent: bool = True  # every sample exactly 0

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0

    @property
    def what(self) -> str:
        return f"{self.format}, {self.sample_rate} Hz, {self.channels} channel(s)"


def _libsndfile_says(error: Exception) -> str:
    return (str(getattr(error, "error_string", None) or error).strip().splitlines() or [repr(error)])[0].strip(" .")


def _check_header(f, stats: DecodeStats, max_seconds: float) -> None:
    """Refuse from the header alone: a rate out of range, data cut short of its declared size, too long, empty."""
    if not MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudio(f"sample rate outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz: {stats.what}")
    for name, declared, present in _SIZE_FIELD.findall(f.extra_info):
        if int(present) < int(declared) != 0xFFFFFFFF:  # 0xFFFFFFFF: written by a streaming writer, size unknown
            raise TruncatedAudio(f"truncated {stats.what}: its '{name}' chunk declares {declared} bytes, the file "
                                 f"holds {present}")
    if "lacks an end-of-stream bit" in f.extra_info:
        raise TruncatedAudio(f"truncated {stats.what}: the last Ogg page is not the end of the stream")
    if f.frames != _UNKNOWN_FRAMES and f.frames > max_seconds * f.samplerate:
        raise AudioTooLong(f"{stats.what} declares {f.frames / f.samplerate:.0f} s, over the limit of "
                           f"{max_seconds:g} s (--max-audio-seconds)")
    if f.frames == 0:
        raise EmptyAudio(f"no samples ({stats.what}, 0 frames)")


def _check_end(f, raw, size: int, stats: DecodeStats) -> None:
    """After the last block: fewer frames than declared, or (MP3, FLAC) much of the file left unread."""
    if f.frames != _UNKNOWN_FRAMES and stats.frames < f.frames:
        raise TruncatedAudio(f"truncated {stats.what}: its header declares {f.frames / f.samplerate:.2f} s, only "
                             f"{stats.seconds:.2f} s decode")
    unread = size - raw.tell()
    if f.format in ("MP3", "FLAC") and unread > max(4096, size // 20):
        raise HeaderMismatch(f"{stats.what}: its header declares {f.frames / f.samplerate:.2f} s but {unread} of its "
                             f"{size} bytes lie beyond them (a missing or wrong length header); refused, not cut")


def _mono_blocks(raw, max_seconds: float, stats: DecodeStats) -> Iterator[np.ndarray]:
    """A seekable binary file -> its samples in blocks, mono float32 at the file's own rate (``stats`` filled)."""
    size = raw.seek(0, io.SEEK_END) or raw.tell()
    raw.seek(0)
    try:
        f = soundfile.SoundFile(raw)
    except (RuntimeError, TypeError, ValueError) as e:
        raise NotAudio(f"not audio ({size} bytes): libsndfile says: {_libsndfile_says(e)}") from None
    with f:
        stats.format, stats.sample_rate, stats.channels = f"{f.format} {f.subtype}", f.samplerate, f.channels
        _check_header(f, stats, max_seconds)
        block = max(1, min(BLOCK_SECONDS * f.samplerate, BLOCK_VALUES // f.channels))
        while True:
            try:
                data = f.read(block, dtype="float32", always_2d=True)
            except RuntimeError as e:
                declared = "" if f.frames == _UNKNOWN_FRAMES else f" of the {f.frames / f.samplerate:.2f} s declared"
                raise DamagedAudio(f"damaged or truncated {stats.format} data after {stats.seconds:.2f} s{declared}: "
                                   f"libsndfile says: {_libsndfile_says(e)}") from None
            if not len(data):
                break
            if not np.isfinite(data).all():
                at = stats.frames + int(np.argmin(np.isfinite(data).all(axis=1)))
                raise NonFiniteSamples(f"NaN or infinite samples from {at / f.samplerate:.3f} s ({stats.format})")
            stats.frames += len(data)
            if stats.frames > max_seconds * f.samplerate:
                raise AudioTooLong(f"{stats.what} decodes to over the limit of {max_seconds:g} s (--max-audio-seconds)")
            stats.silent = stats.silent and not data.any()
            yield np.ascontiguousarray(data[:, 0] if f.channels == 1 else data.mean(axis=1, dtype=np.float32))
        _check_end(f, raw, size, stats)


def _resampled(blocks: Iterator[np.ndarray], stats: DecodeStats, rate: int) -> Iterator[np.ndarray]:
    """Mono blocks at the file's rate -> at ``rate``, through one soxr 'HQ' stream (as ``soxr.resample`` whole)."""
    stream = None
    for block in blocks:
        if stream is None and stats.sample_rate != rate:
            stream = soxr.ResampleStream(stats.sample_rate, rate, 1, dtype="float32", quality="HQ")
        yield block if stream is None else stream.resample_chunk(block)
    if stream is not None:
        yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


class _Framer:
    """Cuts a mono signal, pushed in chunks of any size, into windows of whole patches of its reflect-padded self;
    holds the padded signal from the next window's first sample (padded index ``start``) on."""

    def __init__(self, prep: AudioPreprocessing, patches_per_window: int):
        self.prep, self.per_window, self.parts = prep, patches_per_window, []
        self.seen = self.start = self.first = 0  # samples pushed; padded index of parts[0][0]; next patch out
        self.headed = False  # parts[0] is the start's reflection, x[n_fft // 2:0:-1]

    def push(self, x: np.ndarray) -> Iterator[AudioWindow]:
        self.parts.append(x)
        self.seen, half, prep = self.seen + len(x), self.prep.n_fft // 2, self.prep
        if not self.headed and self.seen > half:
            x = np.concatenate(self.parts)
            self.parts, self.headed = [x[half:0:-1], x], True
        # patch p exists once there are ((p + 1) * patch_frames - 1) * hop samples: while one follows this window
        while self.headed and self.seen >= ((self.first + self.per_window + 1) * prep.patch_frames - 1) * prep.hop:
            yield self.take(self.per_window, last=False)

    def take(self, n: int, last: bool) -> AudioWindow:
        """The window of the next ``n`` patches; what the windows after it need is kept."""
        buf = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        begin = self.first * self.prep.patch_hop - self.start
        end = begin + n * self.prep.patch_hop
        window = AudioWindow(buf[begin:end + self.prep.n_fft - self.prep.hop].copy(), self.first, n, last)
        self.parts, self.start, self.first = [buf[end:].copy()], self.start + end, self.first + n
        return window

    def finish(self) -> AudioWindow:
        """The last window, once the whole signal (``seen`` > 0 samples) has been pushed."""
        prep, n, half = self.prep, self.seen, self.prep.n_fft // 2
        if 1 + n // prep.hop < prep.patch_frames:  # shorter than one patch: repeated end to end
            x = np.concatenate(self.parts)[half if self.headed else 0:]
            x = np.tile(x, -(-(prep.patch_frames - 1) * prep.hop // n))[:(prep.patch_frames - 1) * prep.hop]
            return AudioWindow(np.pad(x, half, mode="reflect"), 0, 1, True)
        tail = self.parts[-1] if len(self.parts[-1]) > half + 1 else np.concatenate(self.parts)
        self.parts.append(tail[-half - 1:-1][::-1])
        return self.take((1 + n // prep.hop) // prep.patch_frames - self.first, last=True)


def decode_windows(source, prep: AudioPreprocessing, max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
                   patches_per_window: int = DEFAULT_PATCHES_PER_WINDOW, stats: DecodeStats | None = None
                   ) -> Iterator[AudioWindow]:
    """Encoded audio (``bytes``, or an object whose ``open()`` gives a seekable binary file) -> its windows of
    ``patches_per_window`` patches in order, each yielded as soon as it is complete; the final one has ``last``.
    Raises an ``AudioError`` subclass (possibly after some windows) for what is not acceptable audio; see the
    module docstring for frames beyond a header's count. ``stats``, when given, is filled in as decoding goes."""
    if patches_per_window < 1:
        raise ValueError(f"patches_per_window must be at least 1, not {patches_per_window}")
    if not isinstance(source, (bytes, bytearray, memoryview)) and not callable(getattr(source, "open", None)):
        raise NotAudio(f"not audio: a {type(source).__name__} payload")
    stats = DecodeStats() if stats is None else stats
    with io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source.open() as raw:
        framer = _Framer(prep, patches_per_window)
        for x in _resampled(_mono_blocks(raw, max_seconds, stats), stats, prep.sample_rate):
            yield from framer.push(x)
        if framer.seen == 0:
            raise EmptyAudio(f"no samples ({stats.what}, {stats.frames} frame(s) decoded)")
        stats.padded = 1 + framer.seen // prep.hop < prep.patch_frames
        yield framer.finish()


class DecodeAudioFn(WorkerDoFn):
    """Record with encoded audio -> ((key, label, split), AudioWindow) per window; a bad file goes to ``failed``
    (also after some of its windows went out: downstream drops records whose last window never came)."""

    def __init__(self, prep: AudioPreprocessing, max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
                 patches_per_window: int = DEFAULT_PATCHES_PER_WINDOW):
        self._prep, self._max_seconds, self._per_window = prep, max_seconds, patches_per_window
        self._counters = {name: Metrics.counter(METRICS_NAMESPACE, f"audio_{name}")
                          for name in ("records_decoded", "seconds_decoded", "records_padded", "records_silent")}

    def process(self, record: Record):
        stats, meta = DecodeStats(), (record.key, record.label, record.split)
        try:
            for window in decode_windows(record.payload, self._prep, self._max_seconds, self._per_window, stats):
                yield meta, window
        except Exception as e:  # a bad file is this record's failure, never the job's
            yield beam.pvalue.TaggedOutput(FAILED, Failure.from_exception(record.key, record.origin, "decode", e))
            return
        for name, count in (("records_decoded", 1), ("seconds_decoded", round(stats.seconds)),
                            ("records_padded", int(stats.padded)), ("records_silent", int(stats.silent))):
            self._counters[name].inc(count)
