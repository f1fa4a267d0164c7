"""Where a batch job's photos come from: a stream of shards with stable ids (no Ray here).

The input is cut into *units*, each read by one Ray task, in parallel with the others:

- a folder or S3 prefix (`--input`): its top-level sub-folders, grouped into at most `MAX_UNITS`
  units of consecutive folders, plus one unit for the photos directly at the top; each unit walks its
  folders lazily (local) or lists them page by page (S3);
- a manifest (`--input-list`): one unit per manifest file (text, CSV or Parquet, or the data files
  of an S3 Inventory), read as a stream.

A unit's photos are cut, in their stable order, into shards of `rows_per_part` rows, the first three
smaller (an eighth, a quarter and a half of it: results start flowing early and every replica soon has
work, as in a slow start); shard k of unit U has the id `<U.key>-<k>` and becomes the output part of
that name. The same unchanged input and the
same `rows_per_part` give the same shards, so a retried shard rewrites its own part and a resume skips
the finished ones. Planning (the top level of the input, or the list of manifest files) is all that
runs on the driver; a unit holds no more than one folder's names or one shard at a time.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote_plus

import pyarrow as pa

from animals10 import storage
from animals10.errors import DataError
from animals10.labels import class_name_for_folder

MAX_UNITS = 64  # listing tasks for a folder tree; a constant, so that shard ids do not depend on the cluster
S3_PAGE_SIZE = 1000  # ListObjectsV2's largest page
PATH_COLUMNS = ("path", "uri", "url", "s3_uri")  # manifest columns that hold a photo's URI, by preference
INVENTORY_COLUMNS = ("bucket", "key")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".lst", ".list")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")


@dataclass(frozen=True)
class ManifestFile:
    """One file of URIs and how to read it."""

    uri: str
    format: str  # "text", "csv" or "parquet"
    columns: tuple[str, ...] = ()  # ("path",) or ("bucket", "key"); text: none
    csv_names: tuple[str, ...] = ()  # a header-less CSV's column names (S3 Inventory); () when it has a header
    url_encoded_keys: bool = False  # S3 Inventory CSV writes keys URL-encoded


@dataclass(frozen=True)
class Unit:
    """What one listing task reads: folders (walked whole), the files directly in one folder, or a manifest file."""

    key: str  # stable, file-name-safe id: the prefix of its shards' ids
    folders: tuple[str, ...] = ()
    flat: str | None = None  # a folder whose own files (not its sub-folders') belong to this unit
    labels: tuple[str, ...] = ()  # the class of each of `folders` when the input is a labelled tree
    manifest: ManifestFile | None = None

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


def plan_tree(input_uri: str, class_names: list[str]) -> Plan:
    """Units for a folder or S3 prefix, from its top level only. Rows get `true_label` when every
    top-level folder is named after one of `class_names` (Italian Animals-10 names count) and no photo
    lies directly at the top."""
    if storage.is_s3(input_uri):
        root = input_uri.rstrip("/") + "/"
        folders = list(storage.s3_subfolders(root))
        names = [f[len(root):].rstrip("/") for f in folders]
        top_photos = any(_is_photo(p) for page in storage.iter_s3_objects(root, recursive=False) for p in page)
    else:
        path = Path(input_uri).expanduser().resolve()
        if path.is_file():
            raise DataError(f"'{input_uri}' is a file, not a folder; to classify a list of photos, pass it as --input-list.")
        if not path.exists():
            raise DataError(f"No images were found under '{input_uri}': it does not exist.")
        root = str(path)
        entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
        folders = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        top_photos = any(e.is_file() and _is_photo(e.name) for e in entries)
    known = set(class_names)
    labels = [class_name_for_folder(n) for n in names]
    labelled = bool(folders) and not top_photos and all(label in known for label in labels)
    units = []
    if top_photos:
        units.append(Unit(key=_key("./"), flat=root))
    groups = min(len(folders), MAX_UNITS)
    for g in range(groups):
        lo, hi = g * len(folders) // groups, (g + 1) * len(folders) // groups
        units.append(
            Unit(key=_key("\n".join(names[lo:hi])), folders=tuple(folders[lo:hi]), labels=tuple(labels[lo:hi]) if labelled else ())
        )
    plan = Plan(root.rstrip("/"), units, labelled)
    if not top_photos and not any(_has_photo(folder) for folder in folders):
        raise DataError(
            f"No images were found under '{input_uri}' (searched recursively for {', '.join(storage.IMAGE_EXTENSIONS)}, any case)."
        )
    return plan


def _has_photo(folder: str) -> bool:
    """Whether a folder holds a photo at any depth; stops at the first one, in no particular order."""
    if storage.is_s3(folder):
        return any(_is_photo(p) for page in storage.iter_s3_objects(folder) for p in page)
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


def inventory_files(manifest_uri: str) -> list[ManifestFile]:
    """The data files of an S3 Inventory report from its manifest.json. On S3 they are in the report's
    destination bucket; on disk, in `data/` beside the report's dated folder, as S3 lays them out."""
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
        keys = [f["key"] for f in manifest["files"]]
        file_format = str(manifest["fileFormat"]).lower()
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"'{manifest_uri}' is not an S3 Inventory manifest.json ({type(error).__name__}: {error}).") from error
    if storage.is_s3(manifest_uri):
        bucket = str(manifest.get("destinationBucket", "")).rsplit(":", 1)[-1] or storage.split_s3(manifest_uri)[0]
        uris = [f"s3://{bucket}/{key}" for key in keys]
    else:
        data = Path(manifest_uri).parent.parent / "data"
        uris = [str(data / key.rsplit("/", 1)[-1]) for key in keys]
    if file_format == "csv":
        names = tuple(name.strip().lower() for name in str(manifest.get("fileSchema", "Bucket, Key")).split(","))
        if not set(INVENTORY_COLUMNS) <= set(names):
            raise DataError(f"The inventory '{manifest_uri}' has no Bucket and Key columns (fileSchema: {manifest.get('fileSchema')}).")
        return [ManifestFile(u, "csv", INVENTORY_COLUMNS, csv_names=names, url_encoded_keys=True) for u in uris]
    if file_format == "parquet":
        return [ManifestFile(u, "parquet", INVENTORY_COLUMNS) for u in uris]
    raise DataError(f"The inventory '{manifest_uri}' is in {manifest['fileFormat']} format; configure the inventory as CSV or Parquet.")


