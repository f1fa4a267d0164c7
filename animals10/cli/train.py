"""`animals10 train` and jobs/train.py: the training command line, and the table of results it prints."""

from __future__ import annotations

import argparse
from dataclasses import fields

from animals10.cli.arguments import alpha, count, fraction, positive_int, probability
from animals10.models import get_model_spec, model_choices
from animals10.report.document import Table
from animals10.training.config import DEFAULT_MODELS, KEEP_CHOICES, RECIPES, TrainConfig, recipe_config
from animals10.training.driver import TrainedModel, train_models
from animals10.transforms import Augmentation

TRAIN_EXAMPLES = """\
  animals10 train --data ~/animals10/raw-img --output runs/exp1
  animals10 train --data ~/animals10/raw-img --model efficientnet_lite0 --recipe study --epochs 10
  ray job submit --working-dir . -- python jobs/train.py --data s3://my-bucket/raw-img \\
      --num-workers 4 --use-gpu --output s3://my-bucket/runs/exp1"""


def model_name(text: str) -> str:
    """argparse type of --model: a registered name or `timm:<name>` that timm knows."""
    try:
        get_model_spec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_train_arguments(parser) -> None:
    defaults = TrainConfig()
    parser.add_argument(
        "--data", required=True, help="labelled tree <root>/<class>/<photo>, a local dir or s3://bucket/prefix"
    )
    parser.add_argument(
        "--model",
        action="append",
        type=model_name,
        metavar="NAME",
        help=f"{model_choices()}, e.g. timm:convnext_tiny; repeatable (default: {' and '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default="best",
        help="named training settings (see README); options below override them",
    )
    parser.add_argument(
        "--output", default=defaults.output, help="local dir or s3:// URI for artifacts and checkpoints"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="every model's epochs (default: the recipe's; best: 120 for custom_cnn, 20 for transfer models)",
    )
    parser.add_argument("--batch-size", type=int, help=f"global batch size (default {defaults.batch_size})")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default {defaults.lr})")
    parser.add_argument(
        "--fine-tune-lr", type=float, help=f"transfer models' fine-tuning rate (default {defaults.fine_tune_lr})"
    )
    parser.add_argument(
        "--augment-size",
        type=int,
        metavar="PX",
        help="decode and augment training photos at this size, then resize them to --image-size (best: 128 for "
        "custom_cnn)",
    )
    parser.add_argument(
        "--test-size",
        type=int,
        metavar="PX",
        help="input size of validation and inference, a little above --image-size to offset the zoom of random crops "
        "(best: 72 for custom_cnn)",
    )
    parser.add_argument(
        "--keep",
        choices=KEEP_CHOICES,
        help="the epoch the artifact keeps (default: the recipe's; study: best_val_loss, best: last)",
    )
    parser.add_argument(
        "--freeze-batchnorm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="transfer models: BatchNorm keeps its ImageNet statistics while fine-tuning (best: on)",
    )
    parser.add_argument(
        "--imagenet-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="transfer models: the head starts from the ImageNet classifier's rows of each class (best: on)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help="input size in pixels of every model (default: the recipe's: 128; best: 64 for custom_cnn, 224 for "
        "transfer models)",
    )
    parser.add_argument(
        "--trivial-augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TrivialAugment: one random operation per photo",
    )
    parser.add_argument(
        "--mixup", dest="mixup_alpha", type=alpha, metavar="ALPHA", help="MixUp with this Beta(alpha, alpha) (0: off)"
    )
    parser.add_argument(
        "--cutmix",
        dest="cutmix_alpha",
        type=alpha,
        metavar="ALPHA",
        help="CutMix with this Beta(alpha, alpha) (0: off)",
    )
    parser.add_argument(
        "--grayscale",
        type=probability,
        metavar="P",
        help="turn each training photo grey with probability P (default: the recipe's; 0: off)",
    )
    parser.add_argument(
        "--copies",
        type=positive_int,
        metavar="N",
        help="train on each photo of a batch in N differently augmented copies (default: the recipe's; 1: once)",
    )
    parser.add_argument(
        "--scattering",
        type=count,
        metavar="N",
        help="custom_cnn: a fixed first block of Morlet wavelets at N orientations, a scattering transform (default: "
        "the recipe's; best: 8; 0: a learned first block)",
    )
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (default 1)")
    parser.add_argument("--cpus-per-worker", type=int, help="CPUs reserved per worker (default 1)")
    parser.add_argument(
        "--use-gpu", action=argparse.BooleanOptionalAction, default=None, help="default: GPUs when the cluster has them"
    )
    parser.add_argument(
        "--cache-decoded",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode the photos once and keep them in Ray's object store for every epoch (default: when they take at "
        "most a quarter of it)",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="the backbone's ImageNet weights, safetensors or a weights-only torch file (torchvision's mobilenet_v2 "
        ".pth; a timm model's model.safetensors): for a machine without the network",
    )
    parser.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        default=None,
        help="random init (no ImageNet weights)",
    )
    parser.add_argument("--max-failures", type=int, help="worker/node failures to recover from (default 0)")
    parser.add_argument(
        "--val-fraction",
        type=fraction,
        metavar="F",
        help=f"share of each class's photos held out for validation (default {defaults.val_fraction}); on a small set, "
        "less leaves more to train on",
    )
    parser.add_argument("--seed", type=int, help="seed of the split and initialisation (default 42)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS, or $AWS_ENDPOINT_URL)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe with what the command line gives on top. Options are named as the configuration's fields,
    so that a new option needs only its `add_argument` line (and its use)."""
    given = {name: value for name, value in vars(args).items() if value is not None}
    values = {f.name: given[f.name] for f in fields(TrainConfig) if f.name in given and f.name != "recipe"}
    config = recipe_config(args.recipe, **values, models=tuple(args.model or DEFAULT_MODELS))
    config = config.with_augmentation(**{f.name: given[f.name] for f in fields(Augmentation) if f.name in given})
    scattering = None if args.scattering is None else {"scattering": args.scattering} if args.scattering else {}
    return config.with_model_settings("custom_cnn", model_kwargs=scattering)


def results_table(models: list[TrainedModel]) -> Table:
    """The study's table: validation loss, accuracy, precision and recall per model, at the kept epoch."""
    rows = [
        [
            m.name,
            f"{m.metrics['val_loss']:.4f}",
            f"{m.metrics['val_accuracy']:.2%}",
            f"{m.metrics['val_macro_precision']:.2%}",
            f"{m.metrics['val_macro_recall']:.2%}",
            str(len(m.history)),
            f"{m.metrics['images_per_second']:.1f}",
        ]
        for m in models
    ]
    return Table(["Model", "Val loss", "Accuracy", "Precision", "Recall", "Epochs", "Images/s"], rows)


def run_train(args) -> int:
    models = train_models(config_from_args(args))
    print(results_table(models).to_text())
    for m in models:
        print(f"{m.name}: artifact written to {m.artifact_uri}")
    return 0
