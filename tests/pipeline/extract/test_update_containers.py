"""``--update`` keeps an unchanged container (a tar shard, TFRecord or text file) whole: it is neither indexed nor
joined key by key, and the set still equals a fresh extraction of the inputs as they are now. Anything that could
make what the set holds of a container differ from a fresh read sends it through the key-by-key join instead: a
damaged earlier commit, commits made before sources files were, a container given twice."""

from __future__ import annotations

import json
import os
import types

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.extract.job import run_extraction
from tests.packing import tar_of
from tests.pipeline.extract.test_update import IN_PROCESS, _colour, _config, _held, _same_set, _update
from transforms.keys.whole_containers import decide_container, rows_outside
from transforms.read import sources
from transforms.read.input_specs import InputSpec
from transforms.schema.elements import SourceFile
from transforms.schema.layout import COMMITS_DIR
from transforms.write import commit_checks
from transforms.write.commit_sources import Runs, container_of, parse_runs, runs_without


@pytest.fixture
def shards(tmp_path, archive):
    """Three tar shards of the archive's pictures and a damaged one; ``write(name, folder, skip)`` writes another."""
    folder = tmp_path / "shards"
    folder.mkdir()

    def write(name, source, skip=()):
        members = [(f"{source}/{p.name}", p.read_bytes()) for p in sorted((archive / source).glob("*.png"))
                   if p.name not in skip]
        (folder / name).write_bytes(tar_of(members))
        return len(members)

    counts = {"a.tar": write("a.tar", "cool"), "b.tar": write("b.tar", "warm"),
              "c.tar": write("c.tar", "warm", skip=("01.png",))}
    (folder / "d.tar").write_bytes(b"not a tar archive" * 64)
    return types.SimpleNamespace(path=folder, counts=counts, write=write)


@pytest.fixture
def expanded(monkeypatch):
    """The names of the files the job expands (indexes), as it expands them."""
    names = []
    real = sources._units_of

    def counting(source, fields, chunk_bytes):
        names.append(os.path.basename(source.uri))
        return real(source, fields, chunk_bytes)

    monkeypatch.setattr(sources, "_units_of", counting)
    return names


def _first_run(tmp_path, archive, shards):
    config = _config(tmp_path, archive, inputs=(InputSpec.glob(str(shards.path / "*.tar")),))
    run_extraction(config, PipelineOptions(IN_PROCESS))
    return config


def _fresh(tmp_path, archive, shards, name="fresh"):
    config = _config(tmp_path, archive, name, inputs=(InputSpec.glob(str(shards.path / "*.tar")),))
    return run_extraction(config, PipelineOptions(IN_PROCESS)), str(tmp_path / name)


def _night(archive, shards):
    """a.tar rewritten (one member repainted), c.tar deleted, e.tar new; b.tar and the damaged d.tar unchanged."""
    _colour(archive / "cool" / "00.png", (255, 0, 255))
    shards.write("a.tar", "cool")
    (shards.path / "c.tar").unlink()
    return shards.write("e.tar", "warm", skip=("03.png",))


def test_unchanged_containers_are_kept_whole_without_being_read(tmp_path, archive, shards, expanded):
    config = _first_run(tmp_path, archive, shards)
    assert sorted(expanded) == ["a.tar", "b.tar", "c.tar", "d.tar"]
    n_a, n_b, n_c = (shards.counts[name] for name in ("a.tar", "b.tar", "c.tar"))
    expanded.clear()
    n_e = _night(archive, shards)

    updated = _update(config)
    assert sorted(expanded) == ["a.tar", "e.tar"]  # b.tar and the damaged d.tar kept whole, unread
    fresh, fresh_dir = _fresh(tmp_path, archive, shards)
    _same_set(_held(config.output), _held(fresh_dir))
    assert updated.counts == fresh.counts and updated.counts["failed"] == 1  # d.tar's failure is kept
    assert {k: updated.generations[1][k] for k in ("new", "changed", "removed", "kept")} == {
        "new": n_e, "changed": n_a, "removed": n_c, "kept": n_b + 1}
    assert updated.resumed_records == n_b + 1
    from pipeline.tools.inspect import inspect_feature_set

    assert inspect_feature_set(config.output).problems == []
    held = {}
    for commit in commit_checks.read_commits(config.output):
        with open(os.path.join(config.output, COMMITS_DIR, f"{commit.id}.sources"), "rb") as f:
            for container, _, n in parse_runs(f.read()):
                held[os.path.basename(container)] = held.get(os.path.basename(container), 0) + n
    assert held == {"a.tar": n_a, "b.tar": n_b, "d.tar": 1, "e.tar": n_e}

    expanded.clear()
    again = _update(config)  # nothing changed since: every container kept whole
    assert expanded == [] and again.generations[-1]["kept"] == n_a + n_b + n_e + 1
    _same_set(_held(config.output), _held(fresh_dir))


