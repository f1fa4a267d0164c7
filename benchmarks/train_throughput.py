"""Training throughput of the package's Ray Train runs next to a plain single-process PyTorch loop: same
data, model, batch size and epochs, in one script.

    .venv/bin/python benchmarks/train_throughput.py [--data ../shared/data/animals10-sample/raw-img] \
        [--model custom_cnn] [--image-size 128] [--batch-size 32] [--epochs 4]

Measured: `animals10.training.driver.train_models` (what `animals10 train` runs) with 1 worker x 2 CPUs
and 2 workers x 1 CPU (DDP), its photos decoded in Ray Data tasks beside the workers each epoch or once
before the first (`cache_decoded`). Baseline: a plain loop that decodes each photo with the same
function (animals10.imaging.load_array) in the training process, then runs the package's own training
step (animals10.training.engine.train_one_epoch). Images per second are those of the epochs after the
first (steady state), and of all epochs; seconds are the whole run (for Ray Train the whole
`train_models` call, decoding once included), with Ray started before the first.
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from animals10.card import Preprocessing
from animals10.cluster import connect_ray
from animals10.data import read_labelled_tree, split_indices
from animals10.imaging import load_array
from animals10.models import create_model
from animals10.training.config import TrainConfig
from animals10.training.driver import train_models
from animals10.training.engine import train_one_epoch
from animals10.transforms import Augmentation

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-sample" / "raw-img"


def plain_loop(data: str, model_name: str, image_size: int, batch_size: int, epochs: int, threads: int) -> list[float]:
    """Images per second of each epoch of a single-process loop that decodes as it goes."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tree = read_labelled_tree(data)
    train_idx, _ = split_indices(tree)
    model = create_model(model_name, len(tree.class_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    preprocessing, augmentation = Preprocessing(image_size), Augmentation()
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(epochs):
        order = rng.permutation(train_idx)
        start = time.perf_counter()

        def batches(order=order):
            for offset in range(0, len(order), batch_size):
                chosen = order[offset : offset + batch_size]
                images = np.stack([load_array(Path(tree.paths[i]).read_bytes(), preprocessing) for i in chosen])
                yield {
                    "image": images,
                    "label": np.array([tree.labels[i] for i in chosen]),
                    "path": np.array([tree.paths[i] for i in chosen], dtype=object),
                    "error": np.array([""] * len(chosen), dtype=object),
                }

        totals = train_one_epoch(model, batches(), optimizer, preprocessing, augmentation, torch.device("cpu"))
        rates.append(totals.num_images / (time.perf_counter() - start))
    return rates


def ray_train(
    data: str,
    model_name: str,
    image_size: int,
    batch_size: int,
    epochs: int,
    num_workers: int,
    cpus_per_worker: int,
    cache_decoded: bool,
) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as output:
        config = TrainConfig(
            data=data,
            output=output,
            models=(model_name,),
            epochs=epochs,
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            cpus_per_worker=cpus_per_worker,
            early_stopping_patience=epochs,
            cache_decoded=cache_decoded,
        )
        start = time.perf_counter()
        [trained] = train_models(config)
    return [h["images_per_second"] for h in trained.history], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default="custom_cnn")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    threads = 2
    # Before any timed run, as a cluster is up before users train: 2 CPUs of workers and 1 to decode.
    connect_ray(min_cpus=3)
    start = time.perf_counter()
    plain = plain_loop(args.data, args.model, args.image_size, args.batch_size, args.epochs, threads)
    results = {f"plain PyTorch loop, {threads} threads": (plain, time.perf_counter() - start)}
    shape = (args.data, args.model, args.image_size, args.batch_size, args.epochs)
    for workers, cpus in ((1, 2), (2, 1)):
        for cache in (False, True):
            name = f"Ray Train, {workers} worker(s) x {cpus} CPU, " + (
                "decoded once" if cache else "decoded each epoch"
            )
            results[name] = ray_train(*shape, workers, cpus, cache)
    baseline = np.mean(plain[1:])
    print(f"\n{args.model} at {args.image_size} px, batch {args.batch_size}, {args.epochs} epochs on {args.data}")
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {torch.get_num_threads()} torch threads available, torch {torch.__version__}")
    print("| run | steady images/s | all epochs | vs plain loop | whole run, s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (rates, seconds) in results.items():
        steady = float(np.mean(rates[1:]))
        print(f"| {name} | {steady:.1f} | {float(np.mean(rates)):.1f} | {steady / baseline:.2f}x | {seconds:.1f} |")


if __name__ == "__main__":
    main()
