"""What ``featurebeam finetune`` is asked to do: a frozen config, validated without reading or writing anything.

Checks that need the world (inputs exist, MODELDIR may be written, the backbone resolves, ``--head-from``
matches it) happen in ``pipeline.finetune.check.check_finetune``, the one launch step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ConfigError
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.read.input_specs import IMAGE_FORMATS
from transforms.read.tables import InputFields
from transforms.worker.storage import is_remote

__all__ = ["FinetuneConfig", "DEFAULT_UNFREEZE", "FALLBACK_UNFREEZE", "DEFAULT_EPOCHS", "DEFAULT_PATIENCE",
           "DEFAULT_LEARNING_RATE", "DEFAULT_HEAD_LR_FACTOR", "DEFAULT_DROPOUT", "AUGMENTATIONS"]

AUGMENTATIONS = ("none", "crop", "flip-crop")

# Blocks unfrozen by default, per embedded backbone: the last stage at 7x7 (mobilenet_v2: features.16-18,
# 0.9 M weights; efficientnet_lite0: blocks.14, blocks.15 and head), cheap to run on cached inputs and where
# ImageNet features are most specific to ImageNet. keras:NAME and model files: their last two candidate layers.
DEFAULT_UNFREEZE = {"mobilenet_v2": 3, "efficientnet_lite0": 3}
FALLBACK_UNFREEZE = 2
# The recipe, measured on the digits (see tests/pipeline/finetune/test_finetune.py): Adam at 1e-4 for the blocks
# and a tenth of it for the head (already the probe's optimum), one warm-up epoch then cosine decay over 8 epochs,
# dropout 0.2 on the pooled features while training (as MobileNetV2's own classifier), and no early stop within
# those epochs. The first epochs knock validation accuracy down by a few points and the last, at the smallest
# rates, are nearly always the best: stopping after 4 epochs without a lower validation loss kept the probe on
# some splits. The dropout keeps a gradient when the probe fits its train split exactly (weak L2); a head moving
# as fast as the blocks pulled the worst splits back to the probe's accuracy.
DEFAULT_EPOCHS = 8
DEFAULT_PATIENCE = 8
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_HEAD_LR_FACTOR = 0.1
DEFAULT_DROPOUT = 0.2


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
    patience: int = DEFAULT_PATIENCE
    head_from: str | None = None
    learning_rate: float = DEFAULT_LEARNING_RATE  # the unfrozen blocks'; the head's is head_lr_factor times it
    head_lr_factor: float = DEFAULT_HEAD_LR_FACTOR
    dropout: float = DEFAULT_DROPOUT      # on the pooled features, while training only
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
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be at least 0 and below 1, got {self.dropout:g}")
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
        if self.cache_dir is not None and is_remote(self.cache_dir):
            raise ConfigError(f"--cache-dir {self.cache_dir}: the cache is memory-mapped, so it must be a local folder")
        return self

    def unfreeze_for(self, backbone_name: str) -> int:
        """The blocks to unfreeze: ``--unfreeze``, else the backbone's default."""
        return self.unfreeze if self.unfreeze is not None else DEFAULT_UNFREEZE.get(backbone_name, FALLBACK_UNFREEZE)
