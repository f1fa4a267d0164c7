"""A quick sweep of from-scratch CNN settings in plain PyTorch, to choose the `best` recipe's values.

    .venv/bin/python benchmarks/scratch_sweep.py --size 64 --epochs 120 --batch 16 --lr 1e-3 [--trivial-augment] \
        [--mixup 0.2] [--cutmix 1.0] [--residual] [--crop 0.35] [--dropout 0.5] [--augment-size 128] [--ema 0.998] \
        [--test-sizes 64 80] [--widths 32 64 128 256] [--hidden 256] [--loss cosine] [--sam 0.05] [--recalibrate-bn] \
        [--erase 0.25] [--blurpool] [--label-smoothing 0.1] [--average-from 60 90] [--tta-sizes 64 72 80] \
        [--distill 0.5] [--distill-temperature 2] [--fixres 72 80] [--fixres-epochs 10] [--fixres-lr 1e-4] \
        [--fixres-crop 0.8] [--concat-pool] [--spatial-dropout 0.1] [--group-norm 8] \
        [--stem-kernel 5] [--rotation-labels] [--train-share 0.5] [--copies 2] [--train-sizes 56 64 72] [--prototypes] \
        [--grayscale 0.2] [--held-out ../shared/data/bench-images --held-out-size 72] \
        [--teacher-size 128 --teacher-share 0.7] [--scattering 8] [--seeds 1 2 3]

Faster than benchmarks/accuracy.py (no Ray, photos decoded once and kept in memory, one torch thread, so two
settings can run side by side on two cores), with the project's model, split, decoding and augmentation
functions. It differs from a Ray Train run in two details: the cosine schedule steps per batch (not per
epoch), and it reports the last epoch's validation accuracy (and the best epoch's, which flatters). Settings
chosen here are then measured with benchmarks/accuracy.py.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from linear_probe import accuracy, fit_logistic, imagenet_prior
from torchvision.transforms import v2

from animals10.card import Preprocessing
from animals10.data import load_photo, read_labelled_tree, split_indices
from animals10.models import create_model, get_model_spec
from animals10.transforms import Augmentation, augment, fit_to_model, mix_batch, to_model_input

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "animals10-sample" / "raw-img"


def loss_of(logits: torch.Tensor, targets: torch.Tensor, args) -> torch.Tensor:
    """Cross-entropy with label smoothing, or the cosine loss of Barz & Denzler (2020): one minus the cosine
    similarity of the logits and the (one-hot or mixed) target."""
    if args.loss == "cosine":
        targets = F.one_hot(targets, logits.shape[1]).to(logits.dtype) if targets.ndim == 1 else targets
        return (1 - F.cosine_similarity(logits, targets, dim=1)).mean()
    return F.cross_entropy(logits, targets, label_smoothing=args.label_smoothing)


def sharpness_aware_gradient(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, args) -> None:
    """Replaces the gradients in `model` with those of the same batch at the weights `args.sam` away uphill
    (sharpness-aware minimisation, Foret et al. 2021)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.norm(torch.stack([p.grad.norm() for p in params])) + 1e-12
    steps = [p.grad * (args.sam / norm) for p in params]
    with torch.no_grad():
        torch._foreach_add_(params, steps)
    model.zero_grad(set_to_none=True)
    loss_of(model(x), targets, args).backward()
    with torch.no_grad():
        torch._foreach_sub_(params, steps)


@torch.no_grad()
def with_recalibrated_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """A copy of `model` in eval mode whose BatchNorm statistics are those of the inputs `x` (all in one batch)."""
    recalibrated = copy.deepcopy(model)
    for module in recalibrated.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over what it sees
    recalibrated.train()(x)
    return recalibrated.eval()


def random_erase(x: torch.Tensor, probability: float) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020) of (B, 3, H, W) inputs, each photo its own box: torchvision's
    RandomErasing with its defaults (2-33% of the area, aspect ratio 0.3-3.3, filled with noise)."""
    erase = v2.RandomErasing(p=probability, value="random")
    return torch.stack([erase(image) for image in x])


class BlurPool(torch.nn.Module):
    """Max-pooling made shift-invariant: a dense 2x2 max, then a [1 2 1] blur subsampled by two (Zhang 2019)."""

    def __init__(self, channels: int):
        super().__init__()
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(kernel, kernel) / 16
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel, stride=2, groups=self.channels)


def make_blurpool(model: torch.nn.Module) -> torch.nn.Module:
    """The custom CNN with each max-pooling layer replaced by a BlurPool of its channels."""
    channels = 3
    for name, module in model.features.named_children():
        if isinstance(module, torch.nn.Conv2d):
            channels = module.out_channels
        if isinstance(module, torch.nn.MaxPool2d):
            model.features[int(name)] = BlurPool(channels)
    return model


class ConcatPool(torch.nn.Module):
    """Global average and global max pooling side by side: twice the channels for the head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], dim=1)


