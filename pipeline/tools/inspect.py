"""``featurebeam inspect OUTDIR [--check]``: what a feature set holds, and whether it is intact.

The summary (manifest, per-shard counts, dims, label distribution, the first few records) reads every
record once through Beam's FileSystems, so local and gs:// sets work alike. ``--check`` also verifies each
record against the manifest: readable (CRC), every output present with its dim, finite values, a label from
the vocabulary, keys unique across shards, and shard and record counts as the manifest says.

Memory does not grow with the records: keys are checked for repeats by fingerprint in buckets on local
temporary disk (``duplicate_keys``, 24 bytes a record while it runs), and only the shards holding a reported
repeat are read a second time, to name its key.
"""

from __future__ import annotations

import collections
import itertools
import json
from dataclasses import dataclass, field

import numpy as np

from pipeline.tools.duplicate_keys import BUCKET_ROWS, DuplicateKeys, Repeat
from pipeline.train.feature_sets import read_feature_manifest
from transforms import schema

__all__ = ["Inspection", "inspect_feature_set", "format_inspection"]

_MAX_PROBLEMS_PER_KIND = 20


@dataclass
class Inspection:
    root: str
    manifest: schema.Manifest
    shard_counts: dict = field(default_factory=dict)
    labels: collections.Counter = field(default_factory=collections.Counter)
    samples: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(self.shard_counts.values())


def _short(error: Exception) -> str:
    return str(error).split(":")[0][:200] if str(error) else type(error).__name__


def _parse(raw: bytes):
    """The feature map of a serialised Example, and its key."""
    from tensorflow.core.example import example_pb2

    feature = example_pb2.Example.FromString(raw).features.feature
    return feature, feature[schema.KEY].bytes_list.value[0].decode("utf-8")


def _keys_of(root: str, shards: list[str], repeats: list[Repeat]) -> dict[tuple[int, int], str]:
    """The keys at the repeats' places, ``(shard index, record number) -> key``: a second pass over the
    shards that hold a repeat, each read up to its last repeat only."""
    from apache_beam.io.filesystems import FileSystems

    wanted = collections.defaultdict(set)
    for r in repeats:
        wanted[r.shard].add(r.record)
    keys = {}
    for index, records in sorted(wanted.items()):
        path = FileSystems.join(root, shards[index])
        raws = itertools.islice(schema.iter_serialized(path), max(records))
        try:
            for number, raw in enumerate(raws, start=1):
                if number in records:
                    keys[(index, number)] = _parse(raw)[1]
        except (ValueError, OSError):  # read once already; a shard that fails now leaves its keys unnamed
            pass
    return keys


def _read_shards(root: str, manifest: schema.Manifest, result: Inspection, keys: DuplicateKeys, samples: int,
                 problem) -> None:
    """Every record once, in the manifest's order: counts, labels, samples, per-record problems, and each
    key to ``keys``."""
    from apache_beam.io.filesystems import FileSystems

    vocabulary = set(manifest.labels)
    for index, shard in enumerate(manifest.shards):
        path = FileSystems.join(root, shard)
        count = 0
        try:
            for raw in schema.iter_serialized(path):
                count += 1
                where = f"{shard} record {count}"
                try:
                    feature, key = _parse(raw)
                except Exception as e:
                    problem("parse", f"{where}: not a feature record ({_short(e)})")
                    continue
                label = feature[schema.LABEL].bytes_list.value[0].decode("utf-8") if schema.LABEL in feature else None
                result.labels[label] += 1
                keys.add(key, index, count)
                if label is not None and label not in vocabulary:
                    problem("label", f"{where}: label {label!r} is not in the manifest's vocabulary")
                vectors = {}
                for out in manifest.outputs:
                    values = np.asarray(feature[out.example_key].float_list.value, np.float32)
                    vectors[out.name] = values
                    if len(values) != out.dim:
                        problem("dim", f"{where} ({key}): output {out.name!r} has {len(values)} values, "
                                       f"the manifest says {out.dim}")
                    elif not np.isfinite(values).all():
                        problem("finite", f"{where} ({key}): output {out.name!r} holds NaN or Inf")
                if len(result.samples) < samples:
                    result.samples.append(schema.FeatureRecord(key, label, vectors))
        except ValueError as e:
            problem("corrupt", f"{shard}: truncated or corrupt after {count} records ({_short(e)})")
        except OSError as e:
            problem("missing", f"{shard}: cannot be read ({e})")
        result.shard_counts[shard] = count


