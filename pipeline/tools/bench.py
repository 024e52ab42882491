"""``featurebeam bench``: how many images per second will one worker do, and how close is the pipeline to
the backbone's own speed?

Measured in one run, on this machine:

1. the limits (``bench_limits.py``): the backbone's compiled forward pass alone, at each candidate batch
   size (the best one counts), and the CPU limit, what the cores can do when each image must also be decoded
   (``cores / (decode + forward core-seconds per image)``);
2. the pipeline: ``featurebeam extract`` as a user runs it (its default batch size unless told), end to end
   (listing, reading, decoding, inference, writing), run twice, on all the images and on a fifth of them.
   Every run pays a fixed start-up (Python and TensorFlow imports, the model build), so the pipeline's rate
   is the marginal one, ``(N - n) / (T_N - T_n)``: the images/s an
   overnight job sees. The end-to-end rate of the full run is reported too (and used when there are too few
   images for the two runs' times to differ clearly).

The ratios are pipeline / forward-only limit (``ratio``) and pipeline / CPU limit (``ratio_to_cpu_limit``).
Peak memory is the largest resident-set high-water mark (VmHWM) of any
process of the full run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.tools.bench_limits import measure_decode, measure_limit, usable_cores

__all__ = ["BenchResult", "measure_pipeline", "make_photos", "run_bench", "format_bench", "ProcessTreeMemory"]


@dataclass
class BenchResult:
    backbone: str
    images: int
    limit_images_per_s: float
    limit_batch_size: int
    limit_by_batch_size: dict
    pipeline_images_per_s: float            # marginal: start-up excluded
    pipeline_end_to_end_images_per_s: float
    ratio: float
    peak_rss_mb: float
    extract_flags: list
    fold_batchnorm: bool = True             # BatchNorm folded into the convolutions (limit and pipeline)
    cores: int = 0                          # cores this process may run on
    decode_core_ms: float = 0.0             # one image's decoding, on one core (the workers' decoder)
    forward_core_ms: float = 0.0            # one image's forward pass, CPU time of all its threads
    cpu_limit_images_per_s: float = 0.0     # cores / (decode + forward), the most a pipeline can do here
    ratio_to_cpu_limit: float = 0.0
    precision: str = "float32"              # the forward pass's type (limit and pipeline)
    float32_limit_images_per_s: float = 0.0  # with another precision: the float32 limit, measured beside it
    precision_speedup: float = 1.0          # limit / float32 limit
    cpu: str = ""                           # this machine's CPU: model, AVX-512 or AVX2, bfloat16
    onednn: str = ""                        # TensorFlow's oneDNN kernels, "on" or "off" (limit and pipeline)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def make_photos(folder: str, n: int, width: int = 500, height: int = 400) -> list[str]:
    """``n`` distinct JPEG photos of about ``width`` x ``height`` (crops of scikit-learn's two sample photos)."""
    import sklearn.datasets
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    photos = [Image.open(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)).convert("RGB")
              for name in ("china.jpg", "flower.jpg")]
    paths = []
    for i in range(n):
        photo = photos[i % 2]
        dx, dy = (i * 7) % (photo.width - width + 1), (i * 3) % (photo.height - height + 1)
        path = os.path.join(folder, f"{i:05d}.jpg")
        photo.crop((dx, dy, dx + width, dy + height)).save(path, quality=90)
        paths.append(path)
    return paths


def _image_files(folder: str) -> list[str]:
    found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    return sorted(found)


class ProcessTreeMemory:
    """Polls the resident-set high-water mark (VmHWM) of a process and all its descendants until it exits."""

    def __init__(self, pid: int, every: float = 0.25):
        self.pid, self.every = pid, every
        self.peaks_kb: dict[int, int] = {}
        self._stop = threading.Event()  # made here, not by the thread: a run that ends first still stops it
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self):
        while True:
            for pid in descendants(self.pid):
                kb = vm_hwm_kb(pid)
                if kb:
                    self.peaks_kb[pid] = max(self.peaks_kb.get(pid, 0), kb)
            if self._stop.wait(self.every):
                return

    @property
    def peak_mb(self) -> float:
        return max(self.peaks_kb.values(), default=0) / 1024


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc; empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_extract(images: str, output: str, flags: Sequence[str]) -> tuple[float, ProcessTreeMemory, dict]:
    """(wall seconds, the memory peaks of its processes, manifest counts) of one ``featurebeam extract`` run."""
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "extract", "--input", images, "--output", output,
                                "--overwrite", "--quiet", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with ProcessTreeMemory(process.pid) as memory:
        _, stderr = process.communicate()
    seconds = time.monotonic() - start
    if process.returncode != 0:
        raise RuntimeError(f"featurebeam extract failed: {stderr.decode(errors='replace')[-2000:]}")
    with open(os.path.join(output, "manifest.json")) as f:
        counts = json.load(f)["counts"]
    return seconds, memory, counts


