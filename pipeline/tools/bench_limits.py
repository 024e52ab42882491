"""The most images per second this machine can do, the yardsticks ``featurebeam bench`` holds the pipeline to.

- the forward-only limit (``measure_limit``): the backbone's compiled forward pass alone, on uint8 batches
  already in memory, at each candidate batch size (the best one counts);
- the CPU limit: what the cores can do when each image must also be decoded. The decode cost is measured on
  one core with the workers' own decoder (``measure_decode``: ``decode_image``, the same preprocessing), the
  forward cost as the CPU time the forward pass takes per image at the best batch size (all its threads);
  then ``cpu_limit = cores / (decode + forward core-seconds per image)``, over the ``usable_cores``. Both
  costs are CPU time, so other load on the machine changes them little; the pipeline's rate is wall time, so
  its ratio to the CPU limit is only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["measure_limit", "measure_decode", "usable_cores"]


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def measure_decode(encoded: Sequence[bytes], preprocessing, repeats: int = 3) -> float:
    """Core-seconds to decode one image with the workers' decoder (``decode_image``, this preprocessing): the
    thread's CPU time over all of ``encoded``, the best of ``repeats`` passes, per image."""
    from transforms.decode.images import decode_image

    costs = []
    for _ in range(repeats):
        start = time.thread_time()
        for data in encoded:
            decode_image(data, preprocessing)
        costs.append((time.thread_time() - start) / len(encoded))
    return min(costs)


def measure_limit(backbone, images: np.ndarray, batch_sizes: Sequence[int], seconds: float = 3.0,
                  repeats: int = 3, costs: dict | None = None, precision: str = "float32") -> dict[int, float]:
    """images/s of the compiled forward pass alone at each batch size (median of ``repeats`` timed spans of at
    least ``seconds``), with the same function the workers use. ``costs``, when given, receives each batch
    size's CPU time per image (seconds of all the process's threads)."""
    from transforms.embed.backbone import BackboneHandler
    from transforms.embed.settings import EmbedSettings
    from transforms.schema.fields import OutputSpec

    layer = backbone.default_layer
    shape = backbone.layer_shapes[layer]
    output = OutputSpec(layer, layer, "avg" if len(shape) > 1 else "none", int(shape[-1]))
    settings = EmbedSettings((output,), batch_size=max(batch_sizes), precision=precision)
    model = BackboneHandler(backbone, settings).load_model()
    rates = {}
    for size in batch_sizes:
        batch = np.stack([images[i % len(images)] for i in range(size)])
        model(batch)  # warm-up
        spans, cpu = [], []
        for _ in range(repeats):
            done, start, start_cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - start < seconds / repeats:
                model(batch)
                done += size
            spans.append(done / (time.perf_counter() - start))
            cpu.append((time.process_time() - start_cpu) / done)
        rates[size] = float(np.median(spans))
        if costs is not None:
            costs[size] = float(np.median(cpu))
    return rates
