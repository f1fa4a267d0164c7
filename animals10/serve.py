"""The HTTP app (layer 2): one model artifact behind a Ray Serve deployment with a FastAPI ingress.

    POST /predict   one photo as the raw body (image/*), or several as multipart/form-data
    GET  /healthz   200 once the model is loaded, 503 before
    GET  /model     the model card: classes, architecture, input size, metrics
    GET  /docs      OpenAPI documentation

Photos are decoded with `animals10.imaging.load_array` at the card's input size and classified by
`animals10.predictor.Predictor`, the same code path as batch inference, so the same photo gets the
same probabilities online and offline. Concurrent requests are grouped with `@serve.batch`; the batch
size, the batch wait and the artifact URI live in the deployment's `user_config`, so `reconfigure()`
changes them, and rolls out a new model, without restarting replicas.
"""

import argparse
import asyncio
import functools
import logging
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from animals10.imaging import ImageDecodeError, load_array
from animals10.predictor import Predictor

logger = logging.getLogger(__name__)

APP_NAME = "animals10"
DEPLOYMENT_NAME = "Classifier"
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.0  # batches fill from the backlog while the model is busy (see `classify`)
DEFAULT_MAX_BODY_MB = 10.0
DEFAULT_MAX_FILES = 16
# Requests a replica accepts at once: at least max_batch_size * MAX_CONCURRENT_BATCHES, or batches
# never fill (ray-project/ray#43288). A waiting request holds its body and one decoded photo (~50 KB).
DEFAULT_MAX_ONGOING_REQUESTS = 256
# Batches @serve.batch may hand over while the model is busy; they are merged (see `classify`).
MAX_CONCURRENT_BATCHES = 16
# Ray Serve's high-throughput mode: HAProxy ingress that forwards to the replicas' own HTTP servers.
HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# Photos up to this size are decoded on the event loop: at the model's input size a typical JPEG
# decodes in about a millisecond, less than a hand-off to a thread costs on a busy machine.
INLINE_DECODE_MAX_BYTES = 256_000
RAW_BODY_TYPES = ("image/", "application/octet-stream")

# Decode-error kind -> HTTP status.
DECODE_ERROR_STATUS = {"empty": 400, "not_image": 415, "corrupt": 400, "too_large": 413}


class RequestError(Exception):
    """A bad request: answered with `status` and {"error": message}, and the server carries on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ModelConfig:
    """The deployment's `user_config`: what may change on a running replica."""

    model_uri: str
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S
    tta: bool = False  # test-time augmentation: average with the mirrored photo

    @classmethod
    def from_user_config(cls, values: dict | None) -> "ModelConfig":
        values = dict(values or {})
        unknown = set(values) - {"model_uri", "max_batch_size", "batch_wait_timeout_s", "tta"}
        if unknown:
            raise ValueError(
                f"Unknown user_config keys {sorted(unknown)}; use model_uri, max_batch_size, batch_wait_timeout_s and tta."
            )
        if not values.get("model_uri"):
            raise ValueError(
                "The deployment's user_config has no model_uri; set it to a model artifact directory or s3:// URI."
            )
        config = cls(
            str(values["model_uri"]),
            int(values.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
            float(values.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_TIMEOUT_S)),
            bool(values.get("tta", False)),
        )
        if config.max_batch_size < 1 or config.batch_wait_timeout_s < 0:
            raise ValueError("user_config needs max_batch_size >= 1 and batch_wait_timeout_s >= 0.")
        return config

    def to_user_config(self) -> dict:
        return {
            "model_uri": self.model_uri,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "tta": self.tta,
        }


# --- the FastAPI app -------------------------------------------------------------------------------

api = FastAPI(
    title="Animals-10 classifier",
    description="Classifies photos into the ten Animals-10 classes with the model the batch jobs use.",
    version="1",
)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(RequestError)
async def _request_error(request: Request, error: RequestError) -> JSONResponse:
    return error_response(error.status, error.message)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path}; use {allowed or 'another method'}."
    elif error.status_code == 404:
        message = f"There is no {request.url.path}; see /docs for the API."
    else:
        message = str(error.detail)
    return error_response(error.status_code, message, error.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(400, f"The request is malformed ({error.errors()[0].get('msg', 'invalid')}).")


@api.exception_handler(Exception)
async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "The server failed to classify the photo; the replica's log has the details.")


