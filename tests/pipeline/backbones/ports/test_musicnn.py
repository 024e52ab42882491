"""The embedded audio backbones musicnn_msd and musicnn_mtt reproduce the author's own TensorFlow 1 graphs
(reference in tests/data/musicnn_reference.npz, made by tests/data/make_musicnn_reference.py from the package's
checkpoints with librosa's front end): the network on the reference's log-mel patches at every layer, the in-graph
front end on the decoded samples, and the whole pipeline from the encoded files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile

from tests.conftest import DATA

MODELS = {"musicnn_msd": "MSD_musicnn", "musicnn_mtt": "MTT_musicnn"}
SEQUENCES = ("timbral", "temporal", "cnn1", "cnn2", "cnn3")
VECTORS = ("pool", "penultimate", "taggram")


@pytest.fixture(scope="module")
def reference():
    with np.load(os.path.join(DATA, "musicnn_reference.npz")) as d:
        return {k: d[k] for k in d.files}


def _close(ours, theirs, what, rel=1e-4):
    """Within ``rel`` of the reference's largest magnitude (REFERENCE.md's tolerance)."""
    error = np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-6)
    assert error <= rel, f"{what}: off by {error:.2e} of its scale"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_network_equals_the_authors_graph_at_every_layer_on_the_same_log_mel(name, reference):
    import keras

    from pipeline.backbones.ports.musicnn import LAYER_SHAPES, musicnn_network, read_checkpoint
    from pipeline.backbones.registry import resolve_backbone

    spec = resolve_backbone(name)
    weights = read_checkpoint(spec.read_asset("index"), spec.read_weights())
    logmel = keras.Input((187, 96))
    model = keras.Model(logmel, musicnn_network(weights, list(LAYER_SHAPES))(logmel))
    for clip in reference["clips"]:
        ours = {k: np.asarray(v) for k, v in model(reference[f"{clip}_logmel"], training=False).items()}
        prefix = f"{MODELS[name]}_{clip}"
        for layer in SEQUENCES:
            _close(ours[layer].mean(axis=1), reference[f"{prefix}_{layer}_mean"], f"{name} {clip} {layer} mean")
            _close(ours[layer].max(axis=1), reference[f"{prefix}_{layer}_max"], f"{name} {clip} {layer} max")
        for layer in VECTORS:
            _close(ours[layer], reference[f"{prefix}_{layer}"], f"{name} {clip} {layer}")
        np.testing.assert_allclose(ours["taggram"], reference[f"{prefix}_taggram"], atol=1e-5)


def test_the_graph_front_end_equals_librosa_on_the_decoded_samples(reference):
    """The 16 kHz clip needs no resampling: its samples, reflected at both ends and cut into patches as the decoder
    cuts them, through ``log_mel``, give librosa's float16-rounded log-mel: all but a few entries to float32
    rounding (a float16 rounding can fall the other way), none more than one float16 step apart."""
    import tensorflow as tf

    from pipeline.backbones.audio_input import log_mel
    from transforms.decode.audio import AudioPreprocessing

    prep = AudioPreprocessing()
    samples, rate = soundfile.read(os.path.join(DATA, "audio", "tone_mix_16k.wav"), dtype="float32")
    assert rate == 16000
    padded = np.pad(samples, prep.n_fft // 2, mode="reflect")
    expected = reference["tone_mix_16k_logmel"]
    patches = np.stack([padded[p * prep.patch_hop: p * prep.patch_hop + prep.patch_samples]
                        for p in range(len(expected))])
    ours = log_mel(prep)(tf.constant(patches)).numpy()
    assert ours.shape == expected.shape
    differ = np.abs(ours - expected) > 1e-6
    assert differ.mean() < 5e-3
    assert np.abs(ours - expected).max() < 5e-4  # one float16 step of the mel power, after log10(10000 x + 1)


def test_the_slaney_filter_bank_has_unit_area_triangles_up_to_fmax():
    from pipeline.backbones.audio_input import hz_to_mel, mel_to_hz, slaney_mel_matrix
    from transforms.decode.audio import AudioPreprocessing

    prep = AudioPreprocessing()
    mel = slaney_mel_matrix(prep)
    assert mel.shape == (257, 96) and mel.dtype == np.float32
    hz = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-9, atol=1e-9)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)
    assert not mel[-1].any()  # nothing above fmax (8 kHz is the last rfft bin's frequency)
    assert (mel.argmax(axis=0)[1:] >= mel.argmax(axis=0)[:-1]).all()  # bands rise with frequency


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_layer_through_the_pipeline_from_the_encoded_files_equals_the_authors_graph(name, reference, tmp_path):
    """A folder of wav / flac / mp3 in class folders, no other flag but the layers: each clip's vector is the mean
    over its 3-s patches of the author's graph on librosa's front end (frame-sequence layers averaged over each
    patch's frames by the default pooling, and with --pooling max their maximum), within 1e-4."""
    import shutil

    from pipeline.backbones.ports.musicnn import LAYER_SHAPES
    from pipeline.cli import main
    from transforms.schema.example import read_records
    from transforms.schema.manifest import read_manifest, shard_paths

    folder = tmp_path / "clips"
    for file, label in zip(reference["clip_files"], ("music", "music", "speech"), strict=True):
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(DATA, "audio", str(file)), folder / label / str(file))
    layers = [arg for layer in LAYER_SHAPES for arg in ("--layer", layer)]
    for pooling in ("avg", "max"):
        out = str(tmp_path / pooling)
        assert main(["extract", "--input", str(folder), "--backbone", name, *layers, "--pooling", pooling,
                     "--output", out, "--runner=FnApiRunner", "--quiet"]) == 0
        manifest = read_manifest(out)
        assert manifest.counts["embedded"] == 3 and manifest.counts["failed"] == 0
        assert manifest.backbone["modality"] == "audio"
        records = {os.path.basename(r.key): r for p in shard_paths(out, manifest)
                   for r in read_records(p, manifest.outputs)}
        for clip, file in zip(reference["clips"], reference["clip_files"], strict=True):
            record, prefix = records[str(file)], f"{MODELS[name]}_{clip}"
            assert record.label == ("speech" if clip == "speechlike_22k" else "music")
            for layer in SEQUENCES:
                expected = reference[f"{prefix}_{layer}_{'mean' if pooling == 'avg' else 'max'}"].mean(axis=0)
                _close(record.vectors[layer], expected, f"{name} {clip} {layer} {pooling}")
            for layer in VECTORS:
                _close(record.vectors[layer], reference[f"{prefix}_{layer}"].mean(axis=0), f"{name} {clip} {layer}")
