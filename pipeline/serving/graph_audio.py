"""An audio serving model's endpoints: a recording's samples cut into patches in the graph, as the decoder cuts them.

``transforms.decode.audio`` is the reference: the recording (mono, at the backbone's rate) shorter than one patch
is repeated end to end and cut to ``(patch_frames - 1) * hop`` samples; both ends are reflected by ``n_fft // 2``
samples (centred frames); patch p is ``patch_samples`` samples from ``p * patch_hop``, and a last partial patch is
dropped. The recording's vector is the mean of its patches' vectors.
"""

from __future__ import annotations

from collections.abc import Callable

from transforms.decode.audio import AudioPreprocessing

__all__ = ["patches_of", "audio_endpoints"]


def patches_of(samples, prep: AudioPreprocessing):
    """In-graph: (T,) float32 samples -> (P, ``prep.patch_samples``) patches, P >= 1 (T >= 2 samples)."""
    import tensorflow as tf

    shortest = (prep.patch_frames - 1) * prep.hop
    length = tf.shape(samples)[0]
    repeats = (shortest + length - 1) // length
    samples = tf.cond(length < shortest, lambda: tf.tile(samples, [repeats])[:shortest], lambda: samples)
    edge = prep.n_fft // 2
    padded = tf.pad(samples, [[edge, edge]], mode="REFLECT")
    return tf.signal.frame(padded, prep.patch_samples, prep.patch_hop)


def audio_endpoints(prep: AudioPreprocessing, vectors: Callable, classify_vectors: Callable,
                    dim: int) -> tuple[list, list]:
    """(resources to track, endpoints as (name, function, input signature)) of an audio model: ``vectors`` maps
    patches to their (P, dim) vectors, ``classify_vectors`` recordings' vectors to the head's outputs."""
    import tensorflow as tf

    def serve(samples):
        return classify_vectors(tf.reduce_mean(vectors(patches_of(samples, prep)), axis=0, keepdims=True))

    def classify_patches(patches, recording, recordings):
        return classify_vectors(tf.math.unsorted_segment_mean(vectors(patches), recording, recordings))

    def patch_vectors(patches):
        return {"vectors": vectors(patches)}

    patches = tf.TensorSpec([None, prep.patch_samples], tf.float32, name="patches")
    return [], [("serve", serve, [tf.TensorSpec([None], tf.float32, name="samples")]),
                ("classify_patches", classify_patches,
                 [patches, tf.TensorSpec([None], tf.int32, name="recording"),
                  tf.TensorSpec([], tf.int32, name="recordings")]),
                ("patch_vectors", patch_vectors, [patches]),
                ("classify_vectors", classify_vectors, [tf.TensorSpec([None, dim], tf.float32, name="vectors")])]
