"""Streamed audio decoding against the whole-signal computation, the bad files it refuses, and its DoFn."""

from __future__ import annotations

import io
import struct
import tracemalloc

import apache_beam as beam
import numpy as np
import pytest
import soundfile as sf
import soxr

from transforms.decode import audio
from transforms.decode.audio import AudioPreprocessing, AudioWindow, DecodeAudioFn, DecodeStats, decode_windows
from transforms.schema.elements import FAILED, Record

PREP = AudioPreprocessing()
ONE_PATCH = (PREP.patch_frames - 1) * PREP.hop  # 47616: the fewest samples that give one patch


def encode(x: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((int(seconds * rate), channels)) * 0.1).astype(np.float32)


def reference_patches(data: bytes, prep: AudioPreprocessing = PREP) -> np.ndarray:
    """The simple way, on the whole signal: mono mean, soxr HQ, repeat if short, reflect-pad, cut patches."""
    x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    x = x.mean(axis=1, dtype=np.float32)
    if rate != prep.sample_rate:
        x = soxr.resample(x, rate, prep.sample_rate, quality="HQ")
    if 1 + len(x) // prep.hop < prep.patch_frames:
        x = np.tile(x, -(-ONE_PATCH // len(x)))[:ONE_PATCH]
    padded = np.pad(x, prep.n_fft // 2, mode="reflect")
    n = (1 + len(x) // prep.hop) // prep.patch_frames
    return np.stack([padded[p * prep.patch_hop:p * prep.patch_hop + prep.patch_samples] for p in range(n)])


def decoded_patches(source, per_window: int = 2, **kwargs) -> tuple[np.ndarray, list[AudioWindow]]:
    windows = list(decode_windows(source, PREP, patches_per_window=per_window, **kwargs))
    return np.concatenate([w.patches(PREP) for w in windows]), windows


def check_windows(windows: list[AudioWindow], per_window: int, n_patches: int) -> None:
    """In order, contiguous, full but the last, and only the last one marked last."""
    assert [w.first_patch for w in windows] == list(range(0, n_patches, per_window))
    assert [w.n_patches for w in windows] == [min(per_window, n_patches - f) for f in range(0, n_patches, per_window)]
    assert [w.last for w in windows] == [False] * (len(windows) - 1) + [True]
    for w in windows:
        assert w.samples.dtype == np.float32 and w.samples.shape == (w.n_patches * PREP.patch_hop + 256,)


def test_preprocessing_geometry():
    assert (PREP.patch_hop, PREP.patch_samples) == (47872, 48128)
    assert PREP.patch_seconds == pytest.approx(2.992)
    described = PREP.describe()
    assert described["n_fft"] == 512 and described["padding"] == "repeat" and described["resampler"] == "soxr HQ"


@pytest.mark.parametrize("rate, channels, fmt, subtype", [
    (16000, 1, "WAV", "PCM_16"),
    (16000, 1, "WAV", "PCM_U8"),
    (16000, 2, "WAV", "PCM_24"),
    (16000, 6, "WAV", "PCM_32"),
    (16000, 1, "WAV", "FLOAT"),
    (16000, 2, "WAV", "DOUBLE"),
    (16000, 1, "FLAC", "PCM_16"),
    (16000, 2, "FLAC", "PCM_24"),
    (16000, 1, "OGG", "VORBIS"),
    (16000, 1, "MP3", "MPEG_LAYER_III"),
    (8000, 2, "WAV", "PCM_16"),
    (11025, 1, "FLAC", "PCM_16"),
    (22050, 2, "OGG", "VORBIS"),
    (44100, 2, "MP3", "MPEG_LAYER_III"),
    (44100, 6, "OGG", "VORBIS"),
    (48000, 2, "WAV", "FLOAT"),
    (48000, 1, "MP3", "MPEG_LAYER_III"),
    (96000, 2, "FLAC", "PCM_24"),
    (192000, 6, "WAV", "PCM_24"),
])
def test_windows_equal_the_whole_signal_reference(rate, channels, fmt, subtype):
    data = encode(noise(10.5, rate, channels), rate, fmt, subtype)  # 3 patches: windows of 2, then 1
    expected = reference_patches(data)
    got, windows = decoded_patches(data)
    check_windows(windows, 2, len(expected))
    if rate == PREP.sample_rate and fmt != "MP3":
        np.testing.assert_array_equal(got, expected)
    else:  # soxr streamed measured 0.0 from soxr whole; mpg123's MPEG-2 output (16, 22.05, 24 kHz) moves by an
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # ulp (6e-8) with how it is read


@pytest.mark.parametrize("n, patches", [
    (ONE_PATCH - 1, 1),          # one sample short of a patch: repeated
    (ONE_PATCH, 1),              # exactly one patch, not padded
    (ONE_PATCH + 255, 1),
    (2 * 47872 + 186 * 256 - 1, 2),  # one sample short of a third patch
    (2 * 47872 + 186 * 256, 3),      # exactly three
    (6 * 47872 + 186 * 256, 7),
    (6 * 47872 + 186 * 256 - 1, 6),  # windows of 3: the last window full, found at the end
])
@pytest.mark.parametrize("per_window", [1, 3])
def test_patch_boundaries(n, patches, per_window):
    data, stats = encode(noise(n / 16000, 16000, seed=n), 16000), DecodeStats()
    got, windows = decoded_patches(data, per_window, stats=stats)
    check_windows(windows, per_window, patches)
    np.testing.assert_array_equal(got, reference_patches(data))
    assert stats.padded == (n < ONE_PATCH) and stats.frames == n


@pytest.mark.parametrize("n", [1, 10, 256, 257, 5000, ONE_PATCH - 1])
def test_short_clips_are_repeated_to_one_patch(n):
    x = np.arange(1, n + 1, dtype=np.int16).reshape(-1, 1)
    stats = DecodeStats()
    (window,) = decode_windows(encode(x, 16000), PREP, stats=stats)
    tiled = np.tile(x[:, 0] / np.float32(32768), -(-ONE_PATCH // n))[:ONE_PATCH].astype(np.float32)
    np.testing.assert_array_equal(window.samples, np.pad(tiled, 256, mode="reflect"))
    assert (window.first_patch, window.n_patches, window.last, stats.padded) == (0, 1, True, True)


def test_a_longer_recording_streams_window_by_window():
    data = encode(noise(200, 44100, 2), 44100, "FLAC")
    expected_patches = (1 + 200 * 16000 // 256) // 187
    got, windows = decoded_patches(data, 16)
    check_windows(windows, 16, expected_patches)
    assert len(windows) == 5 and windows[-1].n_patches == expected_patches - 64
    np.testing.assert_allclose(got, reference_patches(data), rtol=0, atol=1e-6)


def test_silence_is_audio():
    stats = DecodeStats()
    windows = list(decode_windows(encode(np.zeros((5 * 44100, 2), np.float32), 44100), PREP, stats=stats))
    assert stats.silent and not stats.padded and not any(w.samples.any() for w in windows)
    assert stats.format == "WAV PCM_16" and stats.seconds == 5


class LazyFile:
    """A source opened only when asked, as the pipeline's readers give them."""

    def __init__(self, path):
        self.path, self.opened = path, 0

    def open(self):
        self.opened += 1
        return open(self.path, "rb")


def test_bytes_and_an_openable_source_give_the_same_windows(tmp_path):
    data = encode(noise(20, 48000, 2), 48000, "OGG", "VORBIS")
    (tmp_path / "a.ogg").write_bytes(data)
    source = LazyFile(tmp_path / "a.ogg")
    from_bytes = list(decode_windows(data, PREP, patches_per_window=3))
    from_file = list(decode_windows(source, PREP, patches_per_window=3))
    assert source.opened == 1 and len(from_bytes) == len(from_file) == 2
    for a, b in zip(from_bytes, from_file, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)
        assert a[1:] == b[1:]


def patch_flac_total(data: bytes, total: int) -> bytes:
    """STREAMINFO's 36-bit total-samples field (bytes 18..26 hold rate, channels, bits and it)."""
    field = struct.unpack(">Q", data[18:26])[0]
    return data[:18] + struct.pack(">Q", (field & ~((1 << 36) - 1)) | total) + data[26:]


def without_first_mp3_frame(data: bytes) -> bytes:
    """The MP3 without its first frame, the Xing/Info frame that gives libsndfile its exact length."""
    header = struct.unpack(">I", data[:4])[0]
    assert (header >> 19) & 3 == 3 and (header >> 17) & 3 == 1  # MPEG-1 layer III
    bitrate = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320][(header >> 12) & 15]
    length = 144 * bitrate * 1000 // [44100, 48000, 32000][(header >> 10) & 3] + ((header >> 9) & 1)
    assert b"Xing" in data[:length] or b"Info" in data[:length]
    return data[length:]


def _wav_data_size(data: bytes, size: int) -> bytes:
    at = data.index(b"data") + 4
    return data[:at] + struct.pack("<I", size) + data[at + 4:]


WAV = encode(noise(8, 16000), 16000)
FLAC = encode(noise(8, 16000), 16000, "FLAC")
MP3 = encode(noise(8, 44100, 2), 44100, "MP3", "MPEG_LAYER_III")
OGG = encode(noise(8, 16000), 16000, "OGG", "VORBIS")
NAN = noise(8, 16000)
NAN[20000] = np.nan
INF = noise(8, 16000)
INF[40000] = -np.inf


@pytest.mark.parametrize("data, error, reason", [
    (b"", audio.NotAudio, r"not audio \(0 bytes\): libsndfile says: Format not recognised"),
    (b"this is text, not sound\n" * 20, audio.NotAudio, "not audio .* Format not recognised"),
    ("some text", audio.NotAudio, "a str payload"),
    (WAV[:30], audio.NotAudio, "not audio"),
    (WAV[:len(WAV) // 2], audio.TruncatedAudio, "'data' chunk declares 256000 bytes, the file holds 127978"),
    (WAV[:44], audio.TruncatedAudio, "'data' chunk declares"),
    (_wav_data_size(WAV, 400000), audio.TruncatedAudio, "'data' chunk declares 400000 bytes"),
    (FLAC[:len(FLAC) // 2], audio.DamagedAudio, "damaged or truncated FLAC PCM_16 data after .* lost sync"),
    (patch_flac_total(FLAC, 200000), audio.DamagedAudio, r"after \d\.\d\d s of the 12\.50 s declared: .*psf_fseek"),
    (patch_flac_total(FLAC, 40000), audio.HeaderMismatch, "declares 2.50 s but .* bytes lie beyond"),
    (MP3[:len(MP3) // 2], audio.TruncatedAudio, "declares 8.00 s, only 3.9.* s decode"),
    (without_first_mp3_frame(MP3), audio.HeaderMismatch, "MP3 MPEG_LAYER_III, 44100 Hz, 2 channel.*lie beyond"),
    (OGG[:len(OGG) // 2], audio.TruncatedAudio, "last Ogg page is not the end"),
    (encode(np.zeros((0, 1), np.float32), 16000), audio.EmptyAudio, "no samples .*0 frames"),
    (encode(NAN, 16000, subtype="FLOAT"), audio.NonFiniteSamples, r"NaN or infinite samples from 1\.250 s"),
    (encode(INF, 16000, subtype="DOUBLE"), audio.NonFiniteSamples, r"from 2\.500 s \(WAV DOUBLE\)"),
    (encode(noise(1, 4000), 4000), audio.UnsupportedAudio, "outside 8000..192000 Hz: WAV PCM_16, 4000 Hz, 1 ch"),
    (encode(noise(1, 384000), 384000), audio.UnsupportedAudio, "sample rate outside .*: WAV PCM_16, 384000 Hz"),
], ids=["zero-bytes", "text", "str", "wav-cut-in-header", "wav-truncated", "wav-header-only", "wav-lying-size",
        "flac-truncated", "flac-declares-more", "flac-declares-less", "mp3-truncated", "mp3-without-xing",
        "ogg-truncated", "no-samples", "nan", "inf", "rate-too-low", "rate-too-high"])
def test_bad_files_raise_a_reason_a_person_understands(data, error, reason):
    with pytest.raises(error, match=reason) as caught:
        list(decode_windows(data, PREP))
    assert isinstance(caught.value, audio.AudioError) and "\n" not in str(caught.value)


def test_too_long_by_header_is_refused_before_decoding():
    stats = DecodeStats()
    with pytest.raises(audio.AudioTooLong, match="declares 8 s, over the limit of 5 s"):
        next(decode_windows(WAV, PREP, max_seconds=5, stats=stats))
    assert stats.frames == 0


def test_too_long_while_decoding_stops_decoding():
    stats = DecodeStats()  # total samples 0: the header does not say how long it is
    with pytest.raises(audio.AudioTooLong, match="FLAC PCM_16, 16000 Hz, 1 channel.* decodes to over the limit of 5 s"):
        list(decode_windows(patch_flac_total(FLAC, 0), PREP, max_seconds=5, stats=stats))
    assert 5 * 16000 < stats.frames <= 7 * 16000


def test_memory_stays_flat_for_an_hour_long_file(tmp_path):
    """1 h at 16 kHz is 230 MB of float32 decoded; what decoding holds stays under 30 MB (windows of 48 s are
    3 MB each)."""
    path, period = tmp_path / "hour.flac", np.arange(3200)
    pattern = (8000 * np.sin(2 * np.pi * period / 160) + 2000 * np.sin(2 * np.pi * period / 3200)).astype(np.int16)
    with sf.SoundFile(path, "w", 16000, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(3600 * 5):  # 0.2 s at a time
            f.write(pattern)
    expected = (1 + 3600 * 16000 // 256) // 187  # 1203 patches, in 76 windows
    source, seen = LazyFile(path), []
    tracemalloc.start()
    try:
        for window in decode_windows(source, PREP):
            seen.append((window.first_patch, window.n_patches, window.last))
            if window.first_patch == 32 * 16:  # patch 512 starts at sample 512 * 47872 - 256 of the signal
                start = (512 * 47872 - 256) % 3200
                np.testing.assert_array_equal(window.samples[:3200], np.roll(pattern, -start) / np.float32(32768))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30e6, f"peak {peak / 1e6:.1f} MB"
    assert [s[0] for s in seen] == list(range(0, expected, 16)) and seen[-1] == (1200, 3, True)


def test_decode_fn_yields_windows_with_their_record():
    data = encode(noise(10.5, 22050, 2), 22050)
    out = list(DecodeAudioFn(PREP, patches_per_window=2).process(Record("a.wav", data, "cat", "train")))
    assert [meta for meta, _ in out] == [("a.wav", "cat", "train")] * 2
    np.testing.assert_allclose(np.concatenate([w.patches(PREP) for _, w in out]), reference_patches(data),
                               rtol=0, atol=1e-6)


class Counter:
    def __init__(self):
        self.count = 0

    def inc(self, n=1):
        self.count += n


def test_decode_fn_counts_what_it_decoded():
    fn = DecodeAudioFn(PREP)
    fn._counters = {name: Counter() for name in fn._counters}
    for seconds in (1.4, 70):
        list(fn.process(Record("k", encode(np.zeros((int(seconds * 8000), 1), np.float32), 8000), None)))
    list(fn.process(Record("bad", b"not audio", None)))
    assert {name: c.count for name, c in fn._counters.items()} == {
        "records_decoded": 2, "seconds_decoded": 71, "records_padded": 1, "records_silent": 2}


def test_decode_fn_sends_a_bad_file_to_failed():
    (out,) = DecodeAudioFn(PREP).process(Record("k", b"not audio at all" * 10, None, source="shard-0.tar"))
    assert isinstance(out, beam.pvalue.TaggedOutput) and out.tag == FAILED
    assert (out.value.key, out.value.source, out.value.reason) == ("k", "shard-0.tar", "decode: NotAudio")
    assert "Format not recognised" in out.value.message


def test_decode_fn_fails_a_record_after_some_of_its_windows():
    data = encode(noise(30, 16000), 16000, "MP3", "MPEG_LAYER_III")
    out = list(DecodeAudioFn(PREP, patches_per_window=2).process(Record("k", data[:len(data) * 2 // 3], None)))
    assert all(isinstance(w, AudioWindow) for _, w in out[:-1]) and len(out) > 2
    assert out[-1].tag == FAILED and out[-1].value.reason == "decode: TruncatedAudio"
