"""Training and batch inference on a local multi-node Ray cluster while a worker process or a worker
node is lost.

Run by tests/test_cluster.py in a subprocess (a process can hold only one Ray cluster):

    python tests/failure_scenarios.py kill-worker|remove-node|batch-remove-node|batch-kill-driver OUTPUT_DIR

Prints one JSON line: the training run's epochs, where it resumed, and its artifact; or the batch
job's summary and the paths of its output rows.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def wait_for_checkpoints(checkpoint_dir: Path, count: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(checkpoint_dir.glob("checkpoint_*"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {count} checkpoints in {checkpoint_dir}")
        time.sleep(0.2)


def alive_train_workers() -> list[dict]:
    """Ray Train's worker actors, read from the GCS (the test cluster runs no dashboard)."""
    from ray._private.state import actors

    return [a for a in actors(actor_state_name="ALIVE").values() if a["ActorClassName"] == "RayTrainWorker"]


def batch_job_loses_a_node(output: Path) -> None:
    """A head and two worker nodes; after the first Parquet part, the node of an inference actor is removed."""
    import pyarrow.parquet as pq
    import ray
    from ray._private.state import actors
    from ray.cluster_utils import Cluster

    from animals10.batch.job import BatchConfig, classify_images
    from animals10.demo import write_demo_data

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    data = write_demo_data(output / "data", images_per_class=30, seed=2)
    model_uri = _untrained_model(output / "model")
    removed: list[str] = []

    def remove_an_inference_node(part_uri: str) -> None:
        if removed:
            return
        inference = [a for a in actors(actor_state_name="ALIVE").values() if "MapWorker" in a["ActorClassName"]]
        node_ids = {a["Address"]["NodeID"] for a in inference}
        victims = [n for n in workers if n.node_id in node_ids]
        if not victims:  # the only live inference actor is on the head node (the other still starting): next part
            return
        victim = victims[0]
        removed.append(victim.node_id)
        cluster.remove_node(victim, allow_graceful=False)

    config = BatchConfig(model_uri, str(data), str(output / "predictions"), batch_size=8, concurrency=2,
                         rows_per_file=10, progress=False)  # fmt: skip
    result: dict = {"photos": sorted(str(p) for p in Path(data).rglob("*.jpg"))}
    try:
        summary = classify_images(config, on_part_written=remove_an_inference_node)
        result["summary"] = summary.to_dict()
    except Exception as error:  # noqa: BLE001 - reported to the test
        result["error"] = repr(error)
    result["removed_node"] = removed
    parts = sorted((output / "predictions").glob("part-*.parquet"))
    result["rows"] = [row for part in parts for row in pq.read_table(part, columns=["path", "error"]).to_pylist()]
    print(json.dumps(result))
    ray.shutdown()
    cluster.shutdown()


RESUME_TIMEOUT_S = 150  # under the 180 s for which Ray Data holds a lost driver's share by default
PHOTOS_PER_CLASS, ROWS_PER_PART = 60, 4
PARTS = PHOTOS_PER_CLASS * 10 // ROWS_PER_PART


