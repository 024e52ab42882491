"""Launcher defaults for Google Cloud Dataflow: what a featurebeam job needs there that Beam leaves open.

``dataflow_defaults(options)`` returns the flags to add for a ``--runner DataflowRunner`` job; a flag the user
gave is never overridden. Every job gets ``--setup_file`` (this checkout's setup.py: the workers install the
launcher's own code). Then one of two layouts:

GPU (``--gpu TYPE``): one GPU per worker; Dataflow's ``worker_accelerator`` service option with the driver
  install; the featurebeam GPU image (deploy/Dockerfile), by default under the name deploy/README.md builds it
  with; a machine type that takes that GPU; 4 harness threads per worker process. Dataflow starts one SDK
  process per vCPU; they all decode, and share one copy of the model per machine (``--model-copies``, default
  1: Beam's cross-process model sharing), so the GPU holds one copy, not one per process. Beam keeps every copy
  in the first process that asks for the model, which serves the others; with several copies, their batches
  overlap on the GPU. ``--model-copies 0`` gives each process its own copy instead, with NVIDIA MPS switched on
  so that those processes run on the GPU side by side.

CPU: Beam's own worker image (the workers install featurebeam's dependencies from the sdist when they start);
  each SDK process (one per vCPU) has its own model with one TensorFlow thread, the local layout measured
  fastest, and 2 harness threads (one decodes while the other runs the model). With ``--model-copies N`` (N >= 1)
  the copies are shared instead and keep TensorFlow's own thread count.
"""

from __future__ import annotations

import os
from importlib import metadata

from apache_beam.options.pipeline_options import (
    DebugOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    WorkerOptions,
)

from pipeline.errors import ConfigError
from pipeline.extract.options import ExtractOptions
from pipeline.extract.runtime import requested_accelerator, runner_name

__all__ = ["dataflow_defaults", "gpu_image", "GPU_MACHINE_TYPES"]

# Machine types that take exactly one GPU of each type (Dataflow needs the machine type to fit the accelerator).
GPU_MACHINE_TYPES = {
    "nvidia-l4": "g2-standard-8",
    "nvidia-tesla-t4": "n1-standard-8",
    "nvidia-tesla-v100": "n1-standard-8",
    "nvidia-tesla-p100": "n1-standard-8",
    "nvidia-tesla-p4": "n1-standard-8",
    "nvidia-tesla-a100": "a2-highgpu-1g",
    "nvidia-a100-80gb": "a2-ultragpu-1g",
}
GPU_HARNESS_THREADS = 4   # per worker process: batches in flight while the shared model works
CPU_HARNESS_THREADS = 2   # per worker process: one decodes while the other runs the process's model
CPU_TF_THREADS = 1        # per SDK process: Dataflow already runs one per vCPU
IMAGE_REPOSITORY = "featurebeam"
IMAGE_NAME = "featurebeam-gpu"
SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "setup.py")


def _version() -> str:
    try:
        return metadata.version("featurebeam")
    except metadata.PackageNotFoundError:
        return "latest"


def gpu_image(project: str, region: str) -> str:
    """Where deploy/README.md's build command puts the GPU worker image of this featurebeam version."""
    return f"{region}-docker.pkg.dev/{project}/{IMAGE_REPOSITORY}/{IMAGE_NAME}:{_version()}"


def dataflow_defaults(options: PipelineOptions) -> list[str]:
    """The flags a DataflowRunner job gets by default (none for another runner)."""
    if runner_name(options) != "DataflowRunner":
        return []
    own = options.view_as(ExtractOptions)
    gcp = options.view_as(GoogleCloudOptions)
    worker = options.view_as(WorkerOptions)
    debug = options.view_as(DebugOptions)
    flags = []
    image = worker.sdk_container_image or worker.worker_harness_container_image
    if not options.view_as(SetupOptions).setup_file:
        if os.path.exists(SETUP_FILE):
            flags.append(f"--setup_file={SETUP_FILE}")
        elif not image and not own.gpu:
            raise ConfigError("Dataflow workers need featurebeam's code: launch from a checkout of the project (its "
                              "setup.py is staged), or give --setup_file, or an image with featurebeam installed "
                              "(--sdk_container_image; the Flex Template's sdk_container_image parameter)")
    if own.gpu:
        if requested_accelerator(options):
            raise ConfigError("--gpu and a worker_accelerator option both ask for GPUs; give one of them")
        if ":" in own.gpu or ";" in own.gpu:
            raise ConfigError(f"--gpu takes a GPU type such as nvidia-l4 (one per worker), got {own.gpu!r}")
        mps = ";use_nvidia_mps" if own.model_copies == 0 else ""  # a copy in every process: let them share the GPU
        flags.append(f"--dataflow_service_options=worker_accelerator=type:{own.gpu};count:1;"
                     f"install-nvidia-driver{mps}")
        if not image:
            if not (gcp.project and gcp.region):
                raise ConfigError("--gpu needs --project and --region (the worker image's default name uses them), "
                                  "or --sdk_container_image")
            flags.append(f"--sdk_container_image={gpu_image(gcp.project, gcp.region)}")
        if not worker.machine_type:
            if own.gpu not in GPU_MACHINE_TYPES:
                raise ConfigError(f"no default machine type for --gpu {own.gpu}; give --machine_type (known: "
                                  f"{', '.join(sorted(GPU_MACHINE_TYPES))})")
            flags.append(f"--machine_type={GPU_MACHINE_TYPES[own.gpu]}")
        if not debug.number_of_worker_harness_threads:
            flags.append(f"--number_of_worker_harness_threads={GPU_HARNESS_THREADS}")
    elif not requested_accelerator(options):
        if own.threads_per_worker is None and not own.model_copies:  # a model in each process
            flags.append(f"--threads-per-worker={CPU_TF_THREADS}")
        if not debug.number_of_worker_harness_threads:
            flags.append(f"--number_of_worker_harness_threads={CPU_HARNESS_THREADS}")
    return flags
