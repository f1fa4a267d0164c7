"""Bulk classification: a folder or bucket of photos -> Parquet predictions, streamed with Ray Data.

    list files (driver)  ->  read + decode + resize (CPU tasks)  ->  Predictor (actor pool, model loaded
    once per actor)  ->  prediction rows back to the driver  ->  Parquet parts under --output

Every input file gives exactly one output row: a file that cannot be read or decoded gets a row with
`error` set ("<kind>: <why>", kind one of empty, not_image, too_large, corrupt, unreadable) and the
job goes on. Prediction rows are about a thousand times smaller than the photos, so the driver
collects them and writes each part with one atomic write (a temporary name renamed into place on
disk, a single PUT on S3): no half-written part is ever visible, an actor that dies and is retried
never produces a row twice, and `--resume` only has to read the `path` column of the parts present.

Output columns: path, label, label_index, confidence, top_k (list of {label, prob}), error, model,
and true_label when the input is a tree of class folders named after the model's classes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import math
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from animals10 import storage
from animals10.data import photo_error, relative_path
from animals10.errors import Animals10Error, DataError, StorageError
from animals10.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, load_array, open_image
from animals10.labels import class_name_for_folder

logger = logging.getLogger(__name__)

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
SUMMARY_FILE = "_summary.json"
ERROR_KINDS = ("empty", "not_image", "too_large", "corrupt", "unreadable")

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


def prediction_schema(with_true_label: bool) -> pa.Schema:
    """The schema of every Parquet part; `true_label` only for labelled trees."""
    return pa.schema(PREDICTION_FIELDS + ([pa.field("true_label", pa.string())] if with_true_label else []))


@dataclass
class BatchConfig:
    """One batch job. Defaults live here; the command line overrides them."""

    model_uri: str
    input_uri: str
    output_uri: str
    batch_size: int = 64  # photos per inference call
    concurrency: int | None = None  # model replicas; None: one per GPU, or one on a CPU-only cluster
    num_gpus: float | None = None  # per replica; None: 1 when the cluster has GPUs, else 0
    num_cpus_per_actor: float = 1.0  # on a CPU-only cluster also the number of torch threads per replica
    num_cpus_per_decode_task: float = 1.0
    top_k: int = 3
    tta: bool = False  # test-time augmentation: average with the mirrored photo
    resume: bool = False
    gpu_decode: bool = False  # decode JPEGs with nvJPEG on the replica's GPU; ignored without GPUs
    rows_per_file: int = 10_000  # rows per Parquet part
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger photos get error "too_large"
    progress: bool = True
    # Testing only: stop as a killed job would, after this many parts were written this run.
    stop_after_parts: int | None = None


@dataclass
class JobSummary:
    """What `_summary.json` holds. Counts cover the whole output (earlier runs included when resuming);
    speeds cover this run."""

    model: str
    input: str
    output: str
    files_seen: int = 0
    classified: int = 0
    failed: int = 0
    failed_by_kind: dict = field(default_factory=dict)
    per_class: dict = field(default_factory=dict)
    true_label: bool = False
    already_done: int = 0  # rows found in earlier parts (--resume)
    processed_this_run: int = 0
    parts_written: int = 0
    images_per_second: float = 0.0  # this run's photos over its wall time
    steady_images_per_second: float | None = None  # after the first result arrived
    time_to_first_result_s: float | None = None
    wall_time_s: float = 0.0
    complete: bool = False  # exactly one row per input file
    stopped_early: bool = False
    finished_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Work done inside Ray tasks and actors (plain functions and classes: testable without Ray)


def error_kind(error: str | None) -> str | None:
    return None if not error else error.split(":", 1)[0]


def read_and_decode(
    batch: dict[str, np.ndarray],
    image_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_jpeg_bytes: bool = False,
    s3_endpoint: str | None = None,
) -> dict[str, np.ndarray]:
    """(B,) paths -> `image` (B, S, S, 3) uint8 (zeros for bad files) and `error` ("" when fine).

    With `keep_jpeg_bytes`, JPEGs are only checked (header, size, orientation) and travel as bytes in
    `jpeg` for the GPU to decode; other formats are decoded here as usual."""
    storage.set_s3_endpoint(s3_endpoint)
    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), image_size, image_size, 3), dtype=np.uint8)
    errors: list[str] = []
    jpegs: list[bytes] = []
    for i, path in enumerate(paths):
        jpeg = b""
        try:
            data = storage.read_bytes(path)
            if keep_jpeg_bytes and _gpu_decodable(data, max_pixels):
                jpeg = data
            else:
                images[i] = load_array(data, image_size, max_pixels)
            errors.append("")
        except (ImageDecodeError, OSError, StorageError) as error:
            errors.append(photo_error(error))
        except Exception as error:  # noqa: BLE001 - one odd file must never stop the job
            errors.append(f"corrupt: the image could not be decoded ({type(error).__name__}: {error})")
        if errors[-1]:
            logger.debug("Skipping %s: %s", path, errors[-1])
        jpegs.append(jpeg)
    out = {**batch, "image": images, "error": np.array(errors, dtype=object)}
    if keep_jpeg_bytes:
        out["jpeg"] = np.array(jpegs, dtype=object)
    return out


def _gpu_decodable(data: bytes, max_pixels: int) -> bool:
    """A baseline-or-progressive JPEG without EXIF rotation (nvJPEG ignores EXIF); raises for bad files."""
    image = open_image(data, max_pixels)
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    return image.getexif().get(0x0112, 1) == 1


class ClassifyBatch:
    """The inference step: a `Predictor` loaded once per actor, called on decoded batches.

    Rows whose `error` is set pass through with null predictions; the others get label, label_index,
    confidence and top_k. Returns an Arrow table in the output schema."""

    def __init__(
        self,
        model_uri: str,
        top_k: int = 3,
        gpu_decode: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        s3_endpoint: str | None = None,
        tta: bool = False,
    ):
        from animals10.predictor import Predictor

        storage.set_s3_endpoint(s3_endpoint)
        self.predictor = Predictor(model_uri, top_k=top_k, tta=tta)
        self.max_pixels = max_pixels
        self.gpu_decode = gpu_decode and self.predictor.device.type != "cpu"
        if gpu_decode and not self.gpu_decode:
            logger.warning("--gpu-decode: this replica has no GPU; decoding JPEGs on the CPU.")

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        paths = [str(p) for p in batch["path"]]
        errors = [str(e) for e in batch["error"]]
        images = np.asarray(batch["image"])
        if "jpeg" in batch:
            images = self._decode_jpegs(batch["jpeg"], images, errors)
        good = [i for i, e in enumerate(errors) if not e]
        described = self.predictor.describe(self.predictor.predict_probabilities(images[good])) if good else []
        rows = dict(zip(good, described))
        columns = {
            "path": paths,
            "label": [rows[i]["label"] if i in rows else None for i in range(len(paths))],
            "label_index": [rows[i]["label_index"] if i in rows else None for i in range(len(paths))],
            "confidence": [rows[i]["confidence"] if i in rows else None for i in range(len(paths))],
            "top_k": [rows[i]["top_k"] if i in rows else None for i in range(len(paths))],
            "error": [e or None for e in errors],
            "model": [self.predictor.model_id] * len(paths),
        }
        with_true_label = "true_label" in batch
        if with_true_label:
            columns["true_label"] = [str(t) for t in batch["true_label"]]
        return pa.Table.from_pydict(columns, schema=prediction_schema(with_true_label))

    def _decode_jpegs(self, jpegs: Iterable[bytes], images: np.ndarray, errors: list[str]) -> np.ndarray:
        """Decodes the rows that travelled as JPEG bytes: with nvJPEG on the GPU, else (and for any
        file nvJPEG refuses) with the CPU path, which also names the error."""
        size = images.shape[1]
        images = images.copy()
        todo = [(i, bytes(b)) for i, b in enumerate(jpegs) if b and not errors[i]]
        if not todo:
            return images
        decoded: dict[int, np.ndarray] = {}
        if self.gpu_decode:
            decoded = self._decode_on_device([i for i, _ in todo], [b for _, b in todo], size)
        for i, data in todo:
            if i in decoded:
                images[i] = decoded[i]
                continue
            try:
                images[i] = load_array(data, size, self.max_pixels)
            except ImageDecodeError as error:
                errors[i] = f"{error.kind}: {error}"
            except Exception as error:  # noqa: BLE001
                errors[i] = f"corrupt: the image could not be decoded ({type(error).__name__}: {error})"
        return images

    def _decode_on_device(self, indices: list[int], blobs: list[bytes], size: int) -> dict[int, np.ndarray]:
        import torch
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg

        device = self.predictor.device
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            outputs = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        except Exception:  # noqa: BLE001 - nvJPEG returns nothing for a batch with one bad file
            outputs = []
            for tensor in tensors:
                try:
                    outputs.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except Exception:  # noqa: BLE001 - left to the CPU path, which names the error
                    outputs.append(None)
        kept, resized = [], []
        for i, image in zip(indices, outputs):
            if image is None:
                continue
            # (3, H, W) uint8 on the GPU -> (3, S, S); antialiased bilinear, as Pillow's resize
            x = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            kept.append(i)
            resized.append(x[0])
        if not resized:
            return {}
        # One copy back for the batch: (N, S, S, 3) uint8
        arrays = torch.stack(resized).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return dict(zip(kept, arrays))


# ---------------------------------------------------------------------------------------------
# The driver


def list_inputs(input_uri: str) -> tuple[str, list[str]]:
    """(normalised root, every photo under it, sorted); local roots become absolute paths."""
    root = input_uri.rstrip("/") if storage.is_s3(input_uri) else str(Path(input_uri).expanduser().resolve())
    paths = storage.list_files(root, storage.IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(
            f"No images were found under '{input_uri}' (searched recursively for {', '.join(storage.IMAGE_EXTENSIONS)}, any case)."
        )
    return root, paths


def true_labels_for(root: str, paths: list[str], class_names: list[str]) -> list[str] | None:
    """Each photo's class folder as a class name, when every photo sits in a folder named after one of
    the model's classes (Italian Animals-10 names count); otherwise None."""
    known = set(class_names)
    labels = []
    for path in paths:
        parts = relative_path(root, path).replace("\\", "/").split("/")
        if len(parts) < 2 or class_name_for_folder(parts[0]) not in known:
            return None
        labels.append(class_name_for_folder(parts[0]))
    return labels


