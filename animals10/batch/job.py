"""The batch job's driver: plans the input, starts the Ray Data pipeline, adds up the counts.

    plan (top level only)  ->  produce_shards  ->  decode_shard  ->  ClassifyShard  ->  counts per shard
                               (listing tasks)     (CPU tasks)       (actor pool: writes the parts)
                                     ^ ListingGate (an actor): admits a new shard while few are unfinished

Nothing the driver holds grows with the number of photos: it plans from the top level of the input
(or the list of manifest files), checks one existing part when resuming (and which of the last units
have begun: the untouched go first), and keeps running totals of the counts that each shard sends
back. Every input row ends in exactly one output row: a shard's part is written whole under the
shard's own name, so a retried shard (a lost actor or node) rewrites the same part, and a resumed job
(after a crash or a kill) skips the shards whose part exists, found by the parts' names (and skips,
unlisted, the units that were finished).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from animals10 import storage
from animals10.batch.pacing import ListingGate
from animals10.batch.parts import SUMMARY_FILE, first_part, part_uri, read_part_stats
from animals10.batch.sources import Plan, Unit, plan_manifest, plan_tree, shard_id
from animals10.batch.steps import ClassifyShard, check_same_job, decode_shard, produce_shards
from animals10.card import Preprocessing, check_threshold
from animals10.cluster import connect_ray, reshare_ray_data_resources_soon
from animals10.errors import Animals10Error, DataError
from animals10.imaging import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

DECODE_MODES = ("cpu", "gpu", "mixed")
RESUME_PROBES = 64  # units at the end of the plan checked for a first part when resuming
LISTING_TASK_CPUS = 0  # paced by the ListingGate, listing takes little CPU; a reserved share kept decoders waiting


def listing_tasks(num_units: int) -> int:
    """Listing tasks at once: one per 4 CPUs of the cluster (2 at least), and no more than units.
    Each holds a worker process for as long as its units last."""
    import ray

    return max(1, min(num_units, max(2, int(ray.cluster_resources().get("CPU", 1) // 4))))


def shards_listed_ahead() -> int:
    """Shards that may be listed and not yet finished: four per CPU of the cluster (8 at least), enough
    to keep every decode task and replica fed, and a bound that does not grow with the input."""
    import ray

    return max(8, 4 * int(ray.cluster_resources().get("CPU", 1)))


def _wait_for_gate(gate, shard: str) -> None:
    import ray

    ray.get(gate.admit.remote(shard))


@dataclass
class BatchConfig:
    """One batch job. Defaults live here; the command line overrides them. Exactly one of
    `input_uri` (a folder or s3:// prefix) and `input_list` (a manifest) names the photos."""

    model_uri: str
    input_uri: str | None
    output_uri: str
    input_list: str | None = None
    batch_size: int = 64  # photos per inference call
    concurrency: int | tuple[int, int] | None = None  # replicas, or (min, max); None: (1, GPUs) with GPUs, else 1
    num_gpus: float | None = None  # per replica; None: 1 when the cluster has GPUs, else 0
    num_cpus_per_actor: float = 1.0  # on a CPU-only cluster also the number of torch threads per replica
    num_cpus_per_decode_task: float = 1.0
    top_k: int = 3
    tta: bool = False  # test-time augmentation: average with the mirrored photo
    unknown: bool = True  # flag photos that are none of the classes, where the artifact can (open_world.py)
    unknown_threshold: float | None = None  # None: the artifact's
    embeddings: bool = False  # add each photo's embedding (float16) to its row
    resume: bool = False
    decode: str = "cpu"  # where JPEGs are decoded: cpu, gpu (nvJPEG) or mixed; the GPU modes need GPUs
    gpu_share: float = 0.5  # decode="mixed": the share of JPEGs decoded on the GPU
    rows_per_file: int = 1000  # rows per Parquet part: the shard size
    progress: bool = True


@dataclass
class JobSummary:
    """What `_summary.json` holds. Counts cover the whole output (earlier runs included when resuming);
    speeds cover this run."""

    model: str
    input: str
    output: str
    files_seen: int = 0  # rows in the output: one per input photo
    classified: int = 0
    failed: int = 0
    failed_by_kind: dict = field(default_factory=dict)
    per_class: dict = field(default_factory=dict)  # predicted labels, the photos flagged unknown included
    unknown: int | None = None  # photos flagged unknown; None: not flagged (--no-unknown, or an older artifact)
    duplicates: int = 0  # manifest rows left out as repeats of an earlier row
    true_label: bool = False
    already_done: int = 0  # rows in parts of earlier runs (--resume)
    processed_this_run: int = 0
    parts_written: int = 0  # this run
    parts: int = 0  # in the output
    images_per_second: float = 0.0  # this run's photos over its wall time
    steady_images_per_second: float | None = None  # after the first part
    time_to_first_result_s: float | None = None  # until the first part was written
    wall_time_s: float = 0.0
    complete: bool = False  # every shard of the input has its part
    finished_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Totals:
    """Running totals of the counts the shards send back: a fixed size, whatever the number of photos."""

    def __init__(self):
        self.labels: Counter = Counter()
        self.errors: Counter = Counter()
        self.rows = self.duplicates = self.unknown = self.skipped_rows = self.new_rows = self.parts = self.new_parts = 0

    def add(self, counts: dict) -> None:
        self.labels.update(json.loads(counts["per_class"]))
        self.errors.update(json.loads(counts["failed_by_kind"]))
        self.rows += counts["rows"]
        self.duplicates += counts["duplicates"]
        self.unknown += counts["unknown"]
        self.parts += counts["parts"]
        if counts["skipped"]:
            self.skipped_rows += counts["rows"]
        else:
            self.new_rows += counts["rows"]
            self.new_parts += 1


def replicas(config: BatchConfig) -> tuple[float, int, int]:
    """(GPUs per replica, fewest replicas, most replicas): by default an autoscaling pool of up to one
    replica per GPU, or one replica on a CPU-only cluster."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    num_gpus = config.num_gpus if config.num_gpus is not None else (1.0 if cluster_gpus > 0 else 0.0)
    if num_gpus > 0 and cluster_gpus < num_gpus:
        raise Animals10Error(
            f"--num-gpus {num_gpus:g} asks for more GPUs per replica than the cluster has ({cluster_gpus:g})."
        )
    if isinstance(config.concurrency, int):
        return num_gpus, config.concurrency, config.concurrency
    if config.concurrency is not None:
        return num_gpus, *config.concurrency
    if num_gpus > 0:
        return num_gpus, 1, max(1, int(cluster_gpus // num_gpus))
    return num_gpus, 1, 1


DECODE_WORKER_BASE_MEMORY = 256 * 2**20  # Python, NumPy, Pillow, Arrow and Ray in a worker process


def decode_task_memory(config: BatchConfig, image_size: int) -> int:
    """Bytes a decode task may need at peak: its process, the largest photo allowed decoded (3 bytes a
    pixel), and its shard's pixels three times (the array, its bytes, the Arrow column)."""
    return int(
        DECODE_WORKER_BASE_MEMORY + DEFAULT_MAX_PIXELS * 3 + 3 * config.rows_per_file * image_size * image_size * 3
    )


def plan_input(config: BatchConfig, class_names: list[str]) -> Plan:
    if (config.input_uri is None) == (config.input_list is None):
        raise DataError(
            "Name the photos with exactly one of --input (a folder or s3:// prefix) and --input-list (a manifest)."
        )
    return plan_manifest(config.input_list) if config.input_list else plan_tree(config.input_uri, class_names)


def untouched_units_first(units: list[Unit], output_uri: str) -> list[Unit]:
    """The units to resume, those without a first part moved to the front. A unit resumed midway goes on
    with a full shard, which must be read whole before a replica gets it (seconds on S3); an untouched
    unit begins with an eighth of one. Units are listed in order, so the untouched ones are at the end:
    only the last `RESUME_PROBES` are checked, one existence check each, whatever the number of photos."""
    from concurrent.futures import ThreadPoolExecutor

    tail = units[-RESUME_PROBES:]
    with ThreadPoolExecutor(16) as pool:
        started = list(pool.map(lambda unit: storage.exists(part_uri(output_uri, shard_id(unit.key, 0))), tail))
    untouched = {unit.key for unit, begun in zip(tail, started) if not begun}
    return sorted(units, key=lambda unit: unit.key not in untouched)  # stable: the order otherwise kept


def classify_images(config: BatchConfig, on_part_written: Callable[[str], None] | None = None) -> JobSummary:
    """Runs the job described by `config`; returns (and writes to `_summary.json`) its summary.

    `on_part_written(part_uri)` is called on the driver as each new part is reported (progress hooks,
    tests)."""
    from animals10.card import read_card  # torch stays out of the listing and decoding workers

    started = time.perf_counter()
    card = read_card(config.model_uri)  # fails early, in one sentence, on a bad model path
    if config.unknown:
        check_threshold(card.open_world, config.unknown_threshold, config.model_uri)
    plan = plan_input(config, card.class_names)
    storage.check_writable(config.output_uri)
    columns = (["unknown"] if config.unknown and card.open_world else []) + (["embedding"] if config.embeddings else [])
    job = {"model": card.id, "input": plan.input, "rows_per_part": config.rows_per_file, "columns": columns}
    existing = first_part(config.output_uri)
    if existing and not config.resume:
        raise DataError(
            f"'{config.output_uri}' already holds prediction parts; pass --resume to complete them, or choose an "
            "empty --output."
        )
    if existing:
        check_same_job(read_part_stats(existing), job, existing)
        plan = Plan(plan.input, untouched_units_first(plan.units, config.output_uri), plan.labelled)
    summary = JobSummary(model=card.id, input=plan.input, output=config.output_uri, true_label=plan.labelled)
    totals = _Totals()
    connect_ray()
    _run_pipeline(config, plan, job, card.preprocessing, totals, summary, started, on_part_written)

    summary.files_seen, summary.duplicates, summary.parts = totals.rows, totals.duplicates, totals.parts
    summary.already_done, summary.processed_this_run, summary.parts_written = (
        totals.skipped_rows,
        totals.new_rows,
        totals.new_parts,
    )
    summary.classified = sum(totals.labels.values())
    summary.failed = sum(totals.errors.values())
    summary.failed_by_kind = {kind: totals.errors[kind] for kind in sorted(totals.errors)}
    summary.per_class = {name: totals.labels.get(name, 0) for name in card.class_names}
    summary.unknown = totals.unknown if config.unknown and card.open_world else None
    summary.wall_time_s = round(time.perf_counter() - started, 3)
    summary.images_per_second = (
        round(summary.processed_this_run / summary.wall_time_s, 2) if summary.wall_time_s else 0.0
    )
    summary.complete = True  # the pipeline ended without an error: every shard reported its part
    summary.finished_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    storage.write_bytes(storage.join(config.output_uri, SUMMARY_FILE), json.dumps(summary.to_dict(), indent=2).encode())
    return summary


def _run_pipeline(
    config: BatchConfig,
    plan: Plan,
    job: dict,
    preprocessing: Preprocessing,
    totals: _Totals,
    summary: JobSummary,
    started: float,
    on_part_written,
) -> None:
    import ray
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy
    from tqdm import tqdm

    num_gpus, fewest, most = replicas(config)
    gpu_share = {"cpu": 0.0, "gpu": 1.0, "mixed": config.gpu_share}[config.decode] if num_gpus > 0 else 0.0
    if config.decode != "cpu" and num_gpus == 0:
        logger.warning("--decode %s needs GPUs and this job has none; decoding on the CPU.", config.decode)
    endpoint = storage.s3_endpoint()
    context = DataContext.get_current()
    saved = (context.target_max_block_size, context.enable_progress_bars)
    # Every row is a whole shard: one row a block, so that each listed shard moves on at once
    # instead of waiting in a listing task's output buffer for more.
    context.target_max_block_size, context.enable_progress_bars = 1, False
    # On the driver's node, so that losing another node never loses it; restarted, it only forgets.
    # It ends, its last calls done, when the job drops its handle.
    gate = (
        ray.remote(ListingGate)
        .options(num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy=_this_node())
        .remote(shards_listed_ahead())
    )
    try:
        ds = ray.data.from_items([{"unit": u.to_json()} for u in plan.units], override_num_blocks=len(plan.units))
        ds = ds.map_batches(
            produce_shards,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=LISTING_TASK_CPUS,
            compute=TaskPoolStrategy(size=listing_tasks(len(plan.units))),
            udf_modifying_row_count=True,
            fn_kwargs={
                "output_uri": config.output_uri,
                "rows_per_part": config.rows_per_file,
                "resume": config.resume,
                "expected": job,
                "admit": functools.partial(_wait_for_gate, gate),
                "s3_endpoint": endpoint,
            },
        )
        ds = ds.map_batches(
            decode_shard,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=config.num_cpus_per_decode_task,
            # A decode task holds its shard's pixels and one photo of up to max_pixels. Declaring that
            # memory also keeps decoding in its own tasks: Ray Data fuses map steps whose resource
            # requests are equal, and fused into the replicas, decoding would run in series with inference.
            memory=decode_task_memory(config, preprocessing.image_size),
            fn_kwargs={
                "preprocessing": preprocessing,
                "gpu_share": gpu_share,
                "s3_endpoint": endpoint,
            },
        )
        ds = ds.map_batches(
            ClassifyShard,
            batch_size=1,
            batch_format="pyarrow",
            # On a GPU a shard takes well under a second: a second one in flight per replica brings its
            # pixels while the first is classified. On CPUs a shard takes seconds, and one at a time
            # spreads the last shards of a job over all replicas instead of queueing them at one.
            compute=ActorPoolStrategy(
                min_size=fewest, max_size=most, max_tasks_in_flight_per_actor=2 if num_gpus > 0 else 1
            ),
            num_gpus=num_gpus,
            num_cpus=config.num_cpus_per_actor,
            fn_constructor_kwargs={
                "model_uri": config.model_uri,
                "output_uri": config.output_uri,
                "job": job,
                "labelled": plan.labelled,
                "batch_size": config.batch_size,
                "top_k": config.top_k,
                "tta": config.tta,
                "unknown": config.unknown,
                "unknown_threshold": config.unknown_threshold,
                "embeddings": config.embeddings,
                "gpu_decode": gpu_share > 0,
                "s3_endpoint": endpoint,
            },
        )
        _collect(ds, config, totals, summary, started, on_part_written, tqdm, gate)
    finally:
        context.target_max_block_size, context.enable_progress_bars = saved


def _this_node():
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _collect(
    ds, config: BatchConfig, totals: _Totals, summary: JobSummary, started: float, on_part_written, tqdm, gate
) -> None:
    """Adds up the counts as shards report them, and lets the gate admit as many new shards; one
    progress bar, in photos."""
    first_part_at, first_rows = None, 0
    bar = tqdm(unit="img", desc="classifying", disable=not config.progress, mininterval=1.0)
    stop_resharing = reshare_ray_data_resources_soon()  # a job started right after a killed one gets the cluster
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch_counts = batch.to_pylist()
            new_shards = [counts["shard"] for counts in batch_counts if not counts["skipped"]]
            if new_shards:
                gate.finish.remote(new_shards)
            for counts in batch_counts:
                totals.add(counts)
                if counts["skipped"]:
                    continue
                bar.update(counts["rows"])
                if first_part_at is None:
                    first_part_at, first_rows = time.perf_counter(), counts["rows"]
                    summary.time_to_first_result_s = round(first_part_at - started, 3)
                if on_part_written is not None:
                    on_part_written(counts["part"])
    finally:
        stop_resharing.set()
        bar.close()
    if totals.skipped_rows:
        logger.info(
            "Resumed: %d photos in %d part(s) were already done.", totals.skipped_rows, totals.parts - totals.new_parts
        )
    elapsed = time.perf_counter() - first_part_at if first_part_at is not None else 0.0
    if elapsed > 0 and totals.new_rows > first_rows:
        summary.steady_images_per_second = round((totals.new_rows - first_rows) / elapsed, 2)
