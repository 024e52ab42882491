"""``keras:NAME``: any ``keras.applications`` architecture, with the weights of ``--weights PATH`` (a
``.weights.h5`` saved from it, local or gs://) or ImageNet weights downloaded by the launcher. Preprocessing
uses the numbers of that family's ``preprocess_input``; BatchNorm runs in inference mode (moving statistics),
folded into the convolution before it unless ``fold_batchnorm`` is off (``fold_batchnorm.py``).
"""

from __future__ import annotations

import os
import tempfile

from pipeline.backbones.spec import BackboneSpec, BackboneUnavailableError, UnknownBackboneError, sha256_of
from pipeline.backbones.user_models import keras_models as km

__all__ = ["KERAS_PREFIX", "FAMILY_MODES", "family_of", "application_class", "build_application",
           "resolve", "build"]

KERAS_PREFIX = "keras:"

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


def resolve(class_name: str, weights: str | None, fold_batchnorm: bool = True) -> BackboneSpec:
    """keras.applications.CLASS with its weights (a file, or ImageNet's), hashed; its layers read once here.
    Workers fold BatchNorm into the convolutions when ``fold_batchnorm``."""
    try:
        application_class(class_name)
        module, mode = family_of(class_name)
    except ValueError as e:
        raise UnknownBackboneError(str(e)) from None
    if weights is None:  # ImageNet weights, downloaded here once; the saved copy is the artifact workers get
        try:
            model = build_application(class_name, include_top=False, weights="imagenet")
        except Exception as e:
            raise BackboneUnavailableError(
                f"cannot download ImageNet weights for keras.applications.{class_name} ({type(e).__name__}); "
                "pass --weights PATH (a .weights.h5 of that architecture)") from None
        origin = os.path.join(tempfile.mkdtemp(prefix="featurebeam-keras-"), f"{class_name}.weights.h5")
        model.save_weights(origin)
        include_top = False
    else:
        origin, model, include_top = weights, None, None
        local = km.local_path(weights)
        for top in (False, True):
            try:
                model = build_application(class_name, include_top=top, weights=None)
                model.load_weights(local)
                include_top = top
                break
            except Exception:  # not this variant's weights; try the other
                model = None
        if model is None:
            raise BackboneUnavailableError(f"{weights} holds no weights of keras.applications.{class_name} "
                                           "(with or without its top)")
    table = km.layer_table(model)
    return BackboneSpec(
        name=f"keras:{class_name}",
        weights_path=origin,
        weights_sha256=sha256_of(origin),
        preprocessing=km.preprocessing_for(mode, int(model.input_shape[1])),
        layer_shapes=table,
        default_layer=km.default_layer(table),
        source=f"keras.applications.{class_name} ({'with' if include_top else 'without'} top), weights "
               f"{os.path.basename(origin)}; preprocessing as keras.applications.{module}.preprocess_input",
        options={"kind": "keras_application", "class_name": class_name, "include_top": include_top,
                 "origin": origin, "fold_batchnorm": fold_batchnorm},
        candidates=tuple(km.candidate_layers(model)),
        builder=__name__,
    )


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the architecture again, with the staged weights (hash-checked), never from their origin."""
    local = km.local_copy(spec.read_weights(), ".weights.h5")
    model = build_application(spec.options["class_name"], spec.options["include_top"], weights=None)
    model.load_weights(local)
    os.remove(local)
    return km.with_layers(model, layers, spec.preprocessing, spec.name, fold=spec.options.get("fold_batchnorm", False))
