"""`make demo`'s command (animals10.cli.demo), small, as a person runs it: demo photos -> both models
through Ray Train -> table -> report -> what to try next, on a short console without Ray's own lines."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from animals10.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
# Ray's own lines, and "Warning: " for a Python warning a library prints (say, a RayDeprecationWarning).
RAY_LINES = (
    "streaming_executor",
    "core_worker",
    "Reporting training result",
    "TrainingReport",
    "raylet",
    "pid=",
    "Warning: ",
)


def test_demo_trains_both_models_writes_the_report_and_says_what_to_try_next(ray_session, tmp_path, capsys):
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [sys.executable, "-m", "animals10.cli", "demo", "--output", str(tmp_path)]
    command += ["--images-per-class", "5", "--epochs", "2", "--image-size", "32"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    lines = console.splitlines()
    assert len(lines) <= 60, console
    assert not [line for line in lines if any(mark in line for mark in RAY_LINES)], console
    for name in ("custom_cnn", "efficientnet_lite0"):
        assert (tmp_path / "models" / name / "model_card.json").is_file()
        assert sum(line.startswith(f"{name} epoch ") for line in lines) == 2  # a line per epoch
    assert "Accuracy" in done.stdout and (tmp_path / "report" / "report.html").stat().st_size > 10_000

    steps = done.stdout.split("Next, with the demo's best model")[1].splitlines()
    commands = [shlex.split(line) for line in steps if line.startswith("  ") and not line.strip().startswith("#")]
    infer, serve, curl, report = commands
    assert serve[1:3] == ["serve", "--model"] and Path(serve[3], "model_card.json").is_file()
    assert Path(curl[curl.index("--data-binary") + 1].lstrip("@")).is_file() and Path(report[1]).is_file()
    # The first step, as printed, classifies the demo photos into Parquet.
    assert main(infer[1:] + ["--no-progress"]) == 0
    assert "Photos: 50" in capsys.readouterr().out


NOTICE_DRIVER = """
import logging, threading
from ray._private import utils, worker
from animals10.cluster import connect_ray

connect_ray()
delivered = threading.Event()
notices = logging.getLogger("ray.notices")
notices.setLevel(logging.INFO)
notices.addHandler(type("Seen", (logging.Handler,), {"emit": lambda self, record: delivered.set()})())
# The driver's listener subscribes in a thread of its own: a notice pushed before it has would be lost.
for _ in range(60):
    utils.push_error_to_driver(worker.global_worker, "worker_pool_large", "NODE NOTICE: many workers started")
    if delivered.wait(2):
        break
print("delivered" if delivered.is_set() else "never delivered")
"""


def test_notices_ray_pushes_to_every_driver_stay_off_the_console(ray_session):
    """Ray prints a raylet's warnings (say, a node that started many worker processes) on every driver's
    stdout whatever log_to_driver says; the commands keep them off a person's console unless `-v`."""
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    done = subprocess.run(
        [sys.executable, "-c", NOTICE_DRIVER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "delivered"
    assert "NODE NOTICE" not in done.stdout + done.stderr