def body_limit_error(max_body_bytes: int) -> RequestError:
    return RequestError(
        413, f"The request body is over the limit of {max_body_bytes / 1e6:g} MB; send a smaller photo."
    )


async def limited_stream(request: Request, max_body_bytes: int):
    """The body's chunks, failing as soon as more than `max_body_bytes` arrived (chunked uploads)."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_body_bytes:
            raise body_limit_error(max_body_bytes)
        if chunk:
            yield chunk


def check_content_length(request: Request, max_body_bytes: int) -> int | None:
    """Rejects a declared body over the limit before reading any of it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        raise RequestError(400, f"The Content-Length header '{declared}' is not a number.") from None
    if length > max_body_bytes:
        raise body_limit_error(max_body_bytes)
    return length


async def read_photos(request: Request, max_body_bytes: int, max_files: int) -> list[tuple[str | None, bytes]]:
    """The request's photos as (file name or None, bytes); raises RequestError for bad requests."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (content_type == "multipart/form-data" or content_type.startswith(RAW_BODY_TYPES)):
        raise RequestError(
            415,
            f"The content type '{content_type or 'none'}' is not supported; send a photo as image/* or files as multipart/form-data.",
        )
    if check_content_length(request, max_body_bytes) == 0:
        raise RequestError(400, "The request body is empty; send a photo.")
    if content_type != "multipart/form-data":
        body = bytearray()
        async for chunk in limited_stream(request, max_body_bytes):
            body += chunk
        if not body:
            raise RequestError(400, "The request body is empty; send a photo.")
        return [(None, bytes(body))]

    # Files over 1 MB spool to disk while parsing; the parser stops at the (max_files + 1)th file.
    parser = MultiPartParser(
        request.headers, limited_stream(request, max_body_bytes), max_files=max_files, max_fields=max_files
    )
    try:
        form = await parser.parse()
    except MultiPartException as error:
        if "Too many files" in str(error):
            raise RequestError(
                400, f"The request holds more than {max_files} files; send at most {max_files} per request."
            ) from None
        raise RequestError(400, f"The multipart body cannot be parsed ({error}).") from None
    try:
        uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not uploads:
            raise RequestError(400, "The multipart body holds no files; send each photo as a file field.")
        return [(upload.filename, await upload.read()) for upload in uploads]
    finally:
        await form.close()


def decode_photo(name: str | None, data: bytes, size: int) -> np.ndarray:
    """Bytes -> (size, size, 3) uint8 through the one decode path; bad photos become RequestErrors."""
    try:
        return load_array(data, size)
    except ImageDecodeError as error:
        what = f"The file '{name}'" if name else "The photo"
        raise RequestError(DECODE_ERROR_STATUS.get(error.kind, 400), f"{what} cannot be used: {error}.") from None


def predict_batch(predictor: Predictor, images: np.ndarray) -> list[dict]:
    """(B, S, S, 3) uint8 -> one description per photo, with the model id."""
    results = predictor.describe(predictor.predict_probabilities(images))
    for result in results:
        result["model_id"] = predictor.model_id
    return results


# --- the deployment --------------------------------------------------------------------------------


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS)
@serve.ingress(api)
class Classifier:
    """One replica: a Predictor, a batch queue in front of it, and the HTTP routes.

    The model is loaded in `reconfigure()` (Serve calls it with the user_config right after
    `__init__`, before routing traffic here) and replaced there when the URI changes.
    """

    def __init__(
        self,
        max_body_mb: float = DEFAULT_MAX_BODY_MB,
        max_files: int = DEFAULT_MAX_FILES,
        torch_threads: int | None = None,
    ):
        import torch

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.max_body_bytes = int(max_body_mb * 1_000_000)
        self.max_files = int(max_files)
        self.predictor: Predictor | None = None
        self.config: ModelConfig | None = None
        # One thread runs the model, so the event loop keeps accepting and decoding requests meanwhile.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._reconfigure_lock = asyncio.Lock()
        self._waiting: deque = deque()  # (items of one @serve.batch batch, future of their results)
        self._runner: asyncio.Task | None = None

    async def reconfigure(self, user_config: dict) -> None:
        config = ModelConfig.from_user_config(user_config)
        async with self._reconfigure_lock:
            self.classify.set_max_batch_size(config.max_batch_size)
            self.classify.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
            if (
                self.predictor is None
                or self.config is None
                or (config.model_uri, config.tta) != (self.config.model_uri, self.config.tta)
            ):
                started = time.perf_counter()
                # Loaded off the event loop: the old model keeps answering until the new one is ready.
                load = functools.partial(Predictor, config.model_uri, tta=config.tta)
                predictor = await asyncio.get_running_loop().run_in_executor(None, load)
                self.predictor = predictor
                logger.info(
                    "Serving %s from %s (loaded in %.1f s).",
                    predictor.model_id,
                    config.model_uri,
                    time.perf_counter() - started,
                )
            self.config = config

    def check_health(self) -> None:
        if self.predictor is None:
            raise RuntimeError("The model is not loaded.")

    @serve.batch(
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S,
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
    )
    async def classify(self, items: list[tuple[Predictor, np.ndarray]]) -> list[tuple[dict, int]]:
        """Photos from concurrent requests -> (description, model batch size) each.

        `@serve.batch` closes a batch after batch_wait_timeout_s and starts the next one while the
        model is still busy, so under load several small batches wait for the model at once. They
        queue here, and the model takes as many of them as fit in max_batch_size whenever it is
        free: batches fill from the backlog under load, while a lone request waits only the timeout.
        """
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run_model())
        return await future

    async def _run_model(self) -> None:
        """Runs the model on the oldest waiting batches until none is left."""
        while self._waiting:
            limit = self.config.max_batch_size if self.config else DEFAULT_MAX_BATCH_SIZE
            taken = [self._waiting.popleft()]
            while self._waiting and sum(len(items) for items, _ in taken) + len(self._waiting[0][0]) <= limit:
                taken.append(self._waiting.popleft())
            try:
                results = await self._predict([item for items, _ in taken for item in items])
            except Exception as error:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
                for _, future in taken:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for items, future in taken:
                if not future.done():  # a request whose client went away is cancelled
                    future.set_result(results[start : start + len(items)])
                start += len(items)

    async def _predict(self, items: list[tuple[Predictor, np.ndarray]]) -> list[tuple[dict, int]]:
        """One model batch. Each photo carries the predictor its request started with, so a roll-out
        in the middle of a batch never feeds a photo decoded at one model's size to another."""
        loop = asyncio.get_running_loop()
        groups: dict[int, tuple[Predictor, list[int]]] = {}
        for index, (predictor, _) in enumerate(items):
            groups.setdefault(id(predictor), (predictor, []))[1].append(index)
        results: list = [None] * len(items)
        for predictor, indices in groups.values():
            images = np.stack([items[i][1] for i in indices])  # (B, S, S, 3) uint8
            described = await loop.run_in_executor(self._model_thread, predict_batch, predictor, images)
            for index, result in zip(indices, described):
                results[index] = (result, len(indices))
        return results

    @api.post(
        "/predict",
        summary="Classify one or more photos",
        description=(
            "Send one photo as the raw body with an image/* content type, or one or more photos as "
            "multipart/form-data file fields. Answers, per photo: label, confidence, top_k and model_id. "
            "The x-batch-size header says how many photos the largest model batch holding this request's photos had."
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                        }
                    },
                },
            },
            "responses": {
                "400": {"description": "empty, corrupt or truncated photo, too many files, malformed request"},
                "413": {"description": "body over the size limit, or an image with too many pixels"},
                "415": {"description": "not an image, or an unsupported content type"},
            },
        },
    )
    async def predict(self, request: Request) -> JSONResponse:
        predictor = self.predictor
        if predictor is None:
            raise RequestError(503, "The model is not loaded yet; retry in a moment.")
        photos = await read_photos(request, self.max_body_bytes, self.max_files)
        size = predictor.image_size
        arrays = await asyncio.gather(*(self._decode(name, data, size) for name, data in photos))
        answers = await asyncio.gather(*(self.classify((predictor, array)) for array in arrays))
        predictions = [{"file": name, **result} for (name, _), (result, _) in zip(photos, answers)]
        batch_size = max(size for _, size in answers)
        return JSONResponse(
            {"model_id": predictor.model_id, "predictions": predictions},
            headers={"x-batch-size": str(batch_size), "x-model-id": predictor.model_id},
        )

    async def _decode(self, name: str | None, data: bytes, size: int) -> np.ndarray:
        if len(data) <= INLINE_DECODE_MAX_BYTES:
            return decode_photo(name, data, size)
        return await asyncio.to_thread(decode_photo, name, data, size)

    @api.get("/healthz", summary="Ready once the model is loaded")
    async def healthz(self) -> JSONResponse:
        if self.predictor is None:
            return error_response(503, "The model is not loaded yet.")
        return JSONResponse({"status": "ready", "model_id": self.predictor.model_id, "pid": os.getpid()})

    @api.get("/model", summary="The model card: classes, architecture, input size, metrics")
    async def model(self) -> JSONResponse:
        if self.predictor is None or self.config is None:
            return error_response(503, "The model is not loaded yet.")
        card = self.predictor.card
        return JSONResponse(
            {
                **card.to_dict(),
                "classes": list(card.class_names),
                "input_size": card.preprocessing.image_size,
                "model_uri": self.config.model_uri,
                "serving": {
                    **self.config.to_user_config(),
                    "max_body_mb": self.max_body_bytes / 1e6,
                    "max_files": self.max_files,
                    "device": str(self.predictor.device),
                },
            }
        )


