"""Local paths and s3:// URIs behind one small API: list (whole or as a stream), read, write, copy.

Credentials come from the standard AWS chain (environment, shared config, instance role);
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) points at an S3-compatible store.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from animals10.errors import NotFoundError, StorageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    bucket, _, key = str(uri)[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"'{uri}' names no bucket; write it as s3://bucket/prefix.")
    return bucket, key


def join(uri: str, *parts: str) -> str:
    if is_s3(uri):
        return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(uri, *parts))


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def set_s3_endpoint(endpoint_url: str | None) -> None:
    """Points this process (and the Ray workers it starts) at an S3-compatible store."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url


@functools.cache
def _client(endpoint_url: str | None):
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=5, read_timeout=60, max_pool_connections=32
    )  # one connection per thread of `read_each` or a footer reader
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


_CLIENT_LOCK = threading.Lock()


def s3_client():
    # One client a process, shared by its threads: the 16 reading threads of a new worker would
    # otherwise each make one at once (2.7 s against 0.3 s) and share no connections.
    with _CLIENT_LOCK:
        return _client(s3_endpoint())


def explain(uri: str, error: Exception) -> StorageError:
    """One sentence for the ways S3 access fails."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    if isinstance(error, NoCredentialsError):
        return StorageError(f"No AWS credentials were found for '{uri}'; set them in the environment or ~/.aws.")
    if isinstance(error, EndpointConnectionError):
        return StorageError(
            f"Cannot reach the S3 endpoint for '{uri}' ({error}); check the network or AWS_ENDPOINT_URL."
        )
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            return StorageError(f"The bucket of '{uri}' does not exist.")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFoundError(f"'{uri}' does not exist.")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"Access to '{uri}' was denied ({code}); check the credentials and bucket policy.")
        return StorageError(f"S3 refused '{uri}': {code or error}.")
    return StorageError(f"Cannot access '{uri}': {error}.")


def visible(name: str, extensions: tuple[str, ...] | None = None) -> bool:
    """A file name that listings keep: not hidden, and with one of `extensions` (any case) when given."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and (extensions is None or base.lower().endswith(extensions))


def iter_s3_objects(
    uri: str, page_size: int = 1000, after: str | None = None, first_page: int | None = None
) -> Iterator[list[str]]:
    """The object URIs under an S3 prefix, at any depth, one listing page at a time (`page_size` keys at
    most, the first page `first_page` keys when given: a small page comes back sooner), in key order;
    only those after the object URI `after` when given."""
    bucket, request = _listing(uri)
    if after is not None:
        request["StartAfter"] = split_s3(after)[1]
    try:
        for page in _list_pages(request, first_page, page_size):
            yield [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
    except Exception as error:  # noqa: BLE001 - translated into one sentence
        raise explain(uri, error) from error


def iter_s3_folder(uri: str, first_page: int | None = None) -> Iterator[tuple[list[str], list[str]]]:
    """What lies directly under an S3 prefix, as a folder listing shows it, one page at a time:
    (its "folders" (common prefixes) as s3:// URIs ending in '/', its objects' URIs), in key order;
    the first page of `first_page` entries when given, the others of 1,000."""
    bucket, request = _listing(uri, Delimiter="/")
    try:
        for page in _list_pages(request, first_page):
            folders = [f"s3://{bucket}/{common['Prefix']}" for common in page.get("CommonPrefixes", [])]
            yield folders, [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
    except Exception as error:  # noqa: BLE001
        raise explain(uri, error) from error


def _listing(uri: str, **options) -> tuple[str, dict]:
    """(bucket, the ListObjectsV2 request for what lies under the prefix of `uri`, seen as a folder)."""
    bucket, prefix = split_s3(uri)
    return bucket, {"Bucket": bucket, "Prefix": prefix.rstrip("/") + "/" if prefix else "", **options}


def _list_pages(request: dict, first_page: int | None, page_size: int = 1000) -> Iterator[dict]:
    """ListObjectsV2's pages for `request` of `page_size` keys at most, the first of `first_page` when given."""
    max_keys = first_page or page_size
    while True:
        page = s3_client().list_objects_v2(**request, MaxKeys=max_keys)
        yield page
        if not page.get("IsTruncated"):
            return
        request = {**request, "ContinuationToken": page["NextContinuationToken"]}
        max_keys = page_size


def walk_local(root: str | Path) -> Iterator[str]:
    """The files under a local folder, lazily, in a stable order: each folder's files by name, then its
    sub-folders, depth first. Hidden files and folders are skipped. Only one folder's entries are held
    at a time, and no file is stat'ed: whatever is not a folder counts as a file (a broken link then
    fails when it is read)."""
    try:
        entries = os.scandir(root)
    except FileNotFoundError as error:
        raise NotFoundError(f"'{root}' does not exist.") from error
    except NotADirectoryError:
        yield str(root)
        return
    folders = []
    with entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
            else:
                yield entry.path
    for folder in folders:
        yield from walk_local(folder)


def list_files(uri: str, extensions: tuple[str, ...] | None = None) -> list[str]:
    """Every file under `uri`, recursively, sorted; only those with `extensions` (any case) when given.
    For small trees (a training set, a model folder); bulk jobs use the streams above."""
    if is_s3(uri):
        return sorted(p for page in iter_s3_objects(uri) for p in page if visible(p, extensions))
    root = Path(uri)
    if not root.exists():
        raise NotFoundError(f"'{uri}' does not exist.")
    if root.is_file():
        return [str(root)] if visible(root.name, extensions) else []
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and visible(p.name, extensions))


READ_AHEAD = 16  # S3 objects `read_each` reads at once: each is a request, and one at a time waits on each


def read_each(uris: list[str], at_once: int = READ_AHEAD) -> Iterator[bytes | Exception]:
    """The bytes of each of `uris`, in order; a file that cannot be read comes as its exception. S3
    objects are read `at_once` at a time in threads (no more held); local files one by one, as
    threads only slowed them down."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def read(uri: str) -> bytes | Exception:
        try:
            return read_bytes(uri)
        except Exception as error:  # noqa: BLE001 - handed to the caller, which names it
            return error

    if not uris or not is_s3(uris[0]):
        yield from map(read, uris)
        return
    with ThreadPoolExecutor(min(at_once, len(uris))) as pool:
        pending: deque = deque()
        for uri in uris:
            pending.append(pool.submit(read, uri))
            if len(pending) >= at_once:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as error:  # noqa: BLE001
            raise explain(uri, error) from error
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError as error:
        raise NotFoundError(f"'{uri}' does not exist.") from error


def write_bytes(uri: str, data: bytes) -> None:
    """Writes atomically: readers see the old file or the whole new one, never a part."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as error:  # noqa: BLE001
            raise explain(uri, error) from error
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)  # as a plain open() would leave it, not the temporary file's 0o600
    os.replace(tmp.name, path)


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except Exception as error:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in (
                "404",
                "NoSuchKey",
                "NotFound",
            ):
                return False
            raise explain(uri, error) from error
    return Path(uri).exists()


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copies a local directory's files to `uri` (local or S3)."""
    local_dir = Path(local_dir)
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        write_bytes(join(uri, path.relative_to(local_dir).as_posix()), path.read_bytes())


