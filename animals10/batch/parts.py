"""The batch job's output: one Parquet part per shard, named after it, with the shard's counts inside.

A part is written in one atomic step (a hidden temporary file renamed on disk, one PUT on S3), so a
part either exists whole or not at all, and a retried shard rewrites the same name. Each part's
Parquet metadata holds its counts and what made it (model, input, rows per part): the job's summary
is the sum of these, and a resume checks them instead of reading the rows.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from animals10 import storage
from animals10.errors import DataError, NotFoundError, StorageError

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
SUMMARY_FILE = "_summary.json"
METADATA_KEY = b"animals10"
FORMAT_VERSION = 2  # parts named after their shard, with their counts in the metadata

TOP_K_TYPE = pa.list_(pa.struct([("label", pa.string()), ("prob", pa.float32())]))
PREDICTION_FIELDS = [
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("label_index", pa.int32()),
    pa.field("confidence", pa.float32()),
    pa.field("top_k", TOP_K_TYPE),
    pa.field("error", pa.string()),
    pa.field("model", pa.string()),
]


def prediction_schema(with_true_label: bool, unknown: bool = False, embedding_width: int | None = None) -> pa.Schema:
    """The schema of every part; `true_label` only for labelled trees, `unknown` and `unknown_score` with
    an open world, `embedding` (float16, one fixed-size list per photo) when asked for."""
    fields = list(PREDICTION_FIELDS)
    if unknown:
        fields += [pa.field("unknown", pa.bool_()), pa.field("unknown_score", pa.float32())]
    if embedding_width:
        fields.append(pa.field("embedding", pa.list_(pa.float16(), embedding_width)))
    if with_true_label:
        fields.append(pa.field("true_label", pa.string()))
    return pa.schema(fields)


def part_uri(output_uri: str, shard_id: str) -> str:
    return storage.join(output_uri, f"{PART_PREFIX}{shard_id}{PART_SUFFIX}")


def error_kind(error: str | None) -> str | None:
    return None if not error else error.split(":", 1)[0]


def write_part(uri: str, table: pa.Table, stats: dict) -> None:
    """Writes one part atomically, `stats` (JSON-able) in its metadata."""
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps({"version": FORMAT_VERSION, **stats}).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes(uri, buffer.getvalue())


def read_part_stats(uri: str) -> dict | None:
    """The counts stored in a part, or None when there is no part at `uri`. Reads the footer only."""
    try:
        file = storage.open_random_access(uri)
    except NotFoundError:
        return None
    try:
        metadata = pq.read_schema(file).metadata or {}
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(
            f"'{uri}' is not a readable part of this job's output ({error}); delete it and run again with --resume."
        ) from error
    finally:
        file.close()
    if METADATA_KEY not in metadata:
        raise DataError(
            f"'{uri}' was written by an older version of animals10, which resumes differently; choose an empty "
            "--output."
        )
    return json.loads(metadata[METADATA_KEY])


def first_part(output_uri: str) -> str | None:
    """Any one part under `output_uri`, or None: one listing request, whatever the number of parts."""
    shard = next(shards_with_parts(output_uri, ""), None)
    return part_uri(output_uri, shard) if shard is not None else None


def shards_with_parts(output_uri: str, shard_prefix: str) -> Iterator[str]:
    """The ids of the shards starting with `shard_prefix` that have a part under `output_uri`, from
    their names alone: one listing request per 1,000 parts on S3, one folder scan on disk."""
    prefix = PART_PREFIX + shard_prefix
    if storage.is_s3(output_uri):
        bucket, key = storage.split_s3(output_uri)
        kwargs = {"Bucket": bucket, "Prefix": (key.rstrip("/") + "/" if key else "") + prefix}
        try:
            for page in storage.s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if name.endswith(PART_SUFFIX):
                        yield name[len(PART_PREFIX) : -len(PART_SUFFIX)]
        except Exception as error:  # noqa: BLE001
            raise storage.explain(output_uri, error) from error
        return
    try:
        with os.scandir(output_uri) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(PART_SUFFIX):
                    yield entry.name[len(PART_PREFIX) : -len(PART_SUFFIX)]
    except FileNotFoundError:
        return
    except OSError as error:
        raise StorageError(f"Cannot read '{output_uri}': {error.strerror or error}.") from error
