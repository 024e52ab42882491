"""Backbones a user brings: any ``keras.applications`` model by name, or a Keras model file.

- ``keras:NAME`` (e.g. ``keras:EfficientNetB0``): the architecture from ``keras.applications``, with the weights
  of ``--weights PATH`` (a ``.weights.h5`` saved from that architecture, local or gs://), or ImageNet weights
  downloaded by the launcher. Preprocessing uses the numbers of that family's ``preprocess_input``.
- a ``.keras`` or ``.h5`` model file (local or gs://), loaded in Keras' safe mode (no arbitrary code); its
  preprocessing is told with ``--preprocessing`` (default ``raw``: pixels 0-255 as floats).

The launcher resolves either to one artifact (the weights or model file), hashes it and builds the model once
to know its layers; workers build it again from the staged artifact, hash-checked.
"""

from __future__ import annotations

import os
import re
import tempfile

from transforms.images import ImagePreprocessing

__all__ = ["KERAS_PREFIX", "PREPROCESSING_MODES", "FAMILY_MODES", "family_of", "family_module", "preprocessing_for",
           "application_class", "layer_table", "candidate_layers", "build_application", "load_model_file"]

KERAS_PREFIX = "keras:"
CROP_FRACTION = 0.875  # resize the shorter side to size / 0.875, then centre-crop size (the ImageNet eval custom)

# What each family's preprocess_input does, as (scale, mean, std, bgr) on 0-255 RGB pixels.
PREPROCESSING_MODES = {
    "tf": (1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), False),            # x / 127.5 - 1
    "torch": (1 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    "caffe": (1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), True),      # BGR, minus the ImageNet mean
    "raw": (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),                 # the model rescales inside
}

# keras.applications class-name prefix -> (module with its preprocess_input, mode)
FAMILY_MODES = {
    "MobileNetV2": ("mobilenet_v2", "tf"), "MobileNetV3": ("mobilenet_v3", "raw"), "MobileNet": ("mobilenet", "tf"),
    "ResNet50V2": ("resnet_v2", "tf"), "ResNet101V2": ("resnet_v2", "tf"), "ResNet152V2": ("resnet_v2", "tf"),
    "ResNet": ("resnet", "caffe"), "VGG16": ("vgg16", "caffe"), "VGG19": ("vgg19", "caffe"),
    "DenseNet": ("densenet", "torch"), "InceptionV3": ("inception_v3", "tf"),
    "InceptionResNetV2": ("inception_resnet_v2", "tf"), "Xception": ("xception", "tf"), "NASNet": ("nasnet", "tf"),
    "EfficientNetV2": ("efficientnet_v2", "raw"), "EfficientNet": ("efficientnet", "raw"),
    "ConvNeXt": ("convnext", "raw"),
}


def family_of(class_name: str) -> tuple[str, str]:
    """(module with its preprocess_input, preprocessing mode) of a keras.applications class."""
    for prefix in sorted(FAMILY_MODES, key=len, reverse=True):
        if class_name.startswith(prefix):
            return FAMILY_MODES[prefix]
    raise ValueError(f"keras.applications.{class_name} has no known preprocessing")


def family_module(class_name: str) -> str:
    """The ``keras.applications`` module whose ``preprocess_input`` the class uses."""
    return family_of(class_name)[0]


def preprocessing_for(mode: str, size: int) -> ImagePreprocessing:
    scale, mean, std, bgr = PREPROCESSING_MODES[mode]
    return ImagePreprocessing(resize_shorter=int(round(size / CROP_FRACTION)), crop=size, resample="bilinear",
                              scale=scale, mean=mean, std=std, bgr=bgr)


def application_class(class_name: str):
    import keras

    names = sorted(n for n in dir(keras.applications) if n[:1].isupper())
    if class_name not in names:
        import difflib

        near = difflib.get_close_matches(class_name, names, n=3)
        raise ValueError(f"keras.applications has no model {class_name!r}"
                         + (f"; did you mean {' or '.join(near)}?" if near else ""))
    return getattr(keras.applications, class_name)


