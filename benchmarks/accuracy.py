"""Accuracy of each model and recipe on real Animals-10 photos, over repeated stratified splits.

    .venv/bin/python benchmarks/accuracy.py [--data ../shared/data/animals10-sample/raw-img] \
        [--recipes study best] [--models custom_cnn efficientnet_lite0] [--seeds 1 2 3] [--epochs N] \
        [--image-size PX] [--test-size PX] [--fine-tune-lr LR] [--trivial-augment] [--mixup ALPHA] [--cutmix ALPHA] \
        [--widths 64 128 256 512] [--scattering 8] [--held-out ../shared/data/bench-images]

Each run trains with Ray Train through the same function as jobs/train.py (animals10.train.train_models)
on an 80/20 split drawn with one seed, and reports the validation accuracy, macro precision and macro
recall of the kept (best) epoch. 60 validation photos (6 per class) make a noisy number, so the splits repeat with
different seeds and the table shows mean and standard deviation. `--held-out DIR` also scores each saved
model on the photos of another labelled tree (classes named as in the data set, a subset of the sample's),
which no split trains or validates on.

Every run also records recall per class, and accuracy with the classes weighted as in the whole
Animals-10 set (`ANIMALS10_PHOTOS`: many dogs and spiders, few elephants) instead of evenly as in the
sample: what a model would score on photos drawn like Animals-10's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from animals10.config import recipe_config
from animals10.data import LabelledTree, read_labelled_tree, split_indices
from animals10.evaluate import predict_paths
from animals10.metrics import classification_metrics, confusion_matrix
from animals10.predictor import Predictor
from animals10.train import train_models

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-sample" / "raw-img"
METRICS = ("val_accuracy", "val_macro_precision", "val_macro_recall")
# Photos per class in the full Animals-10 set (Kaggle's raw-img, 26,179 photos).
ANIMALS10_PHOTOS = {"dog": 4863, "horse": 2623, "elephant": 1446, "butterfly": 2112, "chicken": 3098,
                    "cat": 1668, "cow": 1866, "sheep": 1820, "spider": 4821, "squirrel": 1862}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--recipes", nargs="+", default=["study", "best"])
    parser.add_argument("--models", nargs="+", default=["custom_cnn", "efficientnet_lite0"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, help="override the recipes' epochs (to fit a time budget)")
    parser.add_argument("--image-size", type=int, help="override the recipes' input size")
    parser.add_argument("--test-size", type=int, help="override the recipes' validation and inference input size")
    parser.add_argument("--fine-tune-lr", type=float, help="override the recipes' fine-tuning rate of transfer models")
    parser.add_argument(
        "--trivial-augment", action="store_true", default=None, help="add TrivialAugment to the recipes"
    )
    parser.add_argument("--mixup", type=float, help="add MixUp with this alpha to the recipes")
    parser.add_argument("--cutmix", type=float, help="add CutMix with this alpha to the recipes")
    parser.add_argument(
        "--grayscale", type=float, help="turn this share of training photos grey (0: off; default: the recipes')"
    )
    parser.add_argument("--copies", type=int, help="train on each photo of a batch in this many augmented copies")
    parser.add_argument(
        "--widths", nargs="+", type=int, help="the custom CNN's channels per block (default 32 64 128 256)"
    )
    parser.add_argument(
        "--scattering",
        type=int,
        help="the custom CNN's first block a fixed scattering transform with this many orientations (0: a learned block; default: the recipes': best 8)",
    )
    parser.add_argument("--cpus-per-worker", type=int, default=2)
    parser.add_argument(
        "--held-out", help="a labelled tree of other photos (a subset of the classes) to score every model on"
    )
    parser.add_argument("--results", default="accuracy_results.json", help="where the per-run figures go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tree = read_labelled_tree(args.data)  # the same listing train_models makes, for scoring the saved models
    held_out = read_labelled_tree(args.held_out) if args.held_out else None
    runs = []
    for recipe in args.recipes:
        for model in args.models:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as output:
                    config = recipe_config(
                        recipe, data=args.data, output=output, models=(model,), seed=seed, epochs=args.epochs,
                        cpus_per_worker=args.cpus_per_worker, image_size=args.image_size, test_size=args.test_size,
                        fine_tune_lr=args.fine_tune_lr, copies=args.copies,
                    ).with_augmentation(trivial_augment=args.trivial_augment, mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, grayscale=args.grayscale)  # fmt: skip
                    config = config.with_model_settings(
                        "custom_cnn", model_kwargs=cnn_kwargs(config, args.widths, args.scattering)
                    )
                    start = time.perf_counter()
                    [trained] = train_models(config)
                    seconds = time.perf_counter() - start
                    resolved = config.for_model(model)
                    _, val_idx = split_indices(tree, config.val_fraction, seed)
                    validation = saved_model_metrics(trained.artifact_uri, tree, val_idx)
                    tta_accuracy = saved_model_metrics(trained.artifact_uri, tree, val_idx, tta=True)["accuracy"]
                    # The same model at its training size: what a larger test size changed.
                    train_size = resolved.image_size if resolved.inference_size != resolved.image_size else None
                    at_train_size = (
                        saved_model_metrics(trained.artifact_uri, tree, val_idx, image_size=train_size)["accuracy"]
                        if train_size else trained.metrics["val_accuracy"]
                    )  # fmt: skip
                    held_out_figures = {}
                    if held_out:
                        scores = saved_model_metrics(trained.artifact_uri, held_out)
                        recall = recall_by_class(scores)
                        held_out_figures = {"held_out_accuracy": scores["accuracy"], "held_out_recall": recall,
                                            "held_out_accuracy_animals10_mix": animals10_mix_accuracy(recall)}  # fmt: skip
                        if train_size:
                            at_size = saved_model_metrics(trained.artifact_uri, held_out, image_size=train_size)
                            held_out_figures["held_out_accuracy_at_train_size"] = at_size["accuracy"]
                val_recall = recall_by_class(validation)
                run = {"recipe": recipe, "model": model, "seed": seed, "epochs_run": len(trained.history), "seconds": seconds,
                       "image_size": resolved.image_size, "test_size": resolved.inference_size, **{m: trained.metrics[m] for m in METRICS},
                       "val_accuracy_tta": tta_accuracy, "val_accuracy_at_train_size": at_train_size, "val_recall": val_recall,
                       "val_accuracy_animals10_mix": animals10_mix_accuracy(val_recall), **held_out_figures}  # fmt: skip
                runs.append(run)
                print(json.dumps(run), flush=True)
                Path(args.results).write_text(json.dumps(runs, indent=2))

    print(f"\n{args.data}: {len(args.seeds)} stratified 80/20 splits per row (seeds {args.seeds})")
    accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {accelerator}"
    )
    print(
        "| recipe | model | input | accuracy | macro precision | macro recall | accuracy, flip TTA | accuracy at the training size | epochs | minutes/run |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for recipe in args.recipes:
        for model in args.models:
            rows = [r for r in runs if r["recipe"] == recipe and r["model"] == model]
            cells = [
                f"{np.mean([r[m] for r in rows]):.1%} ± {np.std([r[m] for r in rows]):.1%}"
                for m in (*METRICS, "val_accuracy_tta", "val_accuracy_at_train_size")
            ]
            epochs = np.mean([r["epochs_run"] for r in rows])
            minutes = np.mean([r["seconds"] for r in rows]) / 60
            sizes = f"{rows[0]['image_size']} px" + (
                f", {rows[0]['test_size']} at test" if rows[0]["test_size"] != rows[0]["image_size"] else ""
            )
            print(f"| {recipe} | {model} | {sizes} | {' | '.join(cells)} | {epochs:.0f} | {minutes:.1f} |")
    print("\nweighted by class as in the whole Animals-10 set: accuracy per split, then mean ± sd")
    for key, photos in (
        ("val_accuracy_animals10_mix", "validation photos"),
        ("held_out_accuracy_animals10_mix", "other photos"),
    ):
        for recipe in args.recipes:
            for model in args.models:
                figures = [r[key] for r in runs if r["recipe"] == recipe and r["model"] == model and key in r]
                if figures:
                    print(
                        f"| {photos} | {recipe} | {model} | {' | '.join(f'{a:.1%}' for a in figures)} | {np.mean(figures):.1%} ± {np.std(figures):.1%} |"
                    )
    if held_out is not None:
        print(f"\non {len(held_out.paths)} other photos ({args.held_out}): accuracy per split (seeds {args.seeds})")
        for recipe in args.recipes:
            for model in args.models:
                rows = [r for r in runs if r["recipe"] == recipe and r["model"] == model]
                for key, label in (
                    ("held_out_accuracy", model),
                    ("held_out_accuracy_at_train_size", f"{model}, at {rows[0]['image_size']} px"),
                ):
                    if all(key in r for r in rows):
                        figures = [r[key] for r in rows]
                        print(
                            f"| {recipe} | {label} | {' | '.join(f'{a:.1%}' for a in figures)} | {np.mean(figures):.1%} ± {np.std(figures):.1%} |"
                        )


def cnn_kwargs(config, widths: list[int] | None, scattering: int | None) -> dict | None:
    """The custom CNN's constructor arguments: the recipe's, with the widths and scattering given on top
    (None: the recipe's as they are)."""
    if widths is None and scattering is None:
        return None
    kwargs = dict(config.for_model("custom_cnn").model_kwargs)
    if widths:
        kwargs["widths"] = tuple(widths)
    if scattering is not None:
        kwargs["scattering"] = scattering
    return {k: v for k, v in kwargs.items() if k != "scattering" or v}


def saved_model_metrics(
    artifact_uri: str,
    tree: LabelledTree,
    indices: list[int] | None = None,
    tta: bool = False,
    image_size: int | None = None,
) -> dict:
    """Classification metrics of the saved model on the photos of `tree` at `indices` (all when None); the
    tree's classes, matched by name, may be a subset of the model's. With `tta` each photo is averaged
    with its mirror, with `image_size` fed at that size instead of the artifact's."""
    indices = range(len(tree.paths)) if indices is None else indices
    predictor = saved_predictor(artifact_uri, tta=tta, image_size=image_size)
    probabilities, scored, _ = predict_paths(predictor, [tree.paths[i] for i in indices])
    truth = [predictor.class_names.index(tree.class_names[tree.labels[indices[j]]]) for j in scored]
    return classification_metrics(
        confusion_matrix(truth, probabilities.argmax(1), len(predictor.class_names)), predictor.class_names
    )


def recall_by_class(metrics: dict) -> dict[str, float]:
    """Recall of each class the scored photos hold, by name."""
    return {name: values["recall"] for name, values in metrics["per_class"].items() if values["support"]}


def animals10_mix_accuracy(recall: dict[str, float]) -> float:
    """Accuracy on photos whose classes (those of `recall`) come in Animals-10's proportions."""
    weights = {name: ANIMALS10_PHOTOS[name] for name in recall}
    return sum(recall[name] * weight for name, weight in weights.items()) / sum(weights.values())


def saved_predictor(artifact_uri: str, tta: bool = False, image_size: int | None = None) -> Predictor:
    """A predictor of the saved model, fed at `image_size` instead of the artifact's size when given."""
    predictor = Predictor(artifact_uri, tta=tta)
    if image_size is not None:
        predictor.preprocessing = replace(predictor.preprocessing, image_size=image_size)
    return predictor


if __name__ == "__main__":
    main()
