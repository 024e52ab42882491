"""What the report reads: one streamed pass over a feature set (counts and bounded samples), its first dead letters,
and a model directory's metrics and layer sweep. Memory is that of the samples, whatever the size of the set.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

import numpy as np

from pipeline.folders import UNCOMPRESSED, read_model_file
from pipeline.train.feature_sets import FeatureSetError, FeatureSource
from transforms.schema.layout import MANIFEST_NAME
from transforms.schema.manifest import read_shard

__all__ = ["Reservoir", "ClassSample", "Scan", "scan_feature_set", "read_dead_letters", "read_metrics",
           "read_layer_sweep", "read_layer_sweep_png", "SAMPLE_SIZE", "PER_CLASS", "MAX_DEAD_LETTERS"]

SAMPLE_SIZE = 5000
PER_CLASS = 8             # sample inputs kept (and shown) per class
MAX_DEAD_LETTERS = 20     # failed inputs listed


class Reservoir:
    """A uniform sample of at most ``size`` rows of a stream of unknown length (Algorithm R), seeded; each row
    keeps its label and key."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self.x = np.empty((size, dim), np.float32)
        self.labels = np.empty(size, dtype=object)
        self.keys = np.empty(size, dtype=object)
        self.seen = 0

    def offer(self, row: np.ndarray, label, key: str | None = None) -> None:
        size = len(self.x)
        slot = self.seen if self.seen < size else int(self._rng.integers(0, self.seen + 1))
        self.seen += 1
        if slot < size:
            self.x[slot], self.labels[slot], self.keys[slot] = row, label, key

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, labels, keys) of the sample, in slot order."""
        n = min(self.seen, len(self.x))
        return self.x[:n], self.labels[:n], self.keys[:n]


class ClassSample:
    """Per label, a uniform sample of at most ``size`` keys (Algorithm R per label), seeded: memory is labels x
    ``size`` keys, whatever the number of records."""

    def __init__(self, size: int, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self._size = size
        self._seen: collections.Counter = collections.Counter()
        self.keys: dict = {}

    def offer(self, label, key: str) -> None:
        seen = self._seen[label]
        self._seen[label] += 1
        kept = self.keys.setdefault(label, [])
        if seen < self._size:
            kept.append(key)
        else:
            slot = int(self._rng.integers(0, seen + 1))
            if slot < self._size:
                kept[slot] = key


@dataclass
class Scan:
    """What one pass over a feature set keeps: counts, a sample of records and a sample of keys per class."""

    labels: collections.Counter
    records: int
    x: np.ndarray
    sample_labels: np.ndarray
    sample_keys: np.ndarray
    class_keys: dict = field(default_factory=dict)


def _feature_records(source: FeatureSource):
    """(key, label, vector) of each record's chosen output, shard after shard, one at a time; each vector's dim
    is checked against the manifest, and a damaged shard is named."""
    for path in source.shards:
        try:
            for record in read_shard(path, [source.output]):
                vector = record.vectors[source.output.name]
                if len(vector) != source.output.dim:
                    raise FeatureSetError(f"{path}: record {record.key!r} has {len(vector)} values for output "
                                          f"{source.output.name!r}, but the manifest says {source.output.dim}")
                yield record.key, record.label, vector
        except FeatureSetError:
            raise
        except Exception as e:
            raise FeatureSetError(f"{path}: cannot read feature records ({type(e).__name__}: {e})") from None


def scan_feature_set(source: FeatureSource, sample_size: int = SAMPLE_SIZE, seed: int = 0,
                     per_class: int = PER_CLASS) -> Scan:
    """One pass: records per label, records, a sample of ``sample_size`` records and of ``per_class`` keys per
    label; the count is checked against the manifest."""
    from apache_beam.io.filesystems import FileSystems

    labels = collections.Counter()
    reservoir = Reservoir(sample_size, source.output.dim, seed)
    classes = ClassSample(per_class, seed + 1)
    for key, label, vector in _feature_records(source):
        labels[label] += 1
        reservoir.offer(vector, label, key)
        classes.offer(label, key)
    expected = source.manifest.counts.get("embedded")
    if expected is not None and reservoir.seen != expected:
        raise FeatureSetError(f"{FileSystems.join(source.root, MANIFEST_NAME)}: manifest counts {expected} "
                              f"embedded records, the shards hold {reservoir.seen}")
    x, sample_labels, sample_keys = reservoir.sample()
    return Scan(labels, reservoir.seen, x, sample_labels, sample_keys, classes.keys)


def read_dead_letters(source: FeatureSource, limit: int = MAX_DEAD_LETTERS) -> list[dict]:
    """The first ``limit`` dead letters of the set's error files (key, stage, error_type, message), streamed:
    reading stops there. A file that cannot be read gives one entry that says so."""
    from apache_beam.io.filesystems import FileSystems

    letters: list[dict] = []
    for name in source.manifest.error_files:
        if len(letters) >= limit:
            break
        path = FileSystems.join(source.root, name)
        try:
            with FileSystems.open(path, compression_type=UNCOMPRESSED) as f:
                for line in f:
                    if len(letters) >= limit:
                        break
                    if line.strip():
                        letters.append(json.loads(line))
        except Exception as e:
            letters.append({"key": path, "stage": "report", "error_type": type(e).__name__,
                            "message": f"this error file cannot be read: {e}"})
    return letters


def read_metrics(model_dir: str) -> dict:
    """MODELDIR/metrics.json, local or on gs:// or s3://."""
    return read_model_file(model_dir, "metrics.json", FeatureSetError)


def _read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None when there is no such file."""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type=UNCOMPRESSED) as f:
        return f.read()


def read_layer_sweep(model_dir: str, metrics: dict) -> dict | None:
    """The layer sweep of a ``--sweep-layers`` model directory (in metrics.json, or layer_sweep.json), or None."""
    from apache_beam.io.filesystems import FileSystems

    if metrics.get("layer_sweep"):
        return metrics["layer_sweep"]
    data = _read_bytes(FileSystems.join(model_dir, "layer_sweep.json"))
    return json.loads(data.decode("utf-8")) if data else None


def read_layer_sweep_png(model_dir: str) -> bytes | None:
    """MODELDIR/layer_sweep.png, the plot ``featurebeam train`` drew of the sweep, or None when there is none."""
    from apache_beam.io.filesystems import FileSystems

    return _read_bytes(FileSystems.join(model_dir, "layer_sweep.png"))
