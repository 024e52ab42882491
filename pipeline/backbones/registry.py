"""The registry of names a user can pass to ``--backbone``, resolved once at launch.

``resolve_backbone(name)`` finds the backbone's artifact, hashes it and returns a ``BackboneSpec``: an embedded
port by name (``ports/``), ``keras:NAME``, a ``.keras``/``.h5`` model file or a SavedModel directory
(``user_models/``), or ``hub:PRESET``, a KerasHub preset (``hub/``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from pipeline.backbones.hub import preset_backbones
from pipeline.backbones.hub.presets import HUB_PREFIX
from pipeline.backbones.ports import efficientnet_lite0, minilm, mobilenet_v2, musicnn
from pipeline.backbones.spec import BackboneSpec, UnknownBackboneError
from pipeline.backbones.user_models import keras_applications, model_files, saved_models
from pipeline.backbones.user_models.keras_models import PREPROCESSING_MODES

__all__ = ["resolve_backbone", "available_backbones", "resolve_described"]

EMBEDDED = {"mobilenet_v2": mobilenet_v2.resolve, "efficientnet_lite0": efficientnet_lite0.resolve,
            "minilm_l6": minilm.resolve,
            **{name: functools.partial(musicnn.resolve, name) for name in musicnn.MODELS}}


def available_backbones() -> list[str]:
    return sorted(EMBEDDED)


def resolve_backbone(name: str, weights: str | None = None, preprocessing: str | None = None,
                     fold_batchnorm: bool = True, tower: str | None = None) -> BackboneSpec:
    """Find and hash the backbone's artifact; raise a one-line error when the name or weights are unknown.

    ``name``: an embedded backbone, ``keras:NAME`` (``weights``: a weights file, or None for ImageNet weights
    downloaded here), a ``.keras``/``.h5`` model file (``preprocessing``: one of PREPROCESSING_MODES), or
    ``hub:PRESET`` (``tower``: which of a CLIP preset's towers, image by default).
    ``fold_batchnorm`` (keras: backbones and model files): BatchNorm folded into the convolution before it;
    the embedded ports are always folded and a SavedModel runs as exported, so turning it off is refused there."""
    if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
        raise UnknownBackboneError(f"unknown preprocessing {preprocessing!r}; choose from "
                                   f"{', '.join(PREPROCESSING_MODES)}")
    if name.startswith(HUB_PREFIX):
        if weights is not None or preprocessing is not None or not fold_batchnorm:
            raise UnknownBackboneError(f"{name} brings its weights and its preprocessing (its image converter or "
                                       "tokenizer); "
                                       "--weights, --preprocessing and --no-fold-batchnorm are for keras: backbones "
                                       "and model files")
        return preset_backbones.resolve(name[len(HUB_PREFIX):], tower or "image")
    if tower is not None:
        raise UnknownBackboneError(f"--tower is for hub: presets with an image and a text tower (CLIP); {name} has "
                                   "one")
    if name.startswith(keras_applications.KERAS_PREFIX):
        if preprocessing is not None:
            raise UnknownBackboneError(f"{name} brings its family's preprocessing; --preprocessing is for model files")
        return keras_applications.resolve(name[len(keras_applications.KERAS_PREFIX):], weights, fold_batchnorm)
    if name.lower().endswith(model_files.MODEL_FILE_SUFFIXES) or saved_models.is_saved_model(name):
        if weights is not None:
            raise UnknownBackboneError("a model file holds its weights; --weights is for keras: backbones")
        if saved_models.is_saved_model(name):
            if not fold_batchnorm:
                raise UnknownBackboneError(f"{name} is a SavedModel, run as exported (nothing is folded); "
                                           "--no-fold-batchnorm is for keras: backbones and .keras/.h5 model files")
            return saved_models.resolve(name, preprocessing or "raw")
        return model_files.resolve(name, preprocessing or "raw", fold_batchnorm)
    if weights is not None or preprocessing is not None:
        raise UnknownBackboneError(f"backbone {name} is embedded with its weights and preprocessing; --weights and "
                                   "--preprocessing are for keras: backbones and model files")
    if not fold_batchnorm and name in EMBEDDED:
        raise UnknownBackboneError(f"backbone {name} is built with BatchNorm folded (it has no BatchNorm layer to "
                                   "keep); --no-fold-batchnorm is for keras: backbones and .keras/.h5 model files")
    try:
        resolver = EMBEDDED[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}, keras:NAME "
            "(keras.applications), hub:PRESET (KerasHub), a .keras/.h5 model file or a SavedModel directory") from None
    return resolver()


def resolve_described(described: Mapping) -> BackboneSpec:
    """The backbone a manifest describes, resolved again from where it came from (to rebuild it elsewhere), folded
    as it was (a manifest from before folding existed: unfolded)."""
    options = described.get("options") or {}
    fold = bool(options.get("fold_batchnorm", False))
    if options.get("kind") == "keras_application":
        return resolve_backbone(described["name"], weights=options.get("origin"), fold_batchnorm=fold)
    if options.get("kind") == "model_file":
        return resolve_backbone(described["name"], preprocessing=options.get("preprocessing"), fold_batchnorm=fold)
    if options.get("kind") == "hub":
        return resolve_backbone(described["name"], tower=options.get("tower", "image"))
    if options.get("kind") == "saved_model":
        return resolve_backbone(described["name"], preprocessing=options.get("preprocessing"))
    return resolve_backbone(described["name"])

