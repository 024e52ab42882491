"""Fixtures of the backbone tests: tiny KerasHub presets (``tests/hub_presets.py``) and pictures to embed."""

from __future__ import annotations

import io

import pytest


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """{name: a preset directory}, each saved by KerasHub from a randomly initialised model."""
    import keras

    from tests.hub_presets import MAKERS, clip_tokenizer

    root = tmp_path_factory.mktemp("presets")
    folders = {}
    for seed, (name, make) in enumerate(MAKERS.items()):
        keras.utils.set_random_seed(seed)
        backbone, preprocessing = make()  # an image converter, or a text model's tokenizer
        folders[name] = str(root / name)
        backbone.save_to_preset(folders[name])
        preprocessing.save_to_preset(folders[name])
    clip_tokenizer().save_to_preset(folders["clip"])
    return folders


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, sample_photos):
    """PNGs of exactly the presets' size (no resize: KerasHub's float pixels are featurebeam's uint8 ones), and
    the original photos (427x640 JPEGs: cropped to a square and resized)."""
    from PIL import Image

    from tests.hub_presets import SIZE

    folder = tmp_path_factory.mktemp("pictures")
    for name, data in sample_photos.items():
        photo = Image.open(io.BytesIO(data)).convert("RGB")
        (folder / name).write_bytes(data)
        for i, box in enumerate(((0, 0, 200, 200), (150, 100, 420, 370))):
            photo.crop(box).resize((SIZE, SIZE)).save(folder / f"{name[:-4]}-{i}.png")
    return folder


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, sample_photos):
    """12 PNG crops of 96x72 from each of two photos, in class folders named after them (china, flower)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("labelled")
    for name, data in sample_photos.items():
        (root / name[:-4]).mkdir(parents=True)
        photo = Image.open(io.BytesIO(data)).convert("RGB")
        for i in range(12):
            left, top = 20 * i, 15 * (i % 5)
            photo.crop((left, top, left + 96, top + 72)).save(root / name[:-4] / f"{i:02d}.png")
    return root
