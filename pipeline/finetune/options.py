"""What ``featurebeam finetune`` is asked to do: a frozen config, validated without reading or writing anything.

Checks that need the world (inputs exist, MODELDIR may be written, the backbone resolves, ``--head-from``
matches it) happen in ``pipeline.finetune.run.check_finetune``, the one launch step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.extract.options import ConfigError
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.read.inputs import IMAGE_FORMATS
from transforms.read.tables import InputFields

__all__ = ["FinetuneConfig", "DEFAULT_UNFREEZE", "FALLBACK_UNFREEZE", "DEFAULT_EPOCHS", "DEFAULT_LEARNING_RATE",
           "AUGMENTATIONS"]

AUGMENTATIONS = ("none", "crop", "flip-crop")

# Blocks unfrozen by default, per embedded backbone: the last stage at 7x7 (mobilenet_v2: features.16-18,
# 0.9 M weights; efficientnet_lite0: blocks.14, blocks.15 and head), cheap to run on cached inputs and where
# ImageNet features are most specific to ImageNet. keras:NAME and model files: their last two candidate layers.
DEFAULT_UNFREEZE = {"mobilenet_v2": 3, "efficientnet_lite0": 3}
FALLBACK_UNFREEZE = 2
# 8 epochs at 3e-5 (head 3e-4): on the digits (see tests/pipeline/finetune/test_finetune.py) Adam at 1e-4 knocked
# validation accuracy from 98% to 87-93% within an epoch or two and rarely came back to better than the probe.
DEFAULT_EPOCHS = 8
DEFAULT_LEARNING_RATE = 3e-5


@dataclass(frozen=True)
class FinetuneConfig:
    inputs: tuple[str, ...]
    output: str
    test_inputs: tuple[str, ...] = ()
    backbone: str = "mobilenet_v2"
    weights: str | None = None
    preprocessing: str | None = None
    fold_batchnorm: bool = True           # keras backbones: BatchNorm folded into the convolutions (as extract)
    unfreeze: int | None = None           # None: DEFAULT_UNFREEZE for the backbone
    epochs: int = DEFAULT_EPOCHS
    patience: int = 4
    head_from: str | None = None
    learning_rate: float = DEFAULT_LEARNING_RATE  # the unfrozen blocks'; the head's is head_lr_factor times it
    head_lr_factor: float = 10.0
    batch_size: int = 32
    validation_fraction: float = 0.2
    augment: str = "none"                 # "crop", "flip-crop": the frozen bottom then runs every epoch
    cache_memory_mb: int = 1024           # the bottom's outputs stay in memory up to this, else memmap on disk
    cache_dir: str | None = None
    input_format: str = "auto"
    fields: InputFields = field(default_factory=InputFields)
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    seed: int = 0

    def validate(self) -> FinetuneConfig:
        """Raise ``ConfigError`` with what to change; returns itself. Pure: nothing is read or written."""
        if not self.inputs:
            raise ConfigError("--input is required (images, manifests, tar shards or TFRecords with labels)")
        if not self.output:
            raise ConfigError("--output MODELDIR is required")
        if self.unfreeze is not None and self.unfreeze < 1:
            raise ConfigError(f"--unfreeze must be at least 1 block, got {self.unfreeze} (0 blocks is a linear "
                              "probe: use featurebeam train)")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.patience < 1:
            raise ConfigError(f"--patience must be at least 1, got {self.patience}")
        if not 0.0 < self.learning_rate < 1.0:
            raise ConfigError(f"--learning-rate must be between 0 and 1, got {self.learning_rate:g}")
        if not self.head_lr_factor > 0:
            raise ConfigError(f"--head-lr-factor must be positive, got {self.head_lr_factor:g}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"--validation-fraction must be between 0 and 1, got {self.validation_fraction}")
        if self.cache_memory_mb < 0:
            raise ConfigError(f"--cache-memory-mb must be 0 or more, got {self.cache_memory_mb}")
        if self.input_format not in ("auto",) + IMAGE_FORMATS:
            raise ConfigError(f"--input-format {self.input_format!r}: fine-tuning reads images; choose from auto, "
                              + ", ".join(IMAGE_FORMATS))
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"--augment {self.augment!r}: choose from {', '.join(AUGMENTATIONS)}")
        if self.max_image_pixels < 1:
            raise ConfigError(f"--max-image-pixels must be at least 1, got {self.max_image_pixels}")
        if self.cache_dir is not None and "://" in self.cache_dir:
            raise ConfigError(f"--cache-dir {self.cache_dir}: the cache is memory-mapped, so it must be a local folder")
        return self

    def unfreeze_for(self, backbone_name: str) -> int:
        """The blocks to unfreeze: ``--unfreeze``, else the backbone's default."""
        return self.unfreeze if self.unfreeze is not None else DEFAULT_UNFREEZE.get(backbone_name, FALLBACK_UNFREEZE)
