"""The input's normalisation row by row against per channel, inside a backbone's forward pass. (Not part of the
test run.)

``ImagePreprocessing.normalize`` views each image as rows of width x 3 values with ``mean`` and ``1 / std`` tiled to
a row; per channel (a 3-vector broadcast along the last axis) is how it ran before, and how it still runs where the
width is not fixed. Both forms are loaded in one process as the workers load a backbone, checked to give the same
vectors bit for bit, and called alternately on the same random batch. Prints the median rate of each by wall time
and by CPU time (all threads; less sensitive to other load) and their ratios:

    python tests/benchmarks/bench_normalize.py [--backbone mobilenet_v2] [--rounds 15] [--calls 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
from bench_onnx import BATCH, featurebeam_function

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def per_channel(spec):
    """``spec`` with its normalisation as it ran before: the per-channel constants broadcast along the last axis."""
    import dataclasses

    from transforms.decode.images import ImagePreprocessing

    class PerChannel(ImagePreprocessing):
        def normalize(self, images_uint8):
            import tensorflow as tf

            x = tf.cast(images_uint8, tf.float32) * self.scale
            if self.bgr:
                x = x[..., ::-1]
            return (x - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)

    fields = {f.name: getattr(spec.preprocessing, f.name) for f in dataclasses.fields(spec.preprocessing)}
    return dataclasses.replace(spec, preprocessing=PerChannel(**fields))


def load(spec):
    """The backbone's compiled function as ``featurebeam bench`` builds it."""
    function = featurebeam_function(spec, threads=2)
    return lambda images: np.asarray(function({"images": images}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=4, help="calls of a batch per form and round")
    a = ap.parse_args()
    sys.path.insert(0, REPO)
    from pipeline.backbones.registry import resolve_backbone
    from transforms.worker.cpu import cpu_kind, use_onednn

    use_onednn("auto")  # as every featurebeam command does, before TensorFlow is imported
    spec = resolve_backbone(a.backbone)
    forms = {"per channel": load(per_channel(spec)), "row-wise": load(spec)}
    crop = spec.preprocessing.crop
    images = np.random.default_rng(0).integers(0, 256, (BATCH, crop, crop, 3), dtype=np.uint8)
    vectors = {name: f(images) for name, f in forms.items()}
    difference = float(np.abs(vectors["per channel"] - vectors["row-wise"]).max())
    wall, cpu = {name: [] for name in forms}, {name: [] for name in forms}
    for r in range(a.rounds):
        for name in (list(forms) if r % 2 == 0 else list(forms)[::-1]):  # the one that goes first alternates
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(a.calls):
                forms[name](images)
            wall[name].append(a.calls * BATCH / (time.perf_counter() - start))
            cpu[name].append(a.calls * BATCH / (time.process_time() - start_cpu))
    print(f"{a.backbone}, batch {BATCH}, {a.rounds} alternating rounds of {a.calls} calls; {cpu_kind().describe()}; "
          f"vectors' max difference {difference:g}")
    print("form          images/s (wall)  images per CPU-second")
    for name in forms:
        print(f"{name:<12} {statistics.median(wall[name]):16.1f} {statistics.median(cpu[name]):22.1f}")
    ratio = {k: statistics.median(v["row-wise"]) / statistics.median(v["per channel"])
             for k, v in (("wall", wall), ("cpu", cpu))}
    print(f"row-wise / per channel: {ratio['wall']:.3f}x by wall time, {ratio['cpu']:.3f}x by CPU time")


if __name__ == "__main__":
    main()