def with_network_changes(model: torch.nn.Module, args) -> torch.nn.Module:
    """The custom CNN with concatenated average and max pooling (`--concat-pool`), channel dropout after each
    block (`--spatial-dropout`), GroupNorm instead of BatchNorm (`--group-norm`) and/or a larger first
    convolution (`--stem-kernel`)."""
    for index, module in enumerate(model.features):
        if args.group_norm and isinstance(module, torch.nn.BatchNorm2d):
            model.features[index] = torch.nn.GroupNorm(min(args.group_norm, module.num_features), module.num_features)
    stem = model.features[0]
    if isinstance(stem, torch.nn.Conv2d) and args.stem_kernel != stem.kernel_size[0]:
        model.features[0] = torch.nn.Conv2d(
            stem.in_channels, stem.out_channels, args.stem_kernel, padding=args.stem_kernel // 2, bias=False
        )
    if args.concat_pool:
        model.pool = ConcatPool()
        first = model.classifier[1]
        model.classifier[1] = torch.nn.Linear(2 * first.in_features, first.out_features)
    if args.spatial_dropout:
        blocks = []
        for module in model.features:
            blocks.append(module)
            if isinstance(module, torch.nn.MaxPool2d):
                blocks.append(torch.nn.Dropout2d(args.spatial_dropout))
        model.features = torch.nn.Sequential(*blocks)
    return model


