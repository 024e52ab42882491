"""``featurebeam inspect OUTDIR [--check]``: what a feature set holds, and whether it is intact.

The summary (manifest, per-shard counts, dims, label distribution, the first few records) reads every
record once through Beam's FileSystems, so local and gs:// sets work alike. ``--check`` also verifies each
record against the manifest: readable (CRC), every output present with its dim, finite values, a label from
the vocabulary, keys unique across shards, and shard and record counts as the manifest says. A set stored in
both formats is read in both: each Parquet shard must hold the records of its TFRecord twin (the same commit),
in the same order, with the same labels and bitwise the same vectors.

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
from transforms.schema.example import decode_example, iter_serialized
from transforms.schema.fields import FeatureRecord
from transforms.schema.layout import COMMITS_DIR, FEATURES_DIR, PARQUET_SUFFIX, SHARD_SUFFIX, shard_format
from transforms.schema.manifest import Manifest
from transforms.schema.parquet import iter_parquet

__all__ = ["Inspection", "inspect_feature_set", "format_inspection"]

_MAX_PROBLEMS_PER_KIND = 20


@dataclass
class Inspection:
    root: str
    manifest: Manifest
    shard_counts: dict = field(default_factory=dict)
    labels: collections.Counter = field(default_factory=collections.Counter)
    samples: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(self.shard_counts.values())


def _short(error: Exception) -> str:
    return str(error).split(":")[0][:200] if str(error) else type(error).__name__


def _keys_of(root: str, shards: list[str], outputs, repeats: list[Repeat]) -> dict[tuple[int, int], str]:
    """The keys at the repeats' places, ``(shard index, record number) -> key``: a second pass over the
    shards that hold a repeat, each read up to its last repeat only."""
    from apache_beam.io.filesystems import FileSystems

    wanted = collections.defaultdict(set)
    for r in repeats:
        wanted[r.shard].add(r.record)
    keys = {}
    for index, records in sorted(wanted.items()):
        path = FileSystems.join(root, shards[index])
        try:
            for number, record in enumerate(itertools.islice(_shard_records(path, outputs), max(records)), start=1):
                if number in records and not isinstance(record, Exception):
                    keys[(index, number)] = record[0]
        except (ValueError, OSError):  # read once already; a shard that fails now leaves its keys unnamed
            pass
    return keys


def _shard_records(path: str, outputs):
    """``(key, label, vectors)`` of each record of a shard of either format, in order; an ``Exception`` in place
    of a record that cannot be parsed. A damaged file raises ``ValueError`` (or ``OSError``) where it breaks."""
    if shard_format(path) == "parquet":
        for keys, labels, _, vectors in iter_parquet(path, outputs):
            for i, key in enumerate(keys):
                yield key, labels[i], {name: x[i] for name, x in vectors.items()}
        return
    for raw in iter_serialized(path):
        try:
            record = decode_example(raw, outputs)
        except Exception as e:
            yield e
            continue
        yield record.key, record.label, record.vectors


_END = object()  # a twin with no record left


def _twin_records(root: str, shard: str, manifest: Manifest, problem):
    """The records of a TFRecord shard's Parquet twin (the same commit), read along with it; None when the set
    has one format. A twin that cannot be read is a problem, and then holds no more records."""
    from apache_beam.io.filesystems import FileSystems

    if not manifest.parquet_shards or not manifest.shards:
        return None
    twin = shard.removesuffix(SHARD_SUFFIX) + PARQUET_SUFFIX
    if twin not in set(manifest.parquet_shards):
        problem("formats", f"{shard}: the manifest lists no Parquet shard of its commit ({twin})")
        return None

    def records():
        try:
            yield from _shard_records(FileSystems.join(root, twin), manifest.outputs)
        except (ValueError, OSError) as e:
            problem("formats", f"{twin}: cannot be read in full ({_short(e)})")

    return twin, records()


def _compare_twin(shard: str, twin: str, number: int, a, b, problem) -> None:
    """Record ``number`` of a shard (``a``) against the same record of its twin (``b``)."""
    if b is _END:
        problem("formats", f"{twin} holds fewer records than {shard} ({number - 1})")
    elif not isinstance(a, Exception) and not isinstance(b, Exception) and (
            a[:2] != b[:2] or any(not np.array_equal(a[2][name], b[2][name]) for name in a[2])):
        problem("formats", f"{twin} record {number} ({b[0]}) differs from {shard} record {number} ({a[0]})")


def _read_shards(root: str, manifest: Manifest, result: Inspection, keys: DuplicateKeys, samples: int,
                 problem) -> None:
    """Every record once, in the manifest's order (its TFRecord shards, else its Parquet ones): counts, labels,
    samples, per-record problems, and each key to ``keys``; each Parquet twin compared as it is read."""
    from apache_beam.io.filesystems import FileSystems

    vocabulary = set(manifest.labels)
    for index, shard in enumerate(manifest.shards or manifest.parquet_shards):
        path = FileSystems.join(root, shard)
        twin = _twin_records(root, shard, manifest, problem)
        count, twin_ended = 0, False
        try:
            for record in _shard_records(path, manifest.outputs):
                count += 1
                if twin is not None and not twin_ended:
                    other = next(twin[1], _END)
                    twin_ended = other is _END
                    _compare_twin(shard, twin[0], count, record, other, problem)
                where = f"{shard} record {count}"
                if isinstance(record, Exception):
                    problem("parse", f"{where}: not a feature record ({_short(record)})")
                    continue
                key, label, vectors = record
                result.labels[label] += 1
                keys.add(key, index, count)
                if label is not None and label not in vocabulary:
                    problem("label", f"{where}: label {label!r} is not in the manifest's vocabulary")
                for out in manifest.outputs:
                    values = vectors[out.name]
                    if len(values) != out.dim:
                        problem("dim", f"{where} ({key}): output {out.name!r} has {len(values)} values, "
                                       f"the manifest says {out.dim}")
                    elif not np.isfinite(values).all():
                        problem("finite", f"{where} ({key}): output {out.name!r} holds NaN or Inf")
                if len(result.samples) < samples:
                    result.samples.append(FeatureRecord(key, label, vectors))
        except ValueError as e:
            problem("corrupt", f"{shard}: truncated or corrupt after {count} records ({_short(e)})")
        except OSError as e:
            problem("missing", f"{shard}: cannot be read ({e})")
        if twin is not None and not twin_ended and next(twin[1], _END) is not _END:
            problem("formats", f"{twin[0]} holds more records than {shard} ({count})")
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
    shards = list(manifest.shards or manifest.parquet_shards)
    named = _keys_of(root, shards, manifest.outputs, repeats)
    for r in repeats:
        key = named.get((r.shard, r.record), "(unreadable now)")
        problem("duplicate", f"{shards[r.shard]} record {r.record}: duplicate key {key!r} "
                             f"(also in {shards[r.first_shard]})")
    if manifest.shards and manifest.parquet_shards:
        twins = {s.removesuffix(SHARD_SUFFIX) + PARQUET_SUFFIX for s in manifest.shards}
        for orphan in sorted(set(manifest.parquet_shards) - twins):
            problem("formats", f"{orphan}: the manifest lists no TFRecord shard of its commit")
    if total > len(repeats):
        kinds["duplicate"] += total - len(repeats)

    listed = set(manifest.shards) | set(manifest.parquet_shards)
    try:
        (match,) = FileSystems.match([FileSystems.join(root, FEATURES_DIR, "*")])
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
    listed_files = listed | set(manifest.error_files)
    try:
        (match,) = FileSystems.match([FileSystems.join(root, COMMITS_DIR, "*.json")])
        for m in match.metadata_list:
            with FileSystems.open(m.path, compression_type="uncompressed") as f:
                record = json.loads(f.read().decode("utf-8"))
            for named in [record.get("path")] + [also.get("path") for also in record.get("also", ())]:
                if named not in listed_files:
                    problem("unlisted", f"{m.path}: a commit record of {named}, which the manifest does not list")
    except Exception as e:  # a damaged commit record is itself a problem of the set
        problem("unlisted", f"{COMMITS_DIR}/: a commit record cannot be read ({_short(e)})")
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
    formats = " + ".join(f"{len(files)} {name}" for name, files in (("TFRecord", m.shards),
                                                                   ("Parquet", m.parquet_shards)) if files)
    lines.append(f"  shards     {formats or 0}, {result.records} records")
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
                         "(readable, dims, finite values, unique keys, counts"
                         + (", both formats alike)" if m.shards and m.parquet_shards else ")"))
    return "\n".join(lines)
