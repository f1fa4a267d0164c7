"""Closed-loop HTTP load on the Serve app, next to a plain FastAPI + uvicorn baseline, in one run.

    .venv/bin/python benchmarks/serve_load.py [--clients 1 8 32] [--duration-s 30] [--high-throughput] \
        [--output FILE]

Both servers hold the same model: a mobilenet_v2 artifact with random weights at 128 px (the cost
of a real one; accuracy does not matter here). The baseline is one uvicorn process that decodes and
classifies each request on its own, with no batching; ours is `animals10.serve.app.build_app` on a local
Ray. The load comes from a separate process per measurement: N clients on 127.0.0.1, each sending
the next real photo from ../shared/data/bench-images as soon as its previous answer arrived. The
photos are read from there, never copied into the repository.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "bench-images"
IMAGE_SIZE = 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_artifact(uri: str) -> str:
    import torch

    from animals10.artifact import save_artifact
    from animals10.card import ModelCard, Preprocessing
    from animals10.labels import ANIMALS10_CLASSES
    from animals10.models import create_model, get_model_spec

    torch.manual_seed(0)
    spec = get_model_spec("mobilenet_v2")
    card = ModelCard("mobilenet_v2", list(ANIMALS10_CLASSES), Preprocessing(IMAGE_SIZE, spec.mean, spec.std))
    return save_artifact(create_model("mobilenet_v2", len(ANIMALS10_CLASSES), pretrained=False), card, uri)


# --- the baseline server ---------------------------------------------------------------------------


def run_baseline_server(artifact: str, port: int, torch_threads: int) -> None:
    """One process, one request at a time through the model: decode, predict a batch of one, answer."""
    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from animals10.imaging import ImageDecodeError, load_array
    from animals10.predictor import Predictor

    torch.set_num_threads(torch_threads)
    predictor = Predictor(artifact, device="cpu")
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request):
        data = await request.body()
        try:
            array = load_array(data, predictor.preprocessing)
        except ImageDecodeError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        result = predictor.describe(predictor.predict(array[None].copy()))[0]
        return JSONResponse({"model_id": predictor.model_id, "predictions": [result]})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the load generator (its own process) ----------------------------------------------------------


def images_exist(images_dir: str) -> bool:
    """Whether the photo folder exists; says so on stderr when it does not."""
    if not Path(images_dir).is_dir():
        print(f"error: the photo folder '{images_dir}' does not exist; pass --images.", file=sys.stderr)
        return False
    return True


def photo_files(images_dir: Path) -> list[Path]:
    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    random.Random(0).shuffle(files)
    return files


async def closed_loop(url: str, photos: list[bytes], clients: int, warmup_s: float, duration_s: float) -> dict:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    failures: dict[str, int] = {}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    async def client(index: int, http: httpx.AsyncClient) -> None:
        position = index * 997 % len(photos)
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            data = photos[position]
            position = (position + 1) % len(photos)
            try:
                response = await http.post(url, content=data, headers={"content-type": "image/jpeg"})
                ok = response.status_code == 200
                reason = str(response.status_code)
            except httpx.HTTPError as error:
                ok, reason = False, type(error).__name__
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                if ok:
                    latencies.append(done - sent)
                    if "x-batch-size" in response.headers:
                        batch_sizes.append(int(response.headers["x-batch-size"]))
                else:
                    failures[reason] = failures.get(reason, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return {"latencies_s": latencies, "batch_sizes": batch_sizes, "failures": failures, "duration_s": duration_s}


def summarise(clients: int, slices: list[dict]) -> dict:
    """Slices of one system at one level -> requests/s, latency percentiles, failures, mean batch."""
    latencies = sorted(x for s in slices for x in s["latencies_s"])
    batch_sizes = [x for s in slices for x in s["batch_sizes"]]
    failures: dict[str, int] = {}
    for s in slices:
        for reason, count in s["failures"].items():
            failures[reason] = failures.get(reason, 0) + count

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "clients": clients,
        "requests": len(latencies),
        "failed": sum(failures.values()),
        "failures": failures,
        "requests_per_s": len(latencies) / sum(s["duration_s"] for s in slices),
        "p50_ms": percentile(0.50),
        "p95_ms": percentile(0.95),
        "p99_ms": percentile(0.99),
        "mean_batch_size": sum(batch_sizes) / len(batch_sizes) if batch_sizes else None,
    }


def run_load(args) -> None:
    photos = [p.read_bytes() for p in photo_files(Path(args.images))]
    result = asyncio.run(closed_loop(args.load_url, photos, args.clients[0], args.warmup_s, args.duration_s))
    print(json.dumps(result))


def measure(url: str, clients: int, args, duration_s: float) -> dict:
    command = [
        sys.executable,
        __file__,
        "--load-url",
        url,
        "--clients",
        str(clients),
        "--images",
        str(args.images),
        "--warmup-s",
        str(args.warmup_s),
        "--duration-s",
        str(duration_s),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def wait_until_ready(url: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready within {timeout_s:.0f} s.")


def ratio(ours: float, baseline: float) -> float:
    return ours / baseline if baseline else float("nan")


def machine() -> dict:
    import ray
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration-s", type=float, default=30.0, help="measured seconds per level and system")
    parser.add_argument(
        "--rounds", type=int, default=3, help="slices the measured time is split into, alternating the systems"
    )
    parser.add_argument("--warmup-s", type=float, default=2.0, help="seconds of load before each slice is measured")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--torch-threads", type=int, default=1, help="per Serve replica")
    parser.add_argument("--baseline-torch-threads", type=int, default=1, help="the baseline's best on 2 busy cores")
    parser.add_argument(
        "--high-throughput",
        action="store_true",
        help="start Ray with RAY_SERVE_ENABLE_HA_PROXY=1 and RAY_SERVE_THROUGHPUT_OPTIMIZED=1 "
        "(HAProxy ingress straight to the replica)",
    )
    parser.add_argument("--output", help="also write the results as JSON here")
    # Internal modes: the baseline server and the load generator run as their own processes.
    parser.add_argument("--baseline-server", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        run_baseline_server(args.baseline_server, args.port, args.baseline_torch_threads)
        return 0
    if args.load_url:
        run_load(args)
        return 0
    if not images_exist(args.images):
        return 2

    import ray
    from ray import serve

    from animals10.cli.serve import HIGH_THROUGHPUT_ENV
    from animals10.serve.app import build_app

    work_dir = tempfile.mkdtemp(prefix="serve-load-")
    artifact = str(Path(work_dir) / "mobilenet_v2")
    write_artifact(artifact)
    base_port, serve_port = free_port(), free_port()
    baseline = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--baseline-server",
            artifact,
            "--port",
            str(base_port),
            "--baseline-torch-threads",
            str(args.baseline_torch_threads),
        ]
    )
    results = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("baseline_server", "port", "load_url")},
        "levels": [],
    }
    if args.high_throughput:
        # Read when Ray starts; the local cluster's controller and replicas inherit them.
        os.environ.update(HIGH_THROUGHPUT_ENV)
    try:
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        serve.run(
            build_app(
                artifact,
                max_batch_size=args.max_batch_size,
                batch_wait_timeout_s=args.batch_wait_timeout_s,
                num_replicas=args.replicas,
                num_cpus=1,
                torch_threads=args.torch_threads,
                access_log=False,
            ),
            name="animals10",
            route_prefix="/",
        )
        wait_until_ready(f"http://127.0.0.1:{base_port}/healthz")
        wait_until_ready(f"http://127.0.0.1:{serve_port}/healthz")
        # Alternating in short slices, so that both systems see the same background load.
        slice_s = args.duration_s / args.rounds
        for clients in args.clients:
            slices: dict[str, list] = {"baseline": [], "serve": []}
            for _ in range(args.rounds):
                for name, port in (("baseline", base_port), ("serve", serve_port)):
                    slices[name].append(measure(f"http://127.0.0.1:{port}/predict", clients, args, slice_s))
            row = {"clients": clients, **{name: summarise(clients, parts) for name, parts in slices.items()}}
            for name in ("baseline", "serve"):
                print(name, json.dumps(row[name]), flush=True)
            results["levels"].append(row)
    finally:
        baseline.terminate()
        baseline.wait()
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work_dir, ignore_errors=True)

    print()
    print(
        f"{'clients':>7} | {'system':8} | {'req/s':>7} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} "
        "| failed | mean batch"
    )
    for row in results["levels"]:
        for name in ("baseline", "serve"):
            r = row[name]
            batch = f"{r['mean_batch_size']:.1f}" if r["mean_batch_size"] else "-"
            print(
                f"{row['clients']:>7} | {name:8} | {r['requests_per_s']:7.1f} | {r['p50_ms']:7.1f} | "
                f"{r['p95_ms']:7.1f} | {r['p99_ms']:7.1f} | {r['failed']:6d} | {batch}"
            )
        ratios = [
            ratio(row["serve"][key], row["baseline"][key]) for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms")
        ]
        print(f"{'':>7} | ratio    | " + " | ".join(f"{r:7.2f}" for r in ratios) + " |")
    print(json.dumps(results["machine"]))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