def inspect_feature_set(root: str, samples: int = 3, bucket_rows: int = BUCKET_ROWS) -> Inspection:
    """Read every record of the set once; collect the summary and every disagreement with the manifest.

    ``bucket_rows`` bounds how many key fingerprints the duplicate check holds in memory at once."""
    from apache_beam.io.filesystems import FileSystems

    manifest = read_feature_manifest(root)
    result = Inspection(root, manifest)
    expected = int(manifest.counts.get("embedded") or 0)  # too low or absent: oversized buckets are split
    keys = DuplicateKeys(expected, bucket_rows=bucket_rows, buffer_rows=bucket_rows)
    kinds = collections.Counter()

    def problem(kind: str, message: str) -> None:
        kinds[kind] += 1
        if kinds[kind] <= _MAX_PROBLEMS_PER_KIND:
            result.problems.append(message)

    with keys:
        _read_shards(root, manifest, result, keys, samples, problem)
        total, repeats = keys.repeats(limit=_MAX_PROBLEMS_PER_KIND)
    named = _keys_of(root, manifest.shards, repeats)
    for r in repeats:
        key = named.get((r.shard, r.record), "(unreadable now)")
        problem("duplicate", f"{manifest.shards[r.shard]} record {r.record}: duplicate key {key!r} "
                             f"(also in {manifest.shards[r.first_shard]})")
    if total > len(repeats):
        kinds["duplicate"] += total - len(repeats)

    listed = set(manifest.shards)
    try:
        (match,) = FileSystems.match([FileSystems.join(root, schema.FEATURES_DIR, "*")])
        prefix = root.rstrip("/") + "/"
        for m in match.metadata_list:
            rel = m.path[len(prefix):] if m.path.startswith(prefix) else m.path
            if rel not in listed:
                problem("unlisted", f"{rel}: a shard on disk that the manifest does not list")
    except Exception:  # listing is advisory; the records themselves were checked above
        pass
    failed_lines = 0
    for name in manifest.error_files:
        try:
            with FileSystems.open(FileSystems.join(root, name), compression_type="uncompressed") as f:
                failed_lines += sum(1 for line in f.read().splitlines() if line.strip())
        except OSError as e:
            problem("missing", f"{name}: cannot be read ({e})")
    counts = manifest.counts
    if manifest.error_files and counts.get("failed") is not None and failed_lines != counts["failed"]:
        problem("count", f"the error files hold {failed_lines} dead letters, the manifest counts {counts['failed']}")
    listed_files = set(manifest.shards) | set(manifest.error_files)
    try:
        (match,) = FileSystems.match([FileSystems.join(root, schema.COMMITS_DIR, "*.json")])
        for m in match.metadata_list:
            with FileSystems.open(m.path, compression_type="uncompressed") as f:
                named = json.loads(f.read().decode("utf-8")).get("path")
            if named not in listed_files:
                problem("unlisted", f"{m.path}: a commit record of {named}, which the manifest does not list")
    except Exception as e:  # a damaged commit record is itself a problem of the set
        problem("unlisted", f"{schema.COMMITS_DIR}/: a commit record cannot be read ({_short(e)})")
    embedded = counts.get("embedded")
    if embedded is not None and result.records != embedded:
        problem("count", f"the shards hold {result.records} records, the manifest counts {embedded} embedded")
    if {"inputs", "embedded", "failed"} <= set(counts):
        parts = counts["embedded"] + counts["failed"] + counts.get("duplicates", 0)
        if counts["inputs"] != parts:
            problem("count", f"the manifest's counts do not add up: {counts['inputs']} inputs, but {counts['embedded']}"
                             f" embedded + {counts['failed']} failed + {counts.get('duplicates', 0)} duplicates"
                             f" = {parts}")
    for kind, n in kinds.items():
        if n > _MAX_PROBLEMS_PER_KIND:
            result.problems.append(f"... and {n - _MAX_PROBLEMS_PER_KIND} more of this kind ({kind})")
    return result


def format_inspection(result: Inspection, check: bool) -> str:
    m = result.manifest
    c = m.counts
    lines = [f"feature set {result.root}",
             f"  created    {m.created}, format version {m.format_version}",
             f"  backbone   {m.backbone.get('name')} (weights sha256 {str(m.backbone.get('weights_sha256'))[:16]}...)",
             f"  counts     inputs {c.get('inputs')}, embedded {c.get('embedded')}, failed {c.get('failed')}"]
    for o in m.outputs:
        lines.append(f"  output     {o.name}: {o.dim} x {o.dtype} ({o.layer}, pooling {o.pooling}), "
                     f"Example key {o.example_key!r}")
    for reason, n in sorted(m.failures_by_reason.items(), key=lambda kv: -kv[1]):
        lines.append(f"  failures   {n} x {reason}")
    lines.append(f"  shards     {len(m.shards)}, {result.records} records")
    for shard, n in result.shard_counts.items():
        lines.append(f"    {shard}  {n}")
    lines.append(f"  labels     {len(m.labels)} in the vocabulary")
    for label, n in sorted(result.labels.items(), key=lambda kv: (-kv[1], str(kv[0])))[:20]:
        lines.append(f"    {label if label is not None else '(no label)'}  {n}")
    for r in result.samples:
        first = " ".join(f"{v:.4f}" for v in next(iter(r.vectors.values()))[:4])
        lines.append(f"  sample     {r.key} label {r.label}: {first} ...")
    if check:
        if result.problems:
            lines.append(f"check FAILED: {len(result.problems)} problem(s)")
            lines += [f"  {p}" for p in result.problems]
        else:
            lines.append(f"check passed: {result.records} records match the manifest "
                         "(readable, dims, finite values, unique keys, counts)")
    return "\n".join(lines)
