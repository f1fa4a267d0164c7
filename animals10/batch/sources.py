"""Where a batch job's photos come from: a stream of shards with stable ids (no Ray here).

The input is cut into *units*, each read by one Ray task, in parallel with the others:

- a folder or S3 prefix (`--input`): its top-level sub-folders, grouped into at most `MAX_UNITS`
  units of consecutive folders; each unit walks its folders lazily (local) or lists them page by page
  (S3). With photos directly at the top (a flat bucket), the whole input is one unit: planning stops
  at the first such photo instead of listing every object at the top on the driver;
- a manifest (`--input-list`): one unit per manifest file (text, CSV or Parquet, or the data files
  of an S3 Inventory), read as a stream.

A unit's photos are cut, in their stable order, into shards of `rows_per_part` rows, the first three
smaller (an eighth, a quarter and a half of it: results start flowing early and every replica soon has
work, as in a slow start); shard k of unit U has the id `<U.key>-<k>` and becomes the output part of
that name. The same unchanged input and the same `rows_per_part` give the same shards, so a retried
shard rewrites its own part and a resume skips the finished ones. A unit's final shard is marked
`last`: a resume that finds every shard of a unit up to its last one done skips the unit unread, and
one that finds shards 0 to n done lists an S3 unit from after the last photo of shard n.
Planning (the top level of the input, or the list of manifest files) is all that runs on the driver;
a unit holds no more than one folder's names or one shard at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from animals10 import storage
from animals10.batch.manifests import ManifestFile, describe_manifest, inventory_files, manifest_rows
from animals10.errors import DataError
from animals10.labels import class_name_for_folder

MAX_UNITS = 64  # listing tasks for a folder tree; a constant, so that shard ids do not depend on the cluster
S3_PAGE_SIZE = 1000  # ListObjectsV2's largest page


@dataclass(frozen=True)
class Unit:
    """What one listing task reads: folders (each walked whole), or a manifest file."""

    key: str  # stable, file-name-safe id: the prefix of its shards' ids
    folders: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # the class of each of `folders` when the input is a labelled tree
    manifest: ManifestFile | None = None

    @property
    def on_s3_tree(self) -> bool:
        """A folder unit on S3, whose listing is in key order (and can start after any key)."""
        return self.manifest is None and storage.is_s3(self.folders[0])

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Unit:
        fields = json.loads(text)
        manifest = fields.pop("manifest")
        for name in ("folders", "labels"):
            fields[name] = tuple(fields[name])
        if manifest is not None:
            manifest = ManifestFile(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest.items()})
        return cls(**fields, manifest=manifest)


@dataclass
class Shard:
    """Up to `rows_per_part` inputs of one unit, in order. `errors[i]` is set for a manifest row that
    names no photo ("invalid: ..."); `duplicates` counts rows left out as repeats of earlier rows."""

    id: str
    paths: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    true_labels: list[str] | None = None
    duplicates: int = 0
    last: bool = False  # the unit's final shard


@dataclass
class Plan:
    """The input, planned: a description for the summary, the units, and whether rows get `true_label`."""

    input: str
    units: list[Unit]
    labelled: bool


def _key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _is_photo(path: str) -> bool:
    return storage.visible(path, storage.IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# Planning, on the driver


WHOLE_INPUT = "**"  # names the unit of an input with photos at its top (the key of a folder group is its names)
PROBE_PAGE = 16  # entries in the first listing page of a folder looked into for a photo or sub-folders


def plan_tree(input_uri: str, class_names: list[str]) -> Plan:
    """Units for a folder or S3 prefix, from its top level only. Rows get `true_label` when every
    top-level folder is named after one of `class_names` (Italian Animals-10 names count) and no photo
    lies directly at the top."""
    if storage.is_s3(input_uri):
        root = input_uri.rstrip("/") + "/"
        folders, top_photos = _s3_top_level(root)
        names = [f[len(root) :].rstrip("/") for f in folders]
    else:
        path = Path(input_uri).expanduser().resolve()
        if path.is_file():
            raise DataError(
                f"'{input_uri}' is a file, not a folder; to classify a list of photos, pass it as --input-list."
            )
        if not path.exists():
            raise DataError(f"No images were found under '{input_uri}': it does not exist.")
        root = str(path)
        folders, top_photos = _local_top_level(root)
        names = [Path(f).name for f in folders]
    if top_photos:
        return Plan(root.rstrip("/"), [Unit(key=_key(WHOLE_INPUT), folders=(root,))], labelled=False)
    known = set(class_names)
    labels = [class_name_for_folder(n) for n in names]
    labelled = bool(folders) and all(label in known for label in labels)
    units = []
    groups = min(len(folders), MAX_UNITS)
    for g in range(groups):
        lo, hi = g * len(folders) // groups, (g + 1) * len(folders) // groups
        units.append(
            Unit(
                key=_key("\n".join(names[lo:hi])),
                folders=tuple(folders[lo:hi]),
                labels=tuple(labels[lo:hi]) if labelled else (),
            )
        )
    if not any(_has_photo(folder) for folder in folders):
        raise DataError(
            f"No images were found under '{input_uri}' (searched recursively for "
            f"{', '.join(storage.IMAGE_EXTENSIONS)}, any case)."
        )
    return Plan(root.rstrip("/"), units, labelled)


def _s3_top_level(root: str) -> tuple[list[str], bool]:
    """(the sub-folders of an S3 prefix, whether a photo lies directly in it), listed only up to the
    first such photo: a flat bucket costs one small page here, not a page per thousand photos."""
    folders = []
    for page_folders, objects in storage.iter_s3_folder(root, first_page=PROBE_PAGE):
        folders += page_folders
        if any(_is_photo(uri) for uri in objects):
            return folders, True
    return folders, False


def _local_top_level(root: str) -> tuple[list[str], bool]:
    """(the sub-folders of a local folder by name, whether a photo lies directly in it), read only up to
    the first such photo."""
    folders = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
            elif _is_photo(entry.name):
                return folders, True
    return sorted(folders, key=lambda f: Path(f).name), False


def _has_photo(folder: str) -> bool:
    """Whether a folder holds a photo at any depth; stops at the first one, in no particular order."""
    if storage.is_s3(folder):
        return any(_is_photo(p) for page in storage.iter_s3_objects(folder, first_page=PROBE_PAGE) for p in page)
    with os.scandir(folder) as entries:
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
            elif entry.is_file() and _is_photo(entry.name):
                return True
    return any(_has_photo(sub) for sub in subfolders)


def plan_manifest(list_uri: str) -> Plan:
    """Units for `--input-list`: a manifest file, a folder or prefix of them, or an S3 Inventory's
    `manifest.json` (or a folder holding one)."""
    uri = list_uri if storage.is_s3(list_uri) else str(Path(list_uri).expanduser().resolve())
    if not storage.is_s3(uri) and not Path(uri).exists():
        raise DataError(f"The manifest '{list_uri}' does not exist.")
    is_folder = (uri.endswith("/") or not storage.exists(uri)) if storage.is_s3(uri) else Path(uri).is_dir()
    if uri.lower().endswith("manifest.json"):
        files = inventory_files(uri)
    elif is_folder:
        listed = storage.list_files(uri.rstrip("/"))
        inventory = [f for f in listed if f.rsplit("/", 1)[-1] == "manifest.json"]
        if inventory:
            files = [m for f in sorted(inventory) for m in inventory_files(f)]
        else:
            files = [describe_manifest(f) for f in listed]
    else:
        files = [describe_manifest(uri)]
    if not files:
        raise DataError(f"'{list_uri}' holds no manifest file.")
    units = [Unit(key=_key(f.uri), manifest=f) for f in files]
    return Plan(uri, units, labelled=False)


# ---------------------------------------------------------------------------------------------
# Reading a unit, inside a Ray task


def shard_rows(number: int, rows_per_part: int) -> int:
    """Rows of a unit's shard `number` (0, 1, ...): an eighth, a quarter, a half of `rows_per_part`, then all of it."""
    return max(1, rows_per_part >> (3 - number)) if number < 3 else rows_per_part


