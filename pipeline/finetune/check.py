"""The launch step of ``featurebeam finetune``: every check that needs no training, done before MODELDIR is
touched (inputs, MODELDIR, the backbone, ``--head-from``), so that a bad run fails in seconds, not after the cache."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.finetune.model import backbone_blocks
from pipeline.finetune.options import FinetuneConfig
from pipeline.folders import absolute
from pipeline.train.config import MODEL_SPEC
from transforms.schema.fields import OutputSpec

__all__ = ["Checked", "check_finetune"]


@dataclass(frozen=True)
class Checked:
    """What fine-tuning reads, checked before MODELDIR is touched."""

    specs: tuple
    test_specs: tuple
    backbone: object
    output: OutputSpec
    unfreeze: int
    head_from: object          # a Keras head, or None
    head_classes: tuple        # its classes, or ()
    start: float


def _check_model_dir(output: str, overwrite: bool) -> None:
    from apache_beam.io.filesystems import FileSystems

    from pipeline.folders import is_empty_dir
    from transforms.worker.storage import bucket_exists, bucket_of

    if bucket_exists(output, FileSystems._pipeline_options) is False:
        scheme, bucket = bucket_of(output)
        raise ConfigError(f"output {output}: bucket {scheme}://{bucket} does not exist")
    if not overwrite and not is_empty_dir(output):
        raise ConfigError(f"output {output} is not empty; pass --overwrite to replace it")


def _load_head_from(model_dir: str, backbone):
    """The head of a ``featurebeam train`` MODELDIR, checked to sit on this very backbone and output."""
    import keras

    from pipeline.folders import local_copy, read_model_file

    spec = read_model_file(model_dir, MODEL_SPEC, ConfigError)
    if spec.get("finetune"):
        raise ConfigError(f"--head-from {model_dir}: its head sits on a fine-tuned backbone; give the MODELDIR of "
                          "featurebeam train (a head on the frozen backbone)")
    sha = spec.get("backbone", {}).get("weights_sha256")
    if sha != backbone.weights_sha256:
        raise ConfigError(f"--head-from {model_dir}: trained on backbone {spec.get('backbone', {}).get('name')} "
                          f"with other weights than {backbone.name} (sha256 differs); pass its --backbone")
    theirs = OutputSpec.from_json(spec["output"])  # fine-tuning trains below the layer the head reads
    with local_copy(model_dir) as folder:
        path = os.path.join(folder, "heads", spec["head"], "head.keras")
        if not os.path.isfile(path):
            raise ConfigError(f"--head-from {model_dir}: heads/{spec['head']}/head.keras is missing")
        head = keras.saving.load_model(path, safe_mode=True)
    return head, tuple(spec["classes"]), theirs


def check_finetune(config: FinetuneConfig) -> Checked:
    """Every check that needs no training: flags, inputs, MODELDIR, the backbone and ``--head-from``."""
    from pipeline.backbones.registry import resolve_backbone
    from pipeline.inputs import resolve_input
    from transforms.embed.pooling import pooled_dim

    config.validate()
    start = time.monotonic()
    specs = tuple(resolve_input(i, config.input_format) for i in config.inputs)
    test_specs = tuple(resolve_input(i, config.input_format) for i in config.test_inputs)
    _check_model_dir(config.output, config.overwrite)
    backbone = resolve_backbone(config.backbone, config.weights, config.preprocessing,
                                fold_batchnorm=config.fold_batchnorm)
    if backbone.modality != "image":
        raise ConfigError(f"backbone {backbone.name} is a {backbone.modality} backbone; finetune trains image "
                          "backbones")
    if (backbone.options or {}).get("kind") == "hub":
        raise ConfigError(f"backbone {backbone.name} is a KerasHub transformer; finetune cuts convolutional backbones "
                          "between feature maps: train heads on its features instead")
    layer = backbone.default_layer
    output = OutputSpec(layer, layer, "avg", pooled_dim(backbone.layer_shapes[layer], "avg"))
    head, head_classes = None, ()
    if config.head_from:
        head, head_classes, theirs = _load_head_from(absolute(config.head_from), backbone)
        output = theirs
        if output.layer not in backbone.layer_shapes:
            raise ConfigError(f"--head-from {config.head_from}: its layer {output.layer} is not in {backbone.name}")
    unfreeze = config.unfreeze_for(backbone.name)
    blocks = backbone_blocks(backbone, output.layer)
    if unfreeze >= len(blocks):
        raise ConfigError(f"--unfreeze {unfreeze}: {backbone.name} has {len(blocks)} blocks up to {output.layer} "
                          f"(featurebeam layers lists them); at most {len(blocks) - 1} can be unfrozen")
    return Checked(specs, test_specs, backbone, output, unfreeze, head, head_classes, start)
