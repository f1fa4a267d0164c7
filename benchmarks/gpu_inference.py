"""Images per second per GPU of the Ray Data batch job next to plain PyTorch on the same GPU, in one run.

    python benchmarks/gpu_inference.py [--images ../shared/data/animals10-sample/raw-img] [--passes 60]

The same photos (`--passes` copies of the tree, as symbolic links), the same model (mobilenet_v2,
random weights, 128 px), the same preprocessing and batch size, on one GPU:
  (a) model alone: the Predictor on one decoded batch, over and over (the GPU's ceiling, host copy included);
  (b) baseline: a torch DataLoader whose worker processes (all CPUs but one) read and decode, the
      main process classifies on the GPU: what one would write by hand;
  (c) the Ray Data job (animals10.batch.job.classify_images) decoding on the CPUs, writing Parquet;
  (d) the same job with `--decode gpu`: JPEGs decoded by nvJPEG on the replica's GPU, a batch a call;
  (e) the same job with `--decode mixed`: half of the JPEGs on the GPU, half on the CPUs.
Ratios are against (b). The labels of (c)-(e) are compared with (b)'s photo by photo: the GPU's
decoder and resize differ from Pillow's in rounding only, which may flip a label of this untrained
model now and then, never many. Runs on a CPU too (then (d) decodes on the CPU), to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batch_inference import PhotoDataset, build_artifact, repeat_tree  # noqa: E402

from animals10 import storage  # noqa: E402
from animals10.device import get_device  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-sample" / "raw-img"


def describe_machine(device: torch.device) -> str:
    import ray

    accelerator = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return (
        f"{accelerator}, {os.cpu_count()} CPU cores; Python {platform.python_version()}, torch {torch.__version__}, "
        f"Ray {ray.__version__}"
    )


def model_alone(model_uri: str, paths: list[str], batch_size: int, seconds: float = 5.0) -> float:
    """Images/s of the Predictor alone on one real decoded batch, fed again and again."""
    from animals10.predictor import Predictor

    predictor = Predictor(model_uri)
    dataset = PhotoDataset(paths[:batch_size], predictor.image_size)
    batch = np.stack([dataset[i][0] for i in range(len(dataset))])
    for _ in range(3):
        predictor.predict_probabilities(batch)  # warm-up: kernels chosen, memory pools grown
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict_probabilities(batch)  # returns on the host: each call is synchronised
        done += len(batch)
    return done / (time.perf_counter() - started)


def dataloader_baseline(model_uri: str, paths: list[str], batch_size: int, workers: int) -> tuple[dict, dict[str, str]]:
    """Plain PyTorch: DataLoader workers decode, the main process classifies. Returns figures, labels by path."""
    from animals10.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor(model_uri)
    loader = torch.utils.data.DataLoader(
        PhotoDataset(paths, predictor.image_size),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=predictor.device.type == "cuda",
    )
    labels, first, done = {}, None, 0
    for images, ok in loader:
        kept = [p for p, good in zip(paths[done : done + len(ok)], ok.tolist()) if good]
        for path, row in zip(kept, predictor.describe(predictor.predict(images[ok]))):
            labels[path] = row["label"]
        done += len(ok)
        if first is None:
            first = (time.perf_counter() - started, done)
    whole = time.perf_counter() - started
    figures = {
        "name": f"PyTorch DataLoader, {workers} workers, GPU model"
        if predictor.device.type == "cuda"
        else f"PyTorch DataLoader, {workers} workers",
        "images": len(paths),
        "whole_s": whole,
        "whole_ips": len(paths) / whole,
        "steady_ips": (len(paths) - first[1]) / (whole - first[0]),
    }
    return figures, labels


DECODING = {
    "cpu": "decoding on the CPUs",
    "gpu": "nvJPEG decoding on the GPU",
    "mixed": "half the JPEGs decoded on the GPU",
}


def ray_job(model_uri: str, images_dir: str, output: str, batch_size: int, decode: str) -> tuple[dict, dict[str, str]]:
    import pyarrow.dataset as pads

    from animals10.batch.job import BatchConfig, classify_images

    config = BatchConfig(model_uri, images_dir, output, batch_size=batch_size, decode=decode, progress=False)
    summary = classify_images(config)
    table = pads.dataset(output, format="parquet").to_table(columns=["path", "label"])
    labels = dict(zip(table.column("path").to_pylist(), table.column("label").to_pylist()))
    figures = {
        "name": "Ray Data job, " + DECODING[decode],
        "images": summary.files_seen,
        "whole_s": summary.wall_time_s,
        "whole_ips": summary.images_per_second,
        "steady_ips": summary.steady_images_per_second,
        "failed": summary.failed,
    }
    return figures, labels


def agreement(labels: dict[str, str], reference: dict[str, str]) -> float:
    """Share of the reference's photos given the same label (paths compared as resolved files)."""
    resolved = {os.path.realpath(p): label for p, label in labels.items()}
    same = sum(resolved.get(os.path.realpath(p)) == label for p, label in reference.items())
    return same / max(len(reference), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--passes", type=int, default=60, help="copies of the photo tree in the job")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument(
        "--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="DataLoader worker processes"
    )
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()

    import logging

    import ray

    logging.basicConfig(level=logging.WARNING)
    device = get_device()
    with tempfile.TemporaryDirectory() as tmp:
        model_uri = build_artifact(Path(tmp), args.image_size)
        long_dir = repeat_tree(args.images, args.passes, Path(tmp) / "long")
        paths = storage.list_files(long_dir, storage.IMAGE_EXTENSIONS)
        print(
            f"{len(paths)} photos ({args.passes} passes over {args.images}); batch {args.batch_size}; "
            f"{args.image_size} px; {device}"
        )
        for path in paths[: len(paths) // args.passes]:
            storage.read_bytes(path)  # page cache warm for every contender
        ceiling = model_alone(model_uri, paths, args.batch_size)
        print(f"model alone: {ceiling:.0f} images/s", flush=True)
        baseline, baseline_labels = dataloader_baseline(model_uri, paths, args.batch_size, args.workers)
        print(json.dumps(baseline), flush=True)
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        runs = [baseline]
        for decode in DECODING:
            figures, labels = ray_job(model_uri, long_dir, str(Path(tmp) / f"out_{decode}"), args.batch_size, decode)
            figures["same_label_as_baseline"] = agreement(labels, baseline_labels)
            runs.append(figures)
            print(json.dumps(figures), flush=True)
        ray.shutdown()

    machine = describe_machine(device)
    print(f"\n{machine}; {len(paths)} photos, mobilenet_v2 at {args.image_size} px, batch {args.batch_size}")
    print(f"Model alone (decoded batch fed again and again): {ceiling:.0f} images/s\n")
    print(
        "| method | whole job, images/s | vs baseline | steady state, images/s | vs baseline | same label as baseline |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        steady = r["steady_ips"] or 0.0
        same = f"{r['same_label_as_baseline']:.2%}" if "same_label_as_baseline" in r else "—"
        print(
            f"| {r['name']} | {r['whole_ips']:.0f} | {r['whole_ips'] / baseline['whole_ips']:.2f}x | {steady:.0f} | "
            f"{steady / baseline['steady_ips']:.2f}x | {same} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine, "photos": len(paths), "model_alone_ips": ceiling, "runs": runs}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
