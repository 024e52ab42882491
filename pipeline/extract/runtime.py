"""What the runner and the machine give a job, read at launch: which runner, GPUs or not, cores per local worker,
bfloat16 on this CPU. Nothing here changes state."""

from __future__ import annotations

import os

from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from pipeline.extract.options import ExtractOptions
from transforms.worker.cpu import cpu_kind

__all__ = ["LOCAL_RUNNERS", "runner_name", "uses_gpus",
           "requested_accelerator", "local_threads_per_worker", "cpu_has_bfloat16"]

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name however it was given: Beam also takes "dataflow", "direct", any case, or a module
    path; no --runner is Beam's DirectRunner."""
    runner = options.view_as(StandardOptions).runner
    if runner is None:
        return "DirectRunner"
    if not isinstance(runner, str):
        return type(runner).__name__
    name = runner.rsplit(".", 1)[-1].lower()
    return next((known for known in StandardOptions.KNOWN_RUNNER_NAMES if known.lower() in (name, name + "runner")),
                runner)


def uses_gpus(options: PipelineOptions) -> bool:
    """Whether the job's workers have GPUs: ``--gpu``, Dataflow's ``worker_accelerator`` service option (or
    experiment), or, for a local runner, a GPU on this machine."""
    if options.view_as(ExtractOptions).gpu or requested_accelerator(options):
        return True
    if runner_name(options) not in LOCAL_RUNNERS or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    gpus = "/proc/driver/nvidia/gpus"
    return os.path.isdir(gpus) and bool(os.listdir(gpus))


def requested_accelerator(options: PipelineOptions) -> str | None:
    """Dataflow's ``worker_accelerator=...`` as the job gives it (service option, or the older experiment)."""
    gcp = options.view_as(GoogleCloudOptions)
    requested = list(gcp.dataflow_service_options or []) + list(options.view_as(DebugOptions).experiments or [])
    return next((str(item) for item in requested if str(item).startswith("worker_accelerator")), None)


def local_threads_per_worker(options: PipelineOptions) -> int | None:
    """Local runs share the machine's cores among worker processes (workers x threads <= cores)."""
    if runner_name(options) not in LOCAL_RUNNERS:
        return None
    direct = options.view_as(DirectOptions)
    cores = os.cpu_count() or 1
    if direct.direct_running_mode == "multi_processing":
        workers = direct.direct_num_workers
        workers = cores if workers == 0 else max(1, workers)
        return max(1, cores // workers)
    return cores


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU computes bfloat16 natively (AVX-512 BF16 or AMX), from its flags."""
    return cpu_kind(cpuinfo).bfloat16