def build_app(
    model_uri: str | None,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_TIMEOUT_S,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    max_files: int = DEFAULT_MAX_FILES,
    num_replicas: int = 1,
    autoscaling: tuple[int, int] | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    torch_threads: int | None = None,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
    access_log: bool = True,
    tta: bool = False,
) -> serve.Application:
    """The Serve application for one artifact. `autoscaling=(min, max)` replaces `num_replicas`."""
    user_config = None
    if model_uri:
        user_config = ModelConfig(model_uri, max_batch_size, batch_wait_timeout_s, tta).to_user_config()
        ModelConfig.from_user_config(user_config)  # validates the numbers here, not in a replica
    options: dict = {
        "max_ongoing_requests": max(max_ongoing_requests, max_batch_size * MAX_CONCURRENT_BATCHES),
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
    }
    if not access_log:
        options["logging_config"] = {"enable_access_log": False}  # one log line per request costs CPU at high rates
    if user_config is not None:
        options["user_config"] = user_config
    if autoscaling:
        low, high = autoscaling
        # One full batch waiting per replica is the load a replica should carry.
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": max_batch_size,
        }
    else:
        options["num_replicas"] = num_replicas
    return Classifier.options(**options).bind(max_body_mb=max_body_mb, max_files=max_files, torch_threads=torch_threads)


