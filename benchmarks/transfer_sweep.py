"""A quick sweep of efficientnet_lite0 fine-tuning settings in plain PyTorch, to choose the `best` recipe's values.

    .venv/bin/python benchmarks/transfer_sweep.py --head-epochs 6 --head-lr 5e-3 --ft-epochs 14 --ft-lr 1e-4 \
        [--unfreeze 1.0] [--freeze-batchnorm] [--interpolate] [--size 224] [--test-sizes 224 256] [--seeds 1 2 3] \
        [--trivial-augment] [--mixup 0.2] [--cutmix 1.0] [--drop-path 0.2] [--imagenet-head] [--lp-ft L2] \
        [--held-out ../shared/data/bench-images]

Photos decoded once and kept in memory, no Ray; the project's model, split, decoding and `best` augmentation
(TrivialAugment, MixUp and CutMix on top where asked, in both phases).
Two phases as in a Ray Train run: the head with the backbone frozen, then the whole network, each with one
warm-up epoch and a cosine decay (stepped per batch here, per epoch in Ray Train). After every epoch it prints
the validation loss and accuracy, and for each split the accuracy of the last epoch and of the epoch with
the lowest validation loss: the two rules an artifact can keep (`--keep last | best_val_loss`).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from linear_probe import accuracy, fit_logistic, for_standardised_features

from animals10.card import Preprocessing
from animals10.config import STRONG_AUGMENTATION
from animals10.data import load_photo, read_labelled_tree, split_indices
from animals10.models import create_model, get_model_spec
from animals10.transforms import mix_batch, to_model_input

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-sample" / "raw-img"
MODEL = "efficientnet_lite0"


@torch.no_grad()
def converge_head(
    model: torch.nn.Module, photos: torch.Tensor, labels: torch.Tensor, preprocessing: Preprocessing, l2: float
) -> None:
    """LP-FT (Kumar et al. 2022): sets the head to a converged linear probe on the frozen backbone's
    features of `photos`, started from the model's own head and penalised towards it (linear_probe.py's
    fit, on standardised features, mapped back to the raw features the head sees)."""
    model.eval()
    x = torch.cat([model.backbone(to_model_input(chunk, preprocessing)) for chunk in photos.split(32)])
    mean, std = x.mean(0), x.std(0) + 1e-6
    head = model.head[-1]
    with torch.enable_grad():
        probe = fit_logistic(
            (x - mean) / std, labels, head.out_features, l2, for_standardised_features(head, mean, std)
        )
    head.weight.copy_(probe.weight / std)
    head.bias.copy_(probe.bias - (probe.weight / std) @ mean)


def train_and_validate(
    photos: np.ndarray,
    labels: np.ndarray,
    train_idx,
    val_idx,
    args,
    seed: int,
    test_photos: dict | None = None,
    held_out: tuple | None = None,
) -> list[tuple[float, float]]:
    """Fine-tunes one model on `train_idx`; returns (validation loss, accuracy) after each epoch. `test_photos`
    (size -> the photos decoded at that size): the final model is also scored at those input sizes;
    `held_out` (photos, labels) of another tree: and on those."""
    torch.manual_seed(seed)
    spec = get_model_spec(MODEL)
    head = {"head_classes": args.class_names} if args.imagenet_head else {}
    model = create_model(MODEL, int(labels.max()) + 1, pretrained=True, drop_path_rate=args.drop_path, **head)
    preprocessing = Preprocessing(args.size, spec.mean, spec.std)
    train_photos, train_labels = torch.from_numpy(photos[train_idx]), torch.from_numpy(labels[train_idx])
    val_x, val_labels = (
        to_model_input(torch.from_numpy(photos[val_idx]), preprocessing),
        torch.from_numpy(labels[val_idx]),
    )
    augmentation = replace(
        STRONG_AUGMENTATION, trivial_augment=args.trivial_augment, mixup_alpha=args.mixup, cutmix_alpha=args.cutmix
    )
    num_classes = int(labels.max()) + 1
    history = []

    def run_phase(epochs: int, lr: float) -> None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
        steps_per_epoch = math.ceil(len(train_idx) / args.batch)
        total, warmup = steps_per_epoch * epochs, steps_per_epoch

        def factor(step: int) -> float:
            return (
                (step + 1) / warmup
                if step < warmup
                else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(train_idx))
            for start in range(0, len(order), args.batch):
                batch = order[start : start + args.batch]
                x, targets = to_model_input(train_photos[batch], preprocessing, augmentation), train_labels[batch]
                if augmentation.mixes:
                    x, targets = mix_batch(x, targets, num_classes, augmentation)  # (B, num_classes) soft targets
                loss = F.cross_entropy(model(x), targets, label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            model.eval()
            with torch.no_grad():
                logits = model(val_x)
            history.append(
                (float(F.cross_entropy(logits, val_labels)), float((logits.argmax(1) == val_labels).float().mean()))
            )
            print(
                f"  epoch {len(history)}: validation loss {history[-1][0]:.3f}, accuracy {history[-1][1]:.1%}",
                flush=True,
            )

    model.freeze_backbone()
    if args.lp_ft is not None:
        converge_head(model, train_photos, train_labels, preprocessing, args.lp_ft)
        print(f"  converged probe: accuracy {accuracy(model, val_x, val_labels):.1%}", flush=True)
    run_phase(args.head_epochs, args.head_lr)
    head_only = {k: v.clone() for k, v in model.state_dict().items()} if args.interpolate else None
    model.unfreeze_top(args.unfreeze)
    if args.freeze_batchnorm:
        model.freeze_batchnorm()
    run_phase(args.ft_epochs, args.ft_lr)
    if args.interpolate:
        # WiSE-FT (Wortsman et al. 2022): the weights halfway between the end of the head phase and the end.
        fine_tuned = model.state_dict()
        model.load_state_dict(
            {k: (v + fine_tuned[k]) / 2 if v.is_floating_point() else fine_tuned[k] for k, v in head_only.items()}
        )
        model.eval()
        print(
            f"  halfway between the head phase's weights and the fine-tuned ones: accuracy {accuracy(model, val_x, val_labels):.1%}",
            flush=True,
        )
    if held_out is not None:
        other_photos, other_labels = held_out
        with torch.no_grad():
            predicted = torch.cat(
                [
                    model(to_model_input(torch.from_numpy(chunk), preprocessing)).argmax(1)
                    for chunk in np.array_split(other_photos, 16)
                ]
            )
        print(
            f"  held-out photos: {float((predicted == torch.from_numpy(other_labels)).float().mean()):.1%}", flush=True
        )
    for size, decoded in (test_photos or {}).items():
        x = to_model_input(torch.from_numpy(decoded[val_idx]), Preprocessing(size, spec.mean, spec.std))
        print(f"  tested at {size} px: {accuracy(model, x, val_labels):.1%}", flush=True)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--head-epochs", type=int, default=6)
    parser.add_argument("--head-lr", type=float, default=5e-3)
    parser.add_argument("--ft-epochs", type=int, default=14)
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--unfreeze", type=float, default=1.0, help="top share of the backbone's stages fine-tuned")
    parser.add_argument("--freeze-batchnorm", action="store_true")
    parser.add_argument(
        "--interpolate", action="store_true", help="also validate the average of the head-phase and fine-tuned weights"
    )
    parser.add_argument(
        "--trivial-augment", action="store_true", help="TrivialAugment on top of the recipe's augmentation"
    )
    parser.add_argument("--mixup", type=float, default=0.0, help="MixUp's Beta alpha (0: off)")
    parser.add_argument("--cutmix", type=float, default=0.0, help="CutMix's Beta alpha (0: off)")
    parser.add_argument(
        "--drop-path", type=float, default=0.0, help="stochastic depth rate of the backbone's blocks (0: off)"
    )
    parser.add_argument(
        "--imagenet-head", action="store_true", help="start the head from ImageNet's classifier rows of each class"
    )
    parser.add_argument(
        "--lp-ft",
        type=float,
        help="before the head phase, set the head to a converged probe penalised towards it with this L2 (LP-FT)",
    )
    parser.add_argument(
        "--held-out", help="a labelled tree of other photos (a subset of the classes) to score each final model on"
    )
    parser.add_argument(
        "--test-sizes", nargs="+", type=int, default=[], help="also score the final model at these input sizes"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tree = read_labelled_tree(args.data)
    photos = np.stack([load_photo(path, args.size)[0] for path in tree.paths])  # (N, S, S, 3) uint8, decoded once
    test_photos = {size: np.stack([load_photo(path, size)[0] for path in tree.paths]) for size in args.test_sizes}
    labels = np.asarray(tree.labels, dtype=np.int64)
    args.class_names = tree.class_names
    held_out = None
    if args.held_out:  # photos of other trees, labels as indices into this tree's classes
        other = read_labelled_tree(args.held_out)
        other_labels = np.asarray(
            [tree.class_names.index(other.class_names[label]) for label in other.labels], dtype=np.int64
        )
        held_out = (np.stack([load_photo(path, args.size)[0] for path in other.paths]), other_labels)
    lasts, lowest_loss = [], []
    for seed in args.seeds:
        start = time.perf_counter()
        train_idx, val_idx = split_indices(tree, 0.2, seed)
        history = train_and_validate(photos, labels, train_idx, val_idx, args, seed, test_photos, held_out)
        lasts.append(history[-1][1])
        lowest_loss.append(min(history)[1])
        print(
            f"seed {seed}: last epoch {lasts[-1]:.1%}, lowest-loss epoch {lowest_loss[-1]:.1%}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    print(
        f"{vars(args)}\nlast epoch {np.mean(lasts):.1%} ± {np.std(lasts):.1%}; lowest-loss epoch {np.mean(lowest_loss):.1%}"
    )


if __name__ == "__main__":
    main()