def batch_job_resumed_at_once_after_a_lost_driver(output: Path) -> None:
    """One node of 2 CPUs (a replica and a decode task). A job's driver process is killed midway, and the
    job is resumed at once from another driver, which must get the cluster's CPUs to finish: Ray Data
    keeps the resources a lost driver's dataset asked for until its last request expires (180 s by
    default), and on 2 CPUs that leaves the resumed job nothing to decode with."""
    import subprocess

    import pyarrow.parquet as pq
    from ray.cluster_utils import Cluster

    from animals10.demo import write_demo_data

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    data = write_demo_data(output / "data", images_per_class=PHOTOS_PER_CLASS, seed=3)
    model_uri = _untrained_model(output / "model", image_size=224)  # slow enough to be killed at steady state
    predictions = output / "predictions"
    argv = [sys.executable, "-m", "animals10.cli", "infer", "--model", model_uri, "--input", str(data),
            "--output", str(predictions), "--rows-per-file", str(ROWS_PER_PART), "--batch-size", "4",
            "--no-progress"]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    result: dict = {"photos": sorted(str(p) for p in Path(data).rglob("*.jpg"))}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed once it has run at full speed for a while (Ray Data then asks for its resources outright,
    # no longer only for a share), or half-way, whichever comes first.
    deadline = time.monotonic() + 300
    while not list(predictions.glob("part-*.parquet")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    steady_until = time.monotonic() + 25
    while len(list(predictions.glob("part-*.parquet"))) < PARTS // 2 and time.monotonic() < steady_until:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    result["parts_before_kill"] = len(list(predictions.glob("part-*.parquet")))
    result["parts"] = PARTS
    try:
        resumed = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True, timeout=RESUME_TIMEOUT_S)
        if resumed.returncode != 0:
            result["error"] = resumed.stderr[-3000:]
    except subprocess.TimeoutExpired:
        result["error"] = f"the resumed job did not finish within {RESUME_TIMEOUT_S} s of the kill"
    result["summary"] = json.loads((predictions / "_summary.json").read_text()) if "error" not in result else None
    parts = sorted(predictions.glob("part-*.parquet"))
    result["rows"] = [row for part in parts for row in pq.read_table(part, columns=["path", "error"]).to_pylist()]
    print(json.dumps(result))
    cluster.shutdown()


def _untrained_model(uri: Path, image_size: int = 64) -> str:
    import torch

    from animals10.artifact import save_artifact
    from animals10.card import ModelCard, Preprocessing
    from animals10.labels import ANIMALS10_CLASSES
    from animals10.models import create_model

    torch.manual_seed(0)
    card = ModelCard("custom_cnn", list(ANIMALS10_CLASSES), Preprocessing(image_size=image_size))
    save_artifact(create_model("custom_cnn", len(ANIMALS10_CLASSES)), card, str(uri))
    return str(uri)


def main(scenario: str, output: Path) -> None:
    if scenario == "batch-remove-node":
        batch_job_loses_a_node(output)
        return
    if scenario == "batch-kill-driver":
        batch_job_resumed_at_once_after_a_lost_driver(output)
        return
    import ray
    from ray.cluster_utils import Cluster

    from animals10.demo import write_demo_data
    from animals10.training.config import TrainConfig
    from animals10.training.driver import train_models

    # The head only coordinates; the two worker nodes have room for both training workers and
    # decoding, so that either one can carry the run alone.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=3) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    # Epochs of a few seconds each: the fault lands early in the run, however fast the machine.
    data = write_demo_data(output / "data", images_per_class=20, seed=1)
    config = TrainConfig(
        data=str(data),
        output=str(output / "run"),
        models=("custom_cnn",),
        epochs=8,
        image_size=96,
        num_workers=2,
        max_failures=3,
    )
    result: dict = {}

    def train() -> None:
        try:
            [trained] = train_models(config)
            result["history"] = trained.history
            result["artifact"] = trained.artifact_uri
        except Exception as error:  # noqa: BLE001 - reported to the test
            result["error"] = repr(error)

    thread = threading.Thread(target=train)
    thread.start()
    # Two on disk: the first is surely registered with Ray Train, so a restart has one to resume from.
    wait_for_checkpoints(output / "run" / "checkpoints" / "custom_cnn", 2)
    victim = alive_train_workers()[0]
    if scenario == "kill-worker":
        os.kill(victim["Pid"], signal.SIGKILL)
    else:
        node = next(n for n in workers if n.node_id == victim["Address"]["NodeID"])
        cluster.remove_node(node, allow_graceful=False)
    result["fault_after_checkpoints"] = len(list((output / "run" / "checkpoints" / "custom_cnn").glob("checkpoint_*")))
    thread.join()
    print(json.dumps(result))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