def describe_manifest(uri: str) -> ManifestFile:
    """How to read one manifest file: its format from its name, else from its first bytes, and the
    column that holds the URIs."""
    lower = uri.lower()
    head = _head(uri, storage.open_random_access)
    if lower.endswith(".parquet") or head.startswith(b"PAR1"):
        return _parquet_manifest(uri)
    if head.startswith(b"\x1f\x8b"):  # gzip
        head = _head(uri, storage.open_stream)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise DataError(f"The manifest '{uri}' is neither text, CSV nor Parquet.")
    first = text.splitlines()[0] if text.strip() else ""
    if lower.endswith(CSV_SUFFIXES) or not lower.endswith(TEXT_SUFFIXES) and _csv_columns(first, _delimiter(uri)):
        return _csv_manifest(uri, first)
    return ManifestFile(uri, "text")


def _delimiter(uri: str) -> str:
    return "\t" if uri.lower().endswith(".tsv") else ","


def _head(uri: str, opener, size: int = 64 * 1024) -> bytes:
    stream = opener(uri)
    try:
        return stream.read(size)
    finally:
        stream.close()


def _csv_columns(first_line: str, delimiter: str) -> tuple[str, ...] | None:
    """The URI columns a CSV header names: a path column, or bucket and key."""
    header = [h.strip().lower() for h in next(csv.reader([first_line], delimiter=delimiter), [])]
    for name in PATH_COLUMNS:
        if name in header:
            return (name,)
    if set(INVENTORY_COLUMNS) <= set(header):
        return INVENTORY_COLUMNS
    return None


def _csv_manifest(uri: str, first_line: str) -> ManifestFile:
    columns = _csv_columns(first_line, _delimiter(uri))
    if columns is not None:
        return ManifestFile(uri, "csv", columns)
    fields = next(csv.reader([first_line], delimiter=_delimiter(uri)), [])
    if fields and _looks_like_uri(fields[0]):  # no header: the URIs are the first column
        return ManifestFile(uri, "csv", ("path",), csv_names=("path",) + tuple(f"column{i}" for i in range(1, len(fields))))
    if len(fields) >= 2 and first_line.startswith('"'):  # no header, every field quoted: an S3 Inventory data file
        names = INVENTORY_COLUMNS + tuple(f"column{i}" for i in range(2, len(fields)))
        return ManifestFile(uri, "csv", INVENTORY_COLUMNS, csv_names=names, url_encoded_keys=True)
    raise DataError(
        f"The manifest '{uri}' has no path column: name one {', '.join(PATH_COLUMNS)} (or bucket and key) in its header."
    )


def _parquet_manifest(uri: str) -> ManifestFile:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(storage.open_random_access(uri)).schema_arrow.names
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"The manifest '{uri}' is not a readable Parquet file ({error}).") from error
    lower = {n.lower(): n for n in names}
    for name in PATH_COLUMNS:
        if name in lower:
            return ManifestFile(uri, "parquet", (lower[name],))
    if set(INVENTORY_COLUMNS) <= set(lower):
        return ManifestFile(uri, "parquet", tuple(lower[c] for c in INVENTORY_COLUMNS))
    raise DataError(f"The manifest '{uri}' has no path column (it has {', '.join(names)}); name one path or uri, or bucket and key.")


def _looks_like_uri(text: str) -> bool:
    return text.startswith(("s3://", "/", "file://"))


# ---------------------------------------------------------------------------------------------
# Reading a unit, inside a Ray task


