"""A model file's layers are read once per content: a later launch with the same bytes takes them from the layer
cache without loading the model; other bytes, or a damaged entry, load it again."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.backbones.registry import resolve_backbone
from pipeline.backbones.spec import BackboneUnavailableError
from pipeline.backbones.user_models import keras_models, layer_cache


def _save(path, filters: int) -> str:
    import keras

    inputs = keras.Input((24, 24, 3), name="pixels")
    x = keras.layers.Conv2D(filters, 3, strides=2, activation="relu", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x)).save(path)
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(layer_cache.CACHE_VARIABLE, str(tmp_path / "cache"))
    return tmp_path / "cache" / "model-files"


@pytest.fixture
def loads(monkeypatch):
    """How many times a model file was loaded."""
    calls = []
    real = keras_models.load_model_file
    monkeypatch.setattr(keras_models, "load_model_file", lambda path: calls.append(path) or real(path))
    return calls


def test_the_second_launch_takes_the_layers_from_the_cache_without_loading(tmp_path, cache, loads):
    path = _save(tmp_path / "m.keras", 8)
    first = resolve_backbone(path)
    assert len(loads) == 1 and [p.name for p in cache.iterdir()] == [f"{first.weights_sha256}.json"]
    again = resolve_backbone(path, preprocessing="torch", fold_batchnorm=False)
    assert len(loads) == 1  # not loaded again
    assert again.layer_shapes == first.layer_shapes == {"pixels": (24, 24, 3), "conv": (11, 11, 8),
                                                       "bn": (11, 11, 8), "pool": (8,)}
    assert list(again.layer_shapes) == list(first.layer_shapes)  # in model order
    assert (again.default_layer, again.candidates) == (first.default_layer, first.candidates) == ("bn", ("bn", "pool"))
    assert again.preprocessing.crop == 24 and again.preprocessing.mean == (0.485, 0.456, 0.406)
    assert again.options["fold_batchnorm"] is False and again.weights_sha256 == first.weights_sha256


def test_other_bytes_or_a_damaged_entry_load_the_model_again(tmp_path, cache, loads):
    path = _save(tmp_path / "m.keras", 8)
    first = resolve_backbone(path)
    _save(tmp_path / "m.keras", 4)  # the same name, other weights and layers
    second = resolve_backbone(path)
    assert len(loads) == 2 and second.layer_shapes["conv"] == (11, 11, 4)
    assert second.weights_sha256 != first.weights_sha256
    entry = cache / f"{second.weights_sha256}.json"
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "format": layer_cache.FORMAT + 1}))
    assert resolve_backbone(path).layer_shapes == second.layer_shapes and len(loads) == 3
    entry.write_text("{not json")
    assert resolve_backbone(path).layer_shapes == second.layer_shapes and len(loads) == 4
    assert json.loads(entry.read_text())["format"] == layer_cache.FORMAT  # written again


def test_a_refused_model_is_never_cached_and_an_unwritable_cache_is_no_cache(tmp_path, cache, loads, monkeypatch):
    import keras

    inputs = keras.Input((24, 16, 3))
    keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs)).save(tmp_path / "wide.keras")
    for _ in range(2):
        with pytest.raises(BackboneUnavailableError, match=r"takes input \(None, 24, 16, 3\)"):
            resolve_backbone(str(tmp_path / "wide.keras"))
    assert len(loads) == 2 and not cache.exists()
    with pytest.raises(BackboneUnavailableError, match="does not exist"):
        resolve_backbone(str(tmp_path / "missing.keras"))

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv(layer_cache.CACHE_VARIABLE, str(blocked))
    path = _save(tmp_path / "m.keras", 8)
    assert resolve_backbone(path).layer_shapes["pool"] == (8,) and resolve_backbone(path).default_layer == "bn"
    assert len(loads) == 4 and os.path.isfile(blocked)
