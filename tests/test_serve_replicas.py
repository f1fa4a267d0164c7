"""A replica lost under load (SIGKILL of its process) on a real two-replica Serve app on 127.0.0.1: the
endpoint keeps answering, the requests lost are at most those the replica held, and Serve brings the
deployment back to two replicas."""

from __future__ import annotations

import os
import signal
import threading

import httpx

from animals10.serve.config import APP_NAME, DEPLOYMENT_NAME
from tests.test_serve import deploy, free_port, photo_jpeg, serve_config

CLIENTS = 6  # closed loop: each has at most one request in flight, so a replica holds at most this many
POLLS = 600  # bounds on every wait below (counts of polls, not durations)


def replica_pids(client: httpx.Client, count: int, exclude: set[int] = frozenset()) -> set[int]:
    """The pids of `count` replicas answering /healthz (other than `exclude`), polling until they all answered."""
    seen: set[int] = set()
    for _ in range(POLLS):
        response = client.get("/healthz")
        if response.status_code == 200 and response.json()["pid"] not in exclude:
            seen.add(response.json()["pid"])
        if len(seen) == count:
            return seen
        threading.Event().wait(0.05)
    raise AssertionError(f"only {len(seen)} of {count} replicas answered /healthz")


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
    return deployment.replica_states.get("RUNNING", 0)


def wait_until(condition, what: str) -> None:
    for _ in range(POLLS):
        if condition():
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"never happened: {what}")


def test_a_killed_replica_costs_at_most_its_requests_and_is_replaced(ray_session, untrained_artifact):
    from ray import serve

    port = free_port()
    deploy(serve_config(port, untrained_artifact, num_replicas=2))
    outcomes: list[int | str] = []
    stop = threading.Event()

    def closed_loop_client(seed: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            photo = photo_jpeg(seed)
            while not stop.is_set():
                try:
                    response = client.post("/predict", content=photo, headers={"content-type": "image/jpeg"})
                    outcomes.append(response.status_code)
                except httpx.HTTPError as error:
                    outcomes.append(type(error).__name__)

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            victim, survivor = sorted(replica_pids(client, 2))
            threads = [threading.Thread(target=closed_loop_client, args=(i,)) for i in range(CLIENTS)]
            for thread in threads:
                thread.start()
            wait_until(lambda: len(outcomes) >= 40, "40 requests answered before the kill")
            os.kill(victim, signal.SIGKILL)
            answered_at_kill = len(outcomes)
            wait_until(lambda: running_replicas() == 2 and len(replica_pids(client, 2, {victim})) == 2, "2 replicas")
            wait_until(lambda: len(outcomes) >= answered_at_kill + 100, "100 requests answered after the kill")
            stop.set()
            for thread in threads:
                thread.join()
            replacement = replica_pids(client, 2, {victim})
    finally:
        stop.set()
        serve.shutdown()

    failed = [outcome for outcome in outcomes if outcome != 200]
    assert len(failed) <= CLIENTS, failed  # only what the killed replica held
    assert all(outcome == 200 for outcome in outcomes[-50:])  # and the endpoint answers again
    assert survivor in replacement and victim not in replacement  # back to two: the survivor and a new one
