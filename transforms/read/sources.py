"""Where records come from: listing the inputs, expanding manifests and archives, reading the bytes.

``ReadRecords`` turns input specs into ``Record``s in three steps, each on the workers:

1. each spec's files are listed (``FileSystems.match``; the launcher only checks that something matches);
2. each listed file is expanded into units of reading work: a loose file is one unit; a manifest gives one
   unit per row; a tar shard or TFRecord file is indexed (headers only) and cut into chunks of consecutive
   records; a text table gives its rows as records, a file read as lines its lines;
3. the units are grouped by unit, which spreads them over all workers, which read them, so a few big shards
   do not pin the job to a few workers, and reading is separated from inference. On ``--resume`` each unit
   is grouped with the keys of it that an earlier run committed (``done_keys.py``), and those are skipped.

Anything that cannot be listed, parsed or read becomes a ``Failure`` with its key and reason. What an input
names is ``input_specs.py``; files are opened through ``files.py`` (regular files only, reads bounded by
``InputFields.max_input_bytes``).

What a record holds follows ``InputFields.modality``: a tar sample's image member or its audio member, a
TFRecord Example's image or audio feature (both as bytes). A loose file (or a manifest row) is read whole for
an image or text backbone; for an audio backbone it is only named, as a ``LazyFile`` (its type and size
checked), since a recording can be hundreds of MB: the decoder streams it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.keys import done_keys, whole_containers
from transforms.keys.fingerprints import fingerprint
from transforms.read import tables, tar_shards, tfrecords
from transforms.read.files import lazy_file, open_regular, read_whole
from transforms.read.input_specs import InputSpec, list_source_files
from transforms.read.tables import InputFields
from transforms.read.versions import manifest_row_versions
from transforms.schema.elements import (
    FAILED,
    METRICS_NAMESPACE,
    Failure,
    FileRef,
    Record,
    SourceFile,
    payload_bytes,
)
from transforms.schema.fields import record_key
from transforms.worker.process import WorkerDoFn

__all__ = ["ReadRecords", "ExpandSourceFn", "ReadUnitFn", "expand_source", "read_unit", "unit_keys", "SKIPPED",
           "DEFAULT_CHUNK_BYTES", "MAX_FIELD_CHARS"]

DEFAULT_CHUNK_BYTES = 64 << 20
MAX_FIELD_CHARS = 1024  # the longest label or split value kept; a longer one is that record's failure


def expand_source(source: SourceFile, fields: InputFields, chunk_bytes: int):
    """One listed file -> its units of reading work (``FileRef``, tar or TFRecord chunks, text ``Record``s)
    and ``Failure``s, as a pure generator over the file's contents. Each carries its source version: a manifest
    row's is the version of the file it names, anything else's the listed file's (``versions.py``)."""
    if source.format == "manifest":
        yield from manifest_row_versions(_units_of(source, fields, chunk_bytes), source.version)
    else:
        for unit in _units_of(source, fields, chunk_bytes):
            yield unit if unit.version is not None else unit._replace(version=source.version)


def _units_of(source: SourceFile, fields: InputFields, chunk_bytes: int):
    if source.format == "files":
        yield FileRef(record_key(source.uri), source.uri, source.label)
        return
    with open_regular(source.uri) as f:
        if source.format in ("manifest", "text"):
            rows = tables.iter_rows(source.uri, tables.bounded_lines(f, fields.max_input_bytes))
            make = tables.manifest_refs if source.format == "manifest" else tables.text_records
            yield from make(source.uri, rows, fields)
        elif source.format == "lines":
            yield from tables.line_records(source.uri, tables.bounded_lines(f, fields.max_input_bytes))
        elif source.format == "tar":
            samples = tar_shards.index_tar(f, fields.max_input_bytes)
            yield from tar_shards.chunk_samples(source.uri, samples, chunk_bytes, fields.modality)
        elif source.format == "tfrecord":
            yield from tfrecords.index_tfrecord(source.uri, f, chunk_bytes)
        else:
            raise ValueError(f"unknown input format {source.format!r}")


