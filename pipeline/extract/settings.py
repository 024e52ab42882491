"""What a run's outputs depend on, recorded in ``OUTDIR/run.json`` at the start of a run: ``--resume`` must
be given the very same, or it is refused with one line naming what differs.

Some settings are recorded but not compared: they change how the outputs are computed, not what they are.
``fold_batchnorm`` (``--no-fold-batchnorm``) is one: folded and unfolded BatchNorm agree to about 1e-6
relative at every layer (tests/pipeline/backbones/user_models/test_fold_batchnorm.py), far inside the 1e-4
the feature set promises and below the float16 rounding of ``--feature-dtype float16``, so a run started one
way may be finished the other; run.json still says how it was started."""

from __future__ import annotations

import json

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import ConfigError
from pipeline.extract.config import ExtractConfig
from transforms.decode.audio import DEFAULT_MAX_AUDIO_SECONDS
from transforms.embed.settings import EmbedSettings
from transforms.read.tables import InputFields
from transforms.schema.layout import FORMAT_VERSION, RUN_NAME

__all__ = ["run_settings", "check_resumable"]


def run_settings(config: ExtractConfig) -> dict:
    """What decides a run's outputs: a resumed run must match it exactly (recorded in OUTDIR/run.json)."""
    backbone = config.backbone.describe()
    return {
        "format_version": FORMAT_VERSION,
        "backbone": {"name": backbone["name"], "weights_sha256": backbone["weights_sha256"],
                     "preprocessing": backbone["preprocessing"]},
        "fold_batchnorm": config.backbone.folds_batchnorm,
        **config.embed.recorded(),  # outputs, precision, max_image_pixels, max_audio_seconds
        "inputs": [spec.to_json() for spec in config.inputs],
        "fields": config.fields.to_json(),
        "formats": list(config.formats),
    }


_SETTING_NAMES = {"backbone": "--backbone (its weights or --preprocessing)", "formats": "--format",
                  "inputs": "--input/--input-format",
                  "fields": "field options (--*-field, --*-feature, --max-input-bytes, --allow-outside-paths) or "
                            "backbone modality",
                  "format_version": "the feature set format"}


# Recorded in run.json, never compared by --resume (see the module docstring).
RECORDED_ONLY = ("fold_batchnorm",)


def check_resumable(config: ExtractConfig) -> None:
    """--resume needs an OUTDIR started by a run with the very same settings."""
    path = FileSystems.join(config.output, RUN_NAME)
    try:
        with FileSystems.open(path) as f:
            recorded = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        flag = "--update" if config.update else "--resume"
        raise ConfigError(f"nothing to {flag[2:]} in {config.output}: it has no {RUN_NAME} from an earlier run "
                          f"(drop {flag} to start one)") from None
    recorded.setdefault("formats", ["tfrecord"])  # runs recorded before --format wrote TFRecord only
    if "precision" not in recorded:  # recorded before --precision: --mixed-precision said float16
        recorded["precision"] = "float16" if recorded.pop("mixed_precision", False) else "float32"
    recorded.setdefault("max_audio_seconds", DEFAULT_MAX_AUDIO_SECONDS)  # recorded before audio ...
    recorded.get("fields", {}).setdefault("audio_feature", InputFields().audio_feature)  # ... was read
    recorded.get("fields", {}).setdefault("modality", "image")
    current = run_settings(config)
    for name, value in current.items():
        if name not in RECORDED_ONLY and recorded.get(name) != value:
            flags = _SETTING_NAMES.get(name) or EmbedSettings.flags_of(name) or name
            verb = "update" if config.update else "resume"
            raise ConfigError(f"cannot {verb} {config.output}: it was started with different {flags}; use the same "
                              "settings, or --overwrite to start again")
