"""A ``.keras`` or ``.h5`` model file as a backbone (local or gs://), loaded in Keras' safe mode (no arbitrary
code); what it expects of pixels is told with ``--preprocessing`` (default ``raw``: 0-255 as floats). BatchNorm
after a convolution is folded into it unless ``fold_batchnorm`` is off (``fold_batchnorm.py``)."""

from __future__ import annotations

import os

from pipeline.backbones.spec import BackboneSpec, BackboneUnavailableError, sha256_of
from pipeline.backbones.user_models import keras_models as km
from pipeline.backbones.user_models import layer_cache
from transforms.worker.storage import is_remote

__all__ = ["MODEL_FILE_SUFFIXES", "resolve", "build"]

MODEL_FILE_SUFFIXES = (".keras", ".h5")
_KNOWN = ("input_size", "layers", "candidates")  # what loading the file tells, kept in the layer cache


def resolve(path: str, preprocessing: str, fold_batchnorm: bool = True) -> BackboneSpec:
    """The model file, hashed; its layers read once (it must take square RGB images), here or by an earlier launch
    with the same bytes (``layer_cache``)."""
    sha256 = _sha256(path)
    known = layer_cache.read_entry(sha256, _KNOWN) or _load_layers(path, sha256)
    table = {name: tuple(dims) for name, dims in known["layers"]}
    return BackboneSpec(
        name=path,
        weights_path=path,
        weights_sha256=sha256,
        preprocessing=km.preprocessing_for(preprocessing, int(known["input_size"])),
        layer_shapes=table,
        default_layer=km.default_layer(table),
        source=f"model file {os.path.basename(path)} (loaded in Keras safe mode), preprocessing {preprocessing}",
        options={"kind": "model_file", "suffix": "." + path.rsplit(".", 1)[-1], "origin": path,
                 "preprocessing": preprocessing, "fold_batchnorm": fold_batchnorm},
        candidates=tuple(known["candidates"]),
        builder=__name__,
    )


def _sha256(path: str) -> str:
    if not is_remote(path) and not os.path.isfile(path):
        raise BackboneUnavailableError(f"{path} does not exist")
    try:
        return sha256_of(path)
    except Exception as e:
        raise BackboneUnavailableError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None


def _load_layers(path: str, sha256: str) -> dict:
    """Load the model file in Keras' safe mode: its input size (square RGB images only), layer table and candidate
    layers, kept in the layer cache for the next launch."""
    try:
        model = km.load_model_file(km.local_path(path))
    except BackboneUnavailableError:
        raise
    except Exception as e:
        raise BackboneUnavailableError(f"cannot load model file {path}: {type(e).__name__}: "
                                       f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from None
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[1] == shape[2] and shape[3] == 3):
        raise BackboneUnavailableError(f"model file {path} takes input {shape}; featurebeam needs square RGB images "
                                       "of a fixed size, (None, S, S, 3)")
    known = {"input_size": int(shape[1]),
             "layers": [[name, list(dims)] for name, dims in km.layer_table(model).items()],
             "candidates": km.candidate_layers(model)}
    layer_cache.write_entry(sha256, known)
    return known


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the staged model file (hash-checked), never its origin."""
    local = km.local_copy(spec.read_weights(), spec.options["suffix"])
    model = km.load_model_file(local)
    os.remove(local)
    return km.with_layers(model, layers, spec.preprocessing, spec.name, fold=spec.options.get("fold_batchnorm", False))
