"""Which local worker layout is fastest on this machine? (Not part of the test run.)

Runs ``featurebeam extract`` on the same JPEG folder with each layout, several times, interleaved, and
prints the median wall time of each and its ratio to the first layout (one in-process worker, TensorFlow on
all cores):

    python tests/benchmarks/bench_local_workers.py [--images N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

LAYOUTS = {
    "1 worker, TF on all cores": ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
    "2 threads sharing one model (default)": [],
    "2 processes x cores/2 TF threads": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}


def make_images(folder: str, n: int) -> None:
    import sklearn.datasets
    from PIL import Image

    photos = [Image.open(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)).convert("RGB")
              for name in ("china.jpg", "flower.jpg")]
    for i in range(n):
        photo = photos[i % 2]
        dx, dy = (i * 7) % 120, (i * 5) % 80
        crop = photo.crop((dx, dy, dx + 520, dy + 347))
        os.makedirs(os.path.join(folder, f"class{i % 2}"), exist_ok=True)
        crop.save(os.path.join(folder, f"class{i % 2}", f"{i:05d}.jpg"), quality=90)


def run(images: str, out: str, flags: list[str]) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "pipeline", "extract", "--input", images, "--output", out,
                    "--overwrite", *flags], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = os.path.join(tmp, "images")
        make_images(images, args.images)
        times = {name: [] for name in LAYOUTS}
        for _ in range(args.repeats):
            for name, flags in LAYOUTS.items():
                times[name].append(run(images, os.path.join(tmp, "out"), flags))
    base = statistics.median(next(iter(times.values())))
    print(f"{args.images} JPEGs (520x347), {os.cpu_count()} cores, median of {args.repeats} runs each:")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:40s} {m:6.1f} s  {args.images / m:6.1f} images/s  ratio to first {base / m:.2f}")


if __name__ == "__main__":
    main()
