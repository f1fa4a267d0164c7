"""Where the batch job's photos come from (animals10.batch.sources): trees and manifests, on disk and
on the loopback S3 server, read as streams of shards with stable ids. No Ray here."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from animals10 import storage
from animals10.batch.sources import MAX_UNITS, iter_shards, plan_manifest, plan_tree
from animals10.errors import DataError
from animals10.labels import ANIMALS10_CLASSES
from tests.conftest import jpeg_bytes


def shards_of(plan, rows_per_part: int = 1000) -> list:
    return [shard for unit in plan.units for shard in iter_shards(unit, rows_per_part)]


def rows_of(plan, rows_per_part: int = 1000) -> list[tuple[str, str]]:
    return [(p, e) for s in shards_of(plan, rows_per_part) for p, e in zip(s.paths, s.errors)]


# --- Folder trees -----------------------------------------------------------------------------


def write_tree(root: Path, layout: dict[str, int]) -> list[str]:
    paths = []
    for folder, count in layout.items():
        for i in range(count):
            path = root / folder / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg_bytes())
            paths.append(str(path))
    return sorted(paths)


def test_a_tree_is_cut_into_shards_with_stable_ids_and_labels(tmp_path):
    expected = write_tree(tmp_path, {"gatto": 5, "cane/nested": 3, "cane": 2})
    (tmp_path / "gatto" / ".hidden.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "gatto" / "notes.txt").write_text("not a photo")
    plan = plan_tree(str(tmp_path), ANIMALS10_CLASSES)
    assert plan.labelled and len(plan.units) == 2  # one unit per top-level folder here
    shards = shards_of(plan, rows_per_part=2)
    assert sorted(p for s in shards for p in s.paths) == expected
    assert all(len(s.paths) <= 2 for s in shards)
    labels = {p: label for s in shards for p, label in zip(s.paths, s.true_labels)}
    assert {labels[p] for p in expected if "/gatto/" in p} == {"cat"} and {
        labels[p] for p in expected if "/cane/" in p
    } == {"dog"}
    assert len({s.id for s in shards}) == len(shards)
    marks = [[s.last for s in iter_shards(unit, 2)] for unit in plan.units]  # a resume skips finished units by it
    assert all(m[-1] and not any(m[:-1]) for m in marks)
    assert [s.id for s in shards_of(plan_tree(str(tmp_path), ANIMALS10_CLASSES), rows_per_part=2)] == [
        s.id for s in shards
    ]


def test_a_broken_link_is_listed_so_that_it_gets_its_error_row(tmp_path):
    expected = write_tree(tmp_path, {"gatto": 2})
    (tmp_path / "gatto" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert [p for p, _ in rows_of(plan_tree(str(tmp_path), ANIMALS10_CLASSES))] == sorted(
        expected + [str(tmp_path / "gatto" / "gone.jpg")]
    )


def test_folders_that_are_not_classes_or_photos_at_the_top_give_no_labels(tmp_path):
    write_tree(tmp_path, {"holiday": 2, "gatto": 1})
    assert not plan_tree(str(tmp_path), ANIMALS10_CLASSES).labelled
    (tmp_path / "holiday").rename(tmp_path / "cane")
    (tmp_path / "top.jpg").write_bytes(jpeg_bytes())
    plan = plan_tree(str(tmp_path), ANIMALS10_CLASSES)
    assert not plan.labelled and len(rows_of(plan)) == 4


def test_many_top_level_folders_are_grouped_into_a_bounded_number_of_units(tmp_path):
    write_tree(tmp_path, {f"day-{d:03d}": 1 for d in range(MAX_UNITS + 30)})
    plan = plan_tree(str(tmp_path), ANIMALS10_CLASSES)
    assert len(plan.units) == MAX_UNITS
    assert len(rows_of(plan)) == MAX_UNITS + 30


def test_a_tree_on_s3_is_listed_page_by_page_over_its_sub_prefixes(s3_bucket):
    client = storage.s3_client()
    keys = [f"photos/{c}/{i}.jpg" for c in ("gatto", "cane") for i in range(7)] + ["photos/cane/deeper/x.png"]
    for key in keys:
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"not decoded here")
    plan = plan_tree(f"s3://{s3_bucket}/photos/", ANIMALS10_CLASSES)
    assert plan.labelled and [u.folders for u in plan.units] == [
        (f"s3://{s3_bucket}/photos/cane/",),
        (f"s3://{s3_bucket}/photos/gatto/",),
    ]
    shards = shards_of(plan, rows_per_part=3)  # pages of 3 keys: several ListObjectsV2 pages per folder
    assert sorted(p for s in shards for p in s.paths) == sorted(f"s3://{s3_bucket}/{k}" for k in keys)
    assert [len(s.paths) for s in shards] == [1, 1, 1, 3, 2, 1, 1, 1, 3, 1]  # a slow start in each folder, then 3


class ListingRequests:
    """The ListObjectsV2 requests this process makes (their parameters), while in a `with` block."""

    def __enter__(self):
        self.made: list[dict] = []
        storage.s3_client().meta.events.register("provide-client-params.s3.ListObjectsV2", self._record)
        return self

    def _record(self, params, **_):
        self.made.append(dict(params))

    def __exit__(self, *_):
        storage.s3_client().meta.events.unregister("provide-client-params.s3.ListObjectsV2", self._record)


def test_a_flat_s3_prefix_is_planned_from_one_page_and_read_whole_as_one_unit(s3_bucket):
    from concurrent.futures import ThreadPoolExecutor

    client = storage.s3_client()
    top = [f"flat/{i:05d}.jpg" for i in range(1100)]  # more than one listing page directly at the top
    keys = top + ["flat/later/a.jpg", "flat/later/deeper/b.png"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=s3_bucket, Key=key, Body=b"photo"), keys))
    with ListingRequests() as requests:
        plan = plan_tree(f"s3://{s3_bucket}/flat", ANIMALS10_CLASSES)
    assert len(requests.made) == 1  # not a page per thousand photos on the driver
    assert not plan.labelled and len(plan.units) == 1
    assert sorted(p for p, _ in rows_of(plan)) == sorted(f"s3://{s3_bucket}/{k}" for k in keys)


def test_every_top_level_s3_folder_is_planned_past_the_first_small_page(s3_bucket):
    client = storage.s3_client()
    days = [f"day-{d:02d}" for d in range(40)]  # more folders than the first page holds
    for day in days:
        client.put_object(Bucket=s3_bucket, Key=f"trips/{day}/a.jpg", Body=b"photo")
    plan = plan_tree(f"s3://{s3_bucket}/trips", ANIMALS10_CLASSES)
    assert [u.folders for u in plan.units] == [(f"s3://{s3_bucket}/trips/{day}/",) for day in days]


def test_the_first_shard_of_an_s3_folder_needs_one_small_listing_page(s3_bucket):
    client = storage.s3_client()
    for i in range(300):
        client.put_object(Bucket=s3_bucket, Key=f"photos/gatto/{i:03d}.jpg", Body=b"photo")
    (unit,) = plan_tree(f"s3://{s3_bucket}/photos/", ANIMALS10_CLASSES).units
    shards = iter_shards(unit, rows_per_part=1000)
    with ListingRequests() as requests:
        first = next(shards)
    assert len(first.paths) == 125  # an eighth of a part
    assert [r["MaxKeys"] for r in requests.made] == [126]  # the shard and the row that shows it is full
    assert sum(len(s.paths) for s in shards) == 300 - 125


def test_s3_objects_read_at_once_come_in_order_through_one_client(s3_bucket):
    client = storage.s3_client()
    uris = []
    for i in range(40):
        client.put_object(Bucket=s3_bucket, Key=f"r/{i}.jpg", Body=f"photo {i}".encode())
        uris.append(f"s3://{s3_bucket}/r/{i}.jpg")
    uris.insert(7, f"s3://{s3_bucket}/r/gone.jpg")
    storage._client.cache_clear()  # as in a new worker: its 16 reading threads ask for a client at once
    read = list(storage.read_each(uris))
    assert storage._client.cache_info().misses == 1
    assert isinstance(read[7], Exception) and read[:7] + read[8:] == [f"photo {i}".encode() for i in range(40)]


def test_empty_or_missing_trees_are_one_sentence(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no photos")
    with pytest.raises(DataError, match="No images were found"):
        plan_tree(str(tmp_path / "empty"), ANIMALS10_CLASSES)
    with pytest.raises(DataError, match="does not exist"):
        plan_tree(str(tmp_path / "missing"), ANIMALS10_CLASSES)
    (tmp_path / "one.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(DataError, match="--input-list"):
        plan_tree(str(tmp_path / "one.jpg"), ANIMALS10_CLASSES)


# --- Manifests: every format, from disk and from S3 -------------------------------------------

PHOTOS = ["s3://photos/a/1.jpg", "s3://photos/a/with space+plus.jpg", "/data/b/2.png"]


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def inventory_csv(uris: list[str]) -> bytes:
    """An S3 Inventory CSV data file: no header; bucket, key (URL-encoded), size, ..., gzipped."""
    from urllib.parse import quote_plus

    lines = io.StringIO()
    writer = csv.writer(lines, quoting=csv.QUOTE_ALL)
    for uri in uris:
        bucket, key = storage.split_s3(uri)
        writer.writerow([bucket, quote_plus(key, safe="/"), "1234", "2026-12-01T00:00:00.000Z"])
    return gzip.compress(lines.getvalue().encode())


S3_PHOTOS = [p for p in PHOTOS if p.startswith("s3://")]
MANIFESTS = {
    "list.txt": lambda: ("\n".join(PHOTOS) + "\n").encode(),
    "list.csv": lambda: ("id,Path\n" + "".join(f'{i},"{p}"\n' for i, p in enumerate(PHOTOS))).encode(),
    "uris.tsv": lambda: ("uri\tsize\n" + "".join(f"{p}\t1\n" for p in PHOTOS)).encode(),
    "no-header.csv": lambda: "".join(f"{p},1\n" for p in PHOTOS).encode(),
    "list.parquet": lambda: parquet_bytes(pa.table({"uri": PHOTOS, "n": [1, 2, 3]})),
    "list-without-suffix": lambda: ("\n".join(PHOTOS) + "\n").encode(),
    "inventory.parquet": lambda: parquet_bytes(
        pa.table(
            {"bucket": [storage.split_s3(p)[0] for p in S3_PHOTOS], "key": [storage.split_s3(p)[1] for p in S3_PHOTOS]}
        )
    ),
    "inventory-data.csv.gz": lambda: inventory_csv(S3_PHOTOS),
}


def put(where: str, name: str, data: bytes) -> str:
    uri = storage.join(where, name)
    storage.write_bytes(uri, data)
    return uri


@pytest.fixture(params=["disk", "s3"])
def location(request, tmp_path):
    if request.param == "disk":
        return str(tmp_path)
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/lists"


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_every_manifest_format_gives_its_uris(location, name):
    uri = put(location, name, MANIFESTS[name]())
    expected = S3_PHOTOS if name.startswith("inventory") else PHOTOS
    assert rows_of(plan_manifest(uri)) == [(p, "") for p in expected]


@pytest.mark.parametrize("file_format", ["CSV", "Parquet"])
def test_an_s3_inventory_manifest_json_names_its_data_files(location, file_format):
    """The layout S3 writes: <dest>/<source-bucket>/<config>/<date>/manifest.json, data files in
    <dest>/<source-bucket>/<config>/data/; on S3 the manifest names them by key in its destination bucket."""
    halves = [S3_PHOTOS[:1], S3_PHOTOS[1:]]
    config = storage.join(location, "inventory/photos/daily")
    keys = []
    for n, half in enumerate(halves):
        if file_format == "CSV":
            name, data = f"part{n}.csv.gz", inventory_csv(half)
        else:
            name, data = (
                f"part{n}.parquet",
                parquet_bytes(
                    pa.table(
                        {
                            "bucket": [storage.split_s3(u)[0] for u in half],
                            "key": [storage.split_s3(u)[1] for u in half],
                        }
                    )
                ),
            )
        uri = put(config, f"data/{name}", data)
        keys.append(storage.split_s3(uri)[1] if storage.is_s3(uri) else f"inventory/photos/daily/data/{name}")
    bucket = storage.split_s3(location)[0] if storage.is_s3(location) else "somewhere"
    manifest = {
        "sourceBucket": "photos",
        "destinationBucket": f"arn:aws:s3:::{bucket}",
        "fileFormat": file_format,
        "fileSchema": "Bucket, Key, Size, LastModifiedDate" if file_format == "CSV" else "message s3.inventory { }",
        "files": [{"key": k, "size": 1, "MD5checksum": "0"} for k in keys],
    }
    manifest_uri = put(config, "2026-12-01T01-00Z/manifest.json", json.dumps(manifest).encode())
    assert rows_of(plan_manifest(manifest_uri)) == [(p, "") for p in S3_PHOTOS]
    # A folder holding the report finds its manifest.json.
    assert rows_of(plan_manifest(storage.join(config, "2026-12-01T01-00Z") + "/")) == [(p, "") for p in S3_PHOTOS]


def test_a_folder_of_manifests_is_one_unit_per_file(tmp_path):
    put(str(tmp_path), "a.txt", b"s3://b/1.jpg\ns3://b/2.jpg\n")
    put(str(tmp_path), "b.txt", b"s3://b/3.jpg\n")
    plan = plan_manifest(str(tmp_path))
    assert len(plan.units) == 2
    assert [p for p, _ in rows_of(plan)] == ["s3://b/1.jpg", "s3://b/2.jpg", "s3://b/3.jpg"]


def test_manifest_shards_have_stable_ids_of_the_row_count(tmp_path):
    uri = put(str(tmp_path), "list.txt", "".join(f"s3://b/{i}.jpg\n" for i in range(10)).encode())
    shards = shards_of(plan_manifest(uri), rows_per_part=4)
    assert [len(s.paths) for s in shards] == [1, 1, 2, 4, 2]  # an eighth (at least 1), a quarter, a half, then all
    assert [s.id for s in shards] == [s.id for s in shards_of(plan_manifest(uri), rows_per_part=4)]


# --- Manifest rows that name no photo, and files that are no manifest -------------------------


def test_empty_rows_and_non_uris_become_error_rows_and_repeats_are_left_out(tmp_path):
    text = "s3://b/1.jpg\n\nnot/absolute.jpg\ns3://b/2.jpg\nhttp://example.com/x.jpg\ns3://b/1.jpg\ns3://b/\n"
    shards = shards_of(plan_manifest(put(str(tmp_path), "list.txt", text.encode())), rows_per_part=3)
    rows = [(p, e.split(":", 1)[0]) for s in shards for p, e in zip(s.paths, s.errors)]
    assert rows == [
        ("s3://b/1.jpg", ""),
        ("", "invalid"),
        ("not/absolute.jpg", "invalid"),
        ("s3://b/2.jpg", ""),
        ("http://example.com/x.jpg", "invalid"),
        ("s3://b/", "invalid"),
    ]
    assert sum(s.duplicates for s in shards) == 1  # the second s3://b/1.jpg, classified once
    assert [len(s.paths) + s.duplicates for s in shards] == [1, 1, 1, 3, 1]  # cut by rows, repeats included


@pytest.mark.parametrize(
    "name, data, words",
    [
        ("photo.jpg", jpeg_bytes(), "neither text, CSV nor Parquet"),
        ("list.txt", b"s3://b/1.jpg\n\xff\xfe\x00binary", "neither text, CSV nor Parquet"),
        ("list.csv", b"name,size\ncat.jpg,1\n", "no path column"),
        ("list.parquet", parquet_bytes(pa.table({"name": ["x"]})), "no path column"),
        ("broken.parquet", b"PAR1 but not really", "not a readable Parquet file"),
    ],
)
def test_a_file_that_is_no_manifest_is_one_sentence(tmp_path, name, data, words):
    uri = put(str(tmp_path), name, data)
    with pytest.raises(DataError, match=words):
        shards_of(plan_manifest(uri))


def test_missing_manifests_and_orc_inventories_are_one_sentence(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        plan_manifest(str(tmp_path / "missing.txt"))
    manifest = {
        "fileFormat": "ORC",
        "fileSchema": "struct<bucket:string,key:string>",
        "files": [{"key": "x/data/1.orc"}],
    }
    uri = put(str(tmp_path), "inv/2026-12-01T01-00Z/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(DataError, match="configure the inventory as CSV or Parquet"):
        plan_manifest(uri)
