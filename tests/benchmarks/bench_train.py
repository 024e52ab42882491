"""Training time and peak memory of the linear head on 100,000 synthetic 1280-d features.
(Not part of the test run.)

Writes a synthetic feature set (10 overlapping Gaussian classes, 20 shards, the exact format of
``featurebeam extract``), then runs ``featurebeam train --head linear`` on it twice, each in its own
process so that peak memory is that run's alone: once in memory (full-batch L-BFGS sweep) and once
streamed (``--memory-limit-mb 0``: minibatches from the shards). Prints wall time, peak RSS and accuracy.

    python tests/benchmarks/bench_train.py [--records 100000] [--dim 1280] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def write_synthetic(root: str, records: int, dim: int, shards: int = 20) -> None:
    from pipeline.backbones.registry import resolve_backbone
    from tests.featuresets import blobs, write_feature_set

    backbone = resolve_backbone("mobilenet_v2")
    keys, labels, x = blobs(records, [f"class{i}" for i in range(10)], dim=dim, seed=7, spread=9.0)
    sizes = [records // shards + (1 if i < records % shards else 0) for i in range(shards)]
    write_feature_set(root, keys, labels, x, shard_sizes=sizes,
                      backbone={"name": backbone.name, "weights_sha256": backbone.weights_sha256})


def _peak_rss_mb(pid: int) -> float | None:
    """The process's resident-memory high-water mark (VmHWM: reset at exec, unlike ru_maxrss)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_train(features: str, out: str, extra: list[str]) -> dict:
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train", "--features", features, "--output", out,
                             "--overwrite", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_mb = 0.0
    while proc.poll() is None:
        peak_mb = max(peak_mb, _peak_rss_mb(proc.pid) or 0.0)
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"featurebeam train failed with status {proc.returncode}")
    seconds = time.monotonic() - start
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    linear = metrics["heads"]["linear"]
    return {"seconds": round(seconds, 1), "training_seconds": metrics["seconds"],
            "peak_rss_mb": round(peak_mb, 1),
            "validation_accuracy": round(linear["splits"]["validation"]["accuracy"], 4),
            "C": linear["hyperparameters"]["C"], "fits": len(linear["hyperparameters"]["sweep"]) + 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        features = os.path.join(tmp, "features")
        start = time.monotonic()
        write_synthetic(features, args.records, args.dim)
        written = time.monotonic() - start
        streamed = run_train(features, os.path.join(tmp, "streamed"), ["--memory-limit-mb", "0"])
        in_memory = run_train(features, os.path.join(tmp, "in-memory"), [])
    result = {"records": args.records, "dim": args.dim, "feature_bytes_mb": round(args.records * args.dim * 4 / 2**20),
              "write_seconds": round(written, 1), "in_memory": in_memory, "streamed": streamed}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.records} records x {args.dim} float32 = {result['feature_bytes_mb']} MB of features")
    for name in ("in_memory", "streamed"):
        r = result[name]
        print(f"  {name:10s} {r['seconds']:7.1f} s wall ({r['training_seconds']:.1f} s training), peak RSS "
              f"{r['peak_rss_mb']:.0f} MB, validation accuracy {r['validation_accuracy']:.4f}, C {r['C']:.3g}, "
              f"{r['fits']} fits")


if __name__ == "__main__":
    main()