def shard_rows(number: int, rows_per_part: int) -> int:
    """Rows of a unit's shard `number` (0, 1, ...): an eighth, a quarter, a half of `rows_per_part`, then all of it."""
    return max(1, rows_per_part >> (3 - number)) if number < 3 else rows_per_part


def iter_shards(unit: Unit, rows_per_part: int) -> Iterator[Shard]:
    """The unit's shards, in order, with their stable ids."""
    rows = _manifest_rows(unit.manifest) if unit.manifest else _tree_paths(unit, min(S3_PAGE_SIZE, rows_per_part))
    seen: set[int] = set()  # 8-byte hashes of one manifest file's URIs: a URI listed twice is classified once
    number = 0
    shard = Shard(f"{unit.key}-{number:06d}", true_labels=[] if unit.labels else None)
    taken = 0  # rows of the unit in this shard, duplicates included: shard boundaries do not depend on them
    for path, label_or_error in rows:
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
            yield shard
            number += 1
            shard = Shard(f"{unit.key}-{number:06d}", true_labels=[] if unit.labels else None)
            taken = 0
    if taken:
        yield shard


def _tree_paths(unit: Unit, page_size: int) -> Iterator[tuple[str, str]]:
    """(photo path, class or "") of a tree unit, in a stable order."""
    members = [(unit.flat, "", False)] if unit.flat else []
    members += [(folder, unit.labels[i] if unit.labels else "", True) for i, folder in enumerate(unit.folders)]
    for folder, label, recursive in members:
        if storage.is_s3(folder):
            for page in storage.iter_s3_objects(folder, recursive=recursive, page_size=page_size):
                yield from ((p, label) for p in page if _is_photo(p))
        else:
            yield from ((p, label) for p in storage.walk_local(folder, recursive=recursive) if _is_photo(p))


def _manifest_rows(manifest: ManifestFile) -> Iterator[tuple[str, str]]:
    """(URI, "") for each row of a manifest file, or (the row's text, "invalid: why") for a row that
    names no photo."""
    if manifest.format == "text":
        for number, line in enumerate(_text_lines(manifest.uri), 1):
            yield _checked(line.strip(), manifest.uri, number)
        return
    number = 0
    for batch in _record_batches(manifest):
        columns = [batch.column(i).to_pylist() for i in range(len(manifest.columns))]
        for values in zip(*columns):
            number += 1
            if len(values) == 2:  # bucket, key
                bucket, key = (v or "" for v in values)
                key = unquote_plus(key) if manifest.url_encoded_keys else key
                yield _checked(f"s3://{bucket}/{key}" if bucket and key else "", manifest.uri, number)
            else:
                yield _checked((values[0] or "").strip(), manifest.uri, number)


def _checked(text: str, uri: str, number: int) -> tuple[str, str]:
    if not text:
        return "", f"invalid: row {number} of {uri} is empty"
    if text.startswith("file://"):
        text = text[len("file://"):]
    if text.startswith("s3://") and "/" in text[5:] and not text[5:].startswith("/") and not text.endswith("/"):
        return text, ""
    if text.startswith("/") and not text.endswith("/"):
        return text, ""
    return text, f"invalid: row {number} of {uri} is not an s3:// URI or an absolute path"


def _text_lines(uri: str, chunk_size: int = 1 << 20) -> Iterator[str]:
    stream = storage.open_stream(uri)
    rest = b""
    try:
        while True:
            chunk = stream.read(chunk_size)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from (_utf8(line, uri).rstrip("\r") for line in lines)
        if rest:
            yield _utf8(rest, uri).rstrip("\r")
    finally:
        stream.close()


def _utf8(data: bytes, uri: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"The manifest '{uri}' is neither text, CSV nor Parquet ({error}).") from error


def _record_batches(manifest: ManifestFile) -> Iterator[pa.RecordBatch]:
    """The manifest's URI columns, a batch at a time."""
    if manifest.format == "parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(storage.open_random_access(manifest.uri)).iter_batches(columns=list(manifest.columns), batch_size=65536)
        return
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(column_names=list(manifest.csv_names) or None, block_size=1 << 22)
    delimiter = _delimiter(manifest.uri)
    if manifest.csv_names:
        wanted = list(manifest.columns)
    else:  # a header: its names, matched without regard to case
        header = next(csv.reader([_first_line(manifest.uri)], delimiter=delimiter))
        lower = {h.strip().lower(): h for h in header}
        wanted = [lower[c] for c in manifest.columns]
    convert = pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted}, strings_can_be_null=False)
    try:
        reader = pacsv.open_csv(
            storage.open_stream(manifest.uri), read_options=read, parse_options=pacsv.ParseOptions(delimiter=delimiter), convert_options=convert
        )
        for batch in reader:
            yield batch
    except (pa.ArrowInvalid, KeyError) as error:
        raise DataError(f"The manifest '{manifest.uri}' is not a readable CSV file ({error}).") from error


def _first_line(uri: str) -> str:
    return next(iter(_text_lines(uri)), "")