def iter_shards(unit: Unit, rows_per_part: int, resume_after: tuple[int, str] | None = None) -> Iterator[Shard]:
    """The unit's shards, in order, with their stable ids; the final one is marked `last` (a full
    shard waits for the next row, or the end, before it is passed on). `resume_after` (shard number,
    its last photo) of an S3 tree unit: only the shards after that one, listed from after that photo."""
    if unit.manifest:
        rows = manifest_rows(unit.manifest)
    else:
        rows = _tree_paths(unit, rows_per_part, resume_after[1] if resume_after else None)
    seen: set[int] = set()  # 8-byte hashes of one manifest file's URIs: a URI listed twice is classified once
    number = resume_after[0] + 1 if resume_after else 0
    shard = Shard(shard_id(unit.key, number), true_labels=[] if unit.labels else None)
    full: Shard | None = None
    taken = 0  # rows of the unit in this shard, duplicates included: shard boundaries do not depend on them
    for path, label_or_error in rows:
        if full is not None:
            yield full
            full = None
        if unit.manifest is not None and not label_or_error:
            fingerprint = int.from_bytes(hashlib.blake2b(path.encode(), digest_size=8).digest(), "little")
            if fingerprint in seen:
                shard.duplicates += 1
                path = None
            seen.add(fingerprint)
        if path is not None:
            shard.paths.append(path)
            if unit.manifest is not None:
                shard.errors.append(label_or_error)
            else:
                shard.errors.append("")
                if shard.true_labels is not None:
                    shard.true_labels.append(label_or_error)
        taken += 1
        if taken == shard_rows(number, rows_per_part):
            full = shard
            number += 1
            shard = Shard(shard_id(unit.key, number), true_labels=[] if unit.labels else None)
            taken = 0
    last = shard if taken else full  # a full shard is still held back here; a partial one never is
    if last is not None:
        last.last = True
        yield last


