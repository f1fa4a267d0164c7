"""A soak and an overload of the Serve app, bounded in time and count, on 127.0.0.1 only.

    .venv/bin/python benchmarks/serve_soak.py [--clients 64] [--duration-s 600] [--overload-s 60] \
        [--overload-factor 4] [--output FILE]

1. Soak: N closed-loop clients send real photos from ../shared/data/bench-images for --duration-s,
   with --bad-share of bad requests mixed in (empty, truncated, not an image, a text body). Every
   status is counted per kind of request; requests/s, p50 and p99 per minute; the resident memory of
   Serve's proxy and each replica is sampled every --sample-s seconds.
2. Overload: open-loop arrivals at --overload-factor times the capacity measured in 1, for
   --overload-s: the p99 of the admitted requests against the p99 at capacity, and how fast the
   refused ones (503) were answered.

The model is a mobilenet_v2 artifact with random weights at 128 px (the cost of a real one). The load
comes from a separate process. Goals (issue 37): no unexpected status, memory at the end within 10% of
its value after warm-up, under overload p99 of the admitted under 2x the p99 at capacity and the rest
refused with 503 within 50 ms.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import (  # noqa: E402
    DEFAULT_IMAGES,
    free_port,
    images_exist,
    machine,
    photo_files,
    wait_until_ready,
    write_artifact,
)

BAD_KINDS = ("empty", "truncated", "not_image", "text")


def bad_request(kind: str, photo: bytes) -> tuple[bytes, str]:
    return {
        "empty": (b"", "image/jpeg"),
        "truncated": (photo[: len(photo) // 3], "image/jpeg"),
        "not_image": (b"this is not a photo " * 50, "image/jpeg"),
        "text": (b"hello", "text/plain"),
    }[kind]


# --- the load generator (its own process) ----------------------------------------------------------


async def post(http, url: str, body: bytes, content_type: str):
    """The status of one POST, or the name of the error that stopped it."""
    import aiohttp

    try:
        async with http.post(url, data=body, headers={"content-type": content_type}) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return type(error).__name__


def http_session(connections: int):
    """aiohttp, not httpx: at a few hundred requests a second httpx's own pool filled one core here,
    so the load generator, not the server, set the latencies."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def soak(url: str, photos: list[bytes], clients: int, duration_s: float, bad_share: float) -> list:
    """Closed loop: each client sends its next request as soon as the previous one is answered."""
    events: list = []  # (sent at, seconds, status, kind, seconds late: 0 in a closed loop)
    start = time.perf_counter()

    async def client(index: int, http) -> None:
        position, count = index * 997 % len(photos), 0
        while time.perf_counter() - start < duration_s:
            photo = photos[position]
            position, count = (position + 1) % len(photos), count + 1
            kind = BAD_KINDS[count % len(BAD_KINDS)] if (count * 7919 + index) % 1000 < bad_share * 1000 else "good"
            body, content_type = (photo, "image/jpeg") if kind == "good" else bad_request(kind, photo)
            sent = time.perf_counter()
            status = await post(http, url, body, content_type)
            events.append((sent - start, time.perf_counter() - sent, status, kind, 0.0))

    async with http_session(clients) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return events


async def overload(url: str, photos: list[bytes], rate: float, duration_s: float) -> list:
    """Open loop: requests arrive at `rate` a second whatever the answers, for `duration_s`. Each
    request is timed from when it was due, so a load generator that falls behind shows as latency
    (and how late it was sent is kept)."""
    events: list = []
    start = time.perf_counter()

    async def send(photo: bytes, due: float, http) -> None:
        lag = time.perf_counter() - due
        status = await post(http, url, photo, "image/jpeg")
        events.append((due - start, time.perf_counter() - due, status, "good", lag))

    async with http_session(4000) as http:
        tasks, index = [], 0
        while (due := start + index / rate) < start + duration_s:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(send(photos[index % len(photos)], due, http)))
            index += 1
        await asyncio.gather(*tasks)
    return events


def run_load(args) -> None:
    photos = [p.read_bytes() for p in photo_files(Path(args.images))]
    if args.load_rate:
        events = asyncio.run(overload(args.load_url, photos, args.load_rate, args.overload_s))
    else:
        events = asyncio.run(soak(args.load_url, photos, args.clients, args.duration_s, args.bad_share))
    print(json.dumps(events))


def load_process(args, url: str, rate: float | None = None) -> list:
    command = [sys.executable, __file__, "--load-url", url, "--images", str(args.images), "--clients",
               str(args.clients), "--duration-s", str(args.duration_s), "--bad-share", str(args.bad_share),
               "--overload-s", str(args.overload_s), "--load-rate", str(rate or 0)]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# --- what is measured ------------------------------------------------------------------------------


def serve_processes() -> dict[str, int]:
    """Serve's proxy and replicas (name -> pid, from Ray's actor table), and HAProxy's processes."""
    from ray._private.state import actors

    found = {}
    for actor in actors(actor_state_name="ALIVE").values():
        name = actor["ActorClassName"]
        if "ProxyActor" in name or "ServeReplica" in name:
            label = "proxy" if "ProxyActor" in name else f"replica {actor['Pid']}"
            found[label] = actor["Pid"]
    for entry in Path("/proc").iterdir():  # with --high-throughput, HAProxy carries the requests
        if entry.name.isdigit() and _command_name(entry) == "haproxy":
            found[f"haproxy {entry.name}"] = int(entry.name)
    return found


def _command_name(process: Path) -> str:
    try:
        return (process / "comm").read_text().strip()
    except OSError:
        return ""


