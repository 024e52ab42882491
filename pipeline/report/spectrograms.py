"""What a recording looks and sounds like, small: its first seconds as an audio backbone is fed them
(``first_seconds``), their log-mel spectrogram as a PNG (``spectrogram_png``) and the samples as a 16-bit WAV
(``wav_bytes``), each embeddable as a data URI.

The spectrogram is the model's own front end, in NumPy: frames of ``n_fft`` samples every ``hop`` through a periodic
Hann window (``pipeline.backbones.audio_input.hann_window``), the power spectrum through Slaney's mel filter bank
(``slaney_mel_matrix``), rounded through float16, then ``log10(10000 x + 1)``.
The image has one pixel row per mel band (low frequencies at the bottom) and one column per ``frames_per_pixel``
frames (their mean), its brightness scaled from 0 (silence) to the record's largest value, in a perceptual colormap.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from transforms.decode.audio import AudioPreprocessing, decode_windows

__all__ = ["PREVIEW_SECONDS", "FRAMES_PER_PIXEL", "COLORMAP", "LEVELS", "audio_preprocessing", "first_seconds",
           "log_mel_frames", "spectrogram_png", "wav_bytes", "png_data_uri", "wav_data_uri"]

PREVIEW_SECONDS = 10.0    # of each recording shown (spectrogram) and played (player)
FRAMES_PER_PIXEL = 3      # spectrogram frames per pixel column: 10 s at hop 256 and 16 kHz -> 209 px
COLORMAP = "magma"        # perceptual (uniform lightness ramp), dark for silence
LEVELS = 32               # brightness steps drawn: fewer compress better (a 10-s spectrogram: 5-10 KB)


def audio_preprocessing(described: dict | None) -> AudioPreprocessing:
    """The ``AudioPreprocessing`` a manifest's ``backbone.preprocessing`` describes (its defaults for what it
    does not name)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(AudioPreprocessing)}
    return AudioPreprocessing(**{k: v for k, v in (described or {}).items() if k in known})


def first_seconds(source, prep: AudioPreprocessing, seconds: float = PREVIEW_SECONDS) -> tuple[np.ndarray, int]:
    """The start of a recording (bytes, or an object with ``open()``) as the model is fed it, decoded by
    ``transforms.decode.audio.decode_windows``: (the reflect-padded mono float32 signal of its first whole
    patches, covering ``seconds`` or the whole recording, whichever is shorter; how many signal samples of it, at
    most ``seconds``, follow the ``n_fft // 2`` padded ones). Decoding stops after the first window, so a recording
    of any length costs about ``seconds``. Raises the decoder's ``AudioError`` for what is not acceptable audio."""
    per_window = max(1, math.ceil(seconds / prep.patch_seconds))
    windows = decode_windows(source, prep, math.inf, per_window)  # no length limit: only the start is read
    try:
        window = next(windows)
    finally:
        windows.close()
    signal = min(window.n_patches * prep.patch_hop, int(round(seconds * prep.sample_rate)))
    return window.samples, signal


def log_mel_frames(padded: np.ndarray, prep: AudioPreprocessing, frames: int | None = None) -> np.ndarray:
    """(frames, n_mels) float32: the log-mel spectrogram of a reflect-padded signal as the model computes it, of
    its first ``frames`` frames (every whole frame when None)."""
    from pipeline.backbones.audio_input import hann_window, slaney_mel_matrix

    padded = np.asarray(padded, np.float32)
    if len(padded) < prep.n_fft:
        return np.zeros((0, prep.n_mels), np.float32)
    view = np.lib.stride_tricks.sliding_window_view(padded, prep.n_fft)[::prep.hop]
    view = view if frames is None else view[:frames]
    spectrum = np.fft.rfft(view * hann_window(prep.n_fft), axis=1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
    mel = (power @ slaney_mel_matrix(prep)).astype(np.float16).astype(np.float32)
    return np.log10(np.float32(10000.0) * mel + np.float32(1.0)).astype(np.float32)


def _palette(name: str = COLORMAP) -> list[int]:
    """A matplotlib colormap as a 256-entry PIL palette, [r, g, b, r, g, b, ...]."""
    import matplotlib

    colours = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(colours * 255).astype(np.uint8).reshape(-1).tolist()


def spectrogram_png(log_mel: np.ndarray, frames_per_pixel: int = FRAMES_PER_PIXEL, colormap: str = COLORMAP,
                    levels: int = LEVELS) -> bytes:
    """A (frames, n_mels) log-mel spectrogram -> a PNG ``n_mels`` pixels high (the lowest band the bottom row) and
    ``ceil(frames / frames_per_pixel)`` wide (each column the mean of its frames), 0 the colormap's darkest colour
    and the spectrogram's largest value its brightest. A spectrogram of no frames is refused (ValueError)."""
    from PIL import Image

    log_mel = np.asarray(log_mel, np.float32)
    if log_mel.ndim != 2 or not len(log_mel):
        raise ValueError(f"a spectrogram of shape {log_mel.shape} has no frames to draw")
    columns = -(-len(log_mel) // frames_per_pixel)
    padded = np.full((columns * frames_per_pixel, log_mel.shape[1]), np.nan, np.float32)
    padded[:len(log_mel)] = log_mel
    pooled = np.nanmean(padded.reshape(columns, frames_per_pixel, -1), axis=1)
    finite = pooled[np.isfinite(pooled)]
    top = float(finite.max()) if finite.size else 0.0
    scaled = np.nan_to_num(pooled / top, nan=0.0, posinf=1.0, neginf=0.0) if top > 0 else np.zeros_like(pooled)
    steps = np.round(np.clip(scaled.T[::-1], 0.0, 1.0) * (levels - 1))
    pixels = np.round(steps * (255 / (levels - 1))).astype(np.uint8)
    image = Image.frombytes("P", (pixels.shape[1], pixels.shape[0]), np.ascontiguousarray(pixels).tobytes())
    image.putpalette(_palette(colormap))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float samples (full scale 1.0; beyond it clipped) -> a 16-bit PCM WAV file."""
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, np.clip(np.asarray(samples, np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16",
                    format="WAV")
    return out.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def wav_data_uri(wav: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav).decode("ascii")
