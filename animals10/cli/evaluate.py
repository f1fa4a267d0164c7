"""`animals10 evaluate` and jobs/evaluate.py: score models and write the comparison report."""

from __future__ import annotations

from animals10.cli.arguments import count, positive_int
from animals10.report import write_report

EVALUATE_EXAMPLES = """\
  animals10 evaluate --model runs/exp1/custom_cnn --model runs/exp1/mobilenet_v2 --output runs/exp1/report
  animals10 evaluate --model runs/exp1/efficientnet_lite0 --data ~/other-photos --output runs/other --tta
  animals10 evaluate --model runs/exp1/efficientnet_lite0 --data runs/predictions --output runs/scored
  animals10 evaluate --model runs/exp1/efficientnet_lite0 --unknown ~/not-animals --output runs/open-world"""


def add_evaluate_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="ARTIFACT",
        help="a model artifact folder (local or s3://); repeat to compare models",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR_OR_S3",
        help="score on this labelled tree (<root>/<class>/<photo>), or a batch-inference Parquet output "
        "with true_label; default: each model's own validation split",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="where to write report.md, report.html, the PNGs and metrics.json",
    )
    parser.add_argument(
        "--samples", type=count, default=16, help="photos in each model's sample-prediction grid (default 16; 0: none)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="photos per forward pass (default 64)")
    parser.add_argument("--tta", action="store_true", help="average each prediction with that of the mirrored photo")
    parser.add_argument(
        "--unknown",
        default=None,
        metavar="DIR_OR_S3",
        help="a folder of photos that show none of the classes: the report adds how well each model tells them "
        "apart (AUROC, false-positive rate at 95%% true-positive rate, labels they get)",
    )


def run_evaluate(args) -> int:
    report = write_report(
        args.model, args.output, data=args.data, samples=args.samples, batch_size=args.batch_size, tta=args.tta,
        unknown=args.unknown,
    )  # fmt: skip
    for evaluation in report.evaluations:
        m = evaluation.metrics
        loss = "n/a" if m["loss"] is None else f"{m['loss']:.3f}"
        print(
            f"{evaluation.name}: accuracy {m['accuracy']:.1%}, macro F1 {m['macro_f1']:.3f}, loss {loss}, "
            f"{m['num_images']} photos scored, {len(evaluation.skipped)} skipped"
        )
        world = evaluation.open_world or {}
        if "per_score" in world:
            print(
                f"  unknown photos: {world['unknown_flagged']:.1%} of {world['num_unknown']} flagged, "
                f"known photos: {world['known_flagged']:.1%} flagged; AUROC "
                + ", ".join(f"{name} {s['auroc']:.3f}" for name, s in world["per_score"].items())
            )
    print(report.best_reason)
    print(f"Report written to {report.html_uri} (and report.md, PNGs, metrics.json beside it)")
    return 0