def resident_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class MemorySampler(threading.Thread):
    def __init__(self, every_s: float):
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stop = every_s, [], threading.Event()
        self.start_time = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            at = time.perf_counter() - self.start_time
            self.samples.append({"t_s": round(at, 1), **{n: resident_mib(p) for n, p in serve_processes().items()}})
            self.stop.wait(self.every_s)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def status_counts(events: list) -> dict:
    counts: dict = {}
    for _, _, status, kind, _ in events:
        counts.setdefault(kind, {})
        counts[kind][str(status)] = counts[kind].get(str(status), 0) + 1
    return counts


def unexpected(events: list) -> int:
    """Good photos must get 200; bad requests a 4xx; anything else is unexpected."""
    return sum(
        1
        for _, _, status, kind, _ in events
        if not isinstance(status, int) or (status != 200 if kind == "good" else not 400 <= status < 500)
    )


def per_minute(events: list, duration_s: float) -> list[dict]:
    rows = []
    for minute in range(int(duration_s // 60) or 1):
        window = [e for e in events if minute * 60 <= e[0] < (minute + 1) * 60 and e[2] == 200 and e[3] == "good"]
        span = min(60.0, duration_s)
        latencies = [e[1] for e in window]
        rows.append(
            {
                "minute": minute + 1,
                "requests_per_s": round(len(window) / span, 1),
                "p50_ms": round(percentile(latencies, 0.5), 1),
                "p99_ms": round(percentile(latencies, 0.99), 1),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="soak seconds before memory is taken as settled")
    parser.add_argument("--bad-share", type=float, default=0.05)
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument("--overload-factor", type=float, default=4.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-ongoing-requests", type=int, default=None, help="default: the app's")
    parser.add_argument("--max-queued-requests", type=int, default=None, help="default: the app's")
    parser.add_argument(
        "--high-throughput", action="store_true", help="HAProxy ingress straight to the replica, as serve_load.py"
    )
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--load-url", help=argparse.SUPPRESS)
    parser.add_argument("--load-rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_url:
        run_load(args)
        return 0
    if not images_exist(args.images):
        return 2

    import ray
    from ray import serve

    from animals10.cli.serve import HIGH_THROUGHPUT_ENV
    from animals10.serve.app import build_app

    if args.high_throughput:
        os.environ.update(HIGH_THROUGHPUT_ENV)  # read when Ray starts; its controller and replicas inherit them
    given = {"max_ongoing_requests": args.max_ongoing_requests, "max_queued_requests": args.max_queued_requests}
    limits = {k: v for k, v in given.items() if v is not None}
    with tempfile.TemporaryDirectory() as tmp:
        artifact = str(Path(tmp) / "mobilenet_v2")
        write_artifact(artifact)
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(artifact, max_batch_size=args.max_batch_size, torch_threads=1, access_log=False, **limits)
        serve.run(app, name="animals10", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{base}/healthz")
        serving = __import__("httpx").get(f"{base}/model").json()["serving"]
        sampler = MemorySampler(args.sample_s)
        sampler.start()
        soak_events = load_process(args, f"{base}/predict")
        good_ok = [e for e in soak_events if e[2] == 200 and e[3] == "good"]
        capacity = len(good_ok) / args.duration_s
        p99_capacity = percentile([e[1] for e in good_ok], 0.99)
        overload_events = load_process(args, f"{base}/predict", rate=args.overload_factor * capacity)
        sampler.stop.set()
        sampler.join()
        serve.shutdown()
        ray.shutdown()

    samples = sampler.samples
    settled = next((s for s in samples if s["t_s"] >= args.warmup_s), samples[0])
    soak_end = [s for s in samples if s["t_s"] <= args.duration_s][-1]
    memory = {
        name: {"after_warmup_mib": round(settled[name], 1), "end_of_soak_mib": round(soak_end[name], 1),
               "change": round(soak_end[name] / settled[name] - 1, 3)}
        for name in settled if name != "t_s" and settled.get(name) and soak_end.get(name)
    }  # fmt: skip
    admitted = [e[1] for e in overload_events if e[2] == 200]
    refused = [e[1] for e in overload_events if e[2] == 503]
    result = {
        "machine": machine(),
        "settings": {**vars(args), "serving": serving},
        "soak": {
            "requests_per_s": round(len(soak_events) / args.duration_s, 1),
            "good_requests_per_s": round(capacity, 1),
            "p50_ms": round(percentile([e[1] for e in good_ok], 0.5), 1),
            "p99_ms": round(p99_capacity, 1),
            "statuses": status_counts(soak_events),
            "unexpected": unexpected(soak_events),
            "per_minute": per_minute(soak_events, args.duration_s),
        },
        "memory": memory,
        "memory_samples": samples,
        "overload": {
            "offered_per_s": round(args.overload_factor * capacity, 1),
            "statuses": status_counts(overload_events),
            "admitted_per_s": round(len(admitted) / args.overload_s, 1),
            "admitted_p99_ms": round(percentile(admitted, 0.99), 1),
            "admitted_p99_over_capacity_p99": round(percentile(admitted, 0.99) / p99_capacity, 2),
            "refused_p50_ms": round(percentile(refused, 0.5), 1),
            "refused_p99_ms": round(percentile(refused, 0.99), 1),
            "load_generator_lag_p99_ms": round(percentile([e[4] for e in overload_events], 0.99), 1),
        },
    }
    print(json.dumps({k: v for k, v in result.items() if k != "memory_samples"}, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
