"""The Serve app over real HTTP on 127.0.0.1: deployed from jobs/serve_config.yaml, as `serve run` does."""

from __future__ import annotations

import asyncio
import http.client
import io
import re
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.timeout(600)

CONFIG_FILE = Path(__file__).resolve().parents[1] / "jobs" / "serve_config.yaml"
MAX_FILES = 4
MAX_BODY_MB = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_jpeg(seed: int, size=(120, 90)) -> bytes:
    """A distinct photo per seed (noise, so that every seed gets different probabilities)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def serve_config(
    port: int,
    model_uri: str,
    max_batch_size: int = 8,
    batch_wait_timeout_s: float = 0.05,
    num_replicas: int = 1,
    **app_args,
):
    """jobs/serve_config.yaml, validated, pointed at a test artifact and a loopback port; `app_args`
    go on top of the file's application args."""
    from ray.serve.schema import ServeDeploySchema

    values = yaml.safe_load(CONFIG_FILE.read_text())
    values["http_options"] = {"host": "127.0.0.1", "port": port}
    values["proxy_location"] = "HeadOnly"
    app = values["applications"][0]
    app["args"].update(max_files=MAX_FILES, max_body_mb=MAX_BODY_MB, torch_threads=1, **app_args)
    deployment = app["deployments"][0]
    deployment["num_replicas"] = num_replicas
    deployment["user_config"] = {
        "model_uri": model_uri,
        "max_batch_size": max_batch_size,
        "batch_wait_timeout_s": batch_wait_timeout_s,
    }
    return ServeDeploySchema.model_validate(values)


def deploy(config) -> None:
    from ray.serve._private.api import serve_start

    # What `serve run jobs/serve_config.yaml` does; a second call with a changed user_config is a
    # lightweight update of the running replicas.
    client = serve_start(http_options=config.http_options.model_dump())
    client.deploy_apps(config, _blocking=True)


@pytest.fixture(scope="module")
def server(ray_session, untrained_artifact):
    from ray import serve

    port = free_port()
    deploy(serve_config(port, untrained_artifact))
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=60) as client:
        yield client
    serve.shutdown()


@pytest.fixture(scope="module")
def predictor(untrained_artifact):
    from animals10.predictor import Predictor

    return Predictor(untrained_artifact, device="cpu")


def offline(predictor, data: bytes) -> dict:
    from animals10.imaging import load_array

    return predictor.describe(predictor.predict(load_array(data, predictor.preprocessing)[None]))[0]


def assert_same_prediction(online: dict, expected: dict) -> None:
    assert online["label"] == expected["label"]
    assert [t["label"] for t in online["top_k"]] == [t["label"] for t in expected["top_k"]]
    np.testing.assert_allclose(
        [t["prob"] for t in online["top_k"]], [t["prob"] for t in expected["top_k"]], rtol=0, atol=1e-6
    )
    assert online["confidence"] == pytest.approx(expected["confidence"], abs=1e-6)
    # The open world too: the same flag, from the same score (the test artifact has statistics).
    assert online["unknown"] == expected["unknown"]
    assert online["unknown_score"] == pytest.approx(expected["unknown_score"], rel=1e-5)


def assert_error(response: httpx.Response | http.client.HTTPResponse, body: bytes | None = None) -> str:
    """A JSON body {"error": one sentence}, never a traceback."""
    import json

    text = body if body is not None else response.content
    assert response.headers["content-type"].startswith("application/json")
    payload = json.loads(text)
    assert list(payload) == ["error"] and payload["error"]
    assert "Traceback" not in payload["error"]
    return payload["error"]


def test_config_file_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG_FILE.read_text()))
    app = config.applications[0]
    assert app.import_path == "animals10.serve.app:app_builder"
    assert set(app.deployments[0].user_config) == {
        "model_uri", "max_batch_size", "batch_wait_timeout_s", "tta", "unknown", "unknown_threshold"
    }  # fmt: skip


def test_health_and_model_card(server, untrained_artifact):
    from animals10.labels import ANIMALS10_CLASSES

    health = server.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ready"
    card = server.get("/model").json()
    assert card["classes"] == list(ANIMALS10_CLASSES)
    assert card["architecture"] == "custom_cnn"
    assert card["input_size"] == 64
    assert "metrics" in card and card["model_uri"] == untrained_artifact
    assert card["id"] == health.json()["model_id"]
    docs = server.get("/docs")
    assert docs.status_code == 200
    openapi = server.get("/openapi.json").json()
    upload = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload and "image/*" in upload  # /docs can send files either way
    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'fetch("predict"' in page.text and 'type="file"' in page.text
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # no external scripts, styles or fonts