def rotated(x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each photo four times, turned by 0, 90, 180 and 270 degrees, labelled with (class, turn) pairs: class * 4 + turn."""
    return torch.cat([torch.rot90(x, turn, (2, 3)) for turn in range(4)]), torch.cat(
        [targets * 4 + turn for turn in range(4)]
    )


class RotationLabels(torch.nn.Module):
    """Self-supervised label augmentation (Lee et al. 2020): `network` learns one label per (class, turn) pair
    (`rotated`). Evaluated, it returns class logits: those for the upright photo only (`turns=1`), or their
    average over the four turned copies, each read at its own turn (`turns=4`)."""

    def __init__(self, network: torch.nn.Module, turns: int = 4):
        super().__init__()
        self.network, self.turns = network, turns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.network(x)
        views = [
            self.network(torch.rot90(x, turn, (2, 3))).unflatten(1, (-1, 4))[:, :, turn] for turn in range(self.turns)
        ]
        return torch.stack(views).mean(0)


@torch.no_grad()
def score_with_tta(model: torch.nn.Module, val_inputs: dict, sizes: list[int], val_labels: torch.Tensor) -> str:
    """Accuracy with class probabilities averaged over the input `sizes`, without and with horizontal flips."""
    probabilities, mirrored = 0, 0
    for size in sizes:
        probabilities = probabilities + model(val_inputs[size]).softmax(1)
        mirrored = mirrored + model(val_inputs[size].flip(3)).softmax(1)
    scores = [accuracy(torch.nn.Identity(), p, val_labels) for p in (probabilities, probabilities + mirrored)]
    return f"sizes {'+'.join(map(str, sizes))} averaged: {scores[0]:.1%}, with flips {scores[1]:.1%}"


@torch.no_grad()
def embeddings(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The custom CNN's pooled features and its hidden layer's (after the ReLU), L2-normalised, for inputs `x`."""
    pooled = model.pool(model.features(x)).flatten(1)
    hidden = model.classifier[2](model.classifier[1](pooled))
    return {name: F.normalize(features, dim=1) for name, features in (("pooled", pooled), ("hidden", hidden))}


@torch.no_grad()
def score_with_prototypes(
    model: torch.nn.Module,
    train_x: torch.Tensor,
    train_labels: torch.Tensor,
    val_x: torch.Tensor,
    val_labels: torch.Tensor,
) -> str:
    """Accuracy of the same trained network read four other ways: the nearest class mean of the training
    photos' normalised features (cosine), and the 5 nearest training photos' majority, on the pooled features
    and on the hidden layer's."""
    model.eval()
    num_classes = int(train_labels.max()) + 1
    train_features, val_features = embeddings(model, train_x), embeddings(model, val_x)
    scores = []
    for name in ("pooled", "hidden"):
        known, query = train_features[name], val_features[name]
        means = F.normalize(torch.stack([known[train_labels == c].mean(0) for c in range(num_classes)]), dim=1)
        nearest_mean = (query @ means.T).argmax(1)
        neighbours = train_labels[(query @ known.T).topk(5, dim=1).indices]
        votes = F.one_hot(neighbours, num_classes).sum(1)
        scores.append(
            f"{name}: class means {(nearest_mean == val_labels).float().mean():.1%}, 5 neighbours {(votes.argmax(1) == val_labels).float().mean():.1%}"
        )
    return "; ".join(scores)


class PretrainedTeacher(torch.nn.Module):
    """EfficientNet-Lite0's frozen ImageNet features and a linear probe fitted on the split's training photos
    (`--teacher-size`): a teacher the from-scratch student can match on each augmented view. It sees the view
    at its own size, before the view is shrunk to the student's."""

    def __init__(self, train_photos: torch.Tensor, train_labels: torch.Tensor, class_names: list[str], size: int):
        super().__init__()
        self.backbone = create_model("efficientnet_lite0", len(class_names), pretrained=True).backbone.eval()
        spec = get_model_spec("efficientnet_lite0")
        self.preprocessing = Preprocessing(size, spec.mean, spec.std)
        with torch.no_grad():
            x = torch.cat(
                [self.backbone(to_model_input(chunk, self.preprocessing)) for chunk in train_photos.split(64)]
            )
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        prior = imagenet_prior(class_names, self.mean, self.std)
        self.head = fit_logistic((x - self.mean) / self.std, train_labels, len(class_names), 1e-4, prior)

    @torch.no_grad()
    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) augmented views in [0, 1] -> logits."""
        return self.head((self.backbone(fit_to_model(views, self.preprocessing)) - self.mean) / self.std)


def train_and_validate(
    photos: np.ndarray,
    train_source: np.ndarray,
    labels: np.ndarray,
    train_idx,
    val_idx,
    args,
    seed: int,
    test_photos: dict | None = None,
    teacher: torch.nn.Module | None = None,
    class_names: list[str] | None = None,
) -> tuple[list[float], torch.nn.Module]:
    """Trains one model on `train_idx` of `train_source` (the photos, or the same decoded larger); returns the
    validation accuracy on `photos` after each epoch, and the model. `test_photos` (size -> the photos decoded at
    that size): the final model is also scored on the validation photos at `args.test_sizes`. With `teacher`, the
    loss also matches the teacher's softened probabilities on the same augmented batch (knowledge distillation)."""
    torch.manual_seed(seed)
    num_classes = int(labels.max()) + 1
    outputs = num_classes * 4 if args.rotation_labels else num_classes
    model = create_model(
        "custom_cnn",
        outputs,
        residual=args.residual,
        dropout=args.dropout,
        widths=tuple(args.widths),
        hidden=args.hidden,
        scattering=args.scattering,
    )
    if args.blurpool:
        model = make_blurpool(model)
    model = with_network_changes(model, args)
    if args.rotation_labels:
        model = RotationLabels(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / args.batch)
    total, warmup = steps_per_epoch * args.epochs, steps_per_epoch  # one warm-up epoch, then cosine decay

    def factor(step: int) -> float:
        return (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    jitter = (1 - args.jitter, 1 + args.jitter)
    augmentation = Augmentation(
        rotation_degrees=15.0, brightness=jitter, contrast=jitter, saturation=jitter, crop_scale=(args.crop, 1.0),
        grayscale=args.grayscale, trivial_augment=args.trivial_augment, mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
    )  # fmt: skip
    preprocessing = Preprocessing(args.size)
    train_photos, train_labels = torch.from_numpy(train_source[train_idx]), torch.from_numpy(labels[train_idx])
    val_x = to_model_input(torch.from_numpy(photos[val_idx]), preprocessing)
    val_labels = torch.from_numpy(labels[val_idx])
    if args.teacher_size:  # a pretrained teacher, fitted on this split's training photos
        teacher = PretrainedTeacher(train_photos, train_labels, class_names, args.teacher_size)
        print(
            f"  pretrained teacher at {args.teacher_size} px: {accuracy(teacher, to_model_input(torch.from_numpy(photos[val_idx]), Preprocessing(args.size)), val_labels):.1%} on validation (from {args.size} px)",
            flush=True,
        )
    val_inputs = {
        size: to_model_input(torch.from_numpy(decoded[val_idx]), Preprocessing(size))
        for size, decoded in (test_photos or {}).items()
    }
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True
        )
        if args.ema
        else None
    )
    averages = {start: torch.optim.swa_utils.AveragedModel(model) for start in args.average_from}
    accuracies, ema_accuracies = [], []
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train_idx))
        for start in range(0, len(order), args.batch):
            batch = order[start : start + args.batch]
            batch = batch.repeat(args.copies)  # batch augmentation: each photo in several augmented copies
            batch_preprocessing = preprocessing
            if args.train_sizes:  # multi-scale training: each batch at an input size drawn from the list
                batch_preprocessing = Preprocessing(args.train_sizes[int(torch.randint(len(args.train_sizes), ()))])
            if args.teacher_size:  # one augmented view, seen by the teacher at its size and by the student at its own
                views = augment(train_photos[batch].permute(0, 3, 1, 2).float().div(255), augmentation)
                x, targets = fit_to_model(views, batch_preprocessing), train_labels[batch]
            else:
                x, targets = to_model_input(train_photos[batch], batch_preprocessing, augmentation), train_labels[batch]
            if args.erase:
                x = random_erase(x, args.erase)
            if augmentation.mixes:
                x, targets = mix_batch(x, targets, num_classes, augmentation)
            if args.rotation_labels:
                x, targets = rotated(x, targets)
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_of(logits, targets, args)
            if teacher is not None:
                share = args.teacher_share if args.teacher_size else args.distill
                with torch.no_grad():
                    soft_targets = (teacher(views if args.teacher_size else x) / args.distill_temperature).softmax(1)
                distillation = F.kl_div(
                    (logits / args.distill_temperature).log_softmax(1), soft_targets, reduction="batchmean"
                )
                loss = (1 - share) * loss + share * args.distill_temperature**2 * distillation
            loss.backward()
            if args.sam:
                sharpness_aware_gradient(model, x, targets, args)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
        model.eval()
        with torch.no_grad():
            accuracies.append(accuracy(model, val_x, val_labels))
            if ema is not None:
                ema.eval()
                ema_accuracies.append(accuracy(ema, val_x, val_labels))
        for start, average in averages.items():
            if epoch >= start:
                average.update_parameters(model)
    for size in args.test_sizes:
        print(f"  tested at {size} px: {accuracy(model, val_inputs[size], val_labels):.1%}", flush=True)
        if args.rotation_labels:
            print(
                f"  tested at {size} px, upright only: {accuracy(RotationLabels(model.network, turns=1).eval(), val_inputs[size], val_labels):.1%}",
                flush=True,
            )
        if args.recalibrate_bn:
            recalibrated = with_recalibrated_batchnorm(
                model, to_model_input(torch.from_numpy(test_photos[size][train_idx]), Preprocessing(size))
            )
            print(
                f"  tested at {size} px, BatchNorm recalibrated: {accuracy(recalibrated, val_inputs[size], val_labels):.1%}",
                flush=True,
            )
    if args.tta_sizes:
        print(f"  {score_with_tta(model, val_inputs, args.tta_sizes, val_labels)}", flush=True)
    if args.prototypes:
        for size in args.test_sizes:
            train_inputs = to_model_input(torch.from_numpy(test_photos[size][train_idx]), Preprocessing(size))
            print(
                f"  tested at {size} px, {score_with_prototypes(model, train_inputs, train_labels, val_inputs[size], val_labels)}",
                flush=True,
            )
    for start, average in averages.items():
        # BatchNorm statistics for the averaged weights: one pass over augmented training batches
        batches = [
            to_model_input(train_photos[order[i : i + args.batch]], preprocessing, augmentation)
            for i in range(0, len(order), args.batch)
        ]
        torch.optim.swa_utils.update_bn(batches, average)
        average.eval()
        scores = [f"{size} px {accuracy(average, val_inputs[size], val_labels):.1%}" for size in args.test_sizes]
        print(f"  weights averaged from epoch {start}: " + ", ".join(scores), flush=True)
        if args.tta_sizes:
            print(
                f"  weights averaged from epoch {start}, {score_with_tta(average, val_inputs, args.tta_sizes, val_labels)}",
                flush=True,
            )
    if ema is not None:
        print(f"  EMA weights: last epoch {ema_accuracies[-1]:.1%}, best epoch {max(ema_accuracies):.1%}", flush=True)
    for size in args.fixres:
        tuned = fine_tune_at(
            copy.deepcopy(model),
            size,
            train_photos,
            train_labels,
            replace(augmentation, crop_scale=(args.fixres_crop, 1.0)),
            args,
        )
        print(
            f"  fine-tuned {args.fixres_epochs} epochs at {size} px, crops from {args.fixres_crop:.0%}: {accuracy(tuned, val_inputs[size], val_labels):.1%}",
            flush=True,
        )
    return accuracies, model


