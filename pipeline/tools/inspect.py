"""``featurebeam inspect OUTDIR [--check]``: what a feature set holds, and whether it is intact.

The summary (manifest, per-shard counts, dims, label distribution, the first few records) reads every
record once through Beam's FileSystems, so local and gs:// sets work alike. ``--check`` also verifies each
record against the manifest: readable (CRC), every output present with its dim, finite values, a label from
the vocabulary, keys unique across shards, and shard and record counts as the manifest says. A set stored in
both formats is read in both: each Parquet shard must hold the records of its TFRecord twin (the same commit),
in the same order, with the same labels and bitwise the same vectors.

Memory does not grow with the records: keys are checked for repeats by fingerprint in buckets on local
temporary disk (``duplicate_keys``, 24 bytes a record while it runs), and only the shards holding a reported
repeat are read a second time, to name its key. The checks that read no records (files on disk, error files,
commit records, the manifest's counts) are in ``manifest_checks.py``.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field

import numpy as np

from pipeline.tools.duplicate_keys import BUCKET_ROWS, DuplicateKeys, Repeat
from pipeline.tools.manifest_checks import (
    check_commit_records,
    check_counts,
    check_error_files,
    check_shards_on_disk,
    check_twins_listed,
    commit_records,
    short_error,
)
from pipeline.train.feature_sets import read_feature_manifest
from transforms.schema.example import decode_example, iter_serialized
from transforms.schema.fields import FeatureRecord
from transforms.schema.layout import PARQUET_SUFFIX, SHARD_SUFFIX, shard_format
from transforms.schema.manifest import Manifest
from transforms.schema.parquet import iter_parquet
from transforms.write.generations import update_in_progress

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
    updating: int | None = None  # the generation an update under way (or interrupted) makes

    @property
    def records(self) -> int:
        return sum(self.shard_counts.values())


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
            problem("formats", f"{twin}: cannot be read in full ({short_error(e)})")

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
                    problem("parse", f"{where}: not a feature record ({short_error(record)})")
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
            problem("corrupt", f"{shard}: truncated or corrupt after {count} records ({short_error(e)})")
        except OSError as e:
            problem("missing", f"{shard}: cannot be read ({e})")
        if twin is not None and not twin_ended and next(twin[1], _END) is not _END:
            problem("formats", f"{twin[0]} holds more records than {shard} ({count})")
        result.shard_counts[shard] = count


class _ProblemLog:
    """Problems by kind: the first ``_MAX_PROBLEMS_PER_KIND`` of each kind in full, the rest only counted."""

    def __init__(self, messages: list):
        self.messages = messages
        self.kinds = collections.Counter()

    def __call__(self, kind: str, message: str) -> None:
        self.kinds[kind] += 1
        if self.kinds[kind] <= _MAX_PROBLEMS_PER_KIND:
            self.messages.append(message)

    def count_unreported(self, kind: str, n: int) -> None:
        """``n`` more problems of ``kind`` found but not described (only the first few were)."""
        self.kinds[kind] += n

    def close(self) -> None:
        """One line per kind that had more problems than were described."""
        for kind, n in self.kinds.items():
            if n > _MAX_PROBLEMS_PER_KIND:
                self.messages.append(f"... and {n - _MAX_PROBLEMS_PER_KIND} more of this kind ({kind})")


def inspect_feature_set(root: str, samples: int = 3, bucket_rows: int = BUCKET_ROWS) -> Inspection:
    """Read every record of the set once; collect the summary and every disagreement with the manifest.

    ``bucket_rows`` bounds how many key fingerprints the duplicate check holds in memory at once."""
    manifest = read_feature_manifest(root)
    updating = update_in_progress(root)
    result = Inspection(root, manifest, updating=updating if (updating or 0) > manifest.generation else None)
    problem = _ProblemLog(result.problems)
    _check_records(root, manifest, result, samples, bucket_rows, problem)
    check_twins_listed(manifest, problem)
    records = commit_records(root, problem)  # read once for both checks
    check_shards_on_disk(root, manifest, records, problem)
    check_error_files(root, manifest, problem)
    check_commit_records(manifest, records, problem)
    check_counts(manifest.counts, result.records, problem)
    problem.close()
    return result


def _check_records(root: str, manifest: Manifest, result: Inspection, samples: int, bucket_rows: int,
                   problem: _ProblemLog) -> None:
    """Every record once (``_read_shards``), then the keys that repeat, each named where it repeats."""
    expected = int(manifest.counts.get("embedded") or 0)  # too low or absent: oversized buckets are split
    keys = DuplicateKeys(expected, bucket_rows=bucket_rows, buffer_rows=bucket_rows)
    with keys:
        _read_shards(root, manifest, result, keys, samples, problem)
        total, repeats = keys.repeats(limit=_MAX_PROBLEMS_PER_KIND)
    shards = list(manifest.shards or manifest.parquet_shards)
    named = _keys_of(root, shards, manifest.outputs, repeats)
    for r in repeats:
        key = named.get((r.shard, r.record), "(unreadable now)")
        problem("duplicate", f"{shards[r.shard]} record {r.record}: duplicate key {key!r} "
                             f"(also in {shards[r.first_shard]})")
    if total > len(repeats):
        problem.count_unreported("duplicate", total - len(repeats))


def format_inspection(result: Inspection, check: bool) -> str:
    m = result.manifest
    c = m.counts
    lines = [f"feature set {result.root}",
             f"  created    {m.created}, format version {m.format_version}",
             f"  backbone   {m.backbone.get('name')} (weights sha256 {str(m.backbone.get('weights_sha256'))[:16]}...)",
             f"  counts     inputs {c.get('inputs')}, embedded {c.get('embedded')}, failed {c.get('failed')}"
             + (f", retained {c['retained']} (inputs gone, kept by --keep-removed)" if c.get("retained") else "")]
    if m.generation > 1 and m.generations:
        g = m.generations[-1]
        lines.insert(2, f"  generation {m.generation} ({g.get('created', '?')}): "
                        + ", ".join(f"{g.get(k, 0):,} {k}" for k in ("new", "changed", "removed", "kept")))
    if result.updating:
        lines.insert(2, f"  updating   an update to generation {result.updating} is under way or was interrupted "
                        "(--update finishes it); this is the last published generation")
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
