"""What ``featurebeam train`` is asked to do, checked before anything is read or written."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.train.feature_sets import FeatureSetError

__all__ = ["TrainConfig", "HEADS", "MODEL_SPEC", "METRICS"]

HEADS = ("linear", "mlp")
MODEL_SPEC = "model.json"
METRICS = "metrics.json"


@dataclass(frozen=True)
class TrainConfig:
    features: tuple[str, ...]
    output: str
    heads: tuple[str, ...] = ("linear",)
    output_name: str | None = None
    test_features: tuple[str, ...] = ()
    validation_fraction: float = 0.2
    class_weights: bool = False
    standardize: bool = True   # linear probes on standardised features (False: raw, the CLIP paper's protocol)
    memory_limit_mb: int = 2048
    overwrite: bool = False
    hidden: int = 512
    dropout: float = 0.5
    max_epochs: int = 100
    seed: int = 0
    zero_shot: tuple[str, ...] = ()  # class names: a zero-shot head from a CLIP preset's text tower (zero_shot.py)
    templates: tuple[str, ...] = ()  # its prompts, "{}" for the class name (default: zero_shot.DEFAULT_TEMPLATES)

    def validate(self) -> None:
        if not self.features:
            raise FeatureSetError("--features is required (a directory written by featurebeam extract)")
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown:
            raise FeatureSetError(f"unknown head {unknown[0]!r}; choose from {', '.join(HEADS)}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise FeatureSetError(f"--validation-fraction must be between 0 and 1, got {self.validation_fraction}")
        from apache_beam.io.filesystems import FileSystems

        from pipeline.folders import is_empty_dir
        from transforms.worker.storage import bucket_exists, bucket_of

        if bucket_exists(self.output, FileSystems._pipeline_options) is False:
            scheme, bucket = bucket_of(self.output)
            raise FeatureSetError(f"output {self.output}: bucket {scheme}://{bucket} does not exist")
        if not self.overwrite and not is_empty_dir(self.output):
            raise FeatureSetError(f"output {self.output} is not empty; pass --overwrite to replace it")