def shard_id(unit_key: str, number: int) -> str:
    """The id of a unit's shard `number` (0, 1, ...), which names its part."""
    return f"{unit_key}-{number:06d}"


def shard_number(shard: str) -> int:
    """The position of a shard in its unit, from its id."""
    return int(shard.rsplit("-", 1)[1])


def can_list_after(unit: Unit, path: str) -> bool:
    """Whether the unit's listing can start right after `path`, one of its photos on S3."""
    return unit.on_s3_tree and _folder_of(unit, path) is not None


def _folder_of(unit: Unit, path: str) -> int | None:
    return next((i for i, folder in enumerate(unit.folders) if path.startswith(folder.rstrip("/") + "/")), None)


def _tree_paths(unit: Unit, rows_per_part: int, after: str | None = None) -> Iterator[tuple[str, str]]:
    """(photo path, class or "") of a tree unit, in a stable order; only those after the photo `after`
    when given (S3 units only, see `can_list_after`). On S3 a unit's first listing page holds just over
    its first shard, so that the shard goes on without waiting for a full page."""
    first = _folder_of(unit, after) if after is not None else 0
    for i, folder in enumerate(unit.folders[first:], start=first):
        label = unit.labels[i] if unit.labels else ""
        if storage.is_s3(folder):
            pages = storage.iter_s3_objects(
                folder,
                page_size=min(S3_PAGE_SIZE, rows_per_part),
                after=after if i == first else None,
                first_page=shard_rows(0, rows_per_part) + 1 if after is None and i == 0 else None,
            )
            yield from ((p, label) for page in pages for p in page if _is_photo(p))
        else:
            yield from ((p, label) for p in storage.walk_local(folder) if _is_photo(p))
