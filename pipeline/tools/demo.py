"""``featurebeam demo``: scikit-learn's digits as PNG files in class folders, extracted and classified.

1. write the 1,797 digits as PNGs: four in five under ``digits/train/<digit>/``, the rest under
   ``digits/test/<digit>/``;
2. extract MobileNetV2 features of both folders (two feature sets);
3. train a linear head on the training features and report its accuracy on the held-out test features.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["write_digits", "run_demo"]


def write_digits(directory: str, select: Callable[[int], bool] = lambda i: True) -> int:
    """Write the selected 8x8 digits as grayscale PNGs under ``directory/<digit>/``; return how many."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = 0
    for i, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        if not select(i):
            continue
        folder = os.path.join(directory, str(target))
        os.makedirs(folder, exist_ok=True)
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(os.path.join(folder, f"digit-{i:04d}.png"))
        written += 1
    return written


def _extract(images: str, features: str, beam_argv: Sequence[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.extract.job import run_extraction
    from pipeline.extract.launch import configure
    from pipeline.extract.summary import format_summary

    options = PipelineOptions([*beam_argv, "--input", images, "--output", features, "--overwrite"])
    config = configure(options)
    start = time.monotonic()
    manifest = run_extraction(config, options)
    print(format_summary(manifest, features, time.monotonic() - start))
    return manifest


def run_demo(workdir: str, beam_argv: Sequence[str]) -> int:
    from pipeline.train.config import TrainConfig
    from pipeline.train.run import run_training
    from pipeline.train.summary import format_training

    workdir = os.path.abspath(workdir)
    train_images, test_images = os.path.join(workdir, "digits", "train"), os.path.join(workdir, "digits", "test")
    n_train = write_digits(train_images, lambda i: i % 5 != 0)
    n_test = write_digits(test_images, lambda i: i % 5 == 0)
    print(f"featurebeam demo: wrote {n_train + n_test} digit images (10 classes): {n_train} under {train_images}, "
          f"{n_test} held out under {test_images}")

    train_features, test_features = os.path.join(workdir, "features-train"), os.path.join(workdir, "features-test")
    _extract(train_images, train_features, beam_argv)
    _extract(test_images, test_features, beam_argv)

    model_dir = os.path.join(workdir, "model")
    report = run_training(TrainConfig(features=(train_features,), test_features=(test_features,),
                                      output=model_dir, heads=("linear",), overwrite=True))
    print(format_training(report, model_dir))
    test = report["heads"]["linear"]["splits"]["test"]
    print(f"featurebeam demo: the linear head classifies {test['accuracy']:.1%} of the {test['examples']} "
          f"held-out digits correctly (macro-F1 {test['macro_f1']:.3f})")
    return 0
