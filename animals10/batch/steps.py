"""The batch job's steps inside Ray: list shards, decode them, classify and write them.

Each Ray Data row is one whole shard (its paths as a list), so a shard never splits across tasks or
actors whatever Ray Data does with blocks, and the actor that classifies a shard writes its part:

    produce_shards (a task per unit)  ->  decode_shard (CPU tasks)  ->  ClassifyShard (actor pool)
    unit -> shard rows                    paths -> pixels                pixels -> part file -> counts

Only the counts (a few numbers a shard) go back to the driver. These are plain functions and
classes: they run and test without Ray.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from animals10 import storage
from animals10.batch.parts import (
    error_kind,
    part_uri,
    prediction_schema,
    read_part_stats,
    shards_with_parts,
    write_part,
)
from animals10.batch.sources import Shard, Unit, can_list_after, iter_shards, shard_id, shard_number
from animals10.card import Preprocessing
from animals10.data import photo_error
from animals10.errors import DataError
from animals10.imaging import load_array, open_image, resized_crop

logger = logging.getLogger(__name__)

SHARD_FIELDS = [
    pa.field("shard", pa.string()),
    pa.field("paths", pa.list_(pa.string())),
    pa.field("errors", pa.list_(pa.string())),  # "" or "<kind>: <why>" per path
    pa.field("true_labels", pa.list_(pa.string())),  # null unless the input is a labelled tree
    pa.field("duplicates", pa.int64()),
    pa.field("last", pa.bool_()),  # the unit's final shard
    pa.field("done", pa.string()),  # the summed counts of parts written by an earlier run (JSON), or ""
]
DECODED_FIELDS = [
    pa.field("pixels", pa.large_binary()),  # (n, S, S, 3) uint8, zeros for bad files and JPEGs left to the GPU
    pa.field("jpegs", pa.list_(pa.large_binary())),  # JPEG bytes left to the GPU, b"" for the others
]
COUNT_FIELDS = [
    pa.field("shard", pa.string()),
    pa.field("part", pa.string()),
    pa.field("rows", pa.int64()),
    pa.field("classified", pa.int64()),
    pa.field("duplicates", pa.int64()),
    pa.field("failed_by_kind", pa.string()),  # JSON {kind: count}
    pa.field("per_class", pa.string()),  # JSON {label: count}
    pa.field("unknown", pa.int64()),  # photos flagged unknown
    pa.field("parts", pa.int64()),  # parts these counts cover: 1, or a unit's parts from an earlier run
    pa.field("skipped", pa.bool_()),  # written by an earlier run
]


def _shard_table(shard: Shard, done: dict | None) -> pa.Table:
    if done is not None:  # the photos are not needed any more: only the counts travel on
        shard = Shard(shard.id, duplicates=shard.duplicates)
    row = {
        "shard": [shard.id],
        "paths": [shard.paths],
        "errors": [shard.errors],
        "true_labels": [shard.true_labels],
        "duplicates": [shard.duplicates],
        "last": [shard.last],
        "done": [json.dumps(done) if done is not None else ""],
    }
    return pa.Table.from_pydict(row, schema=pa.schema(SHARD_FIELDS))


def produce_shards(
    units: pa.Table,
    output_uri: str,
    rows_per_part: int,
    resume: bool,
    expected: dict,
    admit: Callable[[str], None],
    s3_endpoint: str | None,
) -> Iterator[pa.Table]:
    """Ray Data step 1 (a generator): each unit's shards as rows, as they are listed; `admit(shard_id)`
    returns once a new shard may go on (the job's `ListingGate`: how far listing runs ahead).

    When resuming, a unit's finished shards are known from the names of its parts (one listing), and
    the new shards go on at once. The finished ones follow at the end of the unit, as one row of their
    summed counts, once each part is checked to be made by the same model, input, rows per part and
    columns (`expected`). A unit whose every shard up to its last one is done is not listed again."""
    storage.set_s3_endpoint(s3_endpoint)
    for text in units.column("unit").to_pylist():
        unit = Unit.from_json(text)
        done = {shard_number(s) for s in shards_with_parts(output_uri, unit.key + "-")} if resume else set()
        if done and _unit_finished(output_uri, unit.key, done):
            finished = sorted(done)
        else:
            resume_after = _resume_point(output_uri, unit, done)
            finished = list(range(resume_after[0] + 1)) if resume_after else []
            for shard in iter_shards(unit, rows_per_part, resume_after):
                number = shard_number(shard.id)
                if number in done:
                    finished.append(number)  # only shards of today's input: a stray old part is not counted
                else:
                    admit(shard.id)
                    yield _shard_table(shard, None)
        if finished:
            parts = [part_uri(output_uri, shard_id(unit.key, n)) for n in finished]
            yield _shard_table(Shard(unit.key), _finished_counts(parts, expected))


def _resume_point(output_uri: str, unit: Unit, done: set[int]) -> tuple[int, str] | None:
    """(n, the last photo of shard n) when shards 0 to n of the unit all have parts and its listing can
    start after that photo (an S3 tree): a resume then lists only what follows, whatever was done."""
    last = next(n for n in range(len(done) + 1) if n not in done) - 1
    if last < 0 or not unit.on_s3_tree:
        return None
    stats = read_part_stats(part_uri(output_uri, shard_id(unit.key, last)))
    after = stats and stats.get("last_input")  # parts written before it was recorded have none
    return (last, after) if after and can_list_after(unit, after) else None


def _unit_finished(output_uri: str, unit_key: str, done: set[int]) -> bool:
    """Whether shards 0 to n of a unit all have parts and shard n was the unit's last."""
    last = max(done)
    if len(done) != last + 1:
        return False
    stats = read_part_stats(part_uri(output_uri, shard_id(unit_key, last)))
    return bool(stats and stats.get("last"))


FOOTER_READERS = 16  # parts whose counts are read at once when resuming (each is a request on S3)


def _finished_counts(parts: list[str], expected: dict) -> dict:
    """The summed counts of finished parts, each checked against `expected`."""
    from concurrent.futures import ThreadPoolExecutor

    total = {"parts": 0, "rows": 0, "classified": 0, "duplicates": 0, "unknown": 0}
    failed, labels = Counter(), Counter()
    with ThreadPoolExecutor(min(FOOTER_READERS, len(parts))) as pool:
        for uri, stats in zip(parts, pool.map(read_part_stats, parts)):
            if stats is None:
                raise DataError(f"'{uri}' disappeared while the job resumed; run it again with --resume.")
            check_same_job(stats, expected, uri)
            total["parts"] += 1
            for name in ("rows", "classified", "duplicates", "unknown"):
                total[name] += stats.get(name, 0)
            failed.update(stats["failed_by_kind"])
            labels.update(stats["per_class"])
    return {**total, "failed_by_kind": dict(failed), "per_class": dict(labels)}


def check_same_job(stats: dict, expected: dict, uri: str) -> None:
    """A part of an earlier run may be kept only if the same model, input, rows per part and optional
    columns made it (parts written before optional columns existed have none)."""
    stats = {"columns": [], **stats}
    settings = (
        ("model", "--model"), ("input", "--input"), ("rows_per_part", "--rows-per-file"),
        ("columns", "optional columns (--no-unknown, --embeddings)"),
    )  # fmt: skip
    for name, option in settings:
        if stats.get(name) != expected[name]:
            raise DataError(
                f"'{uri}' was written with {option} {stats.get(name)}, not {expected[name]}; resume with the same "
                f"{option}, or choose another --output."
            )


def decode_shard(
    shards: pa.Table,
    preprocessing: Preprocessing,
    gpu_share: float = 0.0,
    s3_endpoint: str | None = None,
) -> pa.Table:
    """Ray Data step 2 (CPU tasks): reads and decodes every photo of each shard at the model's size.

    A file that cannot be used gets its error ("<kind>: <why>") and zeros. With `gpu_share` > 0,
    that share of the JPEGs nvJPEG can take (spread evenly over the shard) is only checked here
    and travels as bytes, for the replica's GPU to decode."""
    storage.set_s3_endpoint(s3_endpoint)
    pixels, jpegs, errors = [], [], []
    for row in shards.select(["paths", "errors", "done"]).to_pylist():
        paths, shard_errors = row["paths"], list(row["errors"])
        size = preprocessing.image_size
        images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
        blobs = [b""] * len(paths)
        wanted = [i for i in range(len(paths)) if not shard_errors[i]]
        for i, data in zip(wanted, storage.read_each([paths[i] for i in wanted])):
            path = paths[i]
            try:
                if isinstance(data, Exception):
                    raise data
                if gpu_share > 0 and int((i + 1) * gpu_share) > int(i * gpu_share) and _gpu_decodable(data):
                    blobs[i] = data
                else:
                    images[i] = load_array(data, preprocessing)
            except Exception as error:  # noqa: BLE001 - named by photo_error; one odd file never stops the job
                shard_errors[i] = photo_error(error)
            if shard_errors[i]:
                logger.debug("Skipping %s: %s", path, shard_errors[i])
        pixels.append(images.tobytes())
        jpegs.append(blobs)
        errors.append(shard_errors)
    out = shards.set_column(
        shards.schema.get_field_index("errors"), SHARD_FIELDS[2], pa.array(errors, SHARD_FIELDS[2].type)
    )
    out = out.append_column(DECODED_FIELDS[0], pa.array(pixels, pa.large_binary()))
    return out.append_column(DECODED_FIELDS[1], pa.array(jpegs, DECODED_FIELDS[1].type))


def _gpu_decodable(data: bytes) -> bool:
    """A baseline-or-progressive JPEG without EXIF rotation (nvJPEG ignores EXIF); raises for bad files."""
    image = open_image(data)
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    return image.getexif().get(0x0112, 1) == 1


class ClassifyShard:
    """Ray Data step 3 (an actor pool): a `Predictor` loaded once per actor; for each shard, classifies
    its photos `batch_size` at a time, writes the shard's part and returns the shard's counts.

    Rows whose `error` is set get null predictions. A shard that was already done passes through as
    its counts."""

    def __init__(
        self,
        model_uri: str,
        output_uri: str,
        job: dict,
        labelled: bool,
        batch_size: int = 64,
        top_k: int = 3,
        tta: bool = False,
        unknown: bool = True,
        unknown_threshold: float | None = None,
        embeddings: bool = False,
        gpu_decode: bool = False,
        s3_endpoint: str | None = None,
    ):
        from animals10.predictor import Predictor

        storage.set_s3_endpoint(s3_endpoint)
        self.predictor = Predictor(
            model_uri, top_k=top_k, tta=tta, unknown=unknown, unknown_threshold=unknown_threshold
        )
        self.output_uri, self.job, self.labelled = output_uri, job, labelled
        self.batch_size, self.embeddings = batch_size, embeddings
        self.unknown = self.predictor.open_world is not None
        width = self.predictor.embedding_width if embeddings else None
        self.schema = prediction_schema(labelled, self.unknown, width)
        self.gpu_decode = gpu_decode and self.predictor.device.type != "cpu"
        if gpu_decode and not self.gpu_decode:
            logger.warning("GPU decoding: this replica has no GPU; decoding JPEGs on the CPU.")

    def __call__(self, shards: pa.Table) -> pa.Table:
        counts = [self.classify(row) for row in shards.to_pylist()]
        return pa.Table.from_pylist(counts, schema=pa.schema(COUNT_FIELDS))

    def classify(self, row: dict) -> dict:
        if row["done"]:
            return _counts(row["shard"], "", json.loads(row["done"]), skipped=True)
        started_at, started = time.time(), time.perf_counter()
        paths, errors = row["paths"], list(row["errors"])
        size = self.predictor.image_size
        images = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(len(paths), size, size, 3)
        if any(row["jpegs"]):
            images = self._decode_jpegs(row["jpegs"], images, errors)
        good = [i for i, e in enumerate(errors) if not e]
        described: list[dict] = []
        embeddings: list[np.ndarray] = []
        for start in range(0, len(good), self.batch_size):
            prediction = self.predictor.predict(images[good[start : start + self.batch_size]], self.embeddings)
            described += self.predictor.describe(prediction)
            if self.embeddings:
                embeddings += list(prediction.embeddings.astype(np.float16))
        results = dict(zip(good, described))
        names = ["label", "label_index", "confidence", "top_k"] + (["unknown", "unknown_score"] if self.unknown else [])
        columns = {name: [results[i][name] if i in results else None for i in range(len(paths))] for name in names}
        if self.embeddings:
            by_row = dict(zip(good, embeddings))
            columns["embedding"] = [by_row.get(i) for i in range(len(paths))]
        columns.update(path=paths, error=[e or None for e in errors], model=[self.predictor.model_id] * len(paths))
        if self.labelled:
            columns["true_label"] = row["true_labels"]
        table = pa.Table.from_pydict(columns, schema=self.schema)
        stats = {
            **self.job,
            "shard": row["shard"],
            "rows": len(paths),
            "classified": len(good),
            "duplicates": row["duplicates"],
            "failed_by_kind": dict(Counter(error_kind(e) for e in errors if e)),
            "per_class": dict(Counter(r["label"] for r in described)),
            "unknown": sum(r.get("unknown", False) for r in described),
            "last": row["last"],
            "last_input": paths[-1] if paths else None,  # where a resume may list on from
            "started_at": round(started_at, 3),  # Unix seconds, when the replica began the shard
            "classify_seconds": round(time.perf_counter() - started, 3),  # on the replica, writing not included
        }
        uri = part_uri(self.output_uri, row["shard"])
        write_part(uri, table, stats)
        return _counts(row["shard"], uri, stats, skipped=False)

    def _decode_jpegs(self, jpegs: list[bytes], images: np.ndarray, errors: list[str]) -> np.ndarray:
        """Decodes the photos that travelled as JPEG bytes: with nvJPEG on the GPU, `batch_size` at a
        time, else (and for any file nvJPEG refuses) with the CPU path, which also names the error."""
        images = images.copy()
        todo = [(i, bytes(b)) for i, b in enumerate(jpegs) if b and not errors[i]]
        decoded: dict[int, np.ndarray] = {}
        if self.gpu_decode:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                decoded.update(self._decode_on_device([i for i, _ in chunk], [b for _, b in chunk]))
        for i, data in todo:
            if i in decoded:
                images[i] = decoded[i]
                continue
            try:
                images[i] = load_array(data, self.predictor.preprocessing)
            except Exception as error:  # noqa: BLE001 - named by photo_error
                errors[i] = photo_error(error)
        return images

    def _decode_on_device(self, indices: list[int], blobs: list[bytes]) -> dict[int, np.ndarray]:
        """One nvJPEG call for the whole list, resized (and cropped, as the model's preprocessing says)
        on the GPU; one copy back."""
        import torch
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg

        device, preprocessing = self.predictor.device, self.predictor.preprocessing
        size = preprocessing.image_size
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
            # (3, H, W) uint8 on the GPU -> (3, S, S); antialiased, as Pillow's resize
            (width, height), (left, top) = resized_crop(image.shape[2], image.shape[1], preprocessing)
            x = F.interpolate(
                image[None].float(), size=(height, width), mode=preprocessing.interpolation, antialias=True,
                align_corners=False,
            )  # fmt: skip
            kept.append(i)
            resized.append(x[0, :, top : top + size, left : left + size])
        if not resized:
            return {}
        arrays = torch.stack(resized).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return dict(zip(kept, arrays))


def _counts(shard: str, uri: str, stats: dict, skipped: bool) -> dict:
    return {
        "shard": shard,
        "part": uri,
        "rows": stats["rows"],
        "classified": stats["classified"],
        "duplicates": stats.get("duplicates", 0),
        "failed_by_kind": json.dumps(stats["failed_by_kind"]),
        "per_class": json.dumps(stats["per_class"]),
        "unknown": stats.get("unknown", 0),
        "parts": stats.get("parts", 1),
        "skipped": skipped,
    }
