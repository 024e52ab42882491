"""The commit protocol on plain files, without a pipeline: a commit is its data file, its keys file and its record;
``verify_commit`` names what no longer matches, ``retire_commit`` takes a commit back (its inputs are redone) and
``drop_records`` rewrites one without some of its records."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from transforms.schema.elements import Failure
from transforms.schema.example import encode_example, read_records
from transforms.schema.fields import OutputSpec
from transforms.schema.framing import frame
from transforms.schema.layout import (
    COMMITS_DIR,
    ERRORS_DIR,
    FEATURES_DIR,
    PENDING_DIR,
    RETIRED_DIR,
    SHARD_PREFIX,
    SHARD_SUFFIX,
)
from transforms.write import commit_checks
from transforms.write.commit_format import Commit, commit_files, key_line, place_file

OUTPUT = OutputSpec("v", "v", "avg", 2)
RECORDS = [("a.jpg", "cat", "train"), ("b.jpg", "dog", None), ("c.jpg", "cat", "validation")]


def _features_commit(out: str, commit_id: str = "c1") -> Commit:
    """Three records in a TFRecord shard, committed as a worker commits them."""
    data = b"".join(frame(encode_example(key, label, {"v": np.array([i, -i], np.float32)}, [OUTPUT],
                                                split=split))
                    for i, (key, label, split) in enumerate(RECORDS))
    rel = f"{FEATURES_DIR}/{SHARD_PREFIX}-{commit_id}{SHARD_SUFFIX}"
    placed = place_file(out, commit_id, rel, data=data)
    return commit_files(out, commit_id, FEATURES_DIR, [placed], b"".join(key_line(*r) for r in RECORDS),
                        records=3, labels=("cat", "dog"), splits=("train", "validation"))


@pytest.fixture
def out(tmp_path):
    for folder in (FEATURES_DIR, ERRORS_DIR, COMMITS_DIR, PENDING_DIR):
        (tmp_path / folder).mkdir()
    return str(tmp_path)


def _keys_of_shard(out: str, commit: Commit) -> list[tuple]:
    return [(r.key, r.label, r.split, r.vectors["v"].tolist())
            for r in read_records(os.path.join(out, commit.path), [OUTPUT])]


def test_a_commit_is_its_file_its_keys_and_its_record_and_verifies(out):
    commit = _features_commit(out)
    assert commit_checks.read_commits(out) == [commit]
    assert commit_checks.verify_commit(out, commit) is None
    assert commit_checks.verified_keys(out, commit) == (None, ["a.jpg", "b.jpg", "c.jpg"])
    assert commit_checks.read_commit_keys(out, commit) == RECORDS
    assert commit_checks.uncommitted_files(out, [commit]) == []
    assert os.listdir(os.path.join(out, PENDING_DIR)) == []  # every file renamed into place


@pytest.mark.parametrize("damage, problem", [
    (lambda out, c: os.remove(os.path.join(out, c.path)), "{path} is missing"),
    (lambda out, c: open(os.path.join(out, c.path), "r+b").truncate(10), "{path} has 10 bytes, {size} were committed"),
    (lambda out, c: _flip_last_byte(os.path.join(out, c.path)), "{path} fails its sha256"),
    (lambda out, c: os.remove(os.path.join(out, c.keys_path)), "{keys} is missing"),
    (lambda out, c: _flip_last_byte(os.path.join(out, c.keys_path)), "{keys} fails its sha256"),
], ids=["file-missing", "file-truncated", "file-changed", "keys-missing", "keys-changed"])
def test_verify_names_what_no_longer_matches(out, damage, problem):
    commit = _features_commit(out)
    damage(out, commit)
    expected = problem.format(path=commit.path, size=commit.bytes, keys=commit.keys_path)
    assert commit_checks.verify_commit(out, commit) == expected
    assert commit_checks.verified_keys(out, commit) == (expected, [])


def _flip_last_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


def test_a_garbled_commit_record_is_unreadable_and_named(out):
    good = _features_commit(out, "c1")
    _features_commit(out, "c2")
    garbled = os.path.join(out, COMMITS_DIR, "c2.json")
    with open(garbled, "w") as f:
        f.write('{"id": "c2", "kind": "features", "pa')
    assert commit_checks.read_commit_records(out) == ([good], [garbled])
    with pytest.raises(commit_checks.CommitRecordError, match="c2.json is not a readable commit record"):
        commit_checks.read_commits(out)


def test_retiring_moves_the_record_aside_with_its_reason_and_deletes_its_files(out):
    commit = _features_commit(out)
    commit_checks.retire_commit(out, commit.marker, [commit.path], "features/x fails its sha256")
    assert commit_checks.read_commits(out) == []
    assert not any(os.path.exists(os.path.join(out, rel)) for rel in (commit.path, commit.keys_path))
    with open(os.path.join(out, RETIRED_DIR, f"{commit.id}.json")) as f:
        note = json.load(f)
    assert note["reason"] == "features/x fails its sha256" and Commit.from_json(note["record"]) == commit
    commit_checks.retire_commit(out, commit.marker, [commit.path], "again")  # idempotent: a retried step
    assert commit_checks.uncommitted_files(out, []) == []


def test_dropping_records_rewrites_file_keys_and_record_and_the_result_verifies(out):
    commit = _features_commit(out)
    kept = commit_checks.drop_records(out, commit, {1})
    assert (kept.records, kept.labels, kept.splits) == (2, ("cat",), ("train", "validation"))
    assert commit_checks.verify_commit(out, kept) is None and commit_checks.read_commits(out) == [kept]
    assert commit_checks.read_commit_keys(out, kept) == [RECORDS[0], RECORDS[2]]
    assert _keys_of_shard(out, kept) == [("a.jpg", "cat", "train", [0.0, 0.0]),
                                         ("c.jpg", "cat", "validation", [2.0, -2.0])]
    assert commit_checks.verify_commit(out, commit) == (  # the old record no longer describes the file
        f"{commit.path} has {kept.bytes} bytes, {commit.bytes} were committed")


def test_dropping_every_record_removes_the_commit(out):
    commit = _features_commit(out)
    assert commit_checks.drop_records(out, commit, {0, 1, 2}) is None
    assert commit_checks.read_commits(out) == [] and commit_checks.uncommitted_files(out, []) == []
    assert os.listdir(os.path.join(out, FEATURES_DIR)) == []


def test_dropping_failures_recounts_the_reasons_and_their_examples(out):
    failures = [Failure("z.jpg", "z.jpg", "decode", "ImageDecodeError", "not an image"),
                Failure("b.jpg", "b.jpg", "read", "Missing", "gone"),
                Failure("a.jpg", "a.jpg", "decode", "ImageDecodeError", "empty")]
    rel = f"{ERRORS_DIR}/{SHARD_PREFIX}-e1.jsonl"
    placed = place_file(out, "e1", rel, data="".join(f.to_json() + "\n" for f in failures).encode("utf-8"))
    commit = commit_files(out, "e1", ERRORS_DIR, [placed], b"".join(key_line(f.key) for f in failures),
                          records=3, reasons={"decode: ImageDecodeError": [2, "a.jpg"], "read: Missing": [1, "b.jpg"]})
    kept = commit_checks.drop_records(out, commit, {2})
    assert kept.reasons == {"decode: ImageDecodeError": [1, "z.jpg"], "read: Missing": [1, "b.jpg"]}
    assert commit_checks.failure_reasons([kept]) == {"decode: ImageDecodeError": (1, "z.jpg"),
                                                 "read: Missing": (1, "b.jpg")}
    assert commit_checks.verify_commit(out, kept) is None
    with open(os.path.join(out, rel)) as f:
        assert [json.loads(line)["key"] for line in f] == ["z.jpg", "b.jpg"]


def test_files_no_record_names_are_leftovers(out):
    commit = _features_commit(out)
    stray = os.path.join(out, FEATURES_DIR, "part-crashed.tfrecord")
    scratch = os.path.join(out, PENDING_DIR, "shuffle", "pack.bin")
    os.makedirs(os.path.dirname(scratch))
    for path in (stray, scratch):
        with open(path, "wb") as f:
            f.write(b"x")
    assert commit_checks.uncommitted_files(out, [commit]) == sorted([stray, scratch])
