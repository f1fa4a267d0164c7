"""The one way the jobs join or start Ray: the cluster `ray job submit` runs them on, one started with
`ray start`, or else a local Ray on this machine."""

from __future__ import annotations

import os

# Forwarded to every worker: an S3-compatible endpoint set on the driver must reach the tasks that read.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def connect_ray(min_cpus: int = 1, *, new_local: bool = False) -> None:
    """Joins the cluster in RAY_ADDRESS (as `ray job submit` sets it) or, unless `new_local`, one started
    with `ray start` on this machine; else starts a local Ray with at least `min_cpus` logical CPUs
    (training workers reserve theirs, and Ray Data needs one more to read and decode photos beside them).
    `new_local` always starts a new local Ray (a server whose settings must not leak into another)."""
    import ray

    if ray.is_initialized():
        return
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    options = {"runtime_env": {"env_vars": env} if env else None, "log_to_driver": True, "configure_logging": False}
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