def app_builder(args: dict) -> serve.Application:
    """For `serve run` / `serve deploy` (import_path animals10.serve:app_builder).

    `args` may hold model_uri, max_batch_size, batch_wait_timeout_s, max_body_mb, max_files,
    torch_threads; a `user_config` in the config file's deployments section overrides the first three.
    """
    args = dict(args or {})
    known = {
        "model_uri",
        "max_batch_size",
        "batch_wait_timeout_s",
        "max_body_mb",
        "max_files",
        "torch_threads",
        "access_log",
        "tta",
    }
    if set(args) - known:
        raise ValueError(f"Unknown application args {sorted(set(args) - known)}; use {', '.join(sorted(known))}.")
    return build_app(args.pop("model_uri", None), **args)


# --- the command line ------------------------------------------------------------------------------


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
        help="requests a replica accepts at once",
    )
    parser.add_argument(
        "--high-throughput",
        action="store_true",
        help="HAProxy ingress straight to the replicas (RAY_SERVE_ENABLE_HA_PROXY=1, RAY_SERVE_THROUGHPUT_OPTIMIZED=1); "
        "on a remote cluster set both variables on every node before Ray starts instead",
    )
    parser.add_argument("--no-access-log", action="store_true", help="do not log a line per request")
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average each photo's probabilities with its mirror's",
    )
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

    from animals10.card import read_card

    remote = bool(os.environ.get("RAY_ADDRESS"))
    if not remote or args.model.startswith("s3://"):
        read_card(args.model)  # a bad path fails here in one sentence, not in a replica's log
    if remote:
        if args.high_throughput:
            logger.warning("--high-throughput only applies to a local Ray; set its variables on the cluster's nodes.")
        ray.init(address="auto")
    else:
        if args.high_throughput:
            os.environ.update(HIGH_THROUGHPUT_ENV)  # read by the Serve controller and replicas this Ray starts
        ray.init(address="local")  # a new local Ray, never another local cluster that happens to run
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
        access_log=not args.no_access_log,
        tta=args.tta,
    )
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(
            f"Serving {args.model} at http://{args.host}:{args.port}/predict (API docs at /docs); Ctrl-C stops.",
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
