"""`animals10 serve` and jobs/serve.py: serve a model over HTTP until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

from animals10.card import check_threshold, read_card
from animals10.cli.arguments import add_unknown_arguments
from animals10.cluster import connect_ray
from animals10.serve.app import build_app
from animals10.serve.config import (
    APP_NAME,
    DEFAULT_BATCH_WAIT_TIMEOUT_S,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BODY_MB,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_ONGOING_REQUESTS,
    DEFAULT_MAX_QUEUED_REQUESTS,
)
from animals10.serve.guards import read_api_key

logger = logging.getLogger(__name__)

# Ray Serve's high-throughput mode: HAProxy ingress that forwards to the replicas' own HTTP servers.
HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


SERVE_EXAMPLES = """\
  animals10 serve --model runs/exp1/efficientnet_lite0          # then open http://127.0.0.1:8000/
  curl -s -H 'content-type: image/jpeg' --data-binary @photo.jpg http://127.0.0.1:8000/predict
  animals10 serve --model s3://b/runs/exp1/efficientnet_lite0 --host 0.0.0.0 --autoscaling 1 4"""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model artifact directory or s3:// URI")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=8000)
    scaling = parser.add_mutually_exclusive_group()
    scaling.add_argument("--replicas", type=int, default=1, help="fixed number of replicas")
    scaling.add_argument(
        "--autoscaling", type=int, nargs=2, metavar=("MIN", "MAX"), help="autoscale between MIN and MAX replicas"
    )
    parser.add_argument(
        "--num-gpus", type=float, default=None, help="GPUs per replica (default: 1 if the cluster has GPUs, else 0)"
    )
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads per replica (default: torch's)"
    )
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    parser.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=DEFAULT_MAX_ONGOING_REQUESTS,
        help="requests a replica works on at once",
    )
    parser.add_argument(
        "--max-queued-requests",
        type=int,
        default=DEFAULT_MAX_QUEUED_REQUESTS,
        help="requests a replica holds beyond those; more are refused at once with 503 and Retry-After",
    )
    parser.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="require 'Authorization: Bearer <key>' on /predict and /model, the key in this file (or in "
        "$ANIMALS10_API_KEY); /healthz stays open",
    )
    parser.add_argument(
        "--high-throughput",
        action="store_true",
        help="HAProxy ingress straight to the replicas (RAY_SERVE_ENABLE_HA_PROXY=1, "
        "RAY_SERVE_THROUGHPUT_OPTIMIZED=1); on a remote cluster set both variables on every node before Ray starts",
    )
    parser.add_argument("--no-access-log", action="store_true", help="do not log a line per request")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average each photo's probabilities with its mirror's",
    )
    add_unknown_arguments(parser)
    parser.add_argument(
        "--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB, help="largest request body accepted (413 above)"
    )
    parser.add_argument(
        "--max-files", type=int, default=DEFAULT_MAX_FILES, help="most photos in one multipart request (400 above)"
    )


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    remote = bool(os.environ.get("RAY_ADDRESS"))
    if not remote or args.model.startswith("s3://"):
        card = read_card(args.model)  # a bad path fails here in one sentence, not in a replica's log
        if not args.no_unknown:
            check_threshold(card.open_world, args.unknown_threshold, args.model)
    key_file = os.path.abspath(args.api_key_file) if args.api_key_file else None
    protected = read_api_key(key_file) is not None  # a bad key fails here too
    if args.high_throughput and remote:
        logger.warning("--high-throughput only applies to a local Ray; set its variables on the cluster's nodes.")
    elif args.high_throughput:
        os.environ.update(HIGH_THROUGHPUT_ENV)  # read by the Serve controller and replicas this Ray starts
    connect_ray(new_local=True)  # locally, a new Ray: never another local cluster that happens to run
    num_gpus = args.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    # `ray job stop` and process managers send SIGTERM: stop as cleanly as on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(
        args.model,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
        max_body_mb=args.max_body_mb,
        max_files=args.max_files,
        num_replicas=args.replicas,
        autoscaling=tuple(args.autoscaling) if args.autoscaling else None,
        num_cpus=args.num_cpus,
        num_gpus=num_gpus,
        torch_threads=args.torch_threads,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        access_log=not args.no_access_log,
        tta=args.tta,
        unknown=not args.no_unknown,
        unknown_threshold=args.unknown_threshold,
        api_key_file=key_file,
    )
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(
            f"Serving {args.model} at http://{args.host}:{args.port}/predict; try it in a browser at "
            f"http://{args.host}:{args.port}/ (API docs at /docs)"
            f"{'; requests need the API key' if protected else ''}. Ctrl-C stops.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("Stopping.", flush=True)
    finally:
        if remote:
            serve.delete(APP_NAME)  # leave the cluster's Serve instance to its other apps
        else:
            serve.shutdown()
    return 0
