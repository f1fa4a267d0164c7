"""Labelled photo trees (`<root>/<class>/<image>`, local or s3://): listing, the split, batch decoding."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animals10 import storage
from animals10.card import Preprocessing
from animals10.errors import DataError, NotFoundError, StorageError
from animals10.imaging import ImageDecodeError, load_array
from animals10.labels import class_name_for_folder, class_names_for_folders

logger = logging.getLogger(__name__)


@dataclass
class LabelledTree:
    """The photos of a labelled tree: parallel lists of paths and class indices, and the class names."""

    root: str
    paths: list[str]
    labels: list[int]
    class_names: list[str]

    def class_counts(self, indices: list[int] | None = None) -> dict[str, int]:
        labels = self.labels if indices is None else [self.labels[i] for i in indices]
        counts = Counter(labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}

    def records(self, indices: list[int]) -> list[dict]:
        return [{"path": self.paths[i], "label": self.labels[i]} for i in indices]


def relative_path(root: str, path: str) -> str:
    return path[len(root.rstrip("/")) + 1 :] if path.startswith(root.rstrip("/") + "/") else path


def read_labelled_tree(root: str) -> LabelledTree:
    """Lists `<root>/<class>/...` image files; the first folder below `root` names the class."""
    root = str(root).rstrip("/") if storage.is_s3(root) else str(Path(root).resolve())
    try:
        files = storage.list_files(root)
    except StorageError as error:
        raise DataError(f"Cannot read the data at '{root}': {error}") from error
    folders, images, ignored = [], [], []
    for path in files:
        parts = relative_path(root, path).replace("\\", "/").split("/")
        if len(parts) < 2 or not path.lower().endswith(storage.IMAGE_EXTENSIONS):
            ignored.append(path)
            continue
        folders.append(parts[0])
        images.append((path, parts[0]))
    if ignored:
        logger.warning("Ignored %d file(s) that are not images in class folders, e.g. %s", len(ignored), ignored[:3])
    if not images:
        raise DataError(
            f"No images were found under '{root}'; expected class folders holding photos, "
            f"as <root>/<class>/<photo> with extensions {', '.join(storage.IMAGE_EXTENSIONS)}."
        )
    class_names = class_names_for_folders(folders)
    if len(class_names) < 2:
        raise DataError(
            f"Only one class folder ('{folders[0]}') was found under '{root}'; training needs at least two."
        )
    index = {name: i for i, name in enumerate(class_names)}
    return LabelledTree(
        root=root,
        paths=[p for p, _ in images],
        labels=[index[class_name_for_folder(folder)] for _, folder in images],
        class_names=class_names,
    )


def split_indices(tree: LabelledTree, val_fraction: float = 0.2, seed: int = 42) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: within each class, files are ordered by a hash of (seed, relative
    path) and the first `val_fraction` go to validation. Same data, same seed: same split, on any machine
    and whether the tree is on disk or in a bucket."""

    def key(i: int) -> str:
        return hashlib.sha256(f"{seed}:{relative_path(tree.root, tree.paths[i])}".encode()).hexdigest()

    train, val = [], []
    for label in range(len(tree.class_names)):
        members = sorted((i for i, y in enumerate(tree.labels) if y == label), key=key)
        num_val = round(len(members) * val_fraction)
        if val_fraction > 0 and len(members) >= 2:
            num_val = min(max(num_val, 1), len(members) - 1)
        val += members[:num_val]
        train += members[num_val:]
    return sorted(train), sorted(val)


def photo_error(error: Exception) -> str:
    """The `error` string of a file that cannot be used: "<kind>: <why>". Any other exception a decoder
    raises on an odd file is `corrupt`: one such file must never stop a job."""
    if isinstance(error, ImageDecodeError):
        return f"{error.kind}: {error}"
    if isinstance(error, (NotFoundError, FileNotFoundError)):
        return f"missing: {error}"
    if isinstance(error, (OSError, StorageError)):
        return f"unreadable: {error}"
    return f"corrupt: the image could not be decoded ({type(error).__name__}: {error})"


def load_photo(path: str, preprocessing: Preprocessing) -> tuple[np.ndarray | None, str]:
    """Reads and decodes one photo: ((S, S, 3) uint8, "") or, for a file that cannot be used, (None, its error)."""
    try:
        return load_array(storage.read_bytes(path), preprocessing), ""
    except Exception as error:  # noqa: BLE001 - named by photo_error; one odd file never stops a job
        return None, photo_error(error)


def decode_batch(batch: dict[str, np.ndarray], preprocessing: Preprocessing) -> dict[str, np.ndarray]:
    """Ray Data batch of paths -> decoded (B, S, S, 3) uint8 photos, with `error` set (and zeros) for bad files."""
    paths = [str(p) for p in batch["path"]]
    size = preprocessing.image_size
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    errors = []
    for i, path in enumerate(paths):
        image, error = load_photo(path, preprocessing)
        if image is None:
            logger.warning("Skipping %s: %s.", path, error)
        else:
            images[i] = image
        errors.append(error)
    return {**batch, "image": images, "error": np.array(errors, dtype=object)}
