"""``BackboneSpec``: what a worker needs to build a backbone, and what the manifest says about it.

A spec is small and picklable; it travels to the workers, where ``spec.load(layers)`` builds the frozen Keras
model from exactly the artifact hashed at launch (the hash is checked again there). Which code builds it is
named by ``builder``, a module with a ``build(spec, layers)`` function, imported only on the worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from transforms.decode.audio import AudioPreprocessing
from transforms.decode.images import ImagePreprocessing
from transforms.decode.tokenize import TextPreprocessing

__all__ = ["BackboneSpec", "UnknownBackboneError", "BackboneUnavailableError", "sha256_of", "read_verified"]


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


def read_verified(path: str, sha256: str, what: str) -> bytes:
    """A file's bytes (local, gs://, s3://), refused when they are not the ones hashed at launch."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise RuntimeError(f"{what} changed since launch: {path} has sha256 {actual}, expected {sha256}")
    return data


@dataclass(frozen=True)
class BackboneSpec:
    """What a worker needs to build the backbone, and what the manifest says about it.

    ``modality`` is "image" (uint8 NHWC in, ``preprocessing`` an ``ImagePreprocessing``), "text" (token ids
    in, ``preprocessing`` a ``TextPreprocessing`` whose tokenizer file travels as an asset) or "audio" (3-s
    patches of float samples in, ``preprocessing`` an ``AudioPreprocessing``). ``assets`` are
    further files the model needs, ``{name: (path, sha256)}``, staged and hash-checked like the weights."""

    name: str
    weights_path: str
    weights_sha256: str
    preprocessing: ImagePreprocessing | TextPreprocessing | AudioPreprocessing
    layer_shapes: Mapping[str, tuple]
    default_layer: str
    source: str
    modality: str = "image"
    assets: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    options: Mapping = dataclasses.field(default_factory=dict)   # how to build it (user-supplied backbones)
    candidates: tuple[str, ...] = ()                               # the layers worth listing (all when empty)
    builder: str = ""                                              # module whose build(spec, layers) makes it

    @property
    def folds_batchnorm(self) -> bool:
        """Whether BatchNorm runs folded into the convolution before it: the embedded image ports always (they
        have no options), keras: backbones and model files unless turned off, SavedModels never."""
        return self.modality == "image" and (not self.options or bool(self.options.get("fold_batchnorm")))

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
        elif self.folds_batchnorm:
            described["batchnorm"] = ("folded into the convolution before it (inference mode); any other in "
                                      "inference mode (moving statistics)")
        elif self.modality == "image":
            described["batchnorm"] = "inference mode (moving statistics)"
        elif self.modality == "audio":
            described["batchnorm"] = "inference mode: moving statistics folded into a per-channel scale and shift"
        return described

    def read_asset(self, name: str) -> bytes:
        """An asset's bytes, checked against the hash taken at launch."""
        path, sha = self.assets[name]
        return read_verified(path, sha, f"{name} of backbone {self.name}")

    def read_weights(self) -> bytes:
        """The weights artifact's bytes, checked against the hash taken at launch."""
        return read_verified(self.weights_path, self.weights_sha256, f"weights of backbone {self.name}")

    def load(self, layers: Sequence[str]):
        """Build the frozen model (uint8 NHWC in, ``{layer: activation}`` out) from the staged weights."""
        return importlib.import_module(self.builder).build(self, tuple(layers))