def check_writable(uri: str) -> None:
    """Fails early, with one sentence, when `uri` cannot be written."""
    probe = join(uri, f".write-test-{os.getpid()}")
    try:
        write_bytes(probe, b"")
    except StorageError:
        raise
    except OSError as error:
        raise StorageError(f"Cannot write to '{uri}': {error.strerror or error}.") from error
    if is_s3(probe):
        bucket, key = split_s3(probe)
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(probe).unlink(missing_ok=True)


def arrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for `uri`, honouring the S3 endpoint override.

    Ray Train persists checkpoints through it; transient S3 errors are retried, not fatal. One
    filesystem per endpoint and region is made per process and reused."""
    import pyarrow.fs as pafs

    if is_s3(uri):
        endpoint = s3_endpoint()
        if endpoint:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        else:
            region = _bucket_region(split_s3(uri)[0])  # AWS: the bucket's own region
        return _s3_filesystem(endpoint, region), str(uri)[len("s3://") :]
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


@functools.cache
def _s3_filesystem(endpoint: str | None, region: str):
    import pyarrow.fs as pafs

    retries = pafs.AwsStandardS3RetryStrategy(max_attempts=10)
    return pafs.S3FileSystem(endpoint_override=endpoint, region=region, retry_strategy=retries)


@functools.lru_cache(maxsize=256)
def _bucket_region(bucket: str) -> str:
    import pyarrow.fs as pafs

    return pafs.resolve_s3_region(bucket)


def open_stream(uri: str):
    """A pyarrow input stream over a file, read as it is consumed; `.gz` files are decompressed."""
    fs, path = arrow_filesystem(uri)
    try:
        return fs.open_input_stream(path, compression="gzip" if path.lower().endswith(".gz") else None)
    except FileNotFoundError as error:
        raise NotFoundError(f"'{uri}' does not exist.") from error
    except OSError as error:
        raise StorageError(f"Cannot read '{uri}': {error}.") from error


def open_random_access(uri: str):
    """A seekable pyarrow file (Parquet readers fetch only the ranges they need)."""
    fs, path = arrow_filesystem(uri)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError as error:
        raise NotFoundError(f"'{uri}' does not exist.") from error
    except OSError as error:
        raise StorageError(f"Cannot read '{uri}': {error}.") from error