def fine_tune_at(
    model: torch.nn.Module,
    size: int,
    train_photos: torch.Tensor,
    train_labels: torch.Tensor,
    augmentation: Augmentation,
    args,
) -> torch.nn.Module:
    """A trained model fine-tuned at its test size with milder crops, the rate decaying from `args.fixres_lr`
    to zero (FixRes, Touvron et al. 2019: train and test then see animals at the same scale)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.fixres_lr, weight_decay=args.weight_decay)
    steps = args.fixres_epochs * math.ceil(len(train_labels) / args.batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    preprocessing = Preprocessing(size)
    model.train()
    for _ in range(args.fixres_epochs):
        order = torch.randperm(len(train_labels))
        for start in range(0, len(order), args.batch):
            batch = order[start : start + args.batch]
            optimizer.zero_grad(set_to_none=True)
            loss_of(
                model(to_model_input(train_photos[batch], preprocessing, augmentation)), train_labels[batch], args
            ).backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument(
        "--augment-size", type=int, help="decode training photos at this size; augmented, then resized to --size"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--residual", action="store_true")
    parser.add_argument("--widths", nargs="+", type=int, default=[32, 64, 128, 256])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument(
        "--loss", choices=["ce", "cosine"], default="ce", help="cross-entropy, or the cosine loss (Barz & Denzler 2020)"
    )
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--crop", type=float, default=0.35, help="smallest share of the area a random crop keeps")
    parser.add_argument("--jitter", type=float, default=0.3, help="brightness, contrast and saturation 1 ± this")
    parser.add_argument("--trivial-augment", action="store_true")
    parser.add_argument("--mixup", type=float, default=0.0)
    parser.add_argument("--cutmix", type=float, default=0.0)
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="also validate an exponential moving average of the weights with this decay per step",
    )
    parser.add_argument(
        "--test-sizes", nargs="+", type=int, default=[], help="also score the final model at these input sizes"
    )
    parser.add_argument("--sam", type=float, default=0.0, help="sharpness-aware minimisation with this radius (0: off)")
    parser.add_argument(
        "--recalibrate-bn",
        action="store_true",
        help="also score with BatchNorm statistics recomputed on the training photos at each test size",
    )
    parser.add_argument(
        "--erase", type=float, default=0.0, help="random erasing with this probability per photo (0: off)"
    )
    parser.add_argument(
        "--blurpool", action="store_true", help="anti-aliased max-pooling (max, then blur and subsample)"
    )
    parser.add_argument(
        "--average-from",
        nargs="+",
        type=int,
        default=[],
        help="also score the average of the weights at the end of each epoch from this one on",
    )
    parser.add_argument(
        "--tta-sizes",
        nargs="+",
        type=int,
        default=[],
        help="also score with probabilities averaged over these input sizes",
    )
    parser.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="then train a student on this share of distillation loss from the model (born-again; 0: off)",
    )
    parser.add_argument("--distill-temperature", type=float, default=2.0)
    parser.add_argument(
        "--fixres", nargs="+", type=int, default=[], help="also score the model fine-tuned at each of these sizes"
    )
    parser.add_argument("--fixres-epochs", type=int, default=10)
    parser.add_argument("--fixres-lr", type=float, default=1e-4)
    parser.add_argument(
        "--fixres-crop", type=float, default=0.8, help="smallest share of the area a crop keeps while fine-tuning"
    )
    parser.add_argument("--concat-pool", action="store_true", help="global average and max pooling, concatenated")
    parser.add_argument(
        "--spatial-dropout", type=float, default=0.0, help="drop whole channels after each block with this probability"
    )
    parser.add_argument(
        "--group-norm", type=int, default=0, help="GroupNorm with this many groups instead of BatchNorm (0: BatchNorm)"
    )
    parser.add_argument("--stem-kernel", type=int, default=3, help="kernel size of the first convolution")
    parser.add_argument(
        "--rotation-labels",
        action="store_true",
        help="learn (class, quarter turn) pairs on four turned copies of each photo (Lee et al. 2020)",
    )
    parser.add_argument(
        "--train-share",
        type=float,
        default=1.0,
        help="train on this share of each class's training photos (a learning curve)",
    )
    parser.add_argument(
        "--train-sizes",
        nargs="+",
        type=int,
        default=[],
        help="train each batch at an input size drawn from these (multi-scale training)",
    )
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="each batch holds this many augmented copies of each of its photos (Hoffer et al. 2020)",
    )
    parser.add_argument(
        "--prototypes",
        action="store_true",
        help="also score nearest class means and nearest neighbours of the training photos' features",
    )
    parser.add_argument(
        "--grayscale", type=float, default=0.0, help="turn each training photo grey with this probability (0: off)"
    )
    parser.add_argument(
        "--held-out",
        help="a labelled tree of other photos (a subset of the classes, matched by name) to score each final model on",
    )
    parser.add_argument(
        "--held-out-size", type=int, default=72, help="the input size the held-out photos are scored at"
    )
    parser.add_argument(
        "--teacher-size",
        type=int,
        default=0,
        help="distil from pretrained EfficientNet-Lite0 features and a probe, at this size (0: off; ignores --trivial-augment)",
    )
    parser.add_argument(
        "--teacher-share", type=float, default=0.7, help="the share of the loss that matches the pretrained teacher"
    )
    parser.add_argument(
        "--scattering",
        type=int,
        default=0,
        help="the first block a fixed scattering transform with this many orientations (0: off)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    args = parser.parse_args()
    torch.set_num_threads(1)

    tree = read_labelled_tree(args.data)
    photos = np.stack([load_photo(path, args.size)[0] for path in tree.paths])  # (N, S, S, 3) uint8, decoded once
    train_source = (
        np.stack([load_photo(path, args.augment_size)[0] for path in tree.paths]) if args.augment_size else photos
    )
    test_photos = {
        size: np.stack([load_photo(path, size)[0] for path in tree.paths])
        for size in {*args.test_sizes, *args.tta_sizes, *args.fixres}
    }
    labels = np.asarray(tree.labels, dtype=np.int64)
    held_out = read_labelled_tree(args.held_out) if args.held_out else None
    if held_out is not None:
        held_x = to_model_input(
            torch.from_numpy(np.stack([load_photo(path, args.held_out_size)[0] for path in held_out.paths])),
            Preprocessing(args.held_out_size),
        )
        held_labels = torch.tensor([tree.class_names.index(held_out.class_names[label]) for label in held_out.labels])
    finals, bests, held_scores = [], [], []
    for seed in args.seeds:
        start = time.perf_counter()
        train_idx, val_idx = split_indices(tree, 0.2, seed)
        if args.train_share < 1:  # the same validation photos, fewer training photos of every class
            rng = np.random.default_rng(seed)
            by_class = [
                rng.permutation([i for i in train_idx if labels[i] == label]) for label in range(int(labels.max()) + 1)
            ]
            train_idx = sorted(
                int(i) for members in by_class for i in members[: round(len(members) * args.train_share)]
            )
        accuracies, model = train_and_validate(
            photos, train_source, labels, train_idx, val_idx, args, seed, test_photos, class_names=tree.class_names
        )
        if args.distill:
            print(
                f"  teacher: last epoch {accuracies[-1]:.1%}; a student of the same design learns from it", flush=True
            )
            accuracies, model = train_and_validate(
                photos, train_source, labels, train_idx, val_idx, args, seed + 1000, test_photos, teacher=model.eval()
            )
        finals.append(accuracies[-1])
        bests.append(max(accuracies))
        if held_out is not None:
            model.eval()
            with torch.no_grad():
                predicted = torch.cat([model(chunk).argmax(1) for chunk in held_x.split(256)])
            recall = {
                tree.class_names[i]: (predicted[held_labels == i] == i).float().mean().item()
                for i in sorted(set(held_labels.tolist()))
            }
            held_scores.append((predicted == held_labels).float().mean().item())
            print(
                f"  {len(held_labels)} held-out photos at {args.held_out_size} px: {held_scores[-1]:.1%} ({', '.join(f'{k} {v:.1%}' for k, v in recall.items())})",
                flush=True,
            )
        print(
            f"seed {seed}: last epoch {accuracies[-1]:.1%}, best epoch {max(accuracies):.1%}, {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    print(f"{vars(args)}\nlast epoch {np.mean(finals):.1%} ± {np.std(finals):.1%}; best epoch {np.mean(bests):.1%}")
    if held_scores:
        print(f"held-out photos {np.mean(held_scores):.1%} ± {np.std(held_scores):.1%}")


if __name__ == "__main__":
    main()
