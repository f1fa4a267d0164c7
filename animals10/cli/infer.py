"""`animals10 infer` and jobs/infer.py: the batch job's command line."""

from __future__ import annotations

import argparse

from animals10 import storage
from animals10.batch.job import DECODE_MODES, BatchConfig, JobSummary, classify_images
from animals10.batch.parts import SUMMARY_FILE
from animals10.cli.arguments import add_unknown_arguments, non_negative, positive_int, share
from animals10.errors import Animals10Error

INFER_EXAMPLES = """\
  animals10 infer --model runs/exp1/efficientnet_lite0 --input ~/photos --output runs/predictions
  animals10 infer --model s3://b/runs/exp1/efficientnet_lite0 --input s3://b/photos/ --output s3://b/predictions/
  animals10 infer --model runs/exp1/efficientnet_lite0 --input ~/photos --output runs/predictions --resume"""


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BatchConfig("", None, "")
    parser.add_argument("--model", required=True, help="model artifact directory or s3:// URI")
    photos = parser.add_mutually_exclusive_group(required=True)
    photos.add_argument("--input", help="folder or s3:// prefix of photos, searched recursively")
    photos.add_argument(
        "--input-list",
        help="manifest of photo URIs: a text, CSV or Parquet file, a folder or s3:// prefix of them, or an S3 "
        "Inventory manifest.json",
    )
    parser.add_argument(
        "--output", required=True, help="folder or s3:// prefix for the Parquet parts and _summary.json"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=defaults.batch_size, help="photos per inference call"
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        nargs="+",
        metavar="N",
        default=None,
        help="model replicas: N, or MIN MAX to autoscale (default: 1 to one per GPU, or 1 without GPUs)",
    )
    parser.add_argument(
        "--num-gpus",
        type=non_negative,
        default=None,
        help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--cpus-per-replica",
        type=non_negative,
        default=defaults.num_cpus_per_actor,
        help="CPUs reserved per model replica",
    )
    parser.add_argument(
        "--cpus-per-decode-task",
        type=non_negative,
        default=defaults.num_cpus_per_decode_task,
        help="CPUs reserved per decoding task",
    )
    parser.add_argument("--top-k", type=positive_int, default=defaults.top_k, help="classes listed per photo in top_k")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average each photo's probabilities with its mirror's",
    )
    add_unknown_arguments(parser)
    parser.add_argument(
        "--embeddings",
        action="store_true",
        help="add each photo's embedding (the model's penultimate features, float16) as the column embedding",
    )
    parser.add_argument(
        "--rows-per-file",
        type=positive_int,
        default=defaults.rows_per_file,
        help="rows per Parquet part (the shard size)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the parts already under --output and classify only the shards they lack",
    )
    parser.add_argument(
        "--decode",
        choices=DECODE_MODES,
        default=defaults.decode,
        help="where JPEGs are decoded (gpu, mixed: nvJPEG on the replica's GPU)",
    )
    parser.add_argument(
        "--gpu-share",
        type=share,
        default=defaults.gpu_share,
        help="with --decode mixed: the share of JPEGs decoded on the GPU",
    )
    parser.add_argument(
        "--s3-endpoint", default=None, help="S3-compatible endpoint URL (default: AWS_ENDPOINT_URL or AWS)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def format_summary(summary: JobSummary) -> str:
    lines = [
        f"Photos: {summary.files_seen}   classified: {summary.classified}   failed: {summary.failed}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in summary.failed_by_kind.items())})" if summary.failed else "")
        + (f"   duplicates left out: {summary.duplicates}" if summary.duplicates else ""),
        "Per class: "
        + ", ".join(f"{k} {v}" for k, v in summary.per_class.items())
        + ("" if summary.unknown is None else f"   flagged unknown: {summary.unknown} (label kept)"),
        f"This run: {summary.processed_this_run} photos in {summary.wall_time_s:.1f} s "
        f"({summary.images_per_second:.1f} images/s"
        + (
            f", {summary.steady_images_per_second:.1f} images/s after the first part"
            if summary.steady_images_per_second
            else ""
        )
        + ")"
        + (f"; {summary.already_done} were already done" if summary.already_done else ""),
    ]
    return "\n".join(lines)


def run_infer(args: argparse.Namespace) -> int:
    if args.concurrency is not None and (len(args.concurrency) > 2 or args.concurrency[0] > args.concurrency[-1]):
        raise Animals10Error("--concurrency takes N replicas, or MIN MAX with MIN at most MAX.")
    storage.set_s3_endpoint(args.s3_endpoint)
    concurrency = (
        None
        if args.concurrency is None
        else (args.concurrency[0] if len(args.concurrency) == 1 else tuple(args.concurrency))
    )
    config = BatchConfig(
        model_uri=args.model,
        input_uri=args.input,
        input_list=args.input_list,
        output_uri=args.output,
        batch_size=args.batch_size,
        concurrency=concurrency,
        num_gpus=args.num_gpus,
        num_cpus_per_actor=args.cpus_per_replica,
        num_cpus_per_decode_task=args.cpus_per_decode_task,
        top_k=args.top_k,
        tta=args.tta,
        unknown=not args.no_unknown,
        unknown_threshold=args.unknown_threshold,
        embeddings=args.embeddings,
        resume=args.resume,
        decode=args.decode,
        gpu_share=args.gpu_share,
        rows_per_file=args.rows_per_file,
        progress=not args.no_progress,
    )
    summary = classify_images(config)
    print(format_summary(summary))
    print(f"Predictions written to {config.output_uri} (summary: {storage.join(config.output_uri, SUMMARY_FILE)})")
    return 0