def list_parts(output_uri: str) -> list[str]:
    try:
        files = storage.list_files(output_uri, (PART_SUFFIX,))
    except StorageError:
        if storage.is_s3(output_uri):
            raise
        return []  # a local output that does not exist yet holds no parts
    return [f for f in files if f.replace("\\", "/").rsplit("/", 1)[-1].startswith(PART_PREFIX)]


def read_parts(part_uris: list[str], columns: tuple[str, ...] = ("path", "label", "error", "model")) -> pa.Table:
    """The given columns of all parts, as one table."""
    tables = []
    for uri in part_uris:
        try:
            tables.append(pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=list(columns)))
        except (pa.ArrowInvalid, OSError, KeyError) as error:
            raise DataError(f"'{uri}' is not a readable part of this job's output ({error}); delete it and run again with --resume.") from error
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables)


def encode_part(tables: list[pa.Table], schema: pa.Schema) -> tuple[bytes, pa.Table]:
    table = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue(), table


class _Tally:
    """Per-class and per-error counts of the rows written."""

    def __init__(self):
        self.labels: Counter = Counter()
        self.errors: Counter = Counter()
        self.rows = 0

    def add(self, labels: list, errors: list) -> None:
        self.rows += len(labels)
        self.labels.update(label for label in labels if label is not None)
        self.errors.update(error_kind(e) for e in errors if e)


