"""The baseline that fine-tuning must beat: a linear classifier on frozen EfficientNet-Lite0 features.

    .venv/bin/python benchmarks/linear_probe.py [--data ../shared/data/animals10-sample/raw-img] \
        [--seeds 1 2 3] [--image-sizes 128 224] [--list-errors] [--held-out ../shared/data/bench-images] [--imagenet-prior]

Same photos, the same stratified 80/20 splits (`split_indices`, one per seed) and the same decoding as
benchmarks/accuracy.py. Each photo's pooled ImageNet features are computed once (no augmentation);
multinomial logistic regression is fitted full-batch with L-BFGS, for a few L2 strengths; the table
shows each strength's validation accuracy (mean ± standard deviation over the splits), so the best row
is a baseline chosen on the validation photos: flattering to the probe, not to fine-tuning. `--list-errors`
also lists the validation photos that the strongest probe gets wrong on any split, with the class it chose:
the photos to look at when asking how far above the probe fine-tuning can go. `--held-out DIR` also scores
each split's probe on the photos of another labelled tree (classes named as in the data set, a subset of
the sample's), which no split trains or validates on: more photos, so a less noisy figure. `--imagenet-prior`
starts each probe from the head that the `best` recipe starts fine-tuning from (ImageNet's classifier rows
of each class) and penalises it towards that head instead of towards zero: a stronger baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from animals10.card import Preprocessing
from animals10.data import load_photo, read_labelled_tree, split_indices
from animals10.models import create_model, get_model_spec
from animals10.transforms import to_model_input

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-sample" / "raw-img"
L2_STRENGTHS = (1e-4, 1e-3, 1e-2)


@torch.no_grad()
def features(paths: list[str], image_size: int, batch_size: int = 32) -> torch.Tensor:
    """(N, 1280) pooled features of the pretrained backbone, in eval mode."""
    model = create_model("efficientnet_lite0", 10, pretrained=True).eval()
    spec = get_model_spec("efficientnet_lite0")
    preprocessing = Preprocessing(image_size=image_size, mean=spec.mean, std=spec.std)
    out = []
    for start in range(0, len(paths), batch_size):
        photos = np.stack([load_photo(p, image_size)[0] for p in paths[start : start + batch_size]])
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
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def for_standardised_features(head: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> torch.nn.Linear:
    """`head` (on raw features) as a classifier of features standardised with `mean` and `std`: the same logits."""
    linear = torch.nn.Linear(head.in_features, head.out_features)
    linear.weight.copy_(head.weight * std)
    linear.bias.copy_(head.bias + head.weight @ mean)
    return linear


def imagenet_prior(class_names: list[str], mean: torch.Tensor, std: torch.Tensor) -> torch.nn.Linear:
    """The head that `--imagenet-head` starts fine-tuning from (built from ImageNet's classifier), for
    features standardised with `mean` and `std`."""
    head = create_model("efficientnet_lite0", len(class_names), pretrained=True, head_classes=class_names).head[-1]
    return for_standardised_features(head, mean, std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--image-sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--list-errors", action="store_true", help="list the photos the strongest probe gets wrong")
    parser.add_argument(
        "--held-out", help="a labelled tree of other photos (a subset of the classes) to score every probe on"
    )
    parser.add_argument(
        "--imagenet-prior",
        action="store_true",
        help="start each probe from the ImageNet classifier's rows of each class, penalised towards them",
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    tree = read_labelled_tree(args.data)
    labels = torch.tensor(tree.labels)
    held_out = read_labelled_tree(args.held_out) if args.held_out else None
    if held_out is not None:
        held_labels = torch.tensor([tree.class_names.index(held_out.class_names[label]) for label in held_out.labels])
    held_out_rows = []
    print(f"{args.data}: {len(tree.paths)} photos; splits with seeds {args.seeds}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, CPU only\n")
    print("| input | L2 | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± sd |")
    print("| --- | ---: | " + " | ".join("---:" for _ in args.seeds) + " | --- |")
    strongest = (0.0, {})  # mean accuracy, {photo index: the classes chosen for it where wrong}
    for size in args.image_sizes:
        x = features(tree.paths, size)
        mean, std = x.mean(0), x.std(0) + 1e-6
        x = (x - mean) / std
        prior = imagenet_prior(tree.class_names, mean, std) if args.imagenet_prior else None
        if held_out is not None:
            held_x = (features(held_out.paths, size) - mean) / std
        if prior is not None:  # the starting head alone, trained on nothing
            untrained = [f"{accuracy(prior, x, labels):.1%} of all {len(labels)} photos"]
            if held_out is not None:
                untrained.append(f"{accuracy(prior, held_x, held_labels):.1%} of the {len(held_labels)} others")
            print(f"| {size} px | the ImageNet head, untrained: {', '.join(untrained)} |")
        for l2 in L2_STRENGTHS:
            accuracies, errors, held_out_accuracies = [], {}, []
            for seed in args.seeds:
                train_idx, val_idx = split_indices(tree, args.val_fraction, seed)
                linear = fit_logistic(x[train_idx], labels[train_idx], len(tree.class_names), l2, prior)
                with torch.no_grad():
                    predicted = linear(x[val_idx]).argmax(1)
                accuracies.append(float((predicted == labels[val_idx]).float().mean()))
                for index, choice in zip(val_idx, predicted.tolist()):
                    if choice != tree.labels[index]:
                        errors.setdefault(int(index), []).append(tree.class_names[choice])
                if held_out is not None:
                    held_out_accuracies.append(accuracy(linear, held_x, held_labels))
            cells = " | ".join(f"{a:.1%}" for a in accuracies)
            print(
                f"| {size} px | {l2:g} | {cells} | {np.mean(accuracies):.1%} ± {np.std(accuracies):.1%} |", flush=True
            )
            if held_out is not None:
                cells = " | ".join(f"{a:.1%}" for a in held_out_accuracies)
                held_out_rows.append(
                    f"| {size} px | {l2:g} | {cells} | {np.mean(held_out_accuracies):.1%} ± {np.std(held_out_accuracies):.1%} |"
                )
            strongest = max(strongest, (float(np.mean(accuracies)), errors), key=lambda pair: pair[0])
    if held_out is not None:
        print(
            f"\nthe same probes on {len(held_out.paths)} other photos ({args.held_out}: {', '.join(held_out.class_names)})"
        )
        print("| input | L2 | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± sd |")
        print("| --- | ---: | " + " | ".join("---:" for _ in args.seeds) + " | --- |")
        print("\n".join(held_out_rows))
    if args.list_errors:
        print("\nphotos the strongest probe gets wrong (label: chosen on each split where it is validated and wrong)")
        for index, chosen in sorted(strongest[1].items(), key=lambda item: tree.paths[item[0]]):
            print(
                f"  {os.path.relpath(tree.paths[index], args.data)} ({tree.class_names[tree.labels[index]]}): {', '.join(chosen)}"
            )


if __name__ == "__main__":
    main()
