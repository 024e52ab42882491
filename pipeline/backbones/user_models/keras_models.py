"""What every Keras backbone a user brings shares: its preprocessing modes, its layer table, a local copy of
its artifact, and the uint8-in model over the chosen layers.

The user's backbones are ``keras:NAME`` (``keras_applications``), a ``.keras``/``.h5`` model file
(``model_files``) and a SavedModel directory (``saved_models``). The launcher resolves each to one artifact,
hashes it and builds the model once to know its layers; workers build it again from the staged artifact,
hash-checked.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

from pipeline.backbones.spec import BackboneUnavailableError
from pipeline.backbones.uint8_input import with_uint8_input
from transforms.decode.images import ImagePreprocessing
from transforms.worker.storage import is_remote

__all__ = ["PREPROCESSING_MODES", "preprocessing_for", "layer_table", "candidate_layers", "default_layer",
           "load_model_file", "local_copy", "local_path", "with_layers"]

CROP_FRACTION = 0.875  # resize the shorter side to size / 0.875, then centre-crop size (the ImageNet eval custom)

# What each family's preprocess_input does, as (scale, mean, std, bgr) on 0-255 RGB pixels.
PREPROCESSING_MODES = {
    "tf": (1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), False),            # x / 127.5 - 1
    "torch": (1 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    "caffe": (1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), True),      # BGR, minus the ImageNet mean
    "raw": (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),                 # the model rescales inside
}


def preprocessing_for(mode: str, size: int) -> ImagePreprocessing:
    scale, mean, std, bgr = PREPROCESSING_MODES[mode]
    return ImagePreprocessing(resize_shorter=int(round(size / CROP_FRACTION)), crop=size, resample="bilinear",
                              scale=scale, mean=mean, std=std, bgr=bgr)


def layer_table(model) -> dict[str, tuple]:
    """Every layer with a single output -> its output shape without the batch dim, in model order."""
    table = {}
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(shape, tuple) and len(shape) in (2, 4) and all(d is not None for d in shape[1:]):
            table[layer.name] = tuple(int(d) for d in shape[1:])
    return table


def candidate_layers(model) -> list[str]:
    """The layers worth extracting from: block outputs (residual adds, concatenations), each resolution's last
    feature map, the final feature map and the top."""
    table = layer_table(model)
    skip = ("InputLayer", "ZeroPadding2D", "Rescaling", "Normalization")
    names = [layer.name for layer in model.layers if layer.name in table and type(layer).__name__ not in skip]
    picked = [layer.name for layer in model.layers
              if layer.name in names and type(layer).__name__ in ("Add", "Concatenate") and len(table[layer.name]) == 3]
    by_resolution = {}
    for name in names:
        if len(table[name]) == 3:
            by_resolution[table[name][:2]] = name
    picked += list(by_resolution.values())
    picked += [name for name in names if len(table[name]) == 1][-1:]
    order = {name: i for i, name in enumerate(names)}
    return sorted(set(picked), key=order.get)


def default_layer(table: Mapping[str, tuple]) -> str:
    """The last spatial layer (a feature map), else the last layer."""
    spatial = [name for name, shape in table.items() if len(shape) == 3]
    return spatial[-1] if spatial else list(table)[-1]


def load_model_file(path: str):
    """A ``.keras`` or ``.h5`` model, in safe mode: a file that needs arbitrary Python code to load is refused."""
    import keras

    return keras.saving.load_model(path, compile=False, safe_mode=True)


def local_copy(data: bytes, suffix: str) -> str:
    """Write an artifact's bytes to a private local file (Keras loads from paths)."""
    handle, path = tempfile.mkstemp(prefix="featurebeam-backbone-", suffix=suffix)
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    return path


def local_path(path: str) -> str:
    """A local path for ``path``: itself, or a private copy of a remote (gs://, s3://) file."""
    from apache_beam.io.filesystems import FileSystems

    if not is_remote(path):
        if not os.path.isfile(path):
            raise BackboneUnavailableError(f"{path} does not exist")
        return path
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
    except Exception as e:
        raise BackboneUnavailableError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None
    return local_copy(data, "." + path.rsplit("/", 1)[-1].split(".", 1)[-1])


def with_layers(model, layers, prep: ImagePreprocessing, name: str, fold: bool = False):
    """uint8 NHWC in, ``{layer: activation}`` out, normalising inside the graph; BatchNorm in inference mode,
    with ``fold`` folded into the convolution before it wherever that convolution's own output is not needed
    (``fold_batchnorm``: the requested layers keep their names and values)."""
    import keras

    core = keras.Model(model.inputs, {layer: model.get_layer(layer).output for layer in layers})
    if fold:
        from pipeline.backbones.user_models.fold_batchnorm import fold_batchnorm

        core = fold_batchnorm(core)
    core.trainable = False
    return with_uint8_input(prep, name, lambda normalised: core(normalised, training=False))
