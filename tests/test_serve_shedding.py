"""Shedding by predicted wait (`max_wait_s`): a replica refuses at once the request its recent rate says
would take longer than the limit, and admits again once the backlog is gone."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from animals10.serve.guards import Admission
from animals10.serve.requests import RequestError
from tests.test_serve import assert_error, deploy, free_port, photo_jpeg, serve_config

POLLS = 20
BURST = 32


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_limit_follows_the_rate_of_answered_requests_and_never_refuses_an_idle_replica():
    clock = Clock()
    admission = Admission(limit=100, max_wait_s=1.0, clock=clock)
    unanswered = Admission(limit=100, max_wait_s=1.0, clock=clock)
    with contextlib.ExitStack() as held:
        for _ in range(8):  # nothing answered yet: only the count limits
            held.enter_context(unanswered.admit())
    with admission.admit():  # answered alone in 0.2 s: 0.2 s a request of backlog
        clock.now += 0.2
    with contextlib.ExitStack() as held:
        for _ in range(5):  # the fifth waits for 4 ahead: 1.0 s, within the limit
            held.enter_context(admission.admit())
        with pytest.raises(RequestError) as caught:  # the sixth would take 1.2 s
            held.enter_context(admission.admit())
    assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "1"
    assert "over its 1 s limit" in caught.value.message
    before = admission.seconds_per_request
    with pytest.raises(ValueError), admission.admit():  # a failed request says nothing of the rate
        clock.now += 30
        raise ValueError("a bad photo")
    assert admission.seconds_per_request == before and admission.in_progress == 0
    with admission.admit():  # a slow answer: the estimate rises to about 5 s a request
        clock.now += 50
    with admission.admit():  # an idle replica admits whatever the estimate
        with pytest.raises(RequestError):
            with admission.admit():
                pass
    counted = Admission(limit=2)  # without a wait limit, only the count
    with counted.admit(), counted.admit(), pytest.raises(RequestError) as caught:
        with counted.admit():
            pass
    assert "2 requests in progress" in caught.value.message


@pytest.fixture(scope="module")
def shedding(ray_session, untrained_artifact):
    from ray import serve

    port = free_port()
    # A count limit far above the burst, and a wait limit no second request can meet once one is answered.
    config = serve_config(
        port, untrained_artifact, max_batch_size=1, max_ongoing_requests=4 * BURST, max_queued_requests=0,
        max_wait_s=0.001,
    )  # fmt: skip
    deploy(config)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client
    serve.shutdown()


def burst(port: int, photo: bytes, count: int) -> list[httpx.Response]:
    async def send_all():
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client:
            headers = {"content-type": "image/jpeg"}
            return await asyncio.gather(
                *(client.post("/predict", content=photo, headers=headers) for _ in range(count))
            )

    return asyncio.run(send_all())


def test_a_replica_refuses_what_it_could_not_answer_in_time_and_admits_again_when_idle(shedding):
    photo = photo_jpeg(7, size=(640, 480))
    assert shedding.get("/model").json()["serving"]["max_wait_s"] == 0.001
    assert shedding.post("/predict", content=photo, headers={"content-type": "image/jpeg"}).status_code == 200
    for _ in range(POLLS):  # bounded rounds, not seconds
        responses = burst(shedding.base_url.port, photo, BURST)
        refused = [r for r in responses if r.status_code == 503]
        if refused:
            break
    assert refused, "no burst was ever refused, though the count limit was never reached"
    assert {r.status_code for r in responses} == {200, 503}
    for response in refused:
        assert response.headers["retry-after"] == "1" and "s limit" in assert_error(response)
    response = shedding.post("/predict", content=photo, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200  # the burst is over: an idle replica admits


def test_a_wait_limit_that_is_not_a_positive_number_fails_before_a_replica_starts(untrained_artifact):
    from animals10.errors import SettingsError
    from animals10.serve.app import build_app

    for bad in (0, -1.0):
        with pytest.raises(SettingsError, match="max_wait_s must be a number of seconds above 0"):
            build_app(untrained_artifact, max_wait_s=bad)
