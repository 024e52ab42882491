"""The CPU's kind from its flags, and TensorFlow's oneDNN kernels chosen before TensorFlow is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from transforms.worker.cpu import ONEDNN_VARIABLE, cpu_kind, onednn_value

AMD_AVX2 = "fpu sse4_2 avx avx2 fma bmi2"
AMD_ZEN4 = AMD_AVX2 + " avx512f avx512dq avx512_vnni avx512_bf16"
INTEL_AMX = AMD_AVX2 + " avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"


def _cpuinfo(tmp_path, model: str, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    block = f"processor\t: 0\nvendor_id\t: x\nmodel name\t: {model}\nflags\t\t: {flags}\n"
    path.write_text(block + "\n" + block.replace(": 0", ": 1"))
    return str(path)


@pytest.mark.parametrize("model, flags, described, by_default", [
    ("AMD EPYC 7B12", AMD_AVX2, "AMD EPYC 7B12 (AVX2 only, no bfloat16)", False),
    ("AMD EPYC 9B14", AMD_ZEN4, "AMD EPYC 9B14 (AVX-512, bfloat16)", True),
    ("Intel(R) Xeon(R) Platinum 8481C", INTEL_AMX, "Intel(R) Xeon(R) Platinum 8481C (AVX-512, bfloat16)", True),
    ("Intel(R) Xeon(R) CPU @ 2.20GHz", AMD_AVX2 + " avx512f avx512dq", "Intel(R) Xeon(R) CPU @ 2.20GHz (AVX-512, "
     "no bfloat16)", False),
], ids=["avx2", "zen4", "amx", "avx512-without-vnni"])
def test_the_cpu_kind_and_tensorflows_own_onednn_default_come_from_its_flags(tmp_path, model, flags, described,
                                                                             by_default):
    kind = cpu_kind(_cpuinfo(tmp_path, model, flags))
    assert kind.describe() == described
    assert kind.onednn_by_default is by_default


def test_an_unreadable_cpuinfo_is_a_cpu_without_the_flags(tmp_path):
    kind = cpu_kind(str(tmp_path / "missing"))
    assert not (kind.avx2 or kind.avx512 or kind.bfloat16 or kind.onednn_by_default)


def test_auto_turns_onednn_on_unless_the_environment_says_and_on_off_force_it():
    assert onednn_value("auto", {}) == "1"
    assert onednn_value("auto", {ONEDNN_VARIABLE: "0"}) is None  # the user's own setting stands
    assert onednn_value("auto", {ONEDNN_VARIABLE: "1"}) is None
    assert onednn_value("on", {ONEDNN_VARIABLE: "0"}) == "1"
    assert onednn_value("off", {}) == "0"
    with pytest.raises(ValueError, match="--onednn must be one of auto, on, off"):
        onednn_value("fast", {})


def _tensorflow_after(choice: str, environ: dict) -> dict:
    """In a fresh process: apply ``choice``, import TensorFlow, and ask it whether oneDNN's operations are on."""
    script = "\n".join([
        "import json",
        "from transforms.worker.cpu import use_onednn, onednn_state",
        f"use_onednn({choice!r})",
        "import tensorflow",
        "from tensorflow.python.util import _pywrap_util_port as port",
        "print(json.dumps({'tensorflow': bool(port.IsMklEnabled()), 'said': onednn_state()}))"])
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_VARIABLE} | environ | {"PYTHONPATH": REPO,
                                                                                       "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("choice, environ, expected", [("off", {}, False), ("auto", {}, True)], ids=["off", "auto"])
def test_the_choice_made_before_the_import_is_what_tensorflow_runs_on_any_cpu(choice, environ, expected):
    """TensorFlow reads the variable once, at import: the choice applied first is what it reports running, and
    what featurebeam records (``onednn_state``)."""
    seen = _tensorflow_after(choice, environ)
    assert seen == {"tensorflow": expected, "said": "on" if expected else "off"}
