"""Does the batch job hold at bucket scale? Time to the first part, the driver's peak memory, steady
images/s and the start of a resume, for trees of 10,000 to 1,000,000 photos, next to Ray's own
`read_images -> map_batches -> write_parquet` on the same inputs, in one run, on this machine.

    .venv/bin/python benchmarks/batch_scale.py [--sizes 10000 100000 1000000] [--s3-keys 50000] \
        [--max-half-way 50000] [--window-rows 6000] [--anchor-limit 100000] [--json FILE]

The trees are made of symbolic links to the smallest real photos of `bench-images`, in 10 class
folders as Animals-10 is laid out; the S3 input is that many keys on a loopback S3 server (moto).
The model is the from-scratch CNN at 64 px with random weights: cheap, so that what grows with the
input (listing, the driver) shows instead of inference. Each measurement runs in its own driver
process joined to one shared local Ray, so that its `VmHWM` (peak resident memory) is its own. Times
run from the launch of that process (Python and `ray.init` included) to when a part exists in
storage (its modification time). A run stops (its driver killed) once `--window-rows` photos have
followed its first part: the steady rate is those photos over their time, the same window at every
size. The resume run is killed when half the photos are done (or, on trees larger than
`--max-half-way`, at that many photos) and started again with `--resume`; its figures are the times
until its first replica begins its first new shard (`started_at` in the part's metadata) and until
that part is written. Start-up on a small machine varies by seconds, so the output as the kill left
it is kept aside and the resume is timed `RESUME_TRIALS` times, each from a copy of it: the table
shows their median and range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "bench-images"
RESUME_TRIALS = 3  # resumes timed, each from the output as the kill left it
CLASSES = ["cane", "cavallo", "elefante", "farfalla", "gallina", "gatto", "mucca", "pecora", "ragno", "scoiattolo"]


def written_at(uri: str, stats: dict) -> float:
    """When a part came to exist, in Unix seconds: its modification time on disk. The loopback S3
    server keeps whole seconds only, so there the time its replica finished it (the PUT follows)."""
    if uri.startswith("s3://"):
        return stats["started_at"] + stats["classify_seconds"]
    return os.stat(uri).st_mtime


def peak_memory_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# One measurement, in its own driver process


def child(args: argparse.Namespace) -> None:
    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], configure_logging=False, log_to_driver=False)
    result_file = Path(args.result)
    # (seconds from launch until the part was written, rows, seconds from launch until its replica began it)
    parts: list[tuple[float, int, float | None]] = []

    def window_full() -> bool:
        return sum(p[1] for p in parts[1:]) >= args.window_rows

    def finish(kill: bool) -> None:
        parts.sort()
        window, rows = [], 0
        for part in parts[1:]:
            if rows >= args.window_rows:
                break
            window.append(part)
            rows += part[1]
        steady = rows / (window[-1][0] - parts[0][0]) if window and window[-1][0] > parts[0][0] else None
        began = [p[2] for p in parts if p[2] is not None]
        result = {
            "first_part_s": parts[0][0] if parts else None,
            "first_classifying_s": min(began) if began else None,
            "first_part_rows": parts[0][1] if parts else None,
            "steady_ips": steady,
            "steady_window_rows": rows,
            "peak_mib": peak_memory_mib(),
            "parts": [p[:2] for p in parts],
        }
        result_file.write_text(json.dumps(result))
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)  # as a lost driver: no clean-up of any kind

    if args.child in ("ours", "ours-resume"):
        from animals10.batch.job import BatchConfig, classify_images
        from animals10.batch.parts import read_part_stats

        done = [0]

        def on_part(uri: str) -> None:
            stats = read_part_stats(uri)
            rows = stats["rows"]
            parts.append((written_at(uri, stats) - args.launched_at, rows, stats["started_at"] - args.launched_at))
            done[0] += rows
            if args.stop_after_rows and done[0] >= args.stop_after_rows:
                finish(kill=True)
            if not args.stop_after_rows and window_full():
                finish(kill=True)

        config = BatchConfig(
            args.model,
            args.input,
            args.output,
            batch_size=64,
            rows_per_file=1000,
            resume=args.child == "ours-resume",
            progress=False,
        )
        classify_images(config, on_part_written=on_part)
        finish(kill=False)
        return

    # Ray's own pipeline: read_images lists and reads, map_batches classifies, write_parquet writes.
    import numpy as np

    from animals10.predictor import Predictor

    class Classify:
        def __init__(self, model_uri: str):
            self.predictor = Predictor(model_uri, device="cpu")

        def __call__(self, batch: dict) -> dict:
            probabilities = self.predictor.predict_probabilities(np.stack(batch["image"]))
            labels = [self.predictor.class_names[i] for i in probabilities.argmax(1)]
            return {"path": batch["path"], "label": np.array(labels)}

    stop = threading.Event()

    def watch_output() -> None:
        import pyarrow.parquet as pq

        seen: set[str] = set()
        while not stop.is_set():
            for path in Path(args.output).glob("*.parquet"):
                if path.name not in seen:
                    seen.add(path.name)
                    rows = pq.read_metadata(path).num_rows
                    parts.append((path.stat().st_mtime - args.launched_at, rows, None))
            if window_full():
                finish(kill=True)
            time.sleep(0.2)

    threading.Thread(target=watch_output, daemon=True).start()
    filesystem = None
    if args.input.startswith("s3://"):
        from animals10.storage import arrow_filesystem

        filesystem = arrow_filesystem(args.input)[0]
    ds = ray.data.read_images(args.input, size=(64, 64), mode="RGB", include_paths=True, filesystem=filesystem)
    ds = ds.map_batches(
        Classify,
        batch_size=64,
        fn_constructor_kwargs={"model_uri": args.model},
        compute=ray.data.ActorPoolStrategy(size=1),
    )
    ds.write_parquet(args.output, min_rows_per_file=1000)
    stop.set()
    finish(kill=False)


# ---------------------------------------------------------------------------------------------
# The driver of the benchmark


def build_tree(root: Path, photos: list[Path], count: int) -> str:
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(c, count, len(CLASSES)):
            os.symlink(photos[i % len(photos)], folder / f"{i:07d}.jpg")
    return str(root)


def measure(
    mode: str, input_uri: str, output: str, model: str, env: dict, window: int, stop_after_rows: int = 0
) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    argv = [sys.executable, __file__, "--child", mode, "--input", input_uri, "--output", output, "--model", model]
    argv += ["--result", result, "--window-rows", str(window), "--stop-after-rows", str(stop_after_rows)]
    argv += ["--launched-at", repr(time.time())]
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600)
    if not Path(result).stat().st_size:
        print(done.stderr.decode()[-3000:], file=sys.stderr)
    figures = json.loads(Path(result).read_text()) if Path(result).stat().st_size else {"error": "no result"}
    os.unlink(result)
    shown = {k: v for k, v in figures.items() if k != "parts"}
    print(f"  {mode:12s} {json.dumps(shown)}", flush=True)
    return figures


def upload_keys(bucket: str, photos: list[Path], count: int) -> str:
    from concurrent.futures import ThreadPoolExecutor

    from animals10 import storage

    client = storage.s3_client()
    client.create_bucket(Bucket=bucket)
    blobs = [p.read_bytes() for p in photos]

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"raw-img/{CLASSES[i % 10]}/{i:07d}.jpg", Body=blobs[i % len(blobs)])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))
    return f"s3://{bucket}/raw-img/"


def copy_output(source: str, target: str) -> None:
    """Makes `target` (a folder, or an S3 prefix ending in '/') hold exactly what `source` holds."""
    if not source.startswith("s3://"):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)
        return
    from animals10 import storage

    client = storage.s3_client()
    bucket, source_prefix = storage.split_s3(source)
    target_prefix = storage.split_s3(target)[1]
    for page in storage.iter_s3_objects(target):
        for uri in page:
            client.delete_object(Bucket=bucket, Key=storage.split_s3(uri)[1])
    for page in storage.iter_s3_objects(source):
        for uri in page:
            key = storage.split_s3(uri)[1]
            client.copy_object(
                Bucket=bucket,
                Key=target_prefix + key[len(source_prefix) :],
                CopySource={"Bucket": bucket, "Key": key},
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--s3-keys", type=int, default=50_000, help="keys on the loopback S3 server (0: none)")
    parser.add_argument(
        "--window-rows", type=int, default=6000, help="photos after the first part the steady rate is measured over"
    )
    parser.add_argument(
        "--max-half-way", type=int, default=50_000, help="the resume run is killed after at most this many photos"
    )
    parser.add_argument(
        "--anchor-limit", type=int, default=100_000, help="inputs larger than this skip Ray's read_images"
    )
    parser.add_argument("--json", help="write the figures here as JSON")
    # A measurement (internal)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("--input", "--output", "--model", "--result"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--stop-after-rows", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    import ray

    jpegs = (p.resolve() for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    photos = sorted(jpegs, key=lambda p: (p.stat().st_size, p.name))[:300]  # the 300 smallest
    if not photos:
        print(f"No photos under {args.images}.", file=sys.stderr)
        return 1
    results: dict = {"machine": describe_machine(), "photos_linked": len(photos), "runs": []}
    print(results["machine"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_artifact(Path(tmp))
        server = None
        if args.s3_keys:  # before Ray starts: its workers inherit the endpoint and the (fake) credentials
            import logging

            from moto.server import ThreadedMotoServer

            from animals10 import storage

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
            port = free_port()
            os.environ.update(
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            )
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            storage._client.cache_clear()
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        from animals10.cluster import RAY_DATA_SETTINGS

        # Every driver, Ray's pipeline too, with our Ray Data settings: a killed driver's requests
        # otherwise hold half the cluster for 180 s from whichever job comes next.
        env = {
            **RAY_DATA_SETTINGS,
            **os.environ,
            "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        inputs = []
        for size in args.sizes:
            built = time.perf_counter()
            inputs.append((f"tree of {size:,}", size, build_tree(Path(tmp) / f"tree{size}", photos, size)))
            print(f"built a tree of {size:,} links in {time.perf_counter() - built:.0f} s", flush=True)
        if server is not None:
            inputs.append((f"S3, {args.s3_keys:,} keys", args.s3_keys, upload_keys("bench", photos, args.s3_keys)))
        for name, size, input_uri in inputs:
            print(name, flush=True)

            def out(label: str, input_uri=input_uri, size=size) -> str:
                return (
                    f"s3://bench/out-{label}/"
                    if input_uri.startswith("s3://")
                    else str(Path(tmp) / f"out-{size}-{label}")
                )

            run = {"input": name, "size": size}
            run["ours"] = measure("ours", input_uri, out("ours"), model, env, args.window_rows)
            half = min(size // 2, args.max_half_way)
            run["killed_after"] = half
            measure("ours", input_uri, out("resume"), model, env, args.window_rows, stop_after_rows=half)
            copy_output(out("resume"), out("killed"))
            run["resume"] = []
            for _ in range(RESUME_TRIALS):
                copy_output(out("killed"), out("resume"))
                run["resume"].append(measure("ours-resume", input_uri, out("resume"), model, env, 0))
            if size <= args.anchor_limit:
                run["ray_read_images"] = measure("ray", input_uri, out("ray"), model, env, args.window_rows)
            else:
                run["ray_read_images"] = {"first_part_s": None, "skipped": f"over --anchor-limit {args.anchor_limit}"}
            results["runs"].append(run)
        if server is not None:
            server.stop()
        ray.shutdown()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict) -> None:
    runs = results["runs"]
    base = runs[0]["ours"]
    print()
    print(
        "| input | method | first part | vs smallest | driver peak | vs smallest | steady img/s | vs smallest "
        "| resume: classifying / first new part |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in runs:
        for key, label in (("ours", "animals10"), ("ray_read_images", "Ray read_images")):
            r = runs[0][key] if key == "ray_read_images" else base
            f = run[key]
            if f.get("first_part_s") is None:
                print(f"| {run['input']} | {label} | {f.get('skipped', 'no part')} | | | | | | |")
                continue
            resume = describe_resume(run) if key == "ours" else "—"
            print(
                f"| {run['input']} | {label} | {f['first_part_s']:.1f} s | "
                f"{f['first_part_s'] - r['first_part_s']:+.1f} s | "
                f"{f['peak_mib']:.0f} MiB | {f['peak_mib'] - r['peak_mib']:+.0f} MiB | {f['steady_ips'] or 0:.0f} | "
                f"{(f['steady_ips'] or 0) / (r['steady_ips'] or 1):.2f}x | {resume} |"
            )


def describe_resume(run: dict) -> str:
    """The trials' median (and range) until classifying, and their median until the first new part."""
    trials = [t for t in run["resume"] if t.get("first_part_s")]
    if not trials:
        return "no new part"
    classifying = sorted(t["first_classifying_s"] for t in trials)
    first_part = statistics.median(t["first_part_s"] for t in trials)
    return (
        f"{statistics.median(classifying):.1f} s ({classifying[0]:.1f}–{classifying[-1]:.1f}) / {first_part:.1f} s "
        f"(after {run['killed_after']:,})"
    )


def build_artifact(root: Path) -> str:
    import torch

    from animals10.artifact import save_artifact
    from animals10.card import ModelCard, Preprocessing
    from animals10.labels import ANIMALS10_CLASSES
    from animals10.models import create_model

    torch.manual_seed(0)
    uri = str(root / "custom_cnn")
    save_artifact(
        create_model("custom_cnn", 10),
        ModelCard("custom_cnn", list(ANIMALS10_CLASSES), Preprocessing(image_size=64)),
        uri,
    )
    return uri


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def describe_machine() -> str:
    import ray

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return f"{os.cpu_count()} CPU cores ({cpu}), no GPU; Python {platform.python_version()}, Ray {ray.__version__}"


if __name__ == "__main__":
    sys.exit(main())
