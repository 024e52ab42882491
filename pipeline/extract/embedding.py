"""How records are embedded, in one place: the flags that say it, their checks, and the ``EmbedSettings`` they
become (``embed_settings``). A new embedding setting is a flag and its check here, a field of ``EmbedSettings``
(``transforms/embed/settings.py``), and its use in the handler: three files.
"""

from __future__ import annotations

from pipeline.errors import ConfigError
from transforms.decode.audio import DEFAULT_MAX_AUDIO_SECONDS
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.embed.protocol import Backbone
from transforms.embed.settings import EmbedSettings
from transforms.schema.fields import OutputSpec
from transforms.worker.cpu import ONEDNN_CHOICES

__all__ = ["PRECISIONS", "CPU_BATCH_SIZE", "GPU_BATCH_SIZE", "add_embedding_flags", "check_embedding_flags",
           "precision_of", "embed_settings"]

PRECISIONS = ("float32", "bfloat16", "float16")
CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 128


def add_embedding_flags(parser) -> None:
    """How the forward pass runs: batch, devices, precision, threads (``EmbedSettings``)."""
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="images with more pixels are recorded failures, refused from their header before "
                             f"decoding (default: {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-audio-seconds", type=float, default=DEFAULT_MAX_AUDIO_SECONDS, metavar="S",
                        help="recordings longer than S seconds are recorded failures, refused from their header "
                             "where it gives the length, else while decoding "
                             f"(default: {DEFAULT_MAX_AUDIO_SECONDS:,.0f})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images, texts or 3-s audio patches per forward pass (default: {CPU_BATCH_SIZE}; "
                             f"{GPU_BATCH_SIZE} when the job runs on GPUs)")
    parser.add_argument("--model-copies", type=int, default=None, metavar="N",
                        help="N copies of the model per worker machine, shared by all its worker processes; "
                             "several let batches overlap on a GPU; 0: each worker process loads its own (on a "
                             "Dataflow GPU with NVIDIA MPS, so they share the GPU) (default: 1 when the job runs "
                             "on GPUs, else 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="the forward pass in float32 (default), bfloat16 (CPUs with AVX-512 BF16 or AMX, "
                             "and GPUs) or float16 (GPUs; image backbones only); a text backbone's bfloat16 is "
                             "its dense layers only; vectors are stored as float32 either way")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="compute in float16 on accelerators that gain from it (vectors stay float32)")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="TensorFlow threads per worker process (default: cores / local workers)")
    parser.add_argument("--onednn", choices=ONEDNN_CHOICES, default="auto",
                        help="TensorFlow's oneDNN kernels: auto (the default) turns them on where TensorFlow "
                             "would not (CPUs without AVX-512 VNNI/BF16 or AMX, such as AVX2-only AMD EPYC), "
                             "unless TF_ENABLE_ONEDNN_OPTS says otherwise; on or off forces either way")


def check_embedding_flags(o) -> None:
    """The embedding flags' values and combinations, judged with no I/O (``o``: the ``ExtractOptions`` view)."""
    if o.batch_size is not None and o.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {o.batch_size}")
    if o.model_copies is not None and o.model_copies < 0:
        raise ConfigError(f"--model-copies must be 0 (one per worker process) or more, got {o.model_copies}")
    if o.threads_per_worker is not None and o.threads_per_worker < 1:
        raise ConfigError(f"--threads-per-worker must be at least 1, got {o.threads_per_worker}")
    if o.max_image_pixels < 1:
        raise ConfigError(f"--max-image-pixels must be at least 1, got {o.max_image_pixels}")
    if not o.max_audio_seconds > 0:
        raise ConfigError(f"--max-audio-seconds must be more than 0, got {o.max_audio_seconds}")
    if o.mixed_precision and o.precision not in (None, "float16"):
        raise ConfigError(f"--mixed-precision (float16) contradicts --precision {o.precision}; choose one")


def precision_of(o) -> str:
    """The forward pass's type: --precision, or float16 with --mixed-precision, else float32."""
    return o.precision or ("float16" if o.mixed_precision else "float32")


def embed_settings(o, backbone: Backbone, outputs: tuple[OutputSpec, ...], gpus: bool, local_threads: int | None,
                   local_cpu_lacks_bfloat16: bool) -> EmbedSettings:
    """The ``EmbedSettings`` of the flags (``o``), with the defaults the job's machines call for (a larger batch
    and one shared model on GPUs, cores shared among local workers); a precision the backbone or this machine
    cannot run is refused. ``local_cpu_lacks_bfloat16``: a local run without a GPU, on a CPU without bfloat16."""
    precision = precision_of(o)
    if precision == "bfloat16" and local_cpu_lacks_bfloat16:
        raise ConfigError("--precision bfloat16 needs a CPU with AVX-512 BF16 or AMX (or a GPU); this one has "
                          "neither: drop the flag to run in float32")
    if backbone.modality == "text" and precision == "float16":
        flag = "--mixed-precision" if o.mixed_precision else "--precision float16"
        raise ConfigError(f"{flag} is for image backbones; text backbone {backbone.name} runs in float32 or "
                          "--precision bfloat16 (its dense layers only: its LayerNorm epsilon and attention "
                          "scores are not safe in float16)")
    if backbone.modality == "audio" and precision != "float32":
        raise ConfigError(f"audio backbone {backbone.name} runs in float32 only: its spectrogram is rounded through "
                          "float16 as the model was trained, and a narrower forward pass would change it")
    return EmbedSettings(
        outputs,
        batch_size=o.batch_size if o.batch_size is not None else GPU_BATCH_SIZE if gpus else CPU_BATCH_SIZE,
        threads=o.threads_per_worker or local_threads,
        model_copies=(1 if gpus else 0) if o.model_copies is None else o.model_copies,
        precision=precision,
        max_pixels=o.max_image_pixels,
        max_audio_seconds=o.max_audio_seconds,
        onednn=o.onednn)
