"""What sharing one model across worker processes costs per batch: the cross-process proxy.

GPU jobs keep one model per machine (``--model-copies 1``): the first worker process to load it serves the
others through Beam's ``MultiProcessShared``, so every other process's batch is pickled to it and the vectors
are pickled back. This times that round trip for a batch of decoded 224x224 images against calling the same
model in-process, with a stand-in model that does next to no work, so what is left is the cost of
crossing processes. With ``--clients N``, N worker processes send batches at once, as on a worker machine where
one process holds the model for all: the images/s they get together bound what the machine can feed one model.
Prints one JSON line.

    python tests/benchmarks/bench_model_proxy.py [--batch-size 128] [--repeats 30] [--clients 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid

import numpy as np


class StandInModel:
    """As ``LoadedBackbone.embed``: a uint8 batch in, {name: (n, 1280) float32} out; next to no compute."""

    def embed(self, images):
        corner = images[:, 0, 0, :].astype(np.float32)
        return {"features": np.repeat(corner, 1280 // 3 + 1, axis=1)[:, :1280]}


def _acquire(tag: str, folder: str):
    from apache_beam.utils.multi_process_shared import MultiProcessShared

    return MultiProcessShared(StandInModel, tag=tag, path=folder, always_proxy=True).acquire()


def _timed(model, batch, repeats: int) -> list[float]:
    model.embed(batch)  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.embed(batch)
        times.append(time.perf_counter() - start)
        assert out["features"].shape == (len(batch), 1280)
    return times


def _client(tag: str, folder: str, batch_size: int, repeats: int, queue) -> None:
    """A second worker process: its batches go through the proxy to the process that holds the model."""
    batch = np.random.default_rng(1).integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8)
    queue.put(_timed(_acquire(tag, folder), batch, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clients", type=int, default=1, help="worker processes sending batches at once")
    args = parser.parse_args()
    batch = np.random.default_rng(0).integers(0, 256, (args.batch_size, 224, 224, 3), dtype=np.uint8)

    local = statistics.median(_timed(StandInModel(), batch, args.repeats))
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        tag = f"bench-{uuid.uuid4().hex}"
        _acquire(tag, folder)  # this process holds the model, like the first worker to load it
        queue = spawn.Queue()
        clients = [spawn.Process(target=_client, args=(tag, folder, args.batch_size, args.repeats, queue))
                   for _ in range(args.clients)]
        start = time.perf_counter()
        for client in clients:
            client.start()
        per_client = [queue.get(timeout=600) for _ in clients]
        for client in clients:
            client.join()
        wall = time.perf_counter() - start
    proxied = statistics.median(t for times in per_client for t in times)
    print(json.dumps({
        "batch_size": args.batch_size, "batch_mb": round(batch.nbytes / 2**20, 1), "clients": args.clients,
        "cpu_count": os.cpu_count(), "in_process_ms": round(local * 1e3, 2),
        "through_proxy_ms": round(proxied * 1e3, 2), "proxy_overhead_ms": round((proxied - local) * 1e3, 2),
        "images_per_s_per_client": round(args.batch_size / proxied, 1),
        "images_per_s_all_clients": round(args.clients * args.batch_size / proxied, 1),
        "wall_s_incl_start": round(wall, 1),
    }))

if __name__ == "__main__":
    main()
