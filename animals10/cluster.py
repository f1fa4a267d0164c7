"""The one way the jobs join or start Ray: the cluster `ray job submit` runs them on, one started with
`ray start`, or else a local Ray on this machine.

Ray's own output (its workers' logs, Ray Data's and Ray Train's progress lines) reaches the console only
when animals10 logs at DEBUG (`animals10 -v`); otherwise it stays in Ray's log files.
"""

from __future__ import annotations

import logging
import math
import os
import threading

logger = logging.getLogger(__name__)
NOTICES = logging.getLogger("ray.notices")  # the lines Ray pushes to drivers; see _log_ray_notices

RAY_LOGS = "/tmp/ray/session_latest/logs"  # Ray's default, on each node
# Forwarded to every worker: an S3-compatible endpoint set on the driver must reach the tasks that read.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
# Ray Data reserves for every running dataset what it asked for (and a share of the rest) until its
# driver's last request expires: 180 s by default after a driver is lost (killed, or cut off from the
# head), while a job started or resumed at once gets only what is left (on 2 CPUs, nothing to decode
# with). Ours renew their requests every second and let a lost one's go after 3 s. Ray Data shares the
# cluster out again only when a request changes and on its own pass every 20 s, so a job also asks for
# passes until a lost driver's request must have expired (`reshare_ray_data_resources_soon`). Read by
# Ray Data when a process first runs a dataset; values set in the environment win.
RAY_DATA_SETTINGS = {
    "RAY_DATA_MIN_GAP_BETWEEN_AUTOSCALING_REQUESTS": "1",
    "RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S": "3",
}


RAY_DATA_COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # Ray Data's actor: name, namespace


def reshare_ray_data_resources_soon() -> threading.Event:
    """Asks Ray Data, now and then until the request of any driver lost before now has expired, to
    share the cluster out among the datasets still running: without it, a job started right after a
    killed one waits up to 20 s with half the cluster. With our 3 s expiry the passes come after 1, 2
    and 4 s. Set the returned event when the job ends. Best effort: the passes use Ray Data's own
    actor, and without it Ray Data's periodic pass still comes."""
    expiry = float(os.environ.get("RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S", "180"))
    interval = max(1.0, expiry / 3)
    passes = [interval * k for k in range(1, math.ceil(expiry / interval))] + [expiry + 1]
    stop = threading.Event()

    def reshare_at_each_pass() -> None:
        waited = 0.0
        for at in passes:
            if stop.wait(at - waited):
                return
            waited = at
            _reshare_ray_data_resources()

    threading.Thread(target=reshare_at_each_pass, name="animals10-reshare", daemon=True).start()
    return stop


def _reshare_ray_data_resources() -> None:
    import ray

    try:
        name, namespace = RAY_DATA_COORDINATOR
        coordinator = ray.get_actor(name, namespace=namespace)
        ray.get(coordinator.get_reserved_resources.remote("animals10", recompute=True), timeout=30)
    except Exception as error:  # noqa: BLE001 - an optional nudge; Ray Data's own pass follows anyway
        logger.debug("Could not ask Ray Data to share the cluster out again: %s", error)


def _keep_ray_off_the_console() -> None:
    """Ray's and Ray Data's console output shows errors only; Ray Data's log file keeps everything. (With
    `configure_logging=False`, ray.init leaves the `ray` logger without handlers: Python's last-resort
    handler would print its warnings.)"""
    import ray.data  # noqa: F401 - configures the ray.data loggers, adjusted here

    logging.getLogger("ray").setLevel(logging.ERROR)
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # its console handler; the other is its log file
            handler.setLevel(logging.ERROR)


def _log_ray_notices() -> None:
    """Ray prints what its raylets push to every driver (a node that has started many worker processes,
    a worker that died) straight to stdout, whatever `log_to_driver` says (ray-project/ray#63800). Here
    those lines go to the `ray.notices` logger instead, which shows errors only, as the `ray` logger."""
    import ray._private.worker as ray_worker

    def log_notice(data: dict, ignore_prefix: bool = False) -> None:
        for line in data["lines"]:
            NOTICES.warning("(%s) %s", data.get("pid"), line)

    ray_worker.print_to_stdstream = log_notice  # the module function its error listener calls


def connect_ray(min_cpus: int = 1, *, new_local: bool = False) -> None:
    """Joins the cluster in RAY_ADDRESS (as `ray job submit` sets it) or, unless `new_local`, one started
    with `ray start` on this machine; else starts a local Ray with at least `min_cpus` logical CPUs
    (training workers reserve theirs, and Ray Data needs one more to read and decode photos beside them).
    `new_local` always starts a new local Ray (a server whose settings must not leak into another)."""
    import ray

    for name, value in RAY_DATA_SETTINGS.items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        return
    show_ray_output = logging.getLogger("animals10").isEnabledFor(logging.DEBUG)
    if not show_ray_output:
        _keep_ray_off_the_console()
        _log_ray_notices()
        logger.info("Ray's own logs go to %s (`animals10 -v` shows them here).", RAY_LOGS)
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    options = {
        "runtime_env": {"env_vars": env} if env else None,
        "log_to_driver": show_ray_output,
        "configure_logging": False,
    }
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**options)
        return
    num_cpus = max(os.cpu_count() or 1, min_cpus)
    if new_local:
        ray.init(address="local", num_cpus=num_cpus, **options)
        return
    try:
        ray.init(num_cpus=num_cpus, **options)
    except ValueError:  # an existing local cluster (`ray start`): join it as it is
        ray.init(**options)