def read_unit(unit, fields: InputFields) -> Iterator[Record | Failure]:
    """One unit of reading work -> its ``Record``s (and ``Failure``s for what cannot be read, or whose label or
    split is longer than ``MAX_FIELD_CHARS``: no such value reaches the manifest or a summary), each with the
    unit's source version."""
    for item in _read_unit(unit, fields):
        if item.version is None and unit.version is not None:
            item = item._replace(version=unit.version)
        too_long = isinstance(item, Record) and next(
            ((name, value) for name, value in (("label", item.label), ("split", item.split))
             if value is not None and len(value) > MAX_FIELD_CHARS), None)
        if too_long:
            name, value = too_long
            yield Failure(item.key, item.origin, "read", "FieldTooLong",
                          f"its {name} is {len(value):,} characters, over {MAX_FIELD_CHARS:,}: {value[:60]!r}...",
                          item.version)
        else:
            yield item


def _read_unit(unit, fields: InputFields) -> Iterator[Record | Failure]:
    if isinstance(unit, (Record, Failure)):  # a failure found while expanding is a unit of one failed record
        yield unit
    elif isinstance(unit, FileRef):
        read = lazy_file if fields.modality == "audio" else read_whole
        yield Record(unit.key, read(unit.uri, fields.max_input_bytes), unit.label, unit.split, unit.uri)
    elif isinstance(unit, tar_shards.TarChunk):
        with open_regular(unit.uri) as f:
            yield from tar_shards.read_tar_chunk(f, unit, fields)
    elif isinstance(unit, tfrecords.TFRecordChunk):
        with open_regular(unit.uri) as f:
            yield from tfrecords.read_tfrecord_chunk(f, unit, fields)
    else:
        raise TypeError(f"not a unit of reading work: {type(unit).__name__}")


def unit_keys(unit, modality: str = "image") -> list[str]:
    """The keys of every record a unit holds (to record them all when the unit cannot be opened); a tar
    sample's key names the member a backbone of ``modality`` reads (its image, or its audio)."""
    if isinstance(unit, (Record, FileRef, Failure)):
        return [unit.key]
    if isinstance(unit, tar_shards.TarChunk):
        extensions = tar_shards.payload_extensions(modality)
        return [record_key(unit.uri, s.member(extensions).name) for s in unit.samples]
    return [record_key(unit.uri, i) for i in range(unit.first_index, unit.first_index + unit.count)]


def _describe(error: BaseException) -> BaseException:
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"file does not exist: {error.filename or error}")
    return error


class ExpandSourceFn(WorkerDoFn):
    """SourceFile -> units of reading work; a file that cannot be opened or parsed goes to ``failed``."""

    def __init__(self, fields: InputFields, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self._fields = fields
        self._chunk_bytes = chunk_bytes

    def process(self, source: SourceFile):
        try:
            for unit in expand_source(source, self._fields, self._chunk_bytes):
                yield beam.pvalue.TaggedOutput(FAILED, unit) if isinstance(unit, Failure) else unit
        except Exception as e:  # a file we cannot read is this file's failure, not the job's
            failure = Failure.from_exception(source.uri, source.uri, "read", _describe(e))
            yield beam.pvalue.TaggedOutput(FAILED, failure.with_version(source.version))


SKIPPED = "skipped"  # tag of the keys a resumed run does not read again (a tuple per unit)


class ReadUnitFn(WorkerDoFn):
    """(unit id, [(UNIT, unit) or (DONE, done fingerprints, inline or spilled), ...]) -> ``Record``s of each unit;
    what cannot be read goes to ``failed``, the keys among the done fingerprints (committed by an earlier run) to
    ``skipped``, as one tuple per unit: a unit whose keys are all done is not even opened."""

    def __init__(self, fields: InputFields):
        self._fields = fields
        self._read = Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "bytes_read")
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "records_skipped_as_committed")

    def process(self, element):
        _, values = element
        values = list(values)
        done = done_keys.done_set(v for tag, v in values if tag == done_keys.DONE)
        for tag, unit in values:
            if tag == UNIT:
                yield from self._read_one(unit, done)

    def _read_one(self, unit, done: frozenset[bytes]):
        keys = unit_keys(unit, self._fields.modality)
        is_done = (lambda key: fingerprint(key) in done) if done else (lambda key: False)
        if done and all(is_done(k) for k in keys):
            self._skipped.inc(len(keys))
            yield beam.pvalue.TaggedOutput(SKIPPED, tuple(keys))
            return
        seen, skipped = set(), []  # one unit's keys: bounded by the unit
        try:
            for item in read_unit(unit, self._fields):
                seen.add(item.key)
                if is_done(item.key):
                    skipped.append(item.key)
                elif isinstance(item, Failure):
                    yield beam.pvalue.TaggedOutput(FAILED, item)
                else:
                    self._read.inc()
                    self._bytes.inc(payload_bytes(item.payload))
                    yield item
        except Exception as e:  # storage errors: every record of the unit not yet read fails with the reason
            source = unit.origin if isinstance(unit, Record) else unit.uri
            for key in keys:
                if key not in seen and not is_done(key):
                    failure = Failure.from_exception(key, source, "read", _describe(e)).with_version(unit.version)
                    yield beam.pvalue.TaggedOutput(FAILED, failure)
                elif key not in seen:
                    skipped.append(key)
        if skipped:
            self._skipped.inc(len(skipped))
            yield beam.pvalue.TaggedOutput(SKIPPED, tuple(skipped))