def measure_pipeline(images: str, workdir: str, flags: Sequence[str]) -> tuple[float, float, float, int]:
    """(marginal images/s, end-to-end images/s, peak MB, images) of extraction over the folder ``images``."""
    files = _image_files(images)
    subset = os.path.join(workdir, "subset")
    os.makedirs(subset, exist_ok=True)
    for path in files[: max(1, len(files) // 5)]:
        os.symlink(path, os.path.join(subset, os.path.basename(path)))
    full_s, memory, counts = run_extract(images, os.path.join(workdir, "out-full"), flags)
    peak_mb = memory.peak_mb
    part_s, _, part_counts = run_extract(subset, os.path.join(workdir, "out-subset"), flags)
    extra = counts["inputs"] - part_counts["inputs"]
    end_to_end = counts["embedded"] / full_s
    # too few images to tell their time from the start-up's noise: the end-to-end rate is all there is
    marginal = extra / (full_s - part_s) if full_s - part_s > 0.1 * full_s else end_to_end
    return marginal, end_to_end, peak_mb, counts["inputs"]


def run_bench(backbone_name: str, images: str | None, batch_size: int | None, flags: Sequence[str],
              count: int = 600, log=print, limit_batch_sizes: Sequence[int] = (16, 32, 64),
              weights: str | None = None, preprocessing: str | None = None,
              fold_batchnorm: bool = True, precision: str = "float32", limit_seconds: float = 3.0,
              onednn: str = "auto") -> BenchResult:
    """The limit is the best of ``limit_batch_sizes`` (and ``batch_size``), each timed for ``limit_seconds``; the
    pipeline runs as a user would run it: with ``batch_size``, or extract's default without it. ``weights``,
    ``preprocessing`` and ``fold_batchnorm`` are extract's ``--weights``, ``--preprocessing`` and (off)
    ``--no-fold-batchnorm``, for both; ``onednn`` is extract's ``--onednn``, applied to this process by the
    command before TensorFlow is imported."""
    from pipeline.backbones.registry import resolve_backbone
    from transforms.decode.images import decode_image
    from transforms.worker.cpu import cpu_kind, onednn_state

    backbone = resolve_backbone(backbone_name, weights, preprocessing, fold_batchnorm=fold_batchnorm)
    workdir = tempfile.mkdtemp(prefix="featurebeam-bench-")
    try:
        if images is None:
            images = os.path.join(workdir, "photos")
            log(f"writing {count} JPEG photos of 500x400 to {images}")
            make_photos(images, count)
        files = _image_files(images)
        if not files:
            raise ValueError(f"no files in {images}")
        encoded = []
        for path in files[:64]:
            with open(path, "rb") as f:
                encoded.append(f.read())
        preloaded = [decode_image(data, backbone.preprocessing) for data in encoded]
        sizes = sorted(set(limit_batch_sizes) | ({batch_size} if batch_size else set()))
        log(f"limit: the compiled forward pass alone, batch sizes {', '.join(map(str, sizes))}; decoding on one core")
        costs: dict = {}
        rates = measure_limit(backbone, np.stack(preloaded), sizes, limit_seconds, costs=costs, precision=precision)
        best = max(rates, key=rates.get)
        float32_best = rates[best]
        if precision != "float32":
            log(f"limit in float32 too, beside {precision}")
            float32_best = max(measure_limit(backbone, np.stack(preloaded), sizes, limit_seconds).values())
        decode_s, cores = measure_decode(encoded, backbone.preprocessing), usable_cores()
        cpu_limit = cores / (decode_s + costs[best])
        log(f"pipeline: featurebeam extract on {len(files)} images, and on a fifth of them")
        extract_flags = [f"--backbone={backbone_name}", *([f"--weights={weights}"] if weights else []),
                         *([f"--preprocessing={preprocessing}"] if preprocessing else []),
                         *([] if fold_batchnorm else ["--no-fold-batchnorm"]),
                         *([f"--precision={precision}"] if precision != "float32" else []),
                         *([f"--onednn={onednn}"] if onednn != "auto" else []),
                         *([f"--batch-size={batch_size}"] if batch_size else []), *flags]
        marginal, end_to_end, peak, n = measure_pipeline(images, workdir, extract_flags)
        return BenchResult(backbone_name, n, rates[best], best, {str(k): v for k, v in rates.items()}, marginal,
                           end_to_end, marginal / rates[best], peak, extract_flags, fold_batchnorm, cores,
                           1000 * decode_s, 1000 * costs[best], cpu_limit, marginal / cpu_limit, precision,
                           float32_best, rates[best] / float32_best, cpu_kind().describe(), onednn_state())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def format_bench(r: BenchResult) -> str:
    by_size = ", ".join(f"{size}: {rate:.1f}" for size, rate in r.limit_by_batch_size.items())
    return "\n".join([
        f"featurebeam bench: {r.backbone}, {r.images} images",
        f"  machine   {r.cpu}, {r.cores} cores; TensorFlow's oneDNN kernels {r.onednn}",
        f"  limit     {r.limit_images_per_s:7.1f} images/s  forward pass alone, batch {r.limit_batch_size} "
        f"(by batch size: {by_size}); BatchNorm {'folded' if r.fold_batchnorm else 'not folded'}; {r.precision}"
        + (f", {r.precision_speedup:.2f}x float32's {r.float32_limit_images_per_s:.1f}" if r.precision != "float32"
           else ""),
        f"  pipeline  {r.pipeline_images_per_s:7.1f} images/s  featurebeam extract, start-up excluded "
        f"({r.pipeline_end_to_end_images_per_s:.1f} end to end, start-up included); {' '.join(r.extract_flags)}",
        f"  cpu limit {r.cpu_limit_images_per_s:7.1f} images/s  {r.cores} cores / (decode {r.decode_core_ms:.2f} ms + "
        f"forward {r.forward_core_ms:.2f} ms of a core per image)",
        f"  ratio     {r.ratio:7.2f}            pipeline / forward-only limit; {r.ratio_to_cpu_limit:.2f} pipeline / "
        "cpu limit",
        f"  memory    {r.peak_rss_mb:7.0f} MB peak resident, largest process",
    ])
