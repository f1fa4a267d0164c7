"""Accuracy of each model and recipe on real Animals-10 photos over repeated stratified splits, next to a
linear probe of the same splits.

    .venv/bin/python benchmarks/accuracy.py [--data ../shared/data/animals10-sample/raw-img] \
        [--recipes study best] [--models custom_cnn efficientnet_lite0] [--seeds 1 2 3] [--epochs N] \
        [--image-size PX] [--test-size PX] [--fine-tune-lr LR] [--trivial-augment] [--mixup ALPHA] \
        [--cutmix ALPHA] [--grayscale SHARE] [--copies N] [--widths 64 128 256 512] [--scattering 8] \
        [--cpus-per-worker N] [--held-out ../shared/data/bench-images] [--results FILE] \
        [--linear-probe [--probe-sizes 128 224] [--imagenet-prior] [--list-errors]]

Measured: each run trains with Ray Train through the function behind `animals10 train`
(animals10.training.driver.train_models) on an 80/20 split drawn with one seed, and reports the
validation accuracy, macro precision and macro recall of the epoch the artifact keeps; the saved
artifact is then scored with the package's Predictor (animals10.evaluation.scoring.predict_paths),
also with flip TTA and at the training size. 60 validation photos (6 per class) make a noisy number,
so the splits repeat with different seeds and the tables show mean and standard deviation.
`--held-out DIR` also scores each saved model on the photos of another labelled tree (classes named as
in the data set, a subset of the sample's), which no split trains or validates on. Every run also
records recall per class, and accuracy with the classes weighted as in the whole Animals-10 set
(`ANIMALS10_PHOTOS`: many dogs and spiders, few elephants) instead of evenly as in the sample.

Baseline (`--linear-probe`, transfer models among `--models`): the bar that fine-tuning must clear, a
linear classifier on the frozen pretrained backbone. Each photo's pooled features are computed once
(the package's decoding, preprocessing and backbone; no augmentation) at each of `--probe-sizes`;
multinomial logistic regression is fitted full-batch with L-BFGS on the same splits, for a few L2
strengths, and scored on the same validation and held-out photos. The best strength is chosen on the
validation photos: flattering to the probe. `--imagenet-prior` starts each probe from the head that
the `best` recipe starts fine-tuning from (ImageNet's classifier rows of each class) and penalises it
towards that head instead of towards zero. `--list-errors` lists the validation photos the strongest
probe gets wrong on any split. `--recipes` with no name runs the probe alone (seconds, not minutes).
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
import torch.nn.functional as F

from animals10.card import Preprocessing
from animals10.data import LabelledTree, load_photo, read_labelled_tree, split_indices
from animals10.evaluation.scoring import predict_paths
from animals10.metrics import classification_metrics, confusion_matrix
from animals10.models import create_model, get_model_spec
from animals10.predictor import Predictor
from animals10.training.config import TrainConfig, recipe_config
from animals10.training.driver import train_models
from animals10.transforms import to_model_input

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-sample" / "raw-img"
METRICS = ("val_accuracy", "val_macro_precision", "val_macro_recall")
# Photos per class in the full Animals-10 set (Kaggle's raw-img, 26,179 photos).
ANIMALS10_PHOTOS = {
    "dog": 4863,
    "horse": 2623,
    "elephant": 1446,
    "butterfly": 2112,
    "chicken": 3098,
    "cat": 1668,
    "cow": 1866,
    "sheep": 1820,
    "spider": 4821,
    "squirrel": 1862,
}
L2_STRENGTHS = (1e-4, 1e-3, 1e-2)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--recipes", nargs="*", default=["study", "best"], help="none: the linear probe alone")
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
        help="the custom CNN's first block a fixed scattering transform with this many orientations "
        "(0: a learned block; default: the recipes': best 8)",
    )
    parser.add_argument("--cpus-per-worker", type=int, default=2)
    parser.add_argument(
        "--weights", help="ImageNet weights file of the transfer model (e.g. a timm model's safetensors)"
    )
    parser.add_argument(
        "--held-out", help="a labelled tree of other photos (a subset of the classes) to score every model on"
    )
    parser.add_argument("--results", default="accuracy_results.json", help="where the per-run figures go")
    probe = parser.add_argument_group("the linear probe (baseline)")
    probe.add_argument("--linear-probe", action="store_true", help="also fit a linear probe of each transfer model")
    probe.add_argument("--probe-sizes", nargs="+", type=int, default=[128, 224], help="the probe's input sizes")
    probe.add_argument(
        "--imagenet-prior",
        action="store_true",
        help="start each probe from the ImageNet classifier's rows of each class, penalised towards them",
    )
    probe.add_argument("--list-errors", action="store_true", help="list the photos the strongest probe gets wrong")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)

    tree = read_labelled_tree(args.data)  # the same listing train_models makes, for scoring the saved models
    held_out = read_labelled_tree(args.held_out) if args.held_out else None
    print(f"{args.data}: {len(tree.paths)} photos; stratified 80/20 splits with seeds {args.seeds}")
    runs, probe_lines = [], []
    if args.linear_probe:
        for model in args.models:
            if get_model_spec(model).transfer:
                probe_rows, lines = linear_probe(args, tree, held_out, model)
                runs.extend(probe_rows)
                probe_lines.extend(lines)
                Path(args.results).write_text(json.dumps(runs, indent=2))
    for recipe in args.recipes:
        for model in args.models:
            for seed in args.seeds:
                run = train_and_score(args, tree, held_out, recipe, model, seed)
                runs.append(run)
                print(json.dumps(run), flush=True)
                Path(args.results).write_text(json.dumps(runs, indent=2))
    print_summary(args, runs, held_out)
    if probe_lines:
        print("\n".join(probe_lines))


def train_and_score(
    args: argparse.Namespace, tree: LabelledTree, held_out: LabelledTree | None, recipe: str, model: str, seed: int
) -> dict:
    """One package training run on the split of `seed`, its saved artifact scored every way the tables show."""
    with tempfile.TemporaryDirectory() as output:
        config = recipe_config(
            recipe,
            data=args.data,
            output=output,
            models=(model,),
            seed=seed,
            epochs=args.epochs,
            cpus_per_worker=args.cpus_per_worker,
            image_size=args.image_size,
            test_size=args.test_size,
            fine_tune_lr=args.fine_tune_lr,
            copies=args.copies,
            weights=args.weights,
        ).with_augmentation(
            trivial_augment=args.trivial_augment,
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            grayscale=args.grayscale,
        )
        config = config.with_model_settings("custom_cnn", model_kwargs=cnn_kwargs(config, args.widths, args.scattering))
        start = time.perf_counter()
        [trained] = train_models(config)
        seconds = time.perf_counter() - start
        resolved = config.for_model(model)
        artifact = trained.artifact_uri
        _, val_idx = split_indices(tree, config.val_fraction, seed)
        validation = saved_model_metrics(artifact, tree, val_idx)
        tta_accuracy = saved_model_metrics(artifact, tree, val_idx, tta=True)["accuracy"]
        # The same model at its training size: what a larger test size changed.
        train_size = resolved.image_size if resolved.inference_size != resolved.image_size else None
        at_train_size = trained.metrics["val_accuracy"]
        if train_size:
            at_train_size = saved_model_metrics(artifact, tree, val_idx, image_size=train_size)["accuracy"]
        held_out_figures = {}
        if held_out:
            scores = saved_model_metrics(artifact, held_out)
            recall = recall_by_class(scores)
            held_out_figures = {
                "held_out_accuracy": scores["accuracy"],
                "held_out_recall": recall,
                "held_out_accuracy_animals10_mix": animals10_mix_accuracy(recall),
            }
            if train_size:
                at_size = saved_model_metrics(artifact, held_out, image_size=train_size)
                held_out_figures["held_out_accuracy_at_train_size"] = at_size["accuracy"]
    val_recall = recall_by_class(validation)
    return {
        "recipe": recipe,
        "model": model,
        "seed": seed,
        "epochs_run": len(trained.history),
        "seconds": seconds,
        "image_size": resolved.image_size,
        "test_size": resolved.inference_size,
        **{m: trained.metrics[m] for m in METRICS},
        "val_accuracy_tta": tta_accuracy,
        "val_accuracy_at_train_size": at_train_size,
        "val_recall": val_recall,
        "val_accuracy_animals10_mix": animals10_mix_accuracy(val_recall),
        **held_out_figures,
    }


def mean_sd(figures: list[float]) -> str:
    return f"{np.mean(figures):.1%} ± {np.std(figures):.1%}"


def print_summary(args: argparse.Namespace, runs: list[dict], held_out: LabelledTree | None) -> None:
    print(f"\n{args.data}: {len(args.seeds)} stratified 80/20 splits per row (seeds {args.seeds})")
    accelerator = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {accelerator}")
    if not args.recipes:
        return
    print(
        "| recipe | model | input | accuracy | macro precision | macro recall | accuracy, flip TTA "
        "| accuracy at the training size | epochs | minutes/run |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for recipe in args.recipes:
        for model in args.models:
            rows = [r for r in runs if r["recipe"] == recipe and r["model"] == model]
            cells = [
                mean_sd([r[m] for r in rows]) for m in (*METRICS, "val_accuracy_tta", "val_accuracy_at_train_size")
            ]
            epochs = np.mean([r["epochs_run"] for r in rows])
            minutes = np.mean([r["seconds"] for r in rows]) / 60
            sizes = f"{rows[0]['image_size']} px"
            if rows[0]["test_size"] != rows[0]["image_size"]:
                sizes += f", {rows[0]['test_size']} at test"
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
                    cells = " | ".join(f"{a:.1%}" for a in figures)
                    print(f"| {photos} | {recipe} | {model} | {cells} | {mean_sd(figures)} |")
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
                        cells = " | ".join(f"{a:.1%}" for a in figures)
                        print(f"| {recipe} | {label} | {cells} | {mean_sd(figures)} |")


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


# --- the baseline: a linear probe of the frozen backbone -------------------------------------------


@torch.no_grad()
def probe_features(model_name: str, paths: list[str], image_size: int, batch_size: int = 32) -> torch.Tensor:
    """(N, F) pooled features of the pretrained backbone, in eval mode."""
    model = create_model(model_name, 10, pretrained=True).eval()
    spec = get_model_spec(model_name)
    preprocessing = Preprocessing(image_size=image_size, mean=spec.mean, std=spec.std)
    out = []
    for start in range(0, len(paths), batch_size):
        photos = np.stack([load_photo(p, preprocessing)[0] for p in paths[start : start + batch_size]])
        out.append(model.backbone(to_model_input(torch.from_numpy(photos), preprocessing)))
    return torch.cat(out)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, prior: torch.nn.Linear | None = None
) -> torch.nn.Linear:
    """Multinomial logistic regression with an L2 penalty on the weights: towards zero, or, given a
    `prior` classifier, starting from it and penalised towards it."""
    linear = torch.nn.Linear(x.shape[1], num_classes)
    if prior is not None:
        linear.load_state_dict(prior.state_dict())
    centre = prior.weight.detach().clone() if prior is not None else torch.zeros_like(linear.weight)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 * (linear.weight - centre).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear


@torch.no_grad()
def probe_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def for_standardised_features(head: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> torch.nn.Linear:
    """`head` (on raw features) as a classifier of features standardised with `mean` and `std`: the same logits."""
    linear = torch.nn.Linear(head.in_features, head.out_features)
    linear.weight.copy_(head.weight * std)
    linear.bias.copy_(head.bias + head.weight @ mean)
    return linear


def imagenet_prior(model_name: str, class_names: list[str], mean: torch.Tensor, std: torch.Tensor) -> torch.nn.Linear:
    """The head that `imagenet_head` starts fine-tuning from (built from ImageNet's classifier), for
    features standardised with `mean` and `std`."""
    model = create_model(model_name, len(class_names), pretrained=True, head_classes=class_names)
    return for_standardised_features(model.head[-1], mean, std)


def linear_probe(
    args: argparse.Namespace, tree: LabelledTree, held_out: LabelledTree | None, model_name: str
) -> tuple[list[dict], list[str]]:
    """The probe of `model_name` at each size and L2 strength on every split: (one row per split, the
    table's lines)."""
    torch.manual_seed(0)
    labels = torch.tensor(tree.labels)
    if held_out is not None:
        held_labels = torch.tensor([tree.class_names.index(held_out.class_names[label]) for label in held_out.labels])
    header = ["| input | L2 | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± sd |"]
    header.append("| --- | ---: | " + " | ".join("---:" for _ in args.seeds) + " | --- |")
    prior_note = ", started from and penalised towards ImageNet's head" if args.imagenet_prior else ""
    lines = [f"\nlinear probe of {model_name}{prior_note}: validation accuracy per split", *header]
    held_out_lines, rows = [], []
    strongest = (0.0, {})  # mean accuracy, {photo index: the classes chosen for it where wrong}
    for size in args.probe_sizes:
        x = probe_features(model_name, tree.paths, size)
        mean, std = x.mean(0), x.std(0) + 1e-6
        x = (x - mean) / std
        prior = imagenet_prior(model_name, tree.class_names, mean, std) if args.imagenet_prior else None
        if held_out is not None:
            held_x = (probe_features(model_name, held_out.paths, size) - mean) / std
        if prior is not None:  # the starting head alone, trained on nothing
            untrained = [f"{probe_accuracy(prior, x, labels):.1%} of all {len(labels)} photos"]
            if held_out is not None:
                untrained.append(f"{probe_accuracy(prior, held_x, held_labels):.1%} of the {len(held_labels)} others")
            lines.append(f"| {size} px | the ImageNet head, untrained: {', '.join(untrained)} |")
        for l2 in L2_STRENGTHS:
            accuracies, errors, held_out_accuracies = [], {}, []
            for seed in args.seeds:
                train_idx, val_idx = split_indices(tree, TrainConfig.val_fraction, seed)
                linear = fit_logistic(x[train_idx], labels[train_idx], len(tree.class_names), l2, prior)
                with torch.no_grad():
                    predicted = linear(x[val_idx]).argmax(1)
                accuracies.append(float((predicted == labels[val_idx]).float().mean()))
                for index, choice in zip(val_idx, predicted.tolist()):
                    if choice != tree.labels[index]:
                        errors.setdefault(int(index), []).append(tree.class_names[choice])
                row = {"recipe": "linear probe", "model": model_name, "seed": seed, "image_size": size, "l2": l2}
                row.update(imagenet_prior=args.imagenet_prior, val_accuracy=accuracies[-1])
                if held_out is not None:
                    held_out_accuracies.append(probe_accuracy(linear, held_x, held_labels))
                    row["held_out_accuracy"] = held_out_accuracies[-1]
                rows.append(row)
            lines.append(
                f"| {size} px | {l2:g} | {' | '.join(f'{a:.1%}' for a in accuracies)} | {mean_sd(accuracies)} |"
            )
            print(f"{model_name} probe: {lines[-1]}", flush=True)
            if held_out is not None:
                cells = " | ".join(f"{a:.1%}" for a in held_out_accuracies)
                held_out_lines.append(f"| {size} px | {l2:g} | {cells} | {mean_sd(held_out_accuracies)} |")
            strongest = max(strongest, (float(np.mean(accuracies)), errors), key=lambda pair: pair[0])
    if held_out is not None:
        classes = ", ".join(held_out.class_names)
        lines.append(f"\nthe same probes on {len(held_out.paths)} other photos ({args.held_out}: {classes})")
        lines.extend([*header, *held_out_lines])
    if args.list_errors:
        lines.append(
            "\nphotos the strongest probe gets wrong (label: chosen on each split where it is validated and wrong)"
        )
        for index, chosen in sorted(strongest[1].items(), key=lambda item: tree.paths[item[0]]):
            name = os.path.relpath(tree.paths[index], args.data)
            lines.append(f"  {name} ({tree.class_names[tree.labels[index]]}): {', '.join(chosen)}")
    return rows, lines


if __name__ == "__main__":
    main()
