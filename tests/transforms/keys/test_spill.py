"""Packs through the shuffle as references to scratch files: read back exactly, counted once when a bundle is
retried, and what crosses each per-key GroupByKey stays small whatever the number of keys."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.coders import registry
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor

from transforms.keys import dedupe, spill
from transforms.keys.fingerprints import PackKeysFn, fingerprint
from transforms.keys.spill import INLINE_BYTES, Spilled

IN_PROCESS = ["--runner=FnApiRunner"]
REFERENCE_BYTES = 300  # a Spilled reference, encoded, with its bucket or unit id: about 130 bytes


def test_a_small_pack_travels_inline_and_a_large_one_as_a_file_read_back(tmp_path):
    folder = str(tmp_path / "step")
    small = (b"a" * 10, b"b" * 20)
    large = (os.urandom(INLINE_BYTES), b"", np.arange(7, dtype=np.int32).tobytes())
    assert spill.spill(folder, small) == small and not os.path.exists(folder)
    ref = spill.spill(folder, large)
    assert isinstance(ref, Spilled) and os.listdir(folder) == [os.path.basename(ref.path)]
    assert list(spill.unspill([small, ref])) == [small, large]


def test_a_reference_given_twice_is_read_once_and_a_damaged_file_is_an_error(tmp_path):
    ref = spill.spill(str(tmp_path), (os.urandom(INLINE_BYTES + 1),))
    assert len(list(spill.unspill([ref, ref]))) == 1
    with open(ref.path, "r+b") as f:
        f.truncate(ref.size - 1)
    with pytest.raises(OSError, match="bytes"):
        list(spill.unspill([ref]))


def test_clearing_the_scratch_folder_leaves_the_rest_of_the_pending_folder(tmp_path):
    out = str(tmp_path / "out")
    ref = spill.spill(spill.scratch_folder(out, "repeats"), (os.urandom(INLINE_BYTES + 1),))
    other = tmp_path / "out" / ".pending" / "part.tfrecord"
    other.write_bytes(b"x")
    spill.clear_scratch(out)
    assert not os.path.exists(ref.path) and not os.path.exists(spill.scratch_folder(out))
    assert os.listdir(tmp_path / "out" / ".pending") == ["part.tfrecord"]
    spill.clear_scratch(out)  # nothing there: nothing to do


@pytest.mark.parametrize("store", ["gcs", "s3"])
def test_scratch_files_on_object_storage(request, store):
    """Written, read back and cleared through Beam's FileSystems on a GCS emulator and a moto S3 server."""
    from apache_beam.io.filesystems import FileSystems

    server = request.getfixturevalue(store)
    if store == "s3":
        FileSystems.set_options(PipelineOptions(server.beam_flags))
    server.create_bucket(f"scratch-{store}")
    out = f"{'gs' if store == 'gcs' else 's3'}://scratch-{store}/out"
    kept = FileSystems.join(out, "features", "part-x.tfrecord")
    with FileSystems.create(kept) as f:
        f.write(b"a shard")
    large = (os.urandom(INLINE_BYTES), b"more")
    refs = [spill.spill(spill.scratch_folder(out, step), large) for step in ("repeats", "repeats", "resume")]
    assert all(r.path.startswith(f"{out}/.pending/shuffle/") for r in refs)
    assert list(spill.unspill(refs)) == [large] * 3
    spill.clear_scratch(out)
    (left,) = FileSystems.match([FileSystems.join(out, "**")])
    assert [m.path for m in left.metadata_list] == [kept]


# --- a retried bundle -----------------------------------------------------------------------------------------

def _bundle(fn: beam.DoFn, keys) -> list:
    """One attempt at a bundle of ``keys``: what the DoFn outputs (a runner keeps it only if the bundle succeeds)."""
    fn.setup()
    fn.start_bundle()
    out = [o for key in keys for o in fn.process(key)]
    return out + [w.value for w in fn.finish_bundle()]


def _repeats(packs) -> int:
    """``CountRepeatedKeys`` past its shuffle: the packs grouped by bucket, repeats counted per bucket, summed."""
    buckets = {}
    for bucket, pack in packs:
        buckets.setdefault(bucket, []).append(pack)
    return sum(n for group in buckets.items() for n in dedupe._RepeatsFn().process(group))


def test_a_retried_bundles_packs_count_once_and_equal_bundles_count_twice(tmp_path):
    keys = [f"k{i}" for i in range(30_000)] + [f"k{i}" for i in range(1_000)]  # 1,000 repeats
    folder = str(tmp_path / "repeats")
    failed = _bundle(PackKeysFn(folder), keys)  # its files are written, its outputs discarded
    retried = _bundle(PackKeysFn(folder), keys)
    assert all(isinstance(pack, Spilled) for _, pack in retried)
    assert len(os.listdir(folder)) == len(failed) + len(retried)  # the failed attempt's files are still there
    assert _repeats(retried) == 1_000
    assert _repeats(retried + retried[:5]) == 1_000  # a reference delivered twice is still one pack
    # two bundles that hold the same keys make packs of the same bytes, in files of their own: both count
    assert _repeats(retried + failed) == len(keys) * 2 - 30_000


# --- what crosses the GroupByKey ------------------------------------------------------------------------------

def _measure_into(p: beam.Pipeline, label: str, path: str) -> None:
    """Write the encoded size of each element that goes into the GroupByKey labelled ``label`` to ``path``."""

    class Find(PipelineVisitor):
        def __init__(self):
            self.found = []

        def visit_transform(self, node):
            if node.full_label.endswith(label) and isinstance(node.transform, beam.GroupByKey):
                self.found.append(node.inputs[0])

    finder = Find()
    p.visit(finder)
    (pcoll,) = finder.found
    coder = registry.get_coder(pcoll.element_type)
    _ = (pcoll
         | f"Measure {label}" >> beam.Map(lambda e: len(coder.encode(e)))
         | f"Sizes {label}" >> beam.combiners.ToList()
         | f"Write {label}" >> beam.Map(lambda sizes: open(path, "w").write(json.dumps(sizes))))