def test_one_photo_is_classified_as_offline(server, predictor):
    data = photo_jpeg(1)
    response = server.post("/predict", content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == predictor.model_id
    (prediction,) = body["predictions"]
    assert prediction["model_id"] == predictor.model_id
    assert prediction["label"] in predictor.class_names
    assert len(prediction["top_k"]) == 3
    assert_same_prediction(prediction, offline(predictor, data))
    assert int(response.headers["x-batch-size"]) >= 1


def test_several_photos_in_one_multipart_request(server, predictor):
    photos = [photo_jpeg(seed) for seed in range(10, 13)]
    files = [("files", (f"photo{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    response = server.post("/predict", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["file"] for p in predictions] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    for prediction, data in zip(predictions, photos):
        assert_same_prediction(prediction, offline(predictor, data))


def raw_http(port: int, head: bytes, body_parts: list[bytes]) -> tuple[http.client.HTTPResponse, bytes]:
    """Sends a request's head and only some of its body, then reads the answer: a server that tried
    to read the whole declared body first would never answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed; the answer is still readable
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response, response.read()
    finally:
        sock.close()


def bomb_png() -> bytes:
    """A small file that decodes to 72 million pixels, over imaging's limit."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 8000)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_input_is_answered_with_a_json_error_and_the_server_carries_on(server):
    port = server.base_url.port
    good = photo_jpeg(2)
    cases = {
        "empty body": (400, dict(content=b"", headers={"content-type": "image/jpeg"})),
        "unsupported content type": (415, dict(content=b"hello", headers={"content-type": "text/plain"})),
        "not an image": (415, dict(content=b"this is not a photo" * 10, headers={"content-type": "image/jpeg"})),
        "truncated photo": (400, dict(content=good[: len(good) // 2], headers={"content-type": "image/jpeg"})),
        "decompression bomb": (413, dict(content=bomb_png(), headers={"content-type": "image/png"})),
        "too many files": (
            400,
            dict(files=[("files", (f"{i}.jpg", good, "image/jpeg")) for i in range(MAX_FILES + 1)]),
        ),
        "multipart without files": (400, dict(data={"note": "no photo"}, files=[("empty", ("", b"", "text/plain"))])),
        "a bad file among good ones": (
            415,
            dict(files=[("files", ("a.jpg", good, "image/jpeg")), ("files", ("b.txt", b"text", "text/plain"))]),
        ),
    }
    messages = {}
    for name, (status, request) in cases.items():
        response = server.post("/predict", **request)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        messages[name] = assert_error(response)
    assert "b.txt" in messages["a bad file among good ones"]

    # Over the body limit, declared: answered from the headers, without the body.
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nContent-Length: 50000000\r\n\r\n"
    response, body = raw_http(port, head, [b"\xff" * 1024])
    assert response.status == 413
    assert "limit" in assert_error(response, body)

    # Over the body limit, chunked: stopped once the limit is passed, before the body ends.
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"\xff" * 65536
    chunks = [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * (int(MAX_BODY_MB * 1e6) // len(chunk) + 2)
    response, body = raw_http(port, head, chunks)
    assert response.status == 413
    assert "limit" in assert_error(response, body)

    # Wrong method.
    response = server.get("/predict")
    assert response.status_code == 405
    assert "POST" in assert_error(response)
    assert server.put("/model").status_code == 405

    # Still serving.
    response = server.post("/predict", content=good, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200 and response.json()["predictions"][0]["label"]
    assert server.get("/healthz").status_code == 200


def test_concurrent_requests_are_batched_and_answered_correctly(server, predictor):
    photos = [photo_jpeg(100 + i) for i in range(50)]

    async def send_all():
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/predict", content=data, headers={"content-type": "image/jpeg"}) for data in photos)
            )

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * 50
    for response, data in zip(responses, photos):
        assert_same_prediction(response.json()["predictions"][0], offline(predictor, data))
    batch_sizes = [int(r.headers["x-batch-size"]) for r in responses]
    assert max(batch_sizes) > 1, batch_sizes


def test_reconfiguring_to_another_artifact_rolls_out_the_new_model_in_place(server, untrained_artifact, tmp_path):
    import torch

    from animals10.artifact import save_artifact
    from animals10.card import ModelCard, read_card
    from animals10.models import create_model

    torch.manual_seed(1)
    card = read_card(untrained_artifact)
    second_uri = str(tmp_path / "second")
    new_card = ModelCard(card.architecture, card.class_names, card.preprocessing)
    second_id = save_artifact(create_model(card.architecture, len(card.class_names)), new_card, second_uri)
    assert second_id != card.id
    before = server.get("/healthz").json()

    # Clients keep sending while the new model rolls out: none of them may fail.
    statuses, stop = [], threading.Event()

    def keep_sending():
        with httpx.Client(base_url=str(server.base_url), timeout=60) as client:
            while not stop.is_set():
                statuses.append(
                    client.post("/predict", content=photo_jpeg(7), headers={"content-type": "image/jpeg"}).status_code
                )

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        deploy(serve_config(server.base_url.port, second_uri, max_batch_size=4, batch_wait_timeout_s=0.01))
        for _ in range(120):
            response = server.post("/predict", content=photo_jpeg(8), headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text
            if response.json()["model_id"] == second_id:
                break
            threading.Event().wait(0.5)
        assert response.json()["model_id"] == second_id
        assert response.json()["predictions"][0]["model_id"] == second_id
    finally:
        stop.set()
        sender.join()
    assert statuses and set(statuses) == {200}
    after = server.get("/healthz").json()
    assert after["pid"] == before["pid"]  # the same replica process: reconfigured, not restarted
    card = server.get("/model").json()
    assert card["model_uri"] == second_uri and card["serving"]["max_batch_size"] == 4
