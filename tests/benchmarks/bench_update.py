"""What a nightly ``--update`` of a large archive costs, against the fresh extraction it spares. (Not part of the
test run.)

With the tiny model-file backbone of ``bench_scale.py`` (12x12x3 -> a 16-d vector, so that the pipeline is
measured and not the model):

1. writes an archive of N tiny records as TFRecord files: most in files of ``--records-per-file``, and two small
   files of ``--changed`` x N and ``--removed`` x N records;
2. fresh: ``featurebeam extract`` on it (the default local layout, 2 worker processes);
3. the night: a new file of ``--new`` x N records arrives, the first small file is rewritten with other records
   (every record in it changed), the second is deleted;
4. ``featurebeam extract --update`` on the same OUTDIR, and checks its generation's counts (new, changed,
   removed, kept) and that the features hold each current key once;
5. the same two commands on an archive of 10 records: what each costs whatever the archive (starting the
   command, the workers, TensorFlow), so the time the archive's size adds can be told apart.

It reports each run's wall time and the peak resident memory (VmHWM) of the launcher and of its largest other
process, and the update's time as a fraction of the fresh run's:

    python tests/benchmarks/bench_update.py [--records 1e6] [--new 0.01] [--changed 0.001] [--removed 0.001]
        [--records-per-file 100000] [--workdir DIR] [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench_scale import VARIANTS, example_frames, iter_keys, make_model, make_records, split_peaks

from pipeline.tools.bench import ProcessTreeMemory
from transforms.schema.layout import FEATURES_DIR, MANIFEST_NAME, SHARD_SUFFIX


def write_file(path: str, n: int, shift: int = 0) -> None:
    """``n`` records, the frames cycled from ``shift``: another ``shift`` gives the same keys other contents."""
    frames = example_frames()
    with open(path + ".partial", "wb") as f:
        f.write(b"".join(frames[(i + shift) % VARIANTS] for i in range(n)))
    os.rename(path + ".partial", path)


def run(command: list[str]) -> tuple[float, ProcessTreeMemory, dict]:
    """(wall seconds, memory peaks, manifest) of one ``featurebeam extract`` command."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with ProcessTreeMemory(process.pid) as memory:
        out, err = process.communicate()
    seconds = time.monotonic() - start
    if process.returncode != 0:
        raise RuntimeError(f"featurebeam extract failed: {err.decode(errors='replace')[-2000:]}")
    output = command[command.index("--output") + 1]
    with open(os.path.join(output, MANIFEST_NAME)) as f:
        return seconds, memory, json.load(f) | {"stdout": out.decode(errors="replace")}


def keys_once(output: str) -> int:
    """How many records the feature set holds, each key once (an error otherwise)."""
    seen, total = set(), 0
    for name in sorted(os.listdir(os.path.join(output, FEATURES_DIR))):
        if name.endswith(SHARD_SUFFIX):
            for key in iter_keys(os.path.join(output, FEATURES_DIR, name)):
                seen.add(key)  # 1M keys of ~60 bytes: a benchmark's check, not the job's
                total += 1
    if total != len(seen):
        raise AssertionError(f"{total - len(seen)} keys are held more than once")
    return total


def fixed_costs(workdir: str, model: str) -> dict[str, float]:
    """Wall seconds of a fresh extraction and of an update (one new record) on an archive of 10 records."""
    archive, output = os.path.join(workdir, "ten"), os.path.join(workdir, "ten-out")
    shutil.rmtree(archive, ignore_errors=True)
    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(archive)
    write_file(os.path.join(archive, "ten.tfrecord"), 10)
    base = [sys.executable, "-m", "pipeline", "extract", "--input", os.path.join(archive, "*.tfrecord"),
            "--output", output, "--backbone", model, "--quiet"]
    fresh_s, _, _ = run(base)
    write_file(os.path.join(archive, "one.tfrecord"), 1)
    update_s, _, _ = run([*base, "--update"])
    return {"fresh": fresh_s, "update": update_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=lambda s: int(float(s)), default=1_000_000)
    parser.add_argument("--new", type=float, default=0.01)
    parser.add_argument("--changed", type=float, default=0.001)
    parser.add_argument("--removed", type=float, default=0.001)
    parser.add_argument("--records-per-file", type=int, default=100_000)
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n, new, changed, removed = (args.records, round(args.new * args.records), round(args.changed * args.records),
                                round(args.removed * args.records))
    workdir = args.workdir or tempfile.mkdtemp(prefix="featurebeam-update-")
    try:
        archive, output = os.path.join(workdir, "archive"), os.path.join(workdir, "out")
        shutil.rmtree(archive, ignore_errors=True)
        shutil.rmtree(output, ignore_errors=True)
        make_records(archive, n - changed - removed, args.records_per_file)
        write_file(os.path.join(archive, "changing.tfrecord"), changed)
        write_file(os.path.join(archive, "leaving.tfrecord"), removed)
        model = os.path.join(workdir, "tiny.keras")
        make_model(model)
        base = [sys.executable, "-m", "pipeline", "extract", "--input", os.path.join(archive, "*.tfrecord"),
                "--output", output, "--backbone", model, "--quiet"]
        fresh_s, fresh_mem, fresh = run(base)
        print(f"fresh: {fresh['counts']['inputs']:,} records in {fresh_s:.1f} s", flush=True)

        write_file(os.path.join(archive, "arrived.tfrecord"), new)
        write_file(os.path.join(archive, "changing.tfrecord"), changed, shift=1)
        os.remove(os.path.join(archive, "leaving.tfrecord"))
        update_s, update_mem, updated = run([*base, "--update"])
        print(updated["stdout"].splitlines()[0], flush=True)

        got = {k: updated["generations"][-1][k] for k in ("new", "changed", "removed", "kept")}
        want = {"new": new, "changed": changed, "removed": removed, "kept": n - changed - removed}
        if got != want:
            raise AssertionError(f"the update counted {got}, expected {want}")
        held = keys_once(output)
        if held != n + new - removed:
            raise AssertionError(f"the set holds {held} records, expected {n + new - removed}")
        floor = fixed_costs(workdir, model)
        rows = []
        for name, seconds, memory in (("fresh", fresh_s, fresh_mem), ("update", update_s, update_mem)):
            launcher, worker, _ = split_peaks(memory)
            rows.append({"run": name, "seconds": seconds, "launcher_mb": launcher, "largest_worker_mb": worker})
        print(f"\n{n:,} records; the night: {new:,} new, {changed:,} changed, {removed:,} removed\n")
        print("| run | wall | launcher peak | largest worker peak |")
        print("|-----|-----:|--------------:|--------------------:|")
        for r in rows:
            print(f"| {r['run']} | {r['seconds']:.1f} s | {r['launcher_mb']:.0f} MB | "
                  f"{r['largest_worker_mb']:.0f} MB |")
        largest = [max(r["launcher_mb"], r["largest_worker_mb"]) for r in rows]
        print(f"\nupdate / fresh: {update_s / fresh_s:.3f} of the time; largest process "
              f"{largest[1] / largest[0]:.3f}x")
        print(f"the same commands on 10 records: fresh {floor['fresh']:.1f} s, update {floor['update']:.1f} s; "
              f"above those, the update takes {(update_s - floor['update']) / (fresh_s - floor['fresh']):.3f} "
              "of the fresh run's time")
        if args.json:
            print(json.dumps({"records": n, "new": new, "changed": changed, "removed": removed, "runs": rows,
                              "time_fraction": update_s / fresh_s, "ten_records": floor}))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
