"""Peak memory while extracting one big WebDataset tar shard. (Not part of the test run.)

Writes a tar shard of large JPEGs (default 2 GB), runs ``featurebeam extract`` on it in each local layout and
reports the peak resident memory (VmHWM) of the launcher and of every worker process, the shard size and the
images/s; then checks the counts add up:

    python tests/benchmarks/bench_tar_memory.py [--gb 2] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tarfile
import tempfile

from pipeline.tools.bench import run_extract

LAYOUTS = {
    "2 worker processes (default)": [],
    "in-process, 2 threads": ["--direct_num_workers=2", "--direct_running_mode=multi_threading"],
}


def make_shard(path: str, gigabytes: float) -> int:
    """A tar shard of distinct 3000x2000 JPEG crops (about 1.5 MB each), with .cls labels; returns the count."""
    import sklearn.datasets
    from PIL import Image

    photos = [Image.open(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)).convert("RGB")
              .resize((3200, 2140), Image.BICUBIC) for name in ("china.jpg", "flower.jpg")]
    variants = []
    for i in range(24):  # encoding is slow: a few dozen distinct images, cycled
        dx, dy = (i * 37) % 200, (i * 23) % 140
        buf = io.BytesIO()
        photos[i % 2].crop((dx, dy, dx + 3000, dy + 2000)).save(buf, "JPEG", quality=97)
        variants.append(buf.getvalue())
    target, written, n = gigabytes * 2**30, 0, 0
    with tarfile.open(path, "w") as tar:
        while written < target:
            for name, data in ((f"{n:06d}.jpg", variants[n % len(variants)]), (f"{n:06d}.cls", str(n % 2).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                written += 512 + len(data)
            n += 1
    return n


def run(shard: str, out: str, flags: list[str]) -> dict:
    """Run the CLI; its launcher's and its worker processes' memory high-water marks."""
    seconds, memory, counts = run_extract(shard, out, flags)
    peaks = dict(memory.peaks_kb)
    launcher = peaks.pop(memory.pid, 0)
    workers = sorted((kb for kb in peaks.values() if kb > 100_000), reverse=True)  # python workers, not helpers
    return {"seconds": seconds, "counts": counts, "launcher_mb": launcher / 1024,
            "worker_mb": [kb / 1024 for kb in workers]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.0, help="size of the tar shard (default: 2)")
    parser.add_argument("--workdir", help="where the shard and outputs go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the shard and outputs")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="featurebeam-bench-tar-")
    os.makedirs(workdir, exist_ok=True)
    shard = os.path.join(workdir, "shard-000000.tar")
    try:
        if not os.path.exists(shard):
            n = make_shard(shard, args.gb)
            print(f"wrote {shard}: {n} JPEGs of 3000x2000, {os.path.getsize(shard) / 2**30:.2f} GiB", flush=True)
        for name, flags in LAYOUTS.items():
            r = run(shard, os.path.join(workdir, "out"), flags)
            c = r["counts"]
            assert c["inputs"] == c["embedded"] + c["failed"] and c["failed"] == 0, c
            rate = c["embedded"] / r["seconds"]
            workers = ", ".join(f"{mb:.0f}" for mb in r["worker_mb"]) or "none (in the launcher)"
            print(f"{name:34s} {c['embedded']} images in {r['seconds']:.0f} s ({rate:.1f}/s); peak MB: "
                  f"launcher {r['launcher_mb']:.0f}, workers {workers}", flush=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
