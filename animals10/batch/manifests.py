"""Manifests of photo URIs (`--input-list`): text, CSV, Parquet and S3 Inventory reports, recognised
by name or content and read as streams of rows (no Ray here)."""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

import pyarrow as pa

from animals10 import storage
from animals10.errors import DataError

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


def inventory_files(manifest_uri: str) -> list[ManifestFile]:
    """The data files of an S3 Inventory report from its manifest.json. On S3 they are in the report's
    destination bucket; on disk, in `data/` beside the report's dated folder, as S3 lays them out."""
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
        keys = [f["key"] for f in manifest["files"]]
        file_format = str(manifest["fileFormat"]).lower()
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"'{manifest_uri}' is not an S3 Inventory manifest.json ({type(error).__name__}: {error})."
        ) from error
    if storage.is_s3(manifest_uri):
        bucket = str(manifest.get("destinationBucket", "")).rsplit(":", 1)[-1] or storage.split_s3(manifest_uri)[0]
        uris = [f"s3://{bucket}/{key}" for key in keys]
    else:
        data = Path(manifest_uri).parent.parent / "data"
        uris = [str(data / key.rsplit("/", 1)[-1]) for key in keys]
    if file_format == "csv":
        names = tuple(name.strip().lower() for name in str(manifest.get("fileSchema", "Bucket, Key")).split(","))
        if not set(INVENTORY_COLUMNS) <= set(names):
            raise DataError(
                f"The inventory '{manifest_uri}' has no Bucket and Key columns (fileSchema: "
                f"{manifest.get('fileSchema')})."
            )
        return [ManifestFile(u, "csv", INVENTORY_COLUMNS, csv_names=names, url_encoded_keys=True) for u in uris]
    if file_format == "parquet":
        return [ManifestFile(u, "parquet", INVENTORY_COLUMNS) for u in uris]
    raise DataError(
        f"The inventory '{manifest_uri}' is in {manifest['fileFormat']} format; configure the inventory as CSV or "
        "Parquet."
    )


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
        return ManifestFile(
            uri, "csv", ("path",), csv_names=("path",) + tuple(f"column{i}" for i in range(1, len(fields)))
        )
    if len(fields) >= 2 and first_line.startswith('"'):  # no header, every field quoted: an S3 Inventory data file
        names = INVENTORY_COLUMNS + tuple(f"column{i}" for i in range(2, len(fields)))
        return ManifestFile(uri, "csv", INVENTORY_COLUMNS, csv_names=names, url_encoded_keys=True)
    raise DataError(
        f"The manifest '{uri}' has no path column: name one {', '.join(PATH_COLUMNS)} (or bucket and key) in its "
        "header."
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
    raise DataError(
        f"The manifest '{uri}' has no path column (it has {', '.join(names)}); name one path or uri, or bucket and key."
    )


def _looks_like_uri(text: str) -> bool:
    return text.startswith(("s3://", "/", "file://"))


# ---------------------------------------------------------------------------------------------
# Reading, inside a listing task


def manifest_rows(manifest: ManifestFile) -> Iterator[tuple[str, str]]:
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
        text = text[len("file://") :]
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

        yield from pq.ParquetFile(storage.open_random_access(manifest.uri)).iter_batches(
            columns=list(manifest.columns), batch_size=65536
        )
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
    convert = pacsv.ConvertOptions(
        include_columns=wanted, column_types={c: pa.string() for c in wanted}, strings_can_be_null=False
    )
    try:
        reader = pacsv.open_csv(
            storage.open_stream(manifest.uri),
            read_options=read,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=convert,
        )
        yield from reader
    except (pa.ArrowInvalid, KeyError) as error:
        raise DataError(f"The manifest '{manifest.uri}' is not a readable CSV file ({error}).") from error


def _first_line(uri: str) -> str:
    return next(iter(_text_lines(uri)), "")
