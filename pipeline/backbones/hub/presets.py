"""A KerasHub preset, resolved once at launch to a local preset directory.

A handle is a preset directory (local, ``gs://``, ``s3://``; KerasHub's own format, or a Hugging Face checkpoint
that KerasHub converts), or anything ``keras_hub`` loads by itself: a built-in preset name
(``clip_vit_base_patch32``), ``kaggle://OWNER/MODEL/keras/VARIANT`` or ``hf://OWNER/NAME``.
Those are downloaded here, by KerasHub, and saved as a preset directory (``save_to_preset``); the directory then
travels as one tar hashed at launch (``pipeline.backbones.packing``): workers never contact a hub.
"""

from __future__ import annotations

import os
import tempfile

from pipeline.backbones.spec import BackboneUnavailableError, UnknownBackboneError
from transforms.worker.storage import is_remote

__all__ = ["HUB_PREFIX", "TOWERS", "CONFIG_FILE", "IMAGE_CONVERTER_FILE", "local_preset",
           "preset_class", "has_tokenizer", "download_preset", "backbone_files", "require_keras_hub", "first_line"]

HUB_PREFIX = "hub:"
CONFIG_FILE = "config.json"               # the backbone's architecture (every preset has one)
IMAGE_CONVERTER_FILE = "image_converter.json"
TOWERS = ("image", "text")  # --tower: which tower of a preset embeds the inputs
OBJECT_STORES = ("gs", "s3")  # a preset directory there is copied; kaggle://, hf://, ... are KerasHub's to fetch
TASK_FILES = ("task.json", "task.weights")  # a task's head (a classifier's), left out of the backbone's artifact


def require_keras_hub():
    """The ``keras_hub`` module, or a one-line error saying how to install it."""
    try:
        import keras_hub
    except ImportError:
        raise BackboneUnavailableError(
            "hub: backbones need KerasHub: pip install 'featurebeam[hub]' && pip install --no-deps "
            "keras-hub==0.32.0 (see the README: its tensorflow-text would bring a second TensorFlow)") from None
    return keras_hub


def local_preset(handle: str) -> str:
    """A local preset directory for ``handle``: itself, a copy of a remote one, or KerasHub's download saved."""
    if is_remote(handle) and handle.split("://", 1)[0].lower() in OBJECT_STORES:
        return _copy_remote(handle)
    if os.path.isdir(handle):
        if not os.path.isfile(os.path.join(handle, CONFIG_FILE)):
            raise BackboneUnavailableError(f"{handle} is not a KerasHub preset directory (it has no {CONFIG_FILE})")
        return os.path.abspath(handle)
    if os.path.sep in handle and "://" not in handle:
        raise BackboneUnavailableError(f"preset directory {handle} does not exist")
    return download_preset(handle)


def download_preset(handle: str) -> str:
    """The local directory of a named or ``hf://``/``kaggle://`` preset, as KerasHub's own download leaves it in
    its cache: its backbone and, where the preset has them, its image converter and tokenizer are fetched by
    loading them (a preset's files never change, so the directory packs to the same hash at every launch)."""
    keras_hub = require_keras_hub()
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS, get_file

    if "://" not in handle and handle not in BUILTIN_PRESETS:
        raise BackboneUnavailableError(f"no KerasHub preset is named {handle!r} (keras-hub {keras_hub.__version__}); "
                                       "give a preset name it lists, a kaggle:// or hf:// handle, or a preset "
                                       "directory")
    try:
        keras_hub.models.Backbone.from_preset(handle)
    except Exception as e:
        raise BackboneUnavailableError(f"cannot load KerasHub preset {handle!r}: {type(e).__name__}: "
                                       f"{first_line(e)}") from None
    for kind in (keras_hub.layers.ImageConverter, keras_hub.tokenizers.Tokenizer):
        try:
            kind.from_preset(handle)
        except Exception:  # the preset has none of this kind: an image preset has no tokenizer
            continue
    return os.path.dirname(get_file(handle, CONFIG_FILE))


def backbone_files(name: str) -> bool:
    """Whether a preset's file belongs to its backbone and preprocessing (a task's head does not)."""
    return not os.path.basename(name).startswith(TASK_FILES)


def _copy_remote(uri: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    root = uri.rstrip("/") + "/"
    try:
        found = [m.path for r in FileSystems.match([root + "**"]) for m in r.metadata_list]
    except Exception as e:
        raise BackboneUnavailableError(f"cannot list preset directory {uri}: {first_line(e)}") from None
    if root + CONFIG_FILE not in found:
        raise BackboneUnavailableError(f"{uri} is not a KerasHub preset directory (it has no {CONFIG_FILE})")
    target = tempfile.mkdtemp(prefix="featurebeam-hub-")
    for path in found:
        local = os.path.join(target, *path[len(root):].split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with FileSystems.open(path, compression_type="uncompressed") as src, open(local, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 22), b""):
                dst.write(chunk)
    return target


def preset_class(directory: str) -> str:
    """The backbone class of a local preset, as KerasHub's own loader names it: a KerasHub preset's
    ``config.json`` says it, a Hugging Face checkpoint's architecture maps to it (BERT, ViT, ...)."""
    require_keras_hub()
    from keras_hub.src.utils.preset_utils import get_preset_loader

    try:
        return get_preset_loader(directory).check_backbone_class().__name__
    except Exception as e:
        raise UnknownBackboneError(f"{directory} names no backbone class KerasHub knows: {type(e).__name__}: "
                                   f"{first_line(e)}") from None


def has_tokenizer(directory: str) -> bool:
    """Whether a local preset holds a tokenizer (KerasHub's ``tokenizer.json``, or a Hugging Face checkpoint's
    vocabulary)."""
    return any(os.path.isfile(os.path.join(directory, name)) for name in ("tokenizer.json", "vocab.txt"))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
