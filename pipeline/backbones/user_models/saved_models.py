"""A TensorFlow SavedModel directory as a backbone (local or gs://): its serving signature's outputs are the
layers. The directory travels as one reproducible tar, hashed and staged like any weights file."""

from __future__ import annotations

import os
import tempfile

from pipeline.backbones.packing import pack_directory, unpack_directory
from pipeline.backbones.spec import BackboneSpec, BackboneUnavailableError, sha256_of
from pipeline.backbones.uint8_input import with_uint8_input
from pipeline.backbones.user_models import keras_models as km
from transforms.decode.images import ImagePreprocessing
from transforms.worker.storage import is_remote

__all__ = ["is_saved_model", "saved_model_outputs", "resolve", "build"]


def is_saved_model(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    if not is_remote(path) and "/" not in path and not os.path.isdir(path):
        return False  # a bare name: an embedded backbone
    try:
        return FileSystems.exists(FileSystems.join(path.rstrip("/"), "saved_model.pb"))
    except Exception:
        return False


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

    signature = keras.layers.TFSMLayer(folder, call_endpoint="serving_default", name="saved_model")

    def body(normalised):
        outputs = signature(normalised)
        return {layer: outputs[layer] for layer in layers}

    return with_uint8_input(prep, "saved_model", body)


def resolve(path: str, preprocessing: str) -> BackboneSpec:
    """A SavedModel directory (local or gs://): its serving signature's outputs are the layers."""
    from apache_beam.io.filesystems import FileSystems

    folder = path.rstrip("/")
    if is_remote(folder):  # copy the directory here to read its signature and pack it
        (match,) = FileSystems.match([FileSystems.join(folder, "**")])
        folder_here = tempfile.mkdtemp(prefix="featurebeam-savedmodel-")
        for m in match.metadata_list:
            target = os.path.join(folder_here, m.path[len(path.rstrip("/")) + 1:])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with FileSystems.open(m.path, compression_type="uncompressed") as src, open(target, "wb") as dst:
                dst.write(src.read())
        folder = folder_here
    try:
        size, outputs = saved_model_outputs(folder)
    except Exception as e:
        raise BackboneUnavailableError(f"cannot use SavedModel {path}: "
                                       f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else e}") from None
    if not outputs:
        raise BackboneUnavailableError(f"SavedModel {path}: its serving signature has no output of fixed shape")
    artifact = pack_directory(folder)
    return BackboneSpec(
        name=path,
        weights_path=artifact,
        weights_sha256=sha256_of(artifact),
        preprocessing=km.preprocessing_for(preprocessing, size),
        layer_shapes=outputs,
        default_layer=km.default_layer(outputs),
        source=f"SavedModel {path} (serving signature outputs), packed as one tar; preprocessing {preprocessing}",
        options={"kind": "saved_model", "origin": path, "preprocessing": preprocessing},
        builder=__name__,
    )


def build(spec: BackboneSpec, layers: tuple):
    """Workers: the staged tar (hash-checked) unpacked into a private directory."""
    return saved_model_with_outputs(unpack_directory(spec.read_weights()), layers, spec.preprocessing)
