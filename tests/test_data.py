"""Listing labelled trees and the deterministic stratified split."""

import shutil

import numpy as np
import pytest

from animals10.card import Preprocessing
from animals10.data import decode_batch, read_labelled_tree, split_indices
from animals10.errors import DataError
from tests.conftest import jpeg_bytes


def make_tree(root, counts: dict[str, int]):
    for folder, count in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / folder / f"{i:03d}.JPG").write_bytes(jpeg_bytes())
    return root


def test_classes_come_from_folders_and_italian_names_are_translated(tmp_path):
    tree = read_labelled_tree(make_tree(tmp_path, {"gatto": 3, "cane": 2, "ragno": 1}))
    assert tree.class_names == ["dog", "cat", "spider"]
    assert tree.class_counts() == {"dog": 2, "cat": 3, "spider": 1}
    assert all(tree.class_names[label] == "cat" for path, label in zip(tree.paths, tree.labels) if "/gatto/" in path)


def test_split_is_stratified_80_20(tmp_path):
    tree = read_labelled_tree(make_tree(tmp_path, {"a": 50, "b": 20, "c": 5}))
    train, val = split_indices(tree, 0.2, seed=1)
    assert sorted(train + val) == list(range(75)) and not set(train) & set(val)
    assert tree.class_counts(val) == {"a": 10, "b": 4, "c": 1}


def test_split_is_the_same_for_a_copy_of_the_tree_elsewhere(tmp_path):
    first = read_labelled_tree(make_tree(tmp_path / "one", {"a": 30, "b": 30}))
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    second = read_labelled_tree(tmp_path / "two")
    names = lambda tree, idx: sorted(  # noqa: E731
        tree.paths[i].rsplit("/", 2)[-2] + "/" + tree.paths[i].rsplit("/", 1)[-1] for i in idx
    )
    assert names(first, split_indices(first)[1]) == names(second, split_indices(second)[1])
    assert names(first, split_indices(first, seed=1)[1]) != names(first, split_indices(first, seed=2)[1])


def test_files_outside_class_folders_and_non_images_are_ignored(tmp_path):
    make_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "README.txt").write_text("hi")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    assert len(read_labelled_tree(tmp_path).paths) == 4


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "No images were found"),
        (lambda root: make_tree(root, {"only": 3}), "Only one class folder"),
    ],
)
def test_unusable_data_is_one_clear_sentence(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        read_labelled_tree(root)


def test_decode_batch_marks_bad_files_and_keeps_the_rest(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes())
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    batch = decode_batch(
        {"path": np.array([str(good), str(empty), str(missing)], dtype=object), "label": np.array([0, 1, 2])},
        Preprocessing(32),
    )
    assert batch["image"].shape == (3, 32, 32, 3)
    assert batch["error"][0] == "" and batch["error"][1].startswith("empty") and batch["error"][2].startswith("missing")
    assert batch["image"][0].any() and not batch["image"][1].any()
