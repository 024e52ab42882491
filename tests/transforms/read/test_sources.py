"""Input specs, labels from folders, and listing."""

from __future__ import annotations

import pytest

from transforms.read.sources import InputSpec, label_from_path, list_source_files


@pytest.mark.parametrize("root, uri, label", [
    ("/data", "/data/cat/1.jpg", "cat"),
    ("/data", "/data/cat/deeper/1.jpg", "cat"),
    ("/data", "/data/1.jpg", None),
    ("/data/", "/data/dog/2.png", "dog"),
    ("gs://bucket/set", "gs://bucket/set/dog/2.png", "dog"),
    ("/data", "/database/cat/1.jpg", None),
], ids=["first-level", "nested", "root-file", "trailing-slash", "gcs", "prefix-is-not-parent"])
def test_label_is_the_first_level_folder(root, uri, label):
    assert label_from_path(root, uri) == label


@pytest.mark.parametrize("pattern, root", [
    ("/data/*/*.jpg", "/data"),
    ("/data/train-*.png", "/data"),
    ("gs://b/set/**", "gs://b/set"),
], ids=["subfolders", "file-prefix", "gcs-recursive"])
def test_glob_labels_are_read_below_its_fixed_prefix(pattern, root):
    assert InputSpec.glob(pattern).root == root


def test_directory_listing_is_recursive_sorted_and_labelled(tmp_path):
    for rel in ("b/2.jpg", "a/1.jpg", "a/sub/3.jpg", "top.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = list(list_source_files(InputSpec.directory(str(tmp_path))))
    assert [(f.uri[len(str(tmp_path)) + 1:], f.label) for f in found] == [
        ("a/1.jpg", "a"), ("a/sub/3.jpg", "a"), ("b/2.jpg", "b"), ("top.jpg", None)]


def test_glob_lists_only_what_matches(tmp_path):
    for rel in ("a/1.jpg", "a/2.png", "b/3.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = list(list_source_files(InputSpec.glob(f"{tmp_path}/*/*.jpg")))
    assert [(f.uri[len(str(tmp_path)) + 1:], f.label) for f in found] == [("a/1.jpg", "a"), ("b/3.jpg", "b")]
