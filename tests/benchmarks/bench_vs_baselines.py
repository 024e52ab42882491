"""featurebeam against two common ways of doing the same job. (Not part of the test run.)

On the same JPEG photos and the same MobileNetV2 weights (output: ``features.18``, average-pooled, 1280
floats per image, written as TFRecords), side by side, interleaved, several times:

- ``featurebeam``: ``featurebeam extract`` with its defaults;
- ``beam-docs``: a pipeline built the way Beam's RunInference documentation shows it: ``beam.Create`` of the
  paths, decoding and preprocessing in a ``beam.Map``, ``RunInference`` with a handler that calls the Keras
  model eagerly on each numpy batch, ``WriteToTFRecord``; default runner options;
- ``tf.data``: one process, ``tf.data`` reading and decoding in parallel, ``model.predict``, a TFRecord writer.

Each is timed on all photos and on a fifth of them; the rate is the marginal one, (N - n) / (T_N - T_n), so
the fixed start-up of each process cancels out. Prints medians and the ratios to featurebeam:

    python tests/benchmarks/bench_vs_baselines.py [--images 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYER = "features.18"


def _photos(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jpg"))


def run_beam_docs(images: str, output: str) -> None:
    import apache_beam as beam
    import numpy as np
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

    from pipeline.backbones.registry import resolve_backbone
    from transforms.decode.images import decode_image

    spec = resolve_backbone("mobilenet_v2")

    class KerasEagerHandler(ModelHandler):
        def load_model(self):
            return spec.load([LAYER])

        def run_inference(self, batch, model, inference_args=None):
            activations = model(np.stack(batch), training=False)[LAYER]  # eager, on numpy
            vectors = np.asarray(activations).mean(axis=(1, 2))
            return [PredictionResult(x, v) for x, v in zip(batch, vectors, strict=True)]

    def preprocess(path):
        with open(path, "rb") as f:
            return decode_image(f.read(), spec.preprocessing)

    def to_example(result):
        import tensorflow as tf

        feature = {"feature/features.18": tf.train.Feature(float_list=tf.train.FloatList(value=result.inference))}
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    with beam.Pipeline() as p:
        (p
         | beam.Create(_photos(images))
         | "Read and preprocess" >> beam.Map(preprocess)
         | RunInference(KerasEagerHandler())
         | beam.Map(to_example)
         | beam.io.WriteToTFRecord(os.path.join(output, "part")))


def run_tf_data(images: str, output: str) -> None:
    import tensorflow as tf

    from pipeline.backbones.registry import resolve_backbone
    from pipeline.serving.graph_images import decode_and_crop

    spec = resolve_backbone("mobilenet_v2")
    model = spec.load([LAYER])
    pooled = tf.keras.Model(model.input, tf.keras.layers.GlobalAveragePooling2D()(model.output[LAYER]))
    dataset = (tf.data.Dataset.from_tensor_slices(_photos(images))
               .map(lambda path: decode_and_crop(tf.io.read_file(path), spec.preprocessing),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .batch(32)
               .prefetch(tf.data.AUTOTUNE))
    vectors = pooled.predict(dataset, verbose=0)
    os.makedirs(output, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(output, "part-00000.tfrecord")) as writer:
        for v in vectors:
            feature = {"feature/features.18": tf.train.Feature(float_list=tf.train.FloatList(value=v))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def _time(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.monotonic()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def command(method: str, images: str, output: str) -> list[str]:
    if method == "featurebeam":
        return [sys.executable, "-m", "pipeline", "extract", "--input", images, "--output", output, "--overwrite",
                "--quiet"]
    return [sys.executable, __file__, "--run", method, "--photos", images, "--output", output]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", choices=["beam-docs", "tf.data"], help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        (run_beam_docs if args.run == "beam-docs" else run_tf_data)(args.photos, args.output)
        return

    sys.path.insert(0, REPO)
    from pipeline.tools.bench import make_photos

    methods = ["featurebeam", "beam-docs", "tf.data"]
    with tempfile.TemporaryDirectory(prefix="featurebeam-baselines-") as tmp:
        full, part = os.path.join(tmp, "all"), os.path.join(tmp, "fifth")
        paths = make_photos(full, args.images)
        os.makedirs(part)
        for path in paths[: args.images // 5]:
            os.symlink(path, os.path.join(part, os.path.basename(path)))
        rates = {m: [] for m in methods}
        for r in range(args.repeats):
            for m in methods:
                t_full = _time(command(m, full, os.path.join(tmp, f"out-{m}-{r}-all")))
                t_part = _time(command(m, part, os.path.join(tmp, f"out-{m}-{r}-fifth")))
                rates[m].append((args.images - args.images // 5) / (t_full - t_part))
                print(f"run {r + 1}: {m:12s} {rates[m][-1]:6.1f} images/s "
                      f"(all {t_full:.1f} s, a fifth {t_part:.1f} s)", flush=True)
    base = statistics.median(rates["featurebeam"])
    print(f"\n{args.images} JPEGs of 500x400, mobilenet_v2 features.18, median of {args.repeats} runs each:")
    for m in methods:
        median = statistics.median(rates[m])
        print(f"  {m:12s} {median:6.1f} images/s   featurebeam / {m} = {base / median:.2f}")


if __name__ == "__main__":
    main()
