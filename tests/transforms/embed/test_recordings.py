"""A recording's windows pooled back into its mean over patches: complete, incomplete, failed."""

import numpy as np

from transforms.embed.recordings import WindowPosition, pool_windows
from transforms.embed.retry import EmbeddingFailure


def _windows(patches_per_window, vectors):
    """Windows over ``vectors`` (one row per patch), each the sum of its patches, as the handler makes them."""
    out, first = [], 0
    for n in patches_per_window:
        last = first + n == len(vectors)
        out.append((WindowPosition(first, n, last), {"v": vectors[first:first + n].sum(axis=0)}))
        first += n
    return out


def test_the_mean_over_every_patch_whatever_the_windows_and_their_order():
    vectors = np.arange(7 * 3, dtype=np.float32).reshape(7, 3) ** 1.5
    for split in ([7], [3, 3, 1], [1, 1, 1, 1, 1, 1, 1], [5, 2]):
        windows = _windows(split, vectors)
        pooled = pool_windows(windows[::-1])
        np.testing.assert_allclose(pooled["v"], vectors.mean(axis=0), rtol=1e-6)
        assert pooled["v"].dtype == np.float32


def test_a_recording_missing_a_window_or_its_last_is_dropped():
    windows = _windows([2, 2, 2], np.ones((6, 2), np.float32))
    assert pool_windows(windows[:2]) is None          # decoding stopped before the last window
    assert pool_windows([windows[0], windows[2]]) is None  # a window in the middle never came
    assert pool_windows([]) is None


def test_a_window_the_backbone_failed_on_fails_its_recording_once():
    windows = _windows([2, 2, 2], np.ones((6, 2), np.float32))
    failure = EmbeddingFailure("ValueError", "bad window")
    windows[1] = (windows[1][0], failure)
    assert pool_windows(windows) == failure
    assert pool_windows(windows[:2]) is None  # incomplete: the decoder's failure says why, not this one
