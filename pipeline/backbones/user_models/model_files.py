"""A ``.keras`` or ``.h5`` model file as a backbone (local or gs://), loaded in Keras' safe mode (no arbitrary
code); what it expects of pixels is told with ``--preprocessing`` (default ``raw``: 0-255 as floats). BatchNorm
after a convolution is folded into it unless ``fold_batchnorm`` is off (``fold_batchnorm.py``)."""

from __future__ import annotations

import os

from pipeline.backbones.spec import BackboneSpec, BackboneUnavailableError, sha256_of
from pipeline.backbones.user_models import keras_models as km

__all__ = ["MODEL_FILE_SUFFIXES", "resolve", "build"]

MODEL_FILE_SUFFIXES = (".keras", ".h5")


def resolve(path: str, preprocessing: str, fold_batchnorm: bool = True) -> BackboneSpec:
    """The model file, hashed; its layers read once here (it must take square RGB images)."""
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
    table = km.layer_table(model)
    return BackboneSpec(
        name=path,
        weights_path=path,
        weights_sha256=sha256_of(path),
        preprocessing=km.preprocessing_for(preprocessing, int(shape[1])),
        layer_shapes=table,
        default_layer=km.default_layer(table),
        source=f"model file {os.path.basename(path)} (loaded in Keras safe mode), preprocessing {preprocessing}",
        options={"kind": "model_file", "suffix": "." + path.rsplit(".", 1)[-1], "origin": path,
                 "preprocessing": preprocessing, "fold_batchnorm": fold_batchnorm},
        candidates=tuple(km.candidate_layers(model)),
        builder=__name__,
    )


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the staged model file (hash-checked), never its origin."""
    local = km.local_copy(spec.read_weights(), spec.options["suffix"])
    model = km.load_model_file(local)
    os.remove(local)
    return km.with_layers(model, layers, spec.preprocessing, spec.name, fold=spec.options.get("fold_batchnorm", False))
