"""The one way an audio backbone meets the pipeline: float samples in, the log-mel spectrogram made inside the graph.

Workers decode recordings to mono samples at the model's rate and cut them into patches
(``transforms.decode.audio``); everything after that is TensorFlow ops in the compiled function, so the serving
model takes raw samples too and no step of the front end can be skipped or done twice. The front end is librosa's
``melspectrogram`` as musicnn was trained with it:

- frames of ``n_fft`` samples every ``hop``, a periodic Hann window (``scipy.signal.get_window("hann", n_fft)``);
  the frames are already centred (the decoder reflects the recording's ends, as librosa's ``center=True`` with
  ``pad_mode="reflect"`` does), so a patch of ``patch_samples`` gives exactly ``patch_frames`` frames;
- the power spectrum through Slaney's mel filter bank (``slaney_mel_matrix``: librosa's ``htk=False``,
  ``norm="slaney"``);
- the power rounded through float16, then ``log10(10000 * x + 1)`` in float32 (the original stored the
  spectrogram as float16 and, under NumPy 1, took the logarithm in float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from transforms.decode.audio import AudioPreprocessing

__all__ = ["slaney_mel_matrix", "hann_window", "log_mel", "with_sample_input", "hz_to_mel", "mel_to_hz"]

_F_SP = 200.0 / 3          # Slaney's mel scale: linear below 1 kHz, 200/3 Hz per mel ...
_MIN_LOG_HZ = 1000.0       # ... logarithmic above
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``hz_to_mel(htk=False)``)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    return np.where(hz >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOG_STEP, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of ``hz_to_mel``."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


def slaney_mel_matrix(prep: AudioPreprocessing) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float32: triangular filters evenly spaced on Slaney's mel scale from ``fmin`` to
    ``fmax``, each scaled to unit area (2 / its width in Hz), as librosa ``filters.mel(norm="slaney")``."""
    bins = np.fft.rfftfreq(prep.n_fft, 1.0 / prep.sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(prep.fmin), hz_to_mel(prep.fmax), prep.n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T.astype(np.float32)


def hann_window(n_fft: int) -> np.ndarray:
    """The periodic Hann window (``scipy.signal.get_window("hann", n_fft, fftbins=True)``)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def log_mel(prep: AudioPreprocessing) -> Callable:
    """A function from (n, ``patch_samples``) float32 patches to their (n, ``patch_frames``, ``n_mels``) float32
    log-mel spectrograms, in TensorFlow ops."""
    import tensorflow as tf

    window = tf.constant(hann_window(prep.n_fft))
    mel = tf.constant(slaney_mel_matrix(prep))

    def spectrogram(samples):
        frames = tf.signal.frame(samples, prep.n_fft, prep.hop) * window
        spectrum = tf.signal.rfft(frames)
        power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
        mels = tf.cast(tf.cast(tf.einsum("ntf,fm->ntm", power, mel), tf.float16), tf.float32)
        return tf.math.log(10000.0 * mels + 1.0) / math.log(10.0)

    return spectrogram


def with_sample_input(prep: AudioPreprocessing, name: str, body: Callable):
    """A Keras model: float32 patches of ``prep.patch_samples`` samples -> ``log_mel`` -> ``body`` (log-mel
    patches -> ``{layer: activation}``)."""
    import keras

    samples = keras.Input((prep.patch_samples,), dtype="float32", name="samples")
    spectrogram = keras.layers.Lambda(log_mel(prep), name="log_mel")(samples)
    return keras.Model(samples, body(spectrogram), name=name)
