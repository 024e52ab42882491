"""``featurebeam demo``: scikit-learn's digits as PNG files in class folders, through the extraction."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["write_digits", "run_demo"]


def write_digits(directory: str) -> int:
    """Write the 1,797 8x8 digits as grayscale PNGs under ``directory/<digit>/``; return how many."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = os.path.join(directory, str(target))
        os.makedirs(folder, exist_ok=True)
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(os.path.join(folder, f"digit-{i:04d}.png"))
    return len(digits.images)


def run_demo(workdir: str, beam_argv: Sequence[str]) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.cli import format_summary
    from pipeline.extract import run_extraction
    from pipeline.options import ExtractConfig
    from transforms import schema

    workdir = os.path.abspath(workdir)
    images, features = os.path.join(workdir, "digits"), os.path.join(workdir, "features")
    n = write_digits(images)
    print(f"featurebeam demo: wrote {n} digit images (10 classes) under {images}")
    options = PipelineOptions([*beam_argv, "--input", images, "--output", features, "--overwrite"])
    config = ExtractConfig.from_options(options)
    start = time.monotonic()
    manifest = run_extraction(config, options)
    print(format_summary(manifest, features, time.monotonic() - start))

    record = _first_record(schema.shard_paths(features, manifest), manifest.outputs)
    vector = record.vectors[manifest.outputs[0].name]
    print(f"  example   key {os.path.relpath(record.key, workdir)}, label {record.label}, "
          f"{vector.shape[0]} values, first " + " ".join(f"{v:.4f}" for v in vector[:4]))
    return 0


def _first_record(paths, outputs):
    """Read one record back with tf.data, the way a training job would."""
    import tensorflow as tf

    from transforms import schema

    for raw in tf.data.TFRecordDataset(paths).take(1):
        return schema.decode_example(raw.numpy(), outputs)
    raise RuntimeError("the feature set holds no records")
