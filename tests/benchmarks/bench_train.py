"""Training time and peak memory of the linear head on 100,000 synthetic 1280-d features.
(Not part of the test run.)

Writes a synthetic feature set (10 overlapping Gaussian classes, 20 shards, the exact format of
``featurebeam extract``), then runs ``featurebeam train --head linear`` on it twice, each in its own
process so that peak memory is that run's alone: once in memory (full-batch L-BFGS sweep) and once
streamed (``--memory-limit-mb 0``: minibatches from the shards). Prints wall time, peak RSS and accuracy.

    python tests/benchmarks/bench_train.py [--records 100000] [--dim 1280] [--json]

``--scaling N1 N2 ...`` instead runs only the streamed train on a set of each size (written one after the
other, the features never held whole) and prints each run's peak RSS, its growth over the smallest run
(the streamed path should stay flat: at most ``--max-growth`` percent, default 10) and records/s (the
set's records over the run's training seconds, which include every pass of the sweep):

    nice python tests/benchmarks/bench_train.py --dim 64 --scaling 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def write_synthetic(root: str, records: int, dim: int, shards: int = 20) -> None:
    """The set of ``blobs(records, 10 classes, seed 7)``, written a chunk at a time. The spread, 9 at 1280-d,
    scales with sqrt(dim) so that the classes overlap as much at any dim (centres lie sqrt(2 dim) apart)."""
    from pipeline.backbones.registry import resolve_backbone
    from tests.featuresets import write_blobs

    backbone = resolve_backbone("mobilenet_v2")
    sizes = [records // shards + (1 if i < records % shards else 0) for i in range(shards)]
    write_blobs(root, records, [f"class{i}" for i in range(10)], dim=dim, seed=7, spread=9.0 * math.sqrt(dim / 1280),
                shard_sizes=sizes, backbone={"name": backbone.name, "weights_sha256": backbone.weights_sha256})


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
            "C": linear["hyperparameters"]["C"], "fits": _fits(linear["hyperparameters"])}


def scaling(sizes: list[int], dim: int) -> dict:
    """The streamed train alone on a set of each size; peak RSS growth relative to the smallest."""
    runs = []
    for records in sorted(sizes):
        with tempfile.TemporaryDirectory() as tmp:
            features = os.path.join(tmp, "features")
            start = time.monotonic()
            write_synthetic(features, records, dim)
            written = time.monotonic() - start
            run = run_train(features, os.path.join(tmp, "streamed"), ["--memory-limit-mb", "0"])
        run.update(records=records, write_seconds=round(written, 1),
                   records_per_second=round(records / run["training_seconds"]))
        runs.append(run)
    base = runs[0]["peak_rss_mb"]
    for run in runs:
        run["rss_growth_percent"] = round(100.0 * (run["peak_rss_mb"] - base) / base, 1)
    return {"dim": dim, "runs": runs}


def print_scaling(result: dict, max_growth: float) -> bool:
    """One line per size; True when every run's peak RSS is within ``max_growth`` percent of the smallest's."""
    print(f"streamed train (--memory-limit-mb 0), linear head, {result['dim']}-d float32 features")
    for r in result["runs"]:
        print(f"  {r['records']:>9d} records: peak RSS {r['peak_rss_mb']:7.0f} MB ({r['rss_growth_percent']:+.1f} %), "
              f"{r['training_seconds']:7.1f} s training, {r['records_per_second']:>7d} records/s, "
              f"validation accuracy {r['validation_accuracy']:.4f} (set written in {r['write_seconds']:.0f} s)")
    worst = max(r["rss_growth_percent"] for r in result["runs"])
    flat = worst <= max_growth
    print(f"  peak RSS growth {worst:+.1f} %: {'within' if flat else 'OVER'} the {max_growth:g} % goal")
    return flat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--scaling", type=int, nargs="+", metavar="RECORDS",
                        help="run only the streamed train, once per set size, and compare their peak RSS")
    parser.add_argument("--max-growth", type=float, default=10.0, help="percent (with --scaling)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.scaling:
        result = scaling(args.scaling, args.dim)
        if args.json:
            print(json.dumps(result))
        elif not print_scaling(result, args.max_growth):
            raise SystemExit(1)
        return
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


def _fits(hyper: dict) -> int:
    """L-BFGS solves of the linear head: every fold at every C tried and two fits, or the sweep and the refit."""
    if "cross_validation" in hyper:
        cv = hyper["cross_validation"]
        return len(cv["grid"]) * cv["folds"] + 2
    return len(hyper["sweep"]) + 1