# Input sizes the applications were trained at (224 for those not listed).
INPUT_SIZES = {"InceptionV3": 299, "InceptionResNetV2": 299, "Xception": 299, "NASNetLarge": 331,
               "EfficientNetB1": 240, "EfficientNetB2": 260, "EfficientNetB3": 300, "EfficientNetB4": 380,
               "EfficientNetB5": 456, "EfficientNetB6": 528, "EfficientNetB7": 600, "EfficientNetV2B1": 240,
               "EfficientNetV2B2": 260, "EfficientNetV2B3": 300, "EfficientNetV2S": 384, "EfficientNetV2M": 480,
               "EfficientNetV2L": 480}


def build_application(class_name: str, include_top: bool, weights: str | None):
    """The keras.applications model at its trained input size, with ``weights`` (a local file, "imagenet" or
    None)."""
    size = INPUT_SIZES.get(class_name, 224)
    return application_class(class_name)(weights=weights, include_top=include_top, input_shape=(size, size, 3))


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


def with_layers(model, layers, prep: ImagePreprocessing, name: str):
    """uint8 NHWC in, ``{layer: activation}`` out, normalising inside the graph; BatchNorm in inference mode."""
    import keras

    size = prep.crop
    core = keras.Model(model.inputs, {layer: model.get_layer(layer).output for layer in layers})
    core.trainable = False
    images = keras.Input((size, size, 3), dtype="uint8", name="image_uint8")
    normalised = keras.layers.Lambda(prep.normalize, name="normalize")(images)
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name.rsplit("/", 1)[-1])
    return keras.Model(images, core(normalised, training=False), name=safe_name)


def pack_directory(folder: str) -> str:
    """A SavedModel directory as one reproducible tar (sorted members, no owners or times): the artifact that is
    hashed and staged."""
    import tarfile

    handle, path = tempfile.mkstemp(prefix="featurebeam-savedmodel-", suffix=".tar")
    os.close(handle)
    with tarfile.open(path, "w") as tar:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                info = tar.gettarinfo(full, arcname=os.path.relpath(full, folder))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(full, "rb") as f:
                    tar.addfile(info, f)
    return path


def unpack_directory(data: bytes) -> str:
    """The staged tar back into a private directory (members that would land outside it are refused)."""
    import io
    import tarfile

    folder = tempfile.mkdtemp(prefix="featurebeam-savedmodel-")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def saved_model_outputs(folder: str) -> tuple[int, dict[str, tuple]]:
    """(square input size, {output name: shape without batch}) of a SavedModel's serving signature."""
    import tensorflow as tf

    signature = tf.saved_model.load(folder).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1:
        raise ValueError(f"its serving signature takes {len(inputs)} inputs; featurebeam feeds one image batch")
    shape = tuple(next(iter(inputs.values())).shape)
    if len(shape) != 4 or not shape[1] or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"it takes input {shape}; featurebeam needs square RGB images of a fixed size (None, S, S, 3)")
    outputs = {name: tuple(int(d) for d in spec.shape[1:]) for name, spec in signature.structured_outputs.items()
               if len(spec.shape) in (2, 4) and all(d is not None for d in spec.shape[1:])}
    return int(shape[1]), outputs


def saved_model_with_outputs(folder: str, layers, prep: ImagePreprocessing):
    """uint8 NHWC in, the chosen serving-signature outputs out, through ``keras.layers.TFSMLayer``."""
    import keras

    images = keras.Input((prep.crop, prep.crop, 3), dtype="uint8", name="image_uint8")
    normalised = keras.layers.Lambda(prep.normalize, name="normalize")(images)
    outputs = keras.layers.TFSMLayer(folder, call_endpoint="serving_default", name="saved_model")(normalised)
    return keras.Model(images, {layer: outputs[layer] for layer in layers}, name="saved_model")
