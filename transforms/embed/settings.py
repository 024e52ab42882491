"""``EmbedSettings``: how records are embedded, one value built once at launch and passed whole to
``ExtractFeatures`` and ``BackboneHandler``, so a new setting is one field here.

A field whose value decides what the vectors are is ``recorded``: its name in ``OUTDIR/run.json`` (which
``--resume`` must match) and the flags that set it, for the one line that refuses a resume started otherwise.
The others (batch size, threads, model copies) change how fast the vectors come, not what they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transforms.decode.audio import DEFAULT_MAX_AUDIO_SECONDS
from transforms.decode.images import DEFAULT_MAX_PIXELS
from transforms.schema.fields import OutputSpec

__all__ = ["EmbedSettings"]


def recorded(run_json: str, flags: str, **field_args):
    """A field that decides the vectors: recorded in run.json under ``run_json``; set by ``flags``."""
    return dataclasses.field(metadata={"run_json": run_json, "flags": flags}, **field_args)


@dataclass(frozen=True)
class EmbedSettings:
    """What ``ExtractFeatures`` and ``BackboneHandler`` need besides the backbone itself.

    - ``outputs``: which layers to extract and how to pool each;
    - ``batch_size``: the most records in a batch handed to the compiled function;
    - ``threads``: TensorFlow intra-op threads per worker process (None: TensorFlow's default);
    - ``model_copies``: 0, a model in each worker process; N >= 1, N copies per machine shared by its processes
      (Beam's cross-process model sharing: one copy on a GPU instead of one per process);
    - ``precision``: the forward pass's type, float32, bfloat16 or float16 (``transforms.embed.precision``);
    - ``max_pixels``: images with more pixels are refused from their header, before decoding;
    - ``max_audio_seconds``: recordings longer than this are refused (from their header where it says, else while
      decoding);
    - ``onednn``: TensorFlow's oneDNN kernels, ``auto``, ``on`` or ``off`` (``transforms.worker.cpu``), applied by
      each worker before it imports TensorFlow.
    """

    outputs: tuple[OutputSpec, ...] = recorded("outputs", "--layer/--pooling/--feature-dtype")
    batch_size: int = 32
    threads: int | None = None
    model_copies: int = 0
    precision: str = recorded("precision", "--precision (or --mixed-precision)", default="float32")
    max_pixels: int = recorded("max_image_pixels", "--max-image-pixels", default=DEFAULT_MAX_PIXELS)
    max_audio_seconds: float = recorded("max_audio_seconds", "--max-audio-seconds", default=DEFAULT_MAX_AUDIO_SECONDS)
    onednn: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "outputs", tuple(self.outputs))

    def recorded(self) -> dict:
        """The settings that decide the vectors, as run.json holds them."""
        return {f.metadata["run_json"]: _as_json(getattr(self, f.name))
                for f in dataclasses.fields(self) if "run_json" in f.metadata}

    @classmethod
    def flags_of(cls, run_json: str) -> str | None:
        """The flags that set the setting recorded as ``run_json`` (None: not one of these)."""
        return next((f.metadata["flags"] for f in dataclasses.fields(cls) if f.metadata.get("run_json") == run_json),
                    None)


def _as_json(value):
    if isinstance(value, tuple):
        return [v.to_json() if hasattr(v, "to_json") else v for v in value]
    return value
