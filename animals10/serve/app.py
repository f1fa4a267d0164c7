"""The HTTP app (layer 2): one model artifact behind a Ray Serve deployment with a FastAPI ingress.

    POST /predict   one photo as the raw body (image/*), or several as multipart/form-data
    GET  /          a page to try the model in a browser: pick or drop photos, see their top-3 classes
    GET  /healthz   200 once the model is loaded, 503 before
    GET  /model     the model card: classes, architecture, input size, metrics
    GET  /docs      OpenAPI documentation

With an API key (guards.py), /predict and /model answer 401 without `Authorization: Bearer <key>`;
/healthz stays open for load balancers. Requests to /predict over the admission limit (the
replica's max_ongoing_requests plus max_queued_requests) are refused at once with 503 and Retry-After.

Photos are decoded with `animals10.imaging.load_array` at the card's input size and classified by
`animals10.predictor.Predictor`, the same code path as batch inference, so the same photo gets the
same probabilities online and offline. Concurrent requests are grouped with `@serve.batch`; the batch
size, the batch wait and the artifact URI live in the deployment's `user_config`, so `reconfigure()`
changes them, and rolls out a new model, without restarting replicas. `serve run` and `serve deploy`
use `app_builder` (import path `animals10.serve.app:app_builder`).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run time.

import asyncio
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from animals10.card import Preprocessing
from animals10.errors import SettingsError
from animals10.predictor import Predictor
from animals10.serve.batching import BatchMerger
from animals10.serve.config import (
    DEFAULT_BATCH_WAIT_TIMEOUT_S,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BODY_MB,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_ONGOING_REQUESTS,
    DEFAULT_MAX_QUEUED_REQUESTS,
    DEPLOYMENT_NAME,
    MAX_CONCURRENT_BATCHES,
    RETRY_AFTER_S,
    ROUTER_QUEUE_FACTOR,
    SHED_HEADROOM,
    ModelConfig,
    check_readable_threshold,
)
from animals10.serve.guards import Admission, ApiKey, read_api_key
from animals10.serve.requests import RequestError, decode_photo, read_photos

logger = logging.getLogger(__name__)

# Photos up to this size are decoded on the event loop: at the model's input size a typical JPEG
# decodes in about a millisecond, less than a hand-off to a thread costs on a busy machine.
INLINE_DECODE_MAX_BYTES = 256_000
# The try-it page at GET /: self-contained (no external scripts or fonts), it posts each photo to /predict.
PAGE = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")


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
    return error_response(error.status, error.message, error.headers)


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


def predict_batch(predictor: Predictor, images: np.ndarray) -> list[dict]:
    """(B, S, S, 3) uint8 -> one description per photo, with the model id."""
    results = predictor.describe(predictor.predict(images))
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
        admission_limit: int = DEFAULT_MAX_ONGOING_REQUESTS + DEFAULT_MAX_QUEUED_REQUESTS,
        api_key_file: str | None = None,
        api_key_env: str | None = None,
    ):
        import torch

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.max_body_bytes = int(max_body_mb * 1_000_000)
        self.max_files = int(max_files)
        self.admission = Admission(int(admission_limit))
        self.api_key = ApiKey(read_api_key(api_key_file, api_key_env))
        self.predictor: Predictor | None = None
        self.config: ModelConfig | None = None
        # One thread runs the model, so the event loop keeps accepting and decoding requests meanwhile.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._reconfigure_lock = asyncio.Lock()
        self._merger = BatchMerger(self._predict, self._max_batch_size)

    async def reconfigure(self, user_config: dict) -> None:
        config = ModelConfig.from_user_config(user_config)
        async with self._reconfigure_lock:
            self.classify.set_max_batch_size(config.max_batch_size)
            self.classify.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
            if self.predictor is None or self.config is None or config.model_settings() != self.config.model_settings():
                started = time.perf_counter()
                # Loaded off the event loop: the old model keeps answering until the new one is ready.
                load = functools.partial(
                    Predictor, config.model_uri, tta=config.tta, unknown=config.unknown,
                    unknown_threshold=config.unknown_threshold,
                )  # fmt: skip
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
        """Photos from concurrent requests -> (description, model batch size) each, merged into full
        model batches while the model is busy (`BatchMerger`)."""
        return await self._merger.submit(items)

    def _max_batch_size(self) -> int:
        return self.config.max_batch_size if self.config else DEFAULT_MAX_BATCH_SIZE

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
            "multipart/form-data file fields. Answers, per photo: label, confidence, top_k and model_id, and, "
            "where the model has open-world statistics, unknown (true: none of the classes; the label is kept) "
            "and unknown_score. "
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
        self.api_key.check(request.headers.get("authorization"))
        with self.admission.admit():
            return await self._predict_photos(request)

    async def _predict_photos(self, request: Request) -> JSONResponse:
        predictor = self.predictor
        if predictor is None:
            raise RequestError(503, "The model is not loaded yet; retry in a moment.")
        photos = await read_photos(request, self.max_body_bytes, self.max_files)
        preprocessing = predictor.preprocessing
        arrays = await asyncio.gather(*(self._decode(name, data, preprocessing) for name, data in photos))
        answers = await asyncio.gather(*(self.classify((predictor, array)) for array in arrays))
        predictions = [{"file": name, **result} for (name, _), (result, _) in zip(photos, answers)]
        batch_size = max(size for _, size in answers)
        return JSONResponse(
            {"model_id": predictor.model_id, "predictions": predictions},
            headers={"x-batch-size": str(batch_size), "x-model-id": predictor.model_id},
        )

    async def _decode(self, name: str | None, data: bytes, preprocessing: Preprocessing) -> np.ndarray:
        if len(data) <= INLINE_DECODE_MAX_BYTES:
            return decode_photo(name, data, preprocessing)
        return await asyncio.to_thread(decode_photo, name, data, preprocessing)

    @api.get("/", summary="A page to try the model: pick or drop photos, see their top-3 classes")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    @api.get("/healthz", summary="Ready once the model is loaded")
    async def healthz(self) -> JSONResponse:
        if self.predictor is None:
            return error_response(503, "The model is not loaded yet.")
        return JSONResponse({"status": "ready", "model_id": self.predictor.model_id, "pid": os.getpid()})

    @api.get("/model", summary="The model card: classes, architecture, input size, metrics")
    async def model(self, request: Request) -> JSONResponse:
        self.api_key.check(request.headers.get("authorization"))
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
                    "admission_limit": self.admission.limit,
                    "api_key_required": self.api_key.required,
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
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
    access_log: bool = True,
    tta: bool = False,
    unknown: bool = True,
    unknown_threshold: float | None = None,
    api_key_file: str | None = None,
    api_key_env: str | None = None,
) -> serve.Application:
    """The Serve application for one artifact. `autoscaling=(min, max)` replaces `num_replicas`.

    A replica works on `max_ongoing_requests` requests at once and holds `max_queued_requests` more;
    it refuses the next one itself (JSON 503). Serve's own limits sit above that: a replica takes
    SHED_HEADROOM more, so that the ones to refuse reach it, and Serve's router queues up to
    ROUTER_QUEUE_FACTOR times the admission limit (beyond that it answers 503 with Retry-After too,
    in plain text). The API key comes from `api_key_file`, else the environment variable
    `api_key_env` (default ANIMALS10_API_KEY) on the replicas' nodes."""
    if max_ongoing_requests < 1 or max_queued_requests < 0:
        raise SettingsError("max_ongoing_requests must be at least 1 and max_queued_requests at least 0.")
    read_api_key(api_key_file, api_key_env)  # a bad key fails here, not in a replica
    if model_uri and unknown:
        check_readable_threshold(model_uri, unknown_threshold)  # a bad threshold too
    user_config = None
    if model_uri:
        user_config = ModelConfig(
            model_uri, max_batch_size, batch_wait_timeout_s, tta, unknown, unknown_threshold
        ).to_user_config()
        ModelConfig.from_user_config(user_config)  # validates the numbers here, not in a replica
    from ray.serve.config import BackpressureConfig

    admission_limit = max(max_ongoing_requests, max_batch_size * MAX_CONCURRENT_BATCHES) + max_queued_requests
    options: dict = {
        "max_ongoing_requests": admission_limit + SHED_HEADROOM,
        # Serve's router queue holds requests not yet handed to a replica, a whole burst at once: a queue
        # as short as ours would refuse bursts in Serve's plain text before a replica could answer them.
        "max_queued_requests": ROUTER_QUEUE_FACTOR * admission_limit,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
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
    return Classifier.options(**options).bind(
        max_body_mb=max_body_mb,
        max_files=max_files,
        torch_threads=torch_threads,
        admission_limit=admission_limit,
        api_key_file=api_key_file,
        api_key_env=api_key_env,
    )


def app_builder(args: dict) -> serve.Application:
    """For `serve run` / `serve deploy` (import_path animals10.serve:app_builder).

    `args` may hold model_uri, max_batch_size, batch_wait_timeout_s, max_body_mb, max_files,
    torch_threads, max_ongoing_requests, max_queued_requests, access_log, tta, unknown,
    unknown_threshold, api_key_file and api_key_env (the name of the variable that holds the key, never
    the key); a `user_config` in the config file's deployments section overrides the first three.
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
        "unknown",
        "unknown_threshold",
        "max_ongoing_requests",
        "max_queued_requests",
        "api_key_file",
        "api_key_env",
    }
    if set(args) - known:
        raise ValueError(f"Unknown application args {sorted(set(args) - known)}; use {', '.join(sorted(known))}.")
    return build_app(args.pop("model_uri", None), **args)