def _default_resources(config: BatchConfig) -> tuple[float, int]:
    """(GPUs per replica, replicas): one replica per GPU when the cluster has GPUs, else one on the CPUs."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    num_gpus = config.num_gpus if config.num_gpus is not None else (1.0 if cluster_gpus > 0 else 0.0)
    if num_gpus > 0 and cluster_gpus < num_gpus:
        raise Animals10Error(f"--num-gpus {num_gpus:g} asks for more GPUs per replica than the cluster has ({cluster_gpus:g}).")
    if config.concurrency is not None:
        concurrency = config.concurrency
    elif num_gpus > 0:
        concurrency = max(1, int(cluster_gpus // num_gpus))
    else:
        concurrency = 1
    return num_gpus, concurrency


DECODE_WORKER_BASE_MEMORY = 256 * 2**20  # Python, NumPy, Pillow, Arrow and Ray in a worker process


def decode_task_memory(config: BatchConfig, image_size: int) -> int:
    """Bytes a decode task may need at peak: its process, the largest photo allowed decoded (3 bytes a
    pixel), and its batch twice."""
    return int(DECODE_WORKER_BASE_MEMORY + config.max_pixels * 3 + 2 * config.batch_size * image_size * image_size * 3)


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(configure_logging=False, log_to_driver=True)


def classify_images(config: BatchConfig, on_part_written: Callable[[str], None] | None = None) -> JobSummary:
    """Runs the job described by `config`; returns (and writes to `_summary.json`) its summary.

    `on_part_written(part_uri)` is called on the driver after each part is written (progress hooks, tests).
    """
    import ray

    from animals10.artifact import read_card  # torch stays out of the decoding workers

    started = time.perf_counter()
    card = read_card(config.model_uri)  # fails early, in one sentence, on a bad model path
    root, paths = list_inputs(config.input_uri)
    storage.check_writable(config.output_uri)
    true_labels = true_labels_for(root, paths, card.class_names)
    schema = prediction_schema(true_labels is not None)
    summary = JobSummary(model=card.id, input=root, output=config.output_uri, files_seen=len(paths), true_label=true_labels is not None)

    tally = _Tally()
    done: set[str] = set()
    existing = list_parts(config.output_uri)
    if existing and not config.resume:
        raise DataError(
            f"'{config.output_uri}' already holds {len(existing)} prediction part(s); pass --resume to complete them, or choose an empty --output."
        )
    if existing:
        previous = read_parts(existing)
        others = set(previous.column("model").to_pylist()) - {None, card.id}
        if others:
            raise DataError(
                f"The parts in '{config.output_uri}' were written by model {sorted(others)[0]}, not {card.id}; choose another --output."
            )
        wanted = set(paths)
        keep = [i for i, p in enumerate(previous.column("path").to_pylist()) if p in wanted]
        previous = previous.take(keep)
        done = set(previous.column("path").to_pylist())
        if len(done) != len(keep):
            logger.warning("Earlier parts in %s hold %d duplicate row(s).", config.output_uri, len(keep) - len(done))
        tally.add(previous.column("label").to_pylist(), previous.column("error").to_pylist())
        summary.already_done = len(done)
        logger.info("Resuming: %d of %d photos already classified in %d part(s).", len(done), len(paths), len(existing))

    todo = [(p, t) for p, t in zip(paths, true_labels or [None] * len(paths)) if p not in done]
    if todo:
        _ensure_ray()
        num_gpus, concurrency = _default_resources(config)
        gpu_decode = config.gpu_decode and num_gpus > 0
        if config.gpu_decode and not gpu_decode:
            logger.warning("--gpu-decode needs GPUs and this job has none; decoding on the CPU.")
        endpoint = storage.s3_endpoint()
        items = [{"path": p, "true_label": t} if true_labels is not None else {"path": p} for p, t in todo]
        # One block per inference batch: the decode tasks then stream work in batch-size pieces.
        ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / config.batch_size)))
        ds = ds.map_batches(
            read_and_decode,
            batch_size=config.batch_size,
            batch_format="numpy",
            num_cpus=config.num_cpus_per_decode_task,
            # A decode task may hold one photo of up to max_pixels decoded (3 bytes a pixel) besides its
            # batch. Declaring that memory also keeps decoding in its own CPU tasks: Ray Data fuses map
            # steps whose resource requests are equal, and fused into the replicas, decoding would run
            # in series with inference.
            memory=decode_task_memory(config, card.preprocessing.image_size),
            fn_kwargs={"image_size": card.preprocessing.image_size, "max_pixels": config.max_pixels, "keep_jpeg_bytes": gpu_decode, "s3_endpoint": endpoint},
        )
        ds = ds.map_batches(
            ClassifyBatch,
            batch_size=config.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_gpus=num_gpus,
            num_cpus=config.num_cpus_per_actor,
            fn_constructor_kwargs={
                "model_uri": config.model_uri,
                "top_k": config.top_k,
                "tta": config.tta,
                "gpu_decode": gpu_decode,
                "max_pixels": config.max_pixels,
                "s3_endpoint": endpoint,
            },
        )
        ds.context.enable_progress_bars = False  # one bar, ours, in photos
        _stream_to_parts(ds, config, schema, summary, tally, started, len(todo), on_part_written)

    summary.classified = sum(tally.labels.values())
    summary.failed = sum(tally.errors.values())
    summary.failed_by_kind = {kind: tally.errors[kind] for kind in sorted(tally.errors)}
    summary.per_class = {name: tally.labels.get(name, 0) for name in card.class_names}
    summary.wall_time_s = round(time.perf_counter() - started, 3)
    summary.images_per_second = round(summary.processed_this_run / summary.wall_time_s, 2) if summary.wall_time_s else 0.0
    summary.complete = tally.rows == len(paths)
    summary.finished_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    storage.write_bytes(storage.join(config.output_uri, SUMMARY_FILE), json.dumps(summary.to_dict(), indent=2).encode())
    return summary


def _stream_to_parts(ds, config: BatchConfig, schema: pa.Schema, summary: JobSummary, tally: _Tally, started: float, total: int, on_part_written) -> None:
    """Pulls prediction rows as they come and writes a part every `rows_per_file` rows."""
    from tqdm import tqdm

    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    pending: list[pa.Table] = []
    num_pending = 0
    first_result_at = None
    first_rows = 0

    def flush() -> None:
        nonlocal pending, num_pending
        data, table = encode_part(pending, schema)
        uri = storage.join(config.output_uri, f"{PART_PREFIX}{run_id}-{summary.parts_written:05d}{PART_SUFFIX}")
        storage.write_bytes(uri, data)
        tally.add(table.column("label").to_pylist(), table.column("error").to_pylist())
        summary.processed_this_run += table.num_rows
        summary.parts_written += 1
        pending, num_pending = [], 0
        if on_part_written is not None:
            on_part_written(uri)

    iterator = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    bar = tqdm(total=total, unit="img", desc="classifying", disable=not config.progress, mininterval=1.0)
    try:
        for table in iterator:
            if first_result_at is None:
                first_result_at, first_rows = time.perf_counter(), table.num_rows
                summary.time_to_first_result_s = round(first_result_at - started, 3)
            pending.append(table)
            num_pending += table.num_rows
            bar.update(table.num_rows)
            while num_pending >= config.rows_per_file:
                whole = pa.concat_tables(pending)
                pending, num_pending = [whole.slice(0, config.rows_per_file)], config.rows_per_file
                rest = whole.slice(config.rows_per_file)
                flush()
                if rest.num_rows:
                    pending, num_pending = [rest], rest.num_rows
                if config.stop_after_parts is not None and summary.parts_written >= config.stop_after_parts:
                    summary.stopped_early = True
                    return
        if pending:
            flush()
        elapsed = time.perf_counter() - first_result_at if first_result_at is not None else 0.0
        if elapsed > 0 and summary.processed_this_run > first_rows:
            summary.steady_images_per_second = round((summary.processed_this_run - first_rows) / elapsed, 2)
    finally:
        bar.close()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------------------------------
# Command line: `animals10 infer` and jobs/infer.py


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BatchConfig("", "", "")
    parser.add_argument("--model", required=True, help="model artifact directory or s3:// URI")
    parser.add_argument("--input", required=True, help="folder or s3:// prefix of photos, searched recursively")
    parser.add_argument("--output", required=True, help="folder or s3:// prefix for the Parquet parts and _summary.json")
    parser.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="photos per inference call")
    parser.add_argument("--concurrency", type=_positive_int, default=None, help="model replicas (default: one per GPU, or 1 without GPUs)")
    parser.add_argument("--num-gpus", type=_non_negative_float, default=None, help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--cpus-per-replica", type=_non_negative_float, default=defaults.num_cpus_per_actor, help="CPUs reserved per model replica")
    parser.add_argument("--cpus-per-decode-task", type=_non_negative_float, default=defaults.num_cpus_per_decode_task, help="CPUs reserved per decoding task")
    parser.add_argument("--top-k", type=_positive_int, default=defaults.top_k, help="classes listed per photo in top_k")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: average each photo's probabilities with its mirror's")
    parser.add_argument("--rows-per-file", type=_positive_int, default=defaults.rows_per_file, help="rows per Parquet part")
    parser.add_argument("--resume", action="store_true", help="keep the parts already under --output and classify only the photos they lack")
    parser.add_argument("--gpu-decode", action="store_true", help="decode JPEGs on the GPU (nvJPEG); falls back to the CPU without GPUs")
    parser.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL or AWS)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after-parts", type=_positive_int, default=None, help=argparse.SUPPRESS)  # tests: simulate a killed job


def format_summary(summary: JobSummary) -> str:
    lines = [
        f"Photos: {summary.files_seen}   classified: {summary.classified}   failed: {summary.failed}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in summary.failed_by_kind.items())})" if summary.failed else ""),
        "Per class: " + ", ".join(f"{k} {v}" for k, v in summary.per_class.items()),
        f"This run: {summary.processed_this_run} photos in {summary.wall_time_s:.1f} s ({summary.images_per_second:.1f} images/s"
        + (f", {summary.steady_images_per_second:.1f} images/s after the first result" if summary.steady_images_per_second else "")
        + ")" + (f"; {summary.already_done} were already done" if summary.already_done else ""),
    ]
    return "\n".join(lines)


def run_infer(args: argparse.Namespace) -> int:
    storage.set_s3_endpoint(args.s3_endpoint)
    config = BatchConfig(
        model_uri=args.model,
        input_uri=args.input,
        output_uri=args.output,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        num_gpus=args.num_gpus,
        num_cpus_per_actor=args.cpus_per_replica,
        num_cpus_per_decode_task=args.cpus_per_decode_task,
        top_k=args.top_k,
        tta=args.tta,
        resume=args.resume,
        gpu_decode=args.gpu_decode,
        rows_per_file=args.rows_per_file,
        progress=not args.no_progress,
        stop_after_parts=args.stop_after_parts,
    )
    summary = classify_images(config)
    print(format_summary(summary))
    if summary.stopped_early:
        print(f"Stopped after {summary.parts_written} part(s) as asked; run again with --resume to finish.")
        return 3
    print(f"Predictions written to {config.output_uri} (summary: {storage.join(config.output_uri, SUMMARY_FILE)})")
    return 0
