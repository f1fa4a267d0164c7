"""What stands before the model (animals10.serve.guards) on a real Serve app on 127.0.0.1: the API key,
and the admission limit that refuses overload at once instead of queueing it."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
import pytest

from animals10.cli.main import main
from animals10.errors import SettingsError
from animals10.serve.guards import ApiKey, read_api_key
from animals10.serve.requests import RequestError
from tests.test_serve import assert_error, deploy, free_port, photo_jpeg, serve_config

# Batches of 1 (in the app's args too, which set the limit; user_config sets the running batch size):
# the replica works on 16 requests at once (1 x the 16 batches Serve may hand over), and holds none more.
WORKING_SET = 16
POLLS = 20


@pytest.fixture(scope="module")
def api_key(tmp_path_factory) -> tuple[str, str]:
    key = secrets.token_hex(24)
    path = tmp_path_factory.mktemp("secrets") / "api-key"
    path.write_text(key + "\n")
    return key, str(path)


@pytest.fixture(scope="module")
def guarded(ray_session, untrained_artifact, api_key):
    from ray import serve

    port = free_port()
    config = serve_config(
        port, untrained_artifact, max_batch_size=1, api_key_file=api_key[1], max_ongoing_requests=1,
        max_queued_requests=0,
    )  # fmt: skip
    config.applications[0].args["max_batch_size"] = 1
    deploy(config)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    serve.shutdown()


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}", "content-type": "image/jpeg"}


def test_keys_are_read_from_a_file_or_the_environment_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("ANIMALS10_API_KEY", raising=False)
    assert read_api_key() is None  # no key: the API is open
    monkeypatch.setenv("ANIMALS10_API_KEY", "k" * 32)
    assert read_api_key() == "k" * 32
    (tmp_path / "short").write_text("abc")
    with pytest.raises(SettingsError, match="at least 16 characters"):
        read_api_key(str(tmp_path / "short"))
    with pytest.raises(SettingsError, match="cannot be read"):
        read_api_key(str(tmp_path / "missing"))
    check = ApiKey("k" * 32).check
    check("Bearer " + "k" * 32)
    for header in (None, "", "Bearer", "Basic " + "k" * 32, "Bearer " + "k" * 31, "Bearer " + "k" * 33):
        with pytest.raises(RequestError) as caught:
            check(header)
        assert caught.value.status == 401 and "k" * 16 not in caught.value.message


def test_without_the_key_predict_and_model_answer_401_and_healthz_stays_open(guarded, api_key):
    key, _ = api_key
    photo = photo_jpeg(3)
    assert guarded.get("/healthz").status_code == 200
    for headers in ({"content-type": "image/jpeg"}, bearer("not-the-key-" * 3), {"authorization": key}):
        response = guarded.post("/predict", content=photo, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in assert_error(response)
    assert guarded.get("/model").status_code == 401
    response = guarded.post("/predict", content=photo, headers=bearer(key))
    assert response.status_code == 200 and response.json()["predictions"][0]["label"]
    card = guarded.get("/model", headers=bearer(key))
    assert card.status_code == 200 and card.json()["serving"]["api_key_required"] is True
    assert key not in card.text and all(key not in value for value in card.headers.values())


def test_the_key_never_reaches_the_logs(guarded, api_key, ray_session):
    key, _ = api_key
    guarded.post("/predict", content=photo_jpeg(4), headers=bearer(key))
    guarded.post("/predict", content=photo_jpeg(4), headers=bearer(key[::-1]))
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [path for path in logs.rglob("*") if path.is_file() and key.encode() in path.read_bytes()]
    assert not leaked


def burst(port: int, key: str, photo: bytes, count: int) -> list[httpx.Response]:
    """`count` requests sent at once."""

    async def send_all():
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/predict", content=photo, headers=bearer(key)) for _ in range(count))
            )

    return asyncio.run(send_all())


def test_requests_over_the_limit_are_refused_at_once_in_json_and_the_rest_answered(guarded, api_key):
    key, _ = api_key
    photo = photo_jpeg(5, size=(640, 480))
    for _ in range(POLLS):  # a burst three times the working set; bounded rounds, not seconds
        responses = burst(guarded.base_url.port, key, photo, 3 * WORKING_SET)
        refused = [r for r in responses if r.status_code == 503]
        if refused:
            break
    assert refused, "no burst was ever refused"
    assert {r.status_code for r in responses} == {200, 503}  # nothing else: no 5xx but the refusals
    assert sum(r.status_code == 200 for r in responses) >= WORKING_SET // 2  # the admitted are answered
    for response in refused:
        assert response.headers["retry-after"] == "1" and "at capacity" in assert_error(response)
    assert guarded.get("/healthz").status_code == 200  # health checks are never refused
    response = guarded.post("/predict", content=photo, headers=bearer(key))  # the burst is over: admitted again
    assert response.status_code == 200


def test_a_bad_key_file_is_one_sentence_before_anything_starts(tmp_path, untrained_artifact, capsys):
    (tmp_path / "key").write_text("short")
    assert main(["serve", "--model", untrained_artifact, "--api-key-file", str(tmp_path / "key")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (the session's replicas may log before it)
    assert last.startswith("error: ") and "at least 16 characters" in last
