"""Images per second of the Ray Data batch job next to plain PyTorch, in one run, on this machine.

    .venv/bin/python benchmarks/batch_inference.py [--images ../shared/data/bench-images] [--rounds 2] \
        [--passes 3] [--batch-size 128] [--decode-cpus 0.25] [--replica-cpus 0.875] [--concurrency 2] [--tune]

Three ways to classify the same photos with the same model (mobilenet_v2, random weights, 128 px),
the same preprocessing (animals10.imaging.load_array, then animals10.predictor.Predictor) and the
same batch size:
  (a) plain loop: one process reads, decodes and classifies batch after batch;
  (b) torch DataLoader: 2 worker processes read and decode, the main process classifies;
  (c) the Ray Data job, animals10.batch.job.classify_images, writing Parquet as users run it.
For each, on one pass over the photos: the whole job (from loading the model to the last
prediction; for Ray also listing the files, starting the pipeline's workers and writing the parts,
but not starting Ray itself, which a cluster has running already) and the rate after the first
batch. Ray's rate after the first batch flatters it: its decoders work ahead while the replicas load
the model. So each method also runs a long job (`--passes` copies of the tree, as symbolic links),
and the steady state is the extra photos over the extra time, in which start-up and head starts
cancel out. Ratios are against the best baseline of the same run. `--tune` also runs a small grid
of Ray settings (decoder CPUs, replica CPUs, replicas, batch size) on one pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from animals10 import storage  # noqa: E402
from animals10.card import Preprocessing  # noqa: E402
from animals10.imaging import ImageDecodeError, load_array  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "bench-images"


@dataclass
class Result:
    name: str
    num_images: int
    whole_s: float
    first_batch_s: float
    steady_ips: float  # photos after the first batch / time after the first batch

    @property
    def whole_ips(self) -> float:
        return self.num_images / self.whole_s


def build_artifact(root: Path, image_size: int) -> str:
    from animals10.artifact import save_artifact
    from animals10.card import ModelCard, Preprocessing
    from animals10.labels import ANIMALS10_CLASSES
    from animals10.models import create_model, get_model_spec

    torch.manual_seed(0)
    spec = get_model_spec("mobilenet_v2")
    uri = str(root / "mobilenet_v2")
    card = ModelCard("mobilenet_v2", list(ANIMALS10_CLASSES), Preprocessing(image_size, spec.mean, spec.std))
    save_artifact(create_model("mobilenet_v2", len(ANIMALS10_CLASSES), pretrained=False), card, uri)
    return uri


def decode(path: str, size: int) -> tuple[np.ndarray, bool]:
    try:
        return load_array(storage.read_bytes(path), Preprocessing(size)), True
    except (ImageDecodeError, OSError):
        return np.zeros((size, size, 3), np.uint8), False


def run_plain_loop(model_uri: str, paths: list[str], batch_size: int) -> Result:
    from animals10.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor(model_uri, device="cpu")
    first = None
    for start in range(0, len(paths), batch_size):
        decoded = [decode(p, predictor.image_size) for p in paths[start : start + batch_size]]
        images = np.stack([image for image, ok in decoded if ok])
        predictor.describe(predictor.predict(images))
        if first is None:
            first = (time.perf_counter() - started, len(decoded))
    whole = time.perf_counter() - started
    return Result("plain loop", len(paths), whole, first[0], (len(paths) - first[1]) / (whole - first[0]))


class PhotoDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image, ok = decode(self.paths[index], self.size)
        return image, ok  # the default collate stacks these into (B, S, S, 3) uint8


def run_dataloader(model_uri: str, paths: list[str], batch_size: int, num_workers: int = 2) -> Result:
    from animals10.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor(model_uri, device="cpu")
    loader = torch.utils.data.DataLoader(
        PhotoDataset(paths, predictor.image_size), batch_size=batch_size, num_workers=num_workers
    )
    first = None
    for images, ok in loader:
        predictor.describe(predictor.predict(images[ok]))
        if first is None:
            first = (time.perf_counter() - started, len(ok))
    whole = time.perf_counter() - started
    return Result(
        f"DataLoader, {num_workers} workers", len(paths), whole, first[0], (len(paths) - first[1]) / (whole - first[0])
    )


def run_ray_job(
    model_uri: str, images_dir: str, batch_size: int, decode_cpus: float, actor_cpus: float, concurrency: int
) -> tuple[Result, dict]:
    from animals10.batch.job import BatchConfig, classify_images

    with tempfile.TemporaryDirectory() as output:
        config = BatchConfig(
            model_uri,
            images_dir,
            output,
            batch_size=batch_size,
            concurrency=concurrency,
            num_cpus_per_actor=actor_cpus,
            num_cpus_per_decode_task=decode_cpus,
            progress=False,
        )
        summary = classify_images(config)
    name = (
        f"Ray Data job (decode {decode_cpus:g} CPU/task, {concurrency} replica(s) x {actor_cpus:g} CPU, "
        f"batch {batch_size})"
    )
    # The job measures its own steady state: from the first batch of predictions to the last part written.
    return Result(
        name, summary.files_seen, summary.wall_time_s, summary.time_to_first_result_s, summary.steady_images_per_second
    ), summary.to_dict()


def describe_machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ray

    return (
        f"{os.cpu_count()} CPU cores ({cpu}), no GPU used; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Ray {ray.__version__}"
    )


def repeat_tree(images_dir: str, passes: int, root: Path) -> str:
    """`passes` copies of the photo tree made of symbolic links (no photo is copied): a longer job."""
    source = Path(images_dir).resolve()
    for k in range(passes):
        for path in storage.list_files(str(source), storage.IMAGE_EXTENSIONS):
            link = root / f"pass{k}" / Path(path).relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return str(root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=128)
    # Tuned on the 2-core machine of BENCHMARKS.md (see --tune): two one-thread replicas, light decoders.
    parser.add_argument("--decode-cpus", type=float, default=0.25, help="CPUs per Ray decoding task")
    parser.add_argument(
        "--replica-cpus",
        type=float,
        default=0.875,
        help="CPUs per Ray model replica (floor = its torch threads, at least 1)",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="Ray model replicas")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count(), help="logical CPUs of the local Ray")
    parser.add_argument("--passes", type=int, default=3, help="the long job classifies the photos this many times over")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all contenders; each keeps its best")
    parser.add_argument("--tune", action="store_true", help="also try a small grid of Ray settings (one pass each)")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()

    import logging

    import ray

    logging.basicConfig(level=logging.WARNING)
    paths = storage.list_files(args.images, storage.IMAGE_EXTENSIONS)
    if not paths:
        print(f"No photos under {args.images}.", file=sys.stderr)
        return 1
    print(
        f"{len(paths)} photos under {args.images}; batch size {args.batch_size}; {args.image_size} px; "
        f"long job {args.passes} passes"
    )
    print(describe_machine())
    print(f"Load average at the start (1, 5, 15 min): {os.getloadavg()}")
    summaries = []
    with tempfile.TemporaryDirectory() as tmp:
        model_uri = build_artifact(Path(tmp), args.image_size)
        long_dir = repeat_tree(args.images, args.passes, Path(tmp) / "long")
        long_paths = storage.list_files(long_dir, storage.IMAGE_EXTENSIONS)
        # Warm the page cache and the imports once, so that no contender pays for them alone.
        for p in paths:
            storage.read_bytes(p)
        run_plain_loop(model_uri, paths[: args.batch_size], args.batch_size)
        # Ray starts its workers at niceness 15; the baselines run at 0. Same priority for all, so
        # that on a shared machine other work does not take the CPU from one contender only.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            address="local",
            num_cpus=args.ray_cpus,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        chosen = (args.batch_size, args.decode_cpus, args.replica_cpus, args.concurrency)

        def ray_job(images_dir: str, setting) -> Result:
            result, summary = run_ray_job(model_uri, images_dir, *setting)
            summaries.append(summary)
            return result

        # Rounds interleave the contenders, and each keeps its best round: on a shared machine, the
        # round least disturbed by other work.
        contenders = {
            "plain": lambda files, images_dir: run_plain_loop(model_uri, files, args.batch_size),
            "loader": lambda files, images_dir: run_dataloader(model_uri, files, args.batch_size),
            "ray": lambda files, images_dir: ray_job(images_dir, chosen),
        }
        short_rounds: dict[str, list[Result]] = {k: [] for k in contenders}
        long_rounds: dict[str, list[Result]] = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for key, run in contenders.items():
                short_rounds[key].append(run(paths, args.images))
                long_rounds[key].append(run(long_paths, long_dir))
        tuned: list[Result] = []
        if args.tune:
            # Inference takes most of the CPU time (mobilenet_v2 about 9 ms a photo on one thread,
            # decoding about 1.5 ms), so the grid tries two one-thread replicas beside light decoders.
            grid = [
                (args.batch_size, 1.0, 1.0, 1),
                (args.batch_size, 0.5, 0.75, 2),
                (args.batch_size, 0.25, 0.875, 2),
                (32, 0.25, 0.875, 2),
                (128, 0.25, 0.875, 2),
            ]
            tuned = [ray_job(args.images, setting) for setting in dict.fromkeys(grid) if setting != chosen]
        ray.shutdown()

    short = [max(short_rounds[k], key=lambda r: r.whole_ips) for k in contenders] + tuned
    long = {r.name: r for r in (max(long_rounds[k], key=lambda r: r.whole_ips) for k in contenders)}

    def marginal(r: Result) -> float:
        """Photos a second over the photos the long job adds: start-up and head starts cancel out."""
        short_run = next(x for x in short if x.name == r.name)
        return (r.num_images - short_run.num_images) / (r.whole_s - short_run.whole_s)

    best = {
        "whole": max(r.whole_ips for r in short[:2]),
        "steady": max(r.steady_ips for r in short[:2]),
        "long": max(long[r.name].whole_ips for r in short[:2]),
        "marginal": max(marginal(long[r.name]) for r in short[:2]),
    }
    print()
    print(f"One pass ({len(paths)} photos):")
    print()
    print(
        "| method | whole job, images/s | vs best baseline | after the first batch, images/s | vs best baseline "
        "| first batch after |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in short:
        print(
            f"| {r.name} | {r.whole_ips:.1f} | {r.whole_ips / best['whole']:.2f}x | {r.steady_ips:.1f} | "
            f"{r.steady_ips / best['steady']:.2f}x | {r.first_batch_s:.2f} s |"
        )
    print()
    print(f"Long job ({len(long_paths)} photos, {args.passes} passes) and the steady state it implies:")
    print()
    best["long_steady"] = max(long[r.name].steady_ips for r in short[:2])
    print(
        "| method | whole job, images/s | vs best baseline | after the first batch, images/s | vs best baseline "
        "| steady state (extra photos / extra time), images/s | vs best baseline |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in long.items():
        print(
            f"| {name} | {r.whole_ips:.1f} | {r.whole_ips / best['long']:.2f}x | {r.steady_ips:.1f} | "
            f"{r.steady_ips / best['long_steady']:.2f}x | "
            f"{marginal(r):.1f} | {marginal(r) / best['marginal']:.2f}x |"
        )
    print()
    print(f"Load average at the end (1, 5, 15 min): {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": describe_machine(),
                    "photos": len(paths),
                    "one_pass": [{**r.__dict__, "whole_ips": r.whole_ips} for r in short],
                    "long_job": [
                        {**r.__dict__, "whole_ips": r.whole_ips, "marginal_ips": marginal(r)} for r in long.values()
                    ],
                    "ray_summaries": summaries,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