@pytest.mark.parametrize("n", [2_000, 200_000], ids=["2k-keys", "200k-keys"])
def test_repeat_counting_shuffles_references_not_fingerprints(tmp_path, n):
    sizes = str(tmp_path / "sizes.json")
    result = str(tmp_path / "repeats.json")
    with beam.Pipeline(options=PipelineOptions(IN_PROCESS)) as p:
        keys = (p | beam.Create(range(0, n, 1_000))
                | beam.FlatMap(lambda start: [f"k{i % (n - 10)}" for i in range(start, start + 1_000)]))
        _ = (keys | "Repeated keys" >> dedupe.CountRepeatedKeys(str(tmp_path / "scratch"))
             | beam.Map(lambda repeats: open(result, "w").write(json.dumps(repeats))))
        _measure_into(p, "Repeated keys/Group buckets", sizes)
    assert json.load(open(result)) == 10
    crossing = json.load(open(sizes))
    assert max(crossing) <= INLINE_BYTES + REFERENCE_BYTES
    assert sum(crossing) <= 64 * 2 * (INLINE_BYTES + REFERENCE_BYTES)  # a pack per bucket and flush, at most
    if n == 200_000:  # 3.2 MB of fingerprints: every pack went to a file, and the shuffle carried 128 references
        assert max(crossing) <= REFERENCE_BYTES and sum(crossing) < 16 * n / 50


def test_the_resume_join_shuffles_references_not_fingerprints(tmp_path, monkeypatch):
    """However small the packs, with ``INLINE_BYTES`` at 0 only references cross either shuffle of the join,
    and the done keys of each unit are found all the same."""
    from transforms.keys import done_keys

    monkeypatch.setattr(spill, "INLINE_BYTES", 0)
    from transforms.write.commit_format import Commit

    units = [(f"unit{u}", [f"u{u}#{i}" for i in range(300)], "v") for u in range(4)]
    commit = Commit("c" * 32, "features", "features/part-c.tfrecord", 200)
    done = [(commit, [(f"u{u}#{i}", "v") for u in (0, 2) for i in range(0, 300, 3)])]  # (its commit, its entries)
    sizes, joined, found = str(tmp_path / "sizes.json"), str(tmp_path / "joined.json"), str(tmp_path / "found.json")
    with beam.Pipeline(options=PipelineOptions(IN_PROCESS)) as p:
        matched = (p | "Units" >> beam.Create(units)
                   | "Done keys" >> done_keys.MatchCommitted(p | "Commits" >> beam.Create(done),
                                                         str(tmp_path / "scratch")))[done_keys.DONE]
        _ = (matched | beam.Map(lambda e: len(registry.get_coder(object).encode(e)))
             | "Joined" >> beam.combiners.ToList() | beam.Map(lambda s: open(joined, "w").write(json.dumps(s))))
        _ = (matched | beam.MapTuple(lambda uid, fps: (uid, fps)) | beam.GroupByKey()
             | beam.MapTuple(lambda uid, packs: (uid, len(done_keys.done_set(packs))))
             | "Found" >> beam.combiners.ToList() | beam.Map(lambda f: open(found, "w").write(json.dumps(f))))
        _measure_into(p, "Done keys/Group buckets", sizes)
    assert sorted(map(tuple, json.load(open(found)))) == [("unit0", 100), ("unit2", 100)]
    assert max(json.load(open(sizes))) <= REFERENCE_BYTES
    assert max(json.load(open(joined))) <= REFERENCE_BYTES


def test_de_duplication_shuffles_references_not_fingerprints(tmp_path, monkeypatch):
    from transforms.write.commit_format import commit_files, key_line, place_file

    monkeypatch.setattr(spill, "INLINE_BYTES", 0)
    out = str(tmp_path / "out")
    for c in "ab":
        placed = place_file(out, c * 32, f"features/part-{c}.tfrecord", data=b"x")
        commit_files(out, c * 32, "features", [placed], b"".join(key_line(f"{c}{i}", "l") for i in range(500)),
                     records=500)
    sizes, result = str(tmp_path / "sizes.json"), str(tmp_path / "result.json")
    with beam.Pipeline(options=PipelineOptions(IN_PROCESS)) as p:
        _ = (p | beam.Create([0]) | "Resolve" >> dedupe.ResolveDuplicates(out, 4)
             | beam.Map(lambda summary: open(result, "w").write(json.dumps(summary))))
        _measure_into(p, "Resolve/Group buckets", sizes)
    assert json.load(open(result)) == [0, 0, None]
    crossing = json.load(open(sizes))
    assert len(crossing) == 2 * 64 and max(crossing) <= REFERENCE_BYTES  # a reference per commit and bucket
    assert len(os.listdir(spill.scratch_folder(out, "duplicates"))) == 2 * 64


def test_fingerprints_of_packs_are_the_keys_own(tmp_path):
    """A spilled pack holds the fingerprints of the keys packed, nothing else."""
    keys = [f"k{i}" for i in range(5_000)]
    packs = _bundle(PackKeysFn(str(tmp_path)), keys)
    held = {fp for _, pack in packs for (fps,) in spill.unspill([pack])
            for fp in (fps[i:i + 16] for i in range(0, len(fps), 16))}
    assert held == {fingerprint(k) for k in keys}
