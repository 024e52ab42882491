"""How extraction scales with the number of records, fresh and after a crash. (Not part of the test run.)

For each N in ``--sizes``, with a tiny model-file backbone (12x12x3 -> a 16-d vector) so that the pipeline is
measured and not the model:

1. writes N tiny records: 12x12 JPEGs (a few dozen distinct encodings, cycled; keys ``FILE#N`` are distinct)
   with 10 labels, as ``tf.train.Example``s in TFRecord files of ``--records-per-file`` records each;
2. fresh: runs ``featurebeam extract`` (the default local layout, 2 worker processes) on an empty OUTDIR;
3. crash and resume: runs the same extract on another empty OUTDIR, kills its whole process group once the
   commit records in ``OUTDIR/commits/`` add up to N/2 records, then runs it again with ``--resume``. Where N
   is under 4 commits of extract's default size and ``--records-per-shard`` is not given, these two runs
   commit every N/10 records instead, or the first commit would already hold everything;
4. checks each feature set (fresh and resumed): every input key in ``features/`` exactly once, nothing else,
   ``inputs == N == embedded + failed`` in the manifest, and no scratch files left (``transforms/keys/spill.py``).

Each run reports its wall time, records/s (of what that run did itself), the peak resident memory (VmHWM) of the
launcher and of its largest other process, and the size of ``commits/`` and of ``manifest.json``:

    python tests/benchmarks/bench_scale.py [--sizes 1e4,1e5,1e6] [--workdir DIR] [--keep] [--json]
        [--records-per-file 100000] [--records-per-shard N] [EXTRACT FLAGS ...]

Flags it does not know go to every ``featurebeam extract`` run as they are.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from pipeline.tools.bench import ProcessTreeMemory, descendants, run_extract
from transforms.keys.spill import scratch_folder
from transforms.schema.fields import KEY
from transforms.schema.framing import frame, iter_frames
from transforms.schema.layout import COMMITS_DIR, FEATURES_DIR, MANIFEST_NAME, SHARD_SUFFIX
from transforms.write.committers import DEFAULT_RECORDS_PER_COMMIT

IMAGE_SIZE = 12
VARIANTS = 40   # distinct encoded images, cycled (a multiple of LABELS, so each variant keeps its label)
LABELS = 10
HELPER_KB = 100_000  # processes below this peak are helpers (shells, resource trackers), not Python workers


# -- inputs ------------------------------------------------------------------------------------------------------

def make_model(path: str) -> None:
    """A tiny ``.keras`` backbone: 12x12x3 -> conv (16 channels) -> global average pooling."""
    import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    keras.Model(inputs, x).save(path)


def example_frames() -> list[bytes]:
    """``VARIANTS`` framed ``tf.train.Example``s, each a distinct 12x12 JPEG with label ``i % LABELS``."""
    from PIL import Image
    from tensorflow.core.example import example_pb2

    rng = np.random.default_rng(0)
    frames = []
    for i in range(VARIANTS):
        pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=60 + i % 30)
        example = example_pb2.Example()
        feature = example.features.feature
        feature["image/encoded"].bytes_list.value.append(buf.getvalue())
        feature["image/class/label"].int64_list.value.append(i % LABELS)
        frames.append(frame(example.SerializeToString()))
    return frames


def make_records(folder: str, n: int, per_file: int) -> list[tuple[str, int]]:
    """N records in ``records-NNNNN.tfrecord`` files of ``per_file`` each; (file name, records) of each file.
    The frames are made once and cycled, so writing costs little more than the bytes."""
    frames = example_frames()
    cycle = b"".join(frames)
    os.makedirs(folder, exist_ok=True)
    files, written = [], 0
    while written < n:
        count = min(per_file, n - written)
        name = f"records-{len(files):05d}.tfrecord"
        with open(os.path.join(folder, name + ".partial"), "wb") as f:
            start = written % VARIANTS  # record numbers run on across files, so the cycle does too
            head = min(count, (VARIANTS - start) % VARIANTS)
            f.write(b"".join(frames[start:start + head]))
            whole, rest = divmod(count - head, VARIANTS)
            for _ in range(whole):
                f.write(cycle)
            f.write(b"".join(frames[:rest]))
        os.rename(os.path.join(folder, name + ".partial"), os.path.join(folder, name))
        files.append((name, count))
        written += count
    with open(folder + ".json", "w") as f:  # beside the folder, written last: the inputs are complete
        json.dump(files, f)
    return files


def inputs_for(workdir: str, n: int, per_file: int) -> tuple[str, list[tuple[str, int]]]:
    """The ``--input`` glob of N records and their files, written unless an earlier run (same ``--workdir``)
    left them complete."""
    folder = os.path.join(workdir, f"inputs-{n}-{per_file}")
    pattern = os.path.join(folder, "*.tfrecord")
    if os.path.exists(folder + ".json"):
        with open(folder + ".json") as f:
            return pattern, [tuple(entry) for entry in json.load(f)]
    shutil.rmtree(folder, ignore_errors=True)
    start = time.monotonic()
    files = make_records(folder, n, per_file)
    size = sum(os.path.getsize(os.path.join(folder, name)) for name, _ in files)
    print(f"wrote {n} records in {len(files)} TFRecord files ({size / 2**20:.1f} MiB) in "
          f"{time.monotonic() - start:.1f} s", flush=True)
    return pattern, files


# -- runs --------------------------------------------------------------------------------------------------------

def extract_command(inputs: str, output: str, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipeline", "extract", "--input", inputs, "--output", output, "--quiet", *flags]


def split_peaks(memory: ProcessTreeMemory) -> tuple[float, float, int]:
    """(launcher MB, largest other process MB, how many worker-sized processes)."""
    peaks = dict(memory.peaks_kb)
    launcher = peaks.pop(memory.pid, 0)
    workers = [kb for kb in peaks.values() if kb > HELPER_KB]
    return launcher / 1024, max(peaks.values(), default=0) / 1024, len(workers)


def output_sizes(output: str) -> tuple[int, int, int]:
    """(bytes of every file under commits/, how many, bytes of manifest.json)."""
    total = files = 0
    for folder, _, names in os.walk(os.path.join(output, COMMITS_DIR)):
        for name in names:
            total += os.path.getsize(os.path.join(folder, name))
            files += 1
    manifest = os.path.join(output, MANIFEST_NAME)
    return total, files, os.path.getsize(manifest) if os.path.exists(manifest) else 0


def describe_run(n: int, mode: str, output: str, seconds: float, memory: ProcessTreeMemory, counts: dict,
                 done: int, manifest: dict | None = None) -> dict:
    launcher_mb, worker_mb, workers = split_peaks(memory)
    commits_bytes, commit_files, manifest_bytes = output_sizes(output)
    return {"n": n, "mode": mode, "seconds": seconds, "records": done, "records_per_s": done / seconds,
            "launcher_mb": launcher_mb, "largest_worker_mb": worker_mb, "workers": workers,
            "commits_bytes": commits_bytes, "commit_files": commit_files, "manifest_bytes": manifest_bytes,
            "counts": counts, "resumed_records": (manifest or {}).get("resumed_records", 0)}


def read_manifest(output: str) -> dict:
    with open(os.path.join(output, MANIFEST_NAME)) as f:
        return json.load(f)


def run_fresh(n: int, inputs: str, output: str, flags: list[str]) -> dict:
    seconds, memory, counts = run_extract(inputs, output, flags)
    return describe_run(n, "fresh", output, seconds, memory, counts, counts["inputs"], read_manifest(output))


class CommittedCount:
    """Records in ``OUTDIR/commits/*.json``, reading each commit record once (a polled count stays cheap)."""

    def __init__(self, output: str):
        self.folder = os.path.join(output, COMMITS_DIR)
        self.seen: set[str] = set()
        self.records = 0

    def poll(self) -> int:
        try:
            names = [e.name for e in os.scandir(self.folder) if e.name.endswith(".json")]
        except FileNotFoundError:
            return self.records
        for name in names:
            if name in self.seen:
                continue
            try:
                with open(os.path.join(self.folder, name), "rb") as f:
                    self.records += int(json.loads(f.read())["records"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not readable yet (or gone): tried again on the next poll
            self.seen.add(name)
        return self.records


def run_until_half(n: int, inputs: str, output: str, flags: list[str], every: float = 0.2) -> dict:
    """Run extract in its own process group and kill the group (SIGKILL) once N/2 records are committed."""
    start = time.monotonic()
    process = subprocess.Popen(extract_command(inputs, output, flags), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    committed = CommittedCount(output)
    killed = False
    try:
        while process.poll() is None:
            if committed.poll() >= n / 2:
                group = descendants(process.pid)
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(every)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    _, stderr = process.communicate()
    seconds = time.monotonic() - start
    if not killed and process.returncode != 0:
        raise RuntimeError(f"featurebeam extract (to be killed) failed: {stderr.decode(errors='replace')[-2000:]}")
    survivors = []
    if killed:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            survivors = [pid for pid in group if pid != process.pid and os.path.exists(f"/proc/{pid}")
                         and not _zombie(pid)]
            if not survivors:
                break
            time.sleep(0.2)
    at_kill = CommittedCount(output).poll()  # commits that landed between the last poll and the kill count too
    return {"killed": killed, "seconds": seconds, "committed": at_kill, "survivors": survivors}


def describe_crash(n: int, crash: dict) -> str:
    if not crash["killed"]:
        return f"finished in {crash['seconds']:.1f} s before N/2 was seen committed"
    text = f"killed after {crash['seconds']:.1f} s with {crash['committed']:,} records committed"
    if crash["committed"] >= n:
        text += " (all of them: nothing is left to resume)"
    if crash["survivors"]:
        text += f"; still alive 10 s after the kill: pids {crash['survivors']}"
    return text


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def run_resume(n: int, inputs: str, output: str, flags: list[str], committed_before: int) -> dict:
    start = time.monotonic()
    process = subprocess.Popen([*extract_command(inputs, output, flags), "--resume"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    with ProcessTreeMemory(process.pid) as memory:
        _, stderr = process.communicate()
    seconds = time.monotonic() - start
    if process.returncode != 0:
        raise RuntimeError(f"featurebeam extract --resume failed: {stderr.decode(errors='replace')[-2000:]}")
    manifest = read_manifest(output)
    return describe_run(n, "resumed", output, seconds, memory, manifest["counts"], n - committed_before, manifest)


# -- checks ------------------------------------------------------------------------------------------------------

def fingerprint(name: str) -> bytes:
    return hashlib.blake2b(name.encode("utf-8"), digest_size=16).digest()


def sorted_fingerprints(buf: bytearray) -> np.ndarray:
    """16-byte fingerprints as rows of two uint64s, sorted (rows compare as whole fingerprints)."""
    rows = np.frombuffer(buf, dtype="<u8").reshape(-1, 2)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def iter_keys(path: str):
    """The keys of one feature shard (tfrecord-lite where installed, else protobuf)."""
    try:
        import tfrecord_lite
    except ImportError:
        from tensorflow.core.example import example_pb2

        with open(path, "rb") as f:
            for data in iter_frames(f):
                yield example_pb2.Example.FromString(data).features.feature[KEY].bytes_list.value[0]
        return
    for d in tfrecord_lite.tf_record_iterator(path, names=[KEY]):
        yield d[KEY][0]


def check_feature_set(output: str, files: list[tuple[str, int]], n: int) -> dict:
    """Every input key in features/ exactly once and no other: the sorted fingerprints of the keys found (as
    ``FILE_NAME#INDEX``) equal those of the keys expected. Memory: 16 bytes a key, twice."""
    found, keys, foreign = bytearray(), 0, 0
    for path in sorted(glob.glob(os.path.join(output, FEATURES_DIR, "*" + SHARD_SUFFIX))):
        for key in iter_keys(path):
            uri, _, index = key.decode("utf-8").rpartition("#")
            if not uri or not index.isdigit():
                foreign += 1
                continue
            found += fingerprint(f"{os.path.basename(uri)}#{index}")
            keys += 1
    expected = bytearray()
    for name, count in files:
        for i in range(count):
            expected += fingerprint(f"{name}#{i}")
    found_rows, expected_rows = sorted_fingerprints(found), sorted_fingerprints(expected)
    distinct = int(1 + np.count_nonzero(np.any(found_rows[1:] != found_rows[:-1], axis=1))) if keys else 0
    same = found_rows.shape == expected_rows.shape and bool(np.array_equal(found_rows, expected_rows))
    counts = read_manifest(output)["counts"]
    scratch_left = os.path.exists(scratch_folder(output))
    ok = (same and foreign == 0 and distinct == keys == n and counts["inputs"] == n
          and counts["embedded"] + counts["failed"] == n and not scratch_left)
    return {"ok": ok, "keys": keys, "distinct": distinct, "foreign": foreign, "same_as_inputs": same,
            "counts": counts, "scratch_left": scratch_left}


# -- report ------------------------------------------------------------------------------------------------------

def table(rows: list[dict]) -> str:
    head = ("| N | mode | wall s | records/s | launcher MB | largest worker MB | commits/ | manifest | inputs "
            "| embedded | failed | resumed | check |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r["counts"]
        check = r.get("check")
        check = "" if check is None else ("ok" if check["ok"] else
                                          f"FAILED ({check['keys']} keys, {check['distinct']} distinct"
                                          f"{', scratch files left' if check['scratch_left'] else ''})")
        mode = r["mode"] + (f" ({' '.join(r['flags'])})" if r.get("flags") else "")
        rate = f"{r['records_per_s']:,.0f}" if r["records"] else "-"
        lines.append(f"| {r['n']:,} | {mode} | {r['seconds']:.1f} | {rate} "
                     f"| {r['launcher_mb']:.0f} | {r['largest_worker_mb']:.0f} "
                     f"| {r['commits_bytes'] / 2**20:.2f} MiB, {r['commit_files']} files "
                     f"| {r['manifest_bytes'] / 1024:.1f} KiB | {c['inputs']:,} | {c['embedded']:,} "
                     f"| {c['failed']:,} | {r['resumed_records']:,} | {check} |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> list[str]:
    fresh = {r["n"]: r for r in rows if r["mode"] == "fresh"}
    if len(fresh) < 2:
        return []
    small, large = fresh[min(fresh)], fresh[max(fresh)]
    peak = lambda r: max(r["launcher_mb"], r["largest_worker_mb"])  # noqa: E731
    lines = [f"largest process peak, fresh: {peak(small):.0f} MB at N={small['n']:,} -> {peak(large):.0f} MB at "
             f"N={large['n']:,} ({100 * (peak(large) / peak(small) - 1):+.0f}%); launcher "
             f"{small['launcher_mb']:.0f} -> {large['launcher_mb']:.0f} MB, largest worker "
             f"{small['largest_worker_mb']:.0f} -> {large['largest_worker_mb']:.0f} MB"]
    base = fresh.get(100_000) or small
    lines.append(f"records/s, fresh: {large['records_per_s']:,.0f} at N={large['n']:,} is "
                 f"{large['records_per_s'] / base['records_per_s']:.2f}x the {base['records_per_s']:,.0f} at "
                 f"N={base['n']:,}")
    return lines


def parse_sizes(text: str) -> list[int]:
    sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes wants positive counts such as 1e4,1e5, got {text!r}")
    return sorted(set(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Other flags go to every featurebeam extract run.")
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1e4,1e5,1e6"),
                        help="record counts, comma-separated (default: 1e4,1e5,1e6)")
    parser.add_argument("--workdir", help="inputs and outputs (default: a temporary directory); inputs already "
                                          "there are reused")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--records-per-file", type=int, default=100_000, help="records per input TFRecord file")
    parser.add_argument("--records-per-shard", type=int, help="passed to extract (default: extract's own)")
    parser.add_argument("--no-resume", action="store_true", help="fresh runs only")
    args, extract_flags = parser.parse_known_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="featurebeam-bench-scale-")
    os.makedirs(workdir, exist_ok=True)
    rows, errors = [], []
    try:
        model = os.path.join(workdir, "tiny.keras")
        if not os.path.exists(model):
            make_model(model)
        flags = ["--backbone", model, *extract_flags]
        if args.records_per_shard:
            flags += ["--records-per-shard", str(args.records_per_shard)]
        chosen = any(f == "--records-per-shard" or f.startswith("--records-per-shard=") for f in flags)
        for n in args.sizes:
            try:
                measure(n, workdir, args, flags, chosen, rows)
            except RuntimeError as e:  # a failed extract: say so, and report the runs that worked
                errors.append(f"N={n:,}: {e}")
                print(errors[-1], file=sys.stderr, flush=True)
        print()
        print(table(rows))
        for line in growth(rows):
            print(line)
        if args.json:
            print(json.dumps({"flags": flags, "records_per_file": args.records_per_file, "runs": rows,
                              "errors": errors}, indent=1))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if errors or any(not r["check"]["ok"] for r in rows):
        sys.exit(1)


def measure(n: int, workdir: str, args, flags: list[str], chosen: bool, rows: list[dict]) -> None:
    """The fresh run of N records, then (unless ``--no-resume``) the crash and the resumed run; rows appended."""
    inputs, files = inputs_for(workdir, n, args.records_per_file)
    out = os.path.join(workdir, f"out-{n}")
    shutil.rmtree(out, ignore_errors=True)
    row = run_fresh(n, inputs, out, flags)
    row["check"] = check_feature_set(out, files, n)
    rows.append(row)
    print(f"N={n:,} fresh: {row['seconds']:.1f} s, {row['records_per_s']:,.0f} records/s, check "
          f"{'ok' if row['check']['ok'] else 'FAILED'}", flush=True)
    if args.no_resume:
        return
    out = os.path.join(workdir, f"out-{n}-crash")
    shutil.rmtree(out, ignore_errors=True)
    crash_flags = flags
    if not chosen and n < 4 * DEFAULT_RECORDS_PER_COMMIT:
        crash_flags = [*flags, "--records-per-shard", str(max(1, n // 10))]
    crash = run_until_half(n, inputs, out, crash_flags)
    print(f"N={n:,} {describe_crash(n, crash)}", flush=True)
    row = run_resume(n, inputs, out, crash_flags, crash["committed"])
    row["flags"] = crash_flags[len(flags):]
    row["crash"] = crash
    row["check"] = check_feature_set(out, files, n)
    rows.append(row)
    print(f"N={n:,} resumed: {row['seconds']:.1f} s, {row['records_per_s']:,.0f} records/s, check "
          f"{'ok' if row['check']['ok'] else 'FAILED'}", flush=True)


if __name__ == "__main__":
    main()
