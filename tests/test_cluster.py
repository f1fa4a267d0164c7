"""Running on a cluster: the launcher config, job submission to a real head, S3 storage, lost workers."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.s3_proxy import S3Proxy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_cluster_yaml_is_valid_for_the_installed_ray():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # Ray's own checks, as `ray up` runs them

    pinned = re.search(r'"ray\[data,train,serve\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert pinned == ray.__version__
    assert any(f"ray[data,train,serve]=={pinned}" in command for command in config["setup_commands"])
    # Nothing but SSH is open to the outside; the dashboard/job API stays behind the SSH tunnel.
    ports = [(rule["FromPort"], rule["ToPort"]) for rule in config["provider"]["security_group"]["IpPermissions"]]
    assert ports == [(22, 22)]
    assert all("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"] if "--head" in c)
    assert {"gpu_worker", "cpu_worker"} <= set(config["available_node_types"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A separate Ray head on 127.0.0.1 with its own ports and temp dir, as `ray start --head` makes it.
    `--block` ties the cluster to this process: terminating it stops this head only."""
    import secrets

    dashboard_port = _free_port()
    # Token authentication, as the README sets it up for a real cluster: the head, the CLI and the
    # job's driver all carry the token; a request without it is refused.
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.pop("RAY_ADDRESS", None)
    temp_dir = Path("/tmp") / f"ray-head-{os.getpid()}-{dashboard_port}"  # short: Unix socket paths are limited
    head = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            # Every listening port of its own: the test session's Ray runs beside it.
            *(f"--{name}={_free_port()}" for name in (
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                "metrics-export-port", "node-manager-port", "object-manager-port", "ray-client-server-port",
            )),
            f"--temp-dir={temp_dir}", "--num-cpus=3", "--disable-usage-stats",
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        # Ready once a trivial job runs through (the job API answers before its agent can take jobs).
        deadline = time.monotonic() + 180
        while (
            subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--", "true"], env=env, capture_output=True
            ).returncode
            != 0
        ):
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the head did not start taking jobs"
            time.sleep(2)
        yield address, env
    finally:
        head.terminate()
        head.wait(timeout=60)