UNIT = "unit"


def _keyed_unit(unit, modality: str = "image"):
    keys = unit_keys(unit, modality)
    return done_keys.unit_id(unit, keys), keys


class ReadRecords(beam.PTransform):
    """Input specs -> ``{"sources": SourceFile, "units": units of reading work, "records": Record,
    "failed": Failure, "skipped": the keys of a unit skipped, as a tuple}``, and with ``done_commits`` also
    ``"stale"`` and ``"retained"``.

    ``done_commits``: an optional PCollection of ``(Commit, [(key, version), ...])`` of the verified commits of an
    earlier run of the same job: the records whose inputs are listed at the same source version are skipped;
    the commits' stale records (their input changed, or is gone) come out as ``(commit id, (positions, changed,
    removed))`` decisions for ``done_keys.DropStaleRecords``; with ``keep_removed``, records whose input is gone
    stay, and ``"retained"`` counts them. The join keeps its scratch files in ``scratch`` (``done_keys.py``),
    which it then needs. ``keep_whole`` (an update of a finished set): the listed containers it keeps whole are
    neither read nor joined, and ``"kept"`` gives their record counts (``whole_containers.py``)."""

    def __init__(self, specs: Sequence[InputSpec], fields: InputFields = InputFields(),
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, done_commits=None, scratch: str | None = None,
                 keep_removed: bool = False, keep_whole: whole_containers.KeepWholeContainers | None = None):
        super().__init__()
        if done_commits is not None and not scratch:
            raise ValueError("skipping done keys needs a scratch folder")
        self._specs = list(specs)
        self._fields = fields
        self._chunk_bytes = chunk_bytes
        self._done_commits = done_commits
        self._scratch = scratch
        self._keep_removed = keep_removed
        self._keep_whole = keep_whole

    def expand(self, pbegin):
        sources = (
            pbegin
            | "Input specs" >> beam.Create(self._specs)
            | "List input files" >> beam.FlatMap(list_source_files)
        )
        to_read, done_commits, kept = sources, self._done_commits, None
        if self._keep_whole is not None:
            whole = sources | "Keep whole containers" >> self._keep_whole
            to_read, done_commits, kept = (whole[whole_containers.TO_READ], whole["commits"],
                                           whole[whole_containers.KEPT])
        expanded = (
            to_read
            | "Spread files over workers" >> beam.Reshuffle()
            | "Expand manifests and archives" >> beam.ParDo(
                ExpandSourceFn(self._fields, self._chunk_bytes)).with_outputs(FAILED, main="units")
        )
        units = (expanded.units, expanded[FAILED]) | "Every unit" >> beam.Flatten()  # failures may be done too
        modality = self._fields.modality
        grouped = [units | "Key units" >> beam.Map(lambda u: (_keyed_unit(u, modality)[0], (UNIT, u)))]
        matched = {}
        if done_commits is not None:
            matched = (units
                       | "Keys of units" >> beam.Map(lambda u: (*_keyed_unit(u, modality), u.version))
                       | "Match committed records" >> done_keys.MatchCommitted(done_commits, self._scratch,
                                                                              self._keep_removed))
            grouped.append(matched[done_keys.DONE]
                           | "Tag done keys" >> beam.MapTuple(lambda uid, fps: (uid, (done_keys.DONE, fps))))
        read = (
            grouped
            | "Units and done keys" >> beam.Flatten()
            | "Spread reading over workers" >> beam.GroupByKey()
            | "Read records" >> beam.ParDo(ReadUnitFn(self._fields)).with_outputs(FAILED, SKIPPED, main="records")
        )
        out = {"sources": sources, "units": expanded.units, "records": read.records, FAILED: read[FAILED],
               SKIPPED: read[SKIPPED]}
        if matched:
            out.update({done_keys.STALE: matched[done_keys.STALE], done_keys.RETAINED: matched[done_keys.RETAINED]})
        if kept is not None:
            out[whole_containers.KEPT] = kept
        return out
