"""What one feature record holds, whatever it is stored as: its key, label and split, and one vector per output.

- ``key``   the stable id of the input (its URI, or ``URI#member`` inside an archive), made by ``record_key`` only;
- ``label`` absent when the input has no label;
- ``split`` absent unless the input named one (a manifest's split column, say);
- one vector per extracted output (``OutputSpec``), stored as float32 or float16; readers always return float32.

The TFRecord codec is ``transforms.schema.example``, the Parquet one ``transforms.schema.parquet``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["KEY", "LABEL", "SPLIT", "RESERVED_COLUMNS", "FEATURE_DTYPES", "record_key", "OutputSpec", "FeatureRecord"]

KEY = "key"
LABEL = "label"
SPLIT = "split"
FEATURE_DTYPES = ("float32", "float16")  # how vectors are stored; readers always return float32
RESERVED_COLUMNS = (KEY, LABEL, SPLIT)


def record_key(uri: str, part: str | int | None = None) -> str:
    """The stable id of an input, the one place keys are made: its URI, or ``URI#PART`` for one record of a
    file (a tar shard's image member, a TFRecord file's record number from 0, a manifest or text row, a text
    row's id)."""
    return uri if part is None else f"{uri}#{part}"


@dataclass(frozen=True)
class OutputSpec:
    """One extracted vector per record: which layer, how it was pooled, where it sits in the Example."""

    name: str
    layer: str
    pooling: str
    dim: int
    dtype: str = "float32"

    @property
    def example_key(self) -> str:
        return f"feature/{self.name}"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "example_key": self.example_key}

    @classmethod
    def from_json(cls, d: Mapping) -> OutputSpec:
        spec = cls(d["name"], d["layer"], d["pooling"], int(d["dim"]), d.get("dtype", "float32"))
        if d.get("example_key", spec.example_key) != spec.example_key:
            raise ValueError(f"manifest output {spec.name!r} names an unexpected Example key {d['example_key']!r}")
        return spec


@dataclass(frozen=True)
class FeatureRecord:
    key: str
    label: str | None
    vectors: Mapping[str, np.ndarray]
    split: str | None = None