def test_ray_job_submit_trains_on_a_real_head(ray_head, demo_tree, tmp_path):
    address, env = ray_head
    output = tmp_path / "run"
    submitted = subprocess.run(
        [
            str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", "train-test",
            "--working-dir", ".", "--",
            "python", "jobs/train.py", "--data", str(demo_tree), "--model", "custom_cnn", "--epochs", "2",
            "--image-size", "32", "--output", str(output),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", address, "train-test"], env=env, capture_output=True, text=True
    )
    assert "succeeded" in status.stdout.lower() and submitted.returncode == 0, (
        submitted.stdout[-3000:] + submitted.stderr[-3000:]
    )
    no_token = {**env, "RAY_AUTH_TOKEN": "wrong-" + env["RAY_AUTH_TOKEN"]}
    refused = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", address], env=no_token, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "auth" in (refused.stdout + refused.stderr).lower()
    assert "custom_cnn" in submitted.stdout and "Accuracy" in submitted.stdout
    card = json.loads((output / "custom_cnn" / "model_card.json").read_text())
    assert card["training"]["epochs_run"] == 2 and (output / "custom_cnn" / "model.safetensors").is_file()


def test_training_reads_and_writes_s3(ray_session, s3_bucket, demo_tree):
    """Data, checkpoints and artifacts in a bucket (the loopback S3 server), as on a multi-node cluster."""
    from animals10 import storage
    from animals10.predictor import Predictor
    from animals10.training.config import TrainConfig
    from animals10.training.driver import train_models

    storage.upload_dir(demo_tree, f"s3://{s3_bucket}/raw-img")
    [trained] = train_models(
        TrainConfig(
            data=f"s3://{s3_bucket}/raw-img",
            output=f"s3://{s3_bucket}/runs/exp1",
            models=("custom_cnn",),
            epochs=2,
            image_size=32,
        )
    )
    assert trained.artifact_uri == f"s3://{s3_bucket}/runs/exp1/custom_cnn"
    keys = storage.list_files(f"s3://{s3_bucket}/runs/exp1")
    assert f"s3://{s3_bucket}/runs/exp1/custom_cnn/model.safetensors" in keys
    assert any("/checkpoints/custom_cnn/checkpoint_" in key for key in keys)
    predictor = Predictor(trained.artifact_uri, device="cpu")
    assert predictor.class_names[0] == "dog" and predictor.model_id.startswith("custom_cnn-")


def run_failure_scenario(scenario: str, output: Path) -> dict:
    """Runs tests/failure_scenarios.py SCENARIO in its own process (it starts its own cluster); returns
    its JSON result, which holds no error."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "failure_scenarios.py"), scenario, str(output)],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, result.get("error")
    return result


@pytest.mark.parametrize("scenario", ["kill-worker", "remove-node"])
def test_training_survives_a_lost_worker(scenario, tmp_path):
    """A head and two worker nodes on this machine; a training worker process (or its whole node) is
    killed after some checkpoints. The run goes on from its latest checkpoint and finishes."""
    result = run_failure_scenario(scenario, tmp_path)
    assert [h["epoch"] for h in result["history"]] == list(range(1, 9))  # no epoch run twice, none lost
    card = json.loads((Path(result["artifact"]) / "model_card.json").read_text())
    resumed = card["training"]["resumed_after_epochs"]
    assert resumed and all(1 <= epoch < 8 for epoch in resumed)  # continued, did not start over
    assert card["training"]["decoded_once"]  # photos decoded once and kept in the object store, a lost node's share too
    assert (Path(result["artifact"]) / "model.safetensors").stat().st_size > 100_000


def test_batch_inference_survives_a_lost_node(tmp_path):
    """A head and two worker nodes on this machine; after the first Parquet part, the node of an
    inference actor is removed. The job finishes with exactly one row per photo, none of them an error."""
    result = run_failure_scenario("batch-remove-node", tmp_path)
    assert result["removed_node"]  # the fault happened, mid-job
    paths = [row["path"] for row in result["rows"]]
    assert sorted(paths) == result["photos"] and len(result["photos"]) == 300
    assert all(row["error"] is None for row in result["rows"])  # the lost node's photos were retried, not failed
    summary = result["summary"]
    assert summary["complete"] and summary["files_seen"] == summary["classified"] == 300


def test_a_batch_job_resumed_at_once_after_its_driver_was_killed_gets_the_cluster_and_finishes(tmp_path):
    """On a 2-CPU cluster a job's driver is killed midway; the job resumed at once from a new driver
    finishes with exactly one row per photo, within the scenario's timeout (which the 180 s Ray Data
    holds a lost driver's share of the cluster by default would exceed)."""
    result = run_failure_scenario("batch-kill-driver", tmp_path)
    assert 1 <= result["parts_before_kill"] < result["parts"]  # the kill landed midway
    paths = [row["path"] for row in result["rows"]]
    assert sorted(paths) == result["photos"] and len(result["photos"]) == 600
    summary = result["summary"]
    assert summary["complete"] and summary["files_seen"] == 600 and summary["already_done"] > 0


class SlowDownEveryThirdWrite:
    """Answers every third write with 503 SlowDown, as S3 does under load: the transient error that must
    not end a run. A request that was refused once goes through when it is retried."""

    def __init__(self, every: int = 3):
        self.every, self.num_writes, self.num_failed = every, 0, 0
        self.refused: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str):
        if method not in ("PUT", "POST"):
            return None
        with self.lock:
            self.num_writes += 1
            if self.num_writes % self.every or (method, path) in self.refused:
                return None
            self.refused.add((method, path))
            self.num_failed += 1
        return (
            503,
            b"<?xml version='1.0'?><Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>",
        )


def test_transient_s3_errors_during_checkpointing_are_retried(ray_session, s3_bucket, demo_tree, monkeypatch):
    from animals10 import storage
    from animals10.training.config import TrainConfig
    from animals10.training.driver import train_models

    storage.upload_dir(demo_tree, f"s3://{s3_bucket}/raw-img")
    flaky = SlowDownEveryThirdWrite()
    proxy = S3Proxy(os.environ["AWS_ENDPOINT_URL"], before=flaky)
    monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])  # restored after the test
    try:
        [trained] = train_models(
            TrainConfig(
                data=f"s3://{s3_bucket}/raw-img",
                output=f"s3://{s3_bucket}/runs/flaky",
                models=("custom_cnn",),
                epochs=2,
                image_size=32,
                s3_endpoint=proxy.endpoint,
            )  # fmt: skip
        )
    finally:
        proxy.close()
    assert flaky.num_failed >= 3  # checkpoints and the artifact met real 503s on the way
    assert [h["epoch"] for h in trained.history] == [1, 2]
    assert storage.exists(f"s3://{s3_bucket}/runs/flaky/custom_cnn/model.safetensors")