def test_a_damaged_earlier_commit_keeps_nothing_whole(tmp_path, archive, shards, expanded):
    config = _first_run(tmp_path, archive, shards)
    damaged = next(c for c in commit_checks.read_commits(config.output) if c.kind == "features")
    with open(os.path.join(config.output, damaged.path), "r+b") as f:
        f.write(b"\0" * 16)
    expanded.clear()
    _night(archive, shards)

    updated = _update(config)
    assert sorted(expanded) == ["a.tar", "b.tar", "d.tar", "e.tar"]  # every listed container joined key by key
    fresh, fresh_dir = _fresh(tmp_path, archive, shards)
    _same_set(_held(config.output), _held(fresh_dir))
    assert updated.counts == fresh.counts and updated.retired_commits == 1


def test_a_set_made_before_sources_files_updates_key_by_key(tmp_path, archive, shards, expanded):
    config = _first_run(tmp_path, archive, shards)
    commits = os.path.join(config.output, COMMITS_DIR)
    for name in os.listdir(commits):
        path = os.path.join(commits, name)
        if name.endswith(".sources"):
            os.remove(path)
        elif name.endswith(".json"):
            record = json.load(open(path))
            del record["sources_bytes"], record["sources_sha256"]
            json.dump(record, open(path, "w"))
    expanded.clear()
    _night(archive, shards)

    updated = _update(config)
    assert sorted(expanded) == ["a.tar", "b.tar", "d.tar", "e.tar"]
    fresh, fresh_dir = _fresh(tmp_path, archive, shards)
    _same_set(_held(config.output), _held(fresh_dir))
    assert updated.counts == fresh.counts


def test_what_decides_a_container_whole():
    listed = SourceFile("gs://b/a.tar", None, "tar", "10:1.0")
    held = [("c1", ["10:1.0"], 5), ("c2", ["10:1.0"], 3)]
    assert decide_container([listed], held, 0)
    assert not decide_container([listed], held, 1)  # an earlier commit was damaged
    assert not decide_container([listed, listed], held, 0)  # given twice: its keys repeat
    assert not decide_container([listed], [], 0)  # new
    assert not decide_container([], held, 0)  # gone
    assert not decide_container([listed], [*held, ("c3", ["10:0.5"], 1)], 0)  # read at another version
    assert not decide_container([listed], [("c1", ["10:1.0", None], 5)], 0)  # lost copies of repeated keys
    assert not decide_container([listed._replace(version=None)], [("c1", [None], 5)], 0)  # no version known


def test_a_commits_sources_are_runs_of_containers_in_record_order():
    assert container_of("gs://b/a.tar#x/1.png", "gs://b/a.tar") == "gs://b/a.tar"
    assert container_of("gs://b/a.tar#3", "gs://b/a.tar") == "gs://b/a.tar"
    assert container_of("gs://b/x.png", "gs://b/x.png") is None  # a loose file is a container of nothing
    assert container_of("gs://b/x.png", None) is None
    assert container_of("gs://b/d.tar", "gs://b/d.tar", failed=True) == "gs://b/d.tar"  # the whole file failed
    runs = Runs()
    for container, version in [("a", "v"), ("a", "v"), (None, "w"), ("b", "v"), ("a", "v")]:
        runs.add(container, version)
    assert list(runs) == [("a", "v", 2), (None, None, 1), ("b", "v", 1), ("a", "v", 1)]
    assert parse_runs(runs.to_bytes()) == list(runs)
    assert list(runs_without(runs, {1, 2})) == [("a", "v", 1), ("b", "v", 1), ("a", "v", 1)]
    assert list(runs_without(runs, {3}, copies=True)) == [("a", "v", 2), (None, None, 1), ("a", "v", 1)]
    assert list(runs_without(runs, {0}, copies=True)) == [("a", None, 1), (None, None, 1), ("b", "v", 1),
                                                          ("a", None, 1)]  # a held copy less: not whole again
    assert rows_outside(list(runs), {"a"}, 5) == [False, False, True, True, False]
    assert rows_outside(None, {"a"}, 2) == [True, True]
    with pytest.raises(ValueError, match="not a sources file"):
        parse_runs(b'[["a", "v", 0]]')
