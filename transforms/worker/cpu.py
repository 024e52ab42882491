"""The CPU a process runs on, and TensorFlow's CPU kernels chosen for it before TensorFlow is imported.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported. Unset, it turns oneDNN's custom operations on
only where the CPU has AVX-512 VNNI, AVX-512 BF16 or AMX, and runs its older Eigen kernels everywhere else: on
CPUs with AVX2 and no AVX-512 (AMD EPYC before Zen 4, older Intel Xeons; Dataflow's N2D/C2D/T2D machines are of
this kind) a Keras MobileNetV2 measured about twice as fast with oneDNN on. So featurebeam turns it on itself
(``--onednn auto``, the default) wherever TensorFlow would leave it off, unless the environment already says; ``on``
and ``off`` force either way. Every process that imports TensorFlow applies the choice first: the command's own
(``pipeline.cli``), every worker process (``auto``, in ``ready_process``) and the model loading of an extraction's
workers (its ``--onednn``, in ``BackboneHandler.load_model``); a process that has already
imported TensorFlow keeps what it has, and ``onednn_state`` says what that is.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

__all__ = ["CpuKind", "cpu_kind", "ONEDNN_CHOICES", "ONEDNN_VARIABLE", "onednn_value", "use_onednn",
           "onednn_state"]

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class CpuKind:
    """What the CPU's flags say that matters to TensorFlow's kernels."""

    model: str
    avx2: bool
    avx512: bool
    bfloat16: bool   # AVX-512 BF16 or AMX
    vnni: bool       # AVX-512 VNNI
    amx: bool

    @property
    def onednn_by_default(self) -> bool:
        """Whether TensorFlow turns oneDNN's custom operations on by itself on this CPU."""
        return self.vnni or self.bfloat16 or self.amx

    def describe(self) -> str:
        """One line: ``AMD EPYC (AVX-512, bfloat16)``, ``AMD EPYC (AVX2 only, no bfloat16)``."""
        vector = "AVX-512" if self.avx512 else "AVX2 only" if self.avx2 else "no AVX2"
        return f"{self.model} ({vector}, {'bfloat16' if self.bfloat16 else 'no bfloat16'})"


def cpu_kind(cpuinfo: str = "/proc/cpuinfo") -> CpuKind:
    """This machine's CPU from ``cpuinfo`` (Linux); unknown flags are read as absent."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine() or "unknown CPU"
    try:
        with open(cpuinfo) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "flags" and not flags:
                    flags = set(value.split())
                elif name.strip() == "model name" and value.strip():
                    model = " ".join(value.split())
    except OSError:
        pass
    return CpuKind(model=model, avx2="avx2" in flags, avx512="avx512f" in flags,
                   bfloat16=bool(flags & {"avx512_bf16", "amx_bf16"}), vnni="avx512_vnni" in flags,
                   amx="amx_tile" in flags)


def onednn_value(choice: str, environ=os.environ) -> str | None:
    """The ``TF_ENABLE_ONEDNN_OPTS`` value ``choice`` asks for: ``on`` "1", ``off`` "0", ``auto`` "1" unless the
    environment sets it already (None: leave it)."""
    if choice not in ONEDNN_CHOICES:
        raise ValueError(f"--onednn must be one of {', '.join(ONEDNN_CHOICES)}, got {choice!r}")
    if choice == "auto":
        return None if environ.get(ONEDNN_VARIABLE) else "1"
    return "1" if choice == "on" else "0"


def use_onednn(choice: str) -> str:
    """Apply ``choice`` to this process unless TensorFlow is imported already; what is in effect, ``on`` or
    ``off``."""
    value = onednn_value(choice)
    if value is not None and "tensorflow" not in sys.modules:
        os.environ[ONEDNN_VARIABLE] = value
    return onednn_state()


def onednn_state(choice: str | None = None, environ=os.environ, cpu: CpuKind | None = None) -> str:
    """``on`` or ``off``: oneDNN's custom operations in this process. Where it has imported TensorFlow, TensorFlow's
    own answer; else what importing it would give, with ``choice`` applied first (None: the environment as it
    stands), from the variable or TensorFlow's default for this CPU."""
    if "tensorflow" in sys.modules:
        try:
            from tensorflow.python.util import _pywrap_util_port

            return "on" if _pywrap_util_port.IsMklEnabled() else "off"
        except (ImportError, AttributeError):  # another TensorFlow build: judged from the variable below
            pass
    value = None if choice is None else onednn_value(choice, environ)
    value = (environ.get(ONEDNN_VARIABLE, "") if value is None else value).strip().lower()
    if value in ("1", "true", "on", "yes"):
        return "on"
    if value in ("0", "false", "off", "no"):
        return "off"
    return "on" if (cpu or cpu_kind()).onednn_by_default else "off"
